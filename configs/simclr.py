r"""SimCLR / NT-Xent self-supervised pretraining (Chen et al. 2020), the thesis' baseline.

The encoder is trained with NT-Xent alone (no labels). Variants:

* ``digits_angle`` (default), ``diabetes``: bundled regression data, scored by kNN regression (and
  a ridge linear probe, reported too) on the frozen embeddings; ~2 minutes on 2 CPU cores:
    python -m launch --config=configs/simclr.py --workdir=/tmp/simclr
* ``fashion_mnist``: the real Fashion-MNIST IDX files (Debian ``dataset-fashion-mnist``), class labels,
  ResNet-18 (CIFAR stem, width 8) on 28x28x1, SimCLR augmentations for grey images, weighted-kNN
  top-1 + linear probe on the test set; 50 steps, ~2-3 minutes on 2 shared CPU cores (half of it
  embedding the 50k training images for the kNN probe):
    python -m launch --config=configs/simclr.py:fashion_mnist --workdir=/tmp/simclr_fm
* ``cifar10``, ``cifar100``, ``stl10``: thesis Ch. 5/6 small scale (Sec. 5.5.2 / 6.5.2.1: ResNet-18
  CIFAR stem, batch 128, SGD momentum 0.9, wd 5e-4, lr 0.06 (CIFAR) / 0.03 (STL-10), cosine, 200
  epochs, kNN k = 200; Table 5.2 SimCLR 81.23 / 52.99 / 75.65, Table 6.1 83.65 / 52.32), TFDS
  ``cifar10`` / ``cifar100`` / ``stl10`` (``--config.data.root=`` names the TFDS data_dir):
    python -m launch --config=configs/simclr.py:cifar100 --config.data.root=/data/tfds --workdir=runs/c100
* ``cifar10_lt``, ``cifar100_lt``: the long-tailed CIFAR of Ch. 6 (Sec. 6.5.2.1: imbalance ratio
  100, 500 epochs, l2 kNN with k = 1 and 10; Tables 6.5 / 6.6 SimCLR 57.12 / 55.29 and
  28.27 / 26.18 at 1-NN / 10-NN), reported as ``l2_knn1_top1`` / ``l2_knn10_top1``.
* ``fashion_mnist_lt``: that long-tailed protocol on the Fashion-MNIST IDX files (ratio 100).
* ``imagenet`` / ``imagenet100``: thesis large scale (ResNet-50, batch 256, LARS lr 0.075 sqrt(256),
  10-epoch warm-up, cosine; 100 / 200 epochs); ImageNet-1K from TFDS ``imagenet2012``,
  ImageNet-100 from a CSV of image paths (``--config.data.root=/data/imagenet100``).

The image variants are built by ``contrastive_jax.train.recipes.ssl_image``, shared with
``configs/{mio,dystress,bcl}.py`` so that every method sees the same backbone, budget and augmentations.
"""

from __future__ import annotations

from contrastive_jax.train import recipes
from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import DATASET_VARIANTS
from contrastive_jax.train.defaults import run_config

# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes", "fashion_mnist", "fashion_mnist_lt", "cifar10", "cifar100",
            "stl10", "cifar10_lt", "cifar100_lt", "imagenet", "imagenet100")
IMAGE_VARIANTS = VARIANTS[2:]


def get_config(variant: str = "digits_angle"):
  if variant in DATASET_VARIANTS:
    config = recipes.self_supervised(base_config(variant))
    config.method = "simclr"
    config.loss.contrastive.temperature = 0.5  # SimCLR's NT-Xent default (Chen et al. 2020, B.9).
    return config
  if variant not in IMAGE_VARIANTS:
    raise ValueError(f"Unknown simclr variant {variant!r}; expected one of "
                     f"{DATASET_VARIANTS + IMAGE_VARIANTS}.")
  config = recipes.ssl_image(run_config(), variant)
  config.method = "simclr"
  # The thesis' SimCLR baseline (Ch. 5 hyperparameters: "SimCLR/DCL 0.1"), also SimCLR's ImageNet tau.
  config.loss.contrastive.temperature = 0.1
  return config
