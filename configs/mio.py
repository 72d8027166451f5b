r"""MIO v1/v2/v3 self-supervised pretraining (thesis Ch. 5, Eq. 5.13 / 5.16 / 5.21).

  python -m launch --config=configs/mio.py --workdir=/tmp/mio
  python -m launch --config=configs/mio.py:diabetes --workdir=/tmp/mio_diabetes --config.loss.contrastive.version=1
  python -m launch --config=configs/mio.py:fashion_mnist --workdir=/tmp/mio_fm   # real data, CPU
  python -m launch --config=configs/mio.py:stl10 --config.data.root=/data/tfds --workdir=runs/mio_stl10
Variants: ``digits_angle`` (default), ``diabetes`` (kNN regression); ``fashion_mnist``, ``cifar10``,
``cifar100``, ``stl10``, ``imagenet100``, ``imagenet`` (kNN top-1; the shared set-up of
``contrastive_jax.train.recipes.ssl_image``: same backbone, budget and augmentations as SimCLR /
DySTreSS / BCL). ``cifar100`` / ``stl10``: thesis Sec. 5.5.2 small scale (ResNet-18 CIFAR stem, batch
128, SGD momentum 0.9, wd 5e-4, lr 0.06 / 0.03, cosine, 200 epochs, 200-NN top-1; Table 5.2 MIOv3
58.18 on CIFAR-100, 80.50 on STL-10).
"""

from contrastive_jax.train.defaults import ssl_config

# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes", "fashion_mnist", "cifar10", "cifar100", "stl10",
            "imagenet100", "imagenet")
IMAGE_VARIANTS = VARIANTS[2:]


def get_config(variant: str = "digits_angle"):
  # Table 5.2 (CIFAR kNN) / ImageNet-100 200 ep, IN-1K 100 ep.
  config = ssl_config("mio", variant, IMAGE_VARIANTS)
  config.method = "mio"
  config.loss.contrastive.temperature = 0.2  # Ch. 5: tau = 0.2 for MIO (Table 5.8 best for v3).
  config.loss.contrastive.version = 3        # MIOv3, the thesis' headline variant (Table 5.2).
  return config
