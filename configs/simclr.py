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
* ``cifar10``: thesis Ch. 5/6 small scale (ResNet-18 CIFAR stem, batch 128, SGD lr 0.06, 200
  epochs, kNN k = 200), TFDS ``cifar10`` (``--config.data.root=`` names the TFDS data_dir).
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
VARIANTS = ("digits_angle", "diabetes", "fashion_mnist", "cifar10", "imagenet", "imagenet100")


def get_config(variant: str = "digits_angle"):
  if variant in DATASET_VARIANTS:
    config = recipes.self_supervised(base_config(variant))
    config.method = "simclr"
    config.loss.contrastive.temperature = 0.5  # SimCLR's NT-Xent default (Chen et al. 2020, B.9).
    return config
  if variant not in ("fashion_mnist", "cifar10", "imagenet", "imagenet100"):
    raise ValueError(f"Unknown simclr variant {variant!r}; expected one of "
                     f"{DATASET_VARIANTS + ('fashion_mnist', 'cifar10', 'imagenet', 'imagenet100')}.")
  config = recipes.ssl_image(run_config(), variant)
  config.method = "simclr"
  # The thesis' SimCLR baseline (Ch. 5 hyperparameters: "SimCLR/DCL 0.1"), also SimCLR's ImageNet tau.
  config.loss.contrastive.temperature = 0.1
  return config
