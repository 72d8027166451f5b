r"""DySTreSS: NT-Xent with a similarity-dependent temperature (thesis Ch. 6, Eq. 6.16 / Alg. 6.1).

  python -m launch --config=configs/dystress.py --workdir=/tmp/dystress
  python -m launch --config=configs/dystress.py:fashion_mnist --workdir=/tmp/dystress_fm  # real data
Shifted profiles of Alg. 6.1: --config.loss.contrastive.profile=shifted
  --config.loss.contrastive.shift=-0.2 --config.loss.contrastive.scale=0.6 (Table 6.15 settings).
  At shift 0, 'shifted' is the thesis text's profile (cosine on c <= 0, tau_max on c > 0);
  profile=shifted_literal is Alg. 6.1 as printed (symmetric at shift 0; equal otherwise).
  python -m launch --config=configs/dystress.py:cifar10_lt --config.data.root=/data/tfds --workdir=runs/lt
Variants: ``digits_angle`` (default), ``diabetes`` (kNN regression); ``fashion_mnist``, ``cifar10``,
``cifar100``, ``stl10``, ``imagenet100``, ``imagenet`` (kNN top-1; the shared set-up of
``contrastive_jax.train.recipes.ssl_image``); ``cifar100``: Sec. 6.5.2.1 (ResNet-18 CIFAR stem, SGD
momentum 0.9, wd 5e-4, lr 0.06, batch 128, 200 epochs; Table 6.1 DySTreSS 56.57); ``stl10``: the
Ch. 5 small-scale recipe (lr 0.03; the thesis reports no DySTreSS STL-10 number).
Long-tailed (Sec. 6.5.2.1, Tables 6.5 / 6.6): ``cifar10_lt``, ``cifar100_lt`` (imbalance ratio 100,
500 epochs, l2 kNN with k = 1 and 10 on the balanced test set: DySTreSS 58.36 / 56.40 and
29.43 / 27.10; DySTreSS* = --config.loss.contrastive.tau_min=0.1) and ``fashion_mnist_lt`` (the same
protocol on Fashion-MNIST).
"""

from contrastive_jax.train.defaults import ssl_config

# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes", "fashion_mnist", "fashion_mnist_lt", "cifar10", "cifar100",
            "stl10", "cifar10_lt", "cifar100_lt", "imagenet100", "imagenet")
IMAGE_VARIANTS = VARIANTS[2:]


def get_config(variant: str = "digits_angle"):
  config = ssl_config("dystress", variant, IMAGE_VARIANTS)
  config.method = "dystress"
  # Ch. 6 small scale (CIFAR, and the small data sets here): tau_min 0.07, tau_max 0.2; ImageNet
  # (Sec. 6 hyperparameters, Table 6.14 best 0.1 / 0.2 -> 78.76 on IN-100): tau_min 0.1.
  large = variant in ("imagenet100", "imagenet")
  config.loss.contrastive.tau_min = 0.1 if large else 0.07
  config.loss.contrastive.tau_max = 0.2
  config.loss.contrastive.profile = "cosine"  # Eq. 6.16: tau_max at c = +-1, tau_min at c = 0.
  config.loss.contrastive.shift = 0.0
  config.loss.contrastive.scale = 1.0
  return config
