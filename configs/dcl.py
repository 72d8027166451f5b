r"""DCL, decoupled contrastive learning (Yeh et al., ECCV 2022): the thesis' Ch. 5 / 6 comparator.

NT-Xent without the positive pair in the denominator (``contrastive_jax.losses.dcl``), trained with
exactly the SimCLR baseline's set-up of each variant (``contrastive_jax.train.recipes``: backbone,
budget, augmentations, evaluation), tau = 0.1 (the paper's default and the thesis' "SimCLR/DCL 0.1",
Sec. 5.5.2):
  python -m launch --config=configs/dcl.py --workdir=/tmp/dcl
  python -m launch --config=configs/dcl.py:cifar10 --config.data.root=/data/tfds --workdir=runs/dcl_c10
  python -m launch --config=configs/dcl.py:cifar10 --config.loss.contrastive.sigma=0.5 ...   # DCLW
Variants: ``digits_angle`` (default), ``diabetes`` (kNN regression on the bundled data);
``fashion_mnist``, ``cifar10``, ``cifar100``, ``stl10``, ``imagenet100``, ``imagenet`` (kNN top-1 and
the linear probe). Thesis rows: Tables 5.2 (CIFAR-10 84.43 / CIFAR-100 / STL-10, 200-NN), 5.3
(ImageNet-100 linear 77.38), 5.9-5.11 (epochs, batch size, ResNet-9: ``+ model.encoder=resnet9``),
6.1 (CIFAR-10 84.4 / CIFAR-100 56.02); several of the thesis' DCL numbers are cited from lightly's
benchmarks rather than run (docs/reproducing.md).
"""

from ml_collections.config_dict import placeholder

from contrastive_jax.train.defaults import ssl_config

# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes", "fashion_mnist", "cifar10", "cifar100", "stl10",
            "imagenet100", "imagenet")
IMAGE_VARIANTS = VARIANTS[2:]


def get_config(variant: str = "digits_angle"):
  config = ssl_config("dcl", variant, IMAGE_VARIANTS)
  config.method = "dcl"
  config.loss.contrastive.temperature = 0.1  # Yeh et al. 2022; thesis Sec. 5.5.2 "SimCLR/DCL 0.1"
  config.loss.contrastive.sigma = placeholder(float)  # None: DCL; 0.5: DCLW (Eq. 9)
  return config
