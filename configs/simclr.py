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

The image variants are built by :func:`ssl_image_config`, shared with ``configs/{mio,dystress,bcl}.py``
so that every method sees the same backbone, budget and augmentations.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import DATASET_VARIANTS
from contrastive_jax.train.defaults import self_supervised

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_VARIANTS = ("fashion_mnist", "cifar10", "imagenet", "imagenet100", "mrnet")
# Training-set sizes, for epochs -> steps.
_TRAIN_SIZE = {"cifar10": 50_000, "imagenet": 1_281_167, "imagenet100": 126_689,
               "mrnet": 1_017}  # MRNet: 1130 train exams less the 10 % validation carve-out.


def _steps(variant: str, epochs: int, batch_size: int) -> int:
  return epochs * (_TRAIN_SIZE[variant] // batch_size)


def ssl_image_config(variant: str) -> ml_collections.ConfigDict:
  """The shared self-supervised image set-up of thesis Ch. 4-6 for ``variant`` (no method set).

  Data, SimCLR augmentations (``data.augment_kind='simclr'``), ResNet backbone + projector,
  optimizer and budget, and the kNN top-1 evaluation (``eval.protocol='knn_top1'``, k = 200,
  T = 0.1: thesis Ch. 5 "Evaluation", the author's code). Each method's config adds its loss.

  Args:
    variant: one of :data:`IMAGE_VARIANTS`.

  Raises:
    ValueError: an unknown ``variant``.
  """
  if variant not in IMAGE_VARIANTS:
    raise ValueError(f"Unknown image variant {variant!r}; expected one of {IMAGE_VARIANTS}.")
  c = self_supervised(base_config("digits_angle"))
  c.data.name = variant
  c.data.kwargs = ml_collections.ConfigDict()
  c.data.augment_kind = "simclr"
  c.data.normalize_targets = False      # class ids; the regression branch is not trained anyway
  c.model.encoder_kwargs = ml_collections.ConfigDict()
  c.eval.protocol = "knn_top1"
  c.eval.knn_k = 200                    # Ch. 5 "Evaluation": weighted kNN, k = 200,
  c.eval.knn_temperature = 0.1          # weights exp(s / 0.1) [code].
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.schedule = "cosine"
  c.optim.end_factor = 0.0
  aug = ml_collections.ConfigDict()     # simclr_sample options (data/augment.py).
  aug.scale = (0.08, 1.0)               # RandomResizedCrop, torchvision's default area range
  aug.flip_prob = 0.5
  aug.jitter = (0.4, 0.4, 0.4, 0.1)     # colour jitter 0.4/0.4/0.4/0.1 with p = 0.8,
  aug.jitter_prob = 0.8
  aug.gray_prob = 0.2                   # grayscale p = 0.2,
  aug.blur_prob = 0.0                   # no blur (SimCLR's CIFAR recipe, thesis Ch. 5).

  if variant == "fashion_mnist":
    # Real data, small CPU budget. Ch. 5 small-scale recipe scaled down: ResNet-18 CIFAR stem at 1/8
    # width (--config.model.encoder_kwargs.num_filters=64 for the full net), 50 steps.
    c.data.name = "fashion_mnist"
    c.data.root = FASHION_MNIST_ROOT
    c.data.kwargs.target = "class"      # the 10 clothing classes (kNN top-1), not rotation angles
    # 28x28 grey images: colour (saturation, hue) and grayscale are no-ops on one channel and are
    # switched off; brightness / contrast jitter is kept (p = 0.8). The crop keeps >= 20 % of the
    # area (GUESS: 8 % of 28x28 is a 8x8 patch that rarely shows the garment).
    aug.scale = (0.2, 1.0)
    aug.jitter = (0.4, 0.4, 0.0, 0.0)
    aug.gray_prob = 0.0
    c.model.encoder = "resnet18"
    c.model.encoder_kwargs.stem = "cifar"
    c.model.encoder_kwargs.num_filters = 8
    # proj_hidden_dim None: the backbone width (Ch. 5 [code]: 512 -> 512 -> 128 at full width).
    c.model.proj_dim = 128
    c.batch_size = 64
    c.num_train_steps = 50
    c.optim.lr = 0.06                   # Ch. 5 small scale: SGD lr 0.06 (at batch 128),
    c.optim.weight_decay = 5e-4         # wd 5e-4, cosine; warm-up GUESS (10 % of a short run).
    c.optim.warmup_steps = 5
    c.eval.linear_probe_steps = 300
    c.eval_batch_size = 500
    c.log_every = 10
    c.eval_every = 50
    c.checkpoint_every = 50
  elif variant == "cifar10":
    # Thesis Ch. 5 / 6 small scale (Table 5.2, 6.1): ResNet-18 CIFAR stem, projector 512->512->128,
    # batch 128, SGD momentum 0.9, lr 0.06, wd 5e-4, cosine, 200 epochs, kNN on the test set.
    c.data.name = "tfds"
    # The TFDS folder: --config.data.root=/data/tfds (passed to the source as its data_dir).
    c.data.kwargs.tfds_name = "cifar10"
    c.data.kwargs.train_split = "train"  # the kNN bank is the whole training set;
    c.data.kwargs.val_split = "test"    # val = test, evaluated once at the end (no selection).
    c.data.kwargs.test_split = "test"
    c.data.kwargs.data_dir = placeholder(str)
    c.model.encoder = "resnet18"
    c.model.encoder_kwargs.stem = "cifar"
    c.model.proj_hidden_dim = 512
    c.model.proj_dim = 128
    c.batch_size = 128
    c.num_train_steps = _steps("cifar10", 200, 128)
    c.optim.lr = 0.06
    c.optim.weight_decay = 5e-4
    c.optim.warmup_steps = 0
    c.eval_batch_size = 1000
  elif variant == "mrnet":
    # Thesis Ch. 4 (Sec. C5-C8): ResNet-50, projector 2048 -> 2048 -> 512 (Table 4.2 model 1),
    # batch 64 scans, LARS lr 0.1, cosine, no warm-up, 100 epochs, one model per plane. Table 4.3
    # augmentations: RandomResizedCrop 224 (0.08, 1), blur 5x5 sigma (0.1, 2), colour jitter
    # 0.2/0.2/0.2/0 (rotation +-30, CutOut and noise 0.1 are not in the 'simclr' pipeline).
    c.data.name = "mrnet"
    # data.root is required: --config.data.root=/data/MRNet
    c.data.kwargs.task = "abnormal"     # labels only score the kNN probe; pretraining is label-free
    c.data.kwargs.plane = "sagittal"
    c.data.kwargs.slices = 16
    aug.size = 224
    aug.jitter = (0.2, 0.2, 0.2, 0.0)
    aug.gray_prob = 0.0
    aug.blur_prob = 0.5                 # GUESS: the probability is not given (Sec. C10)
    aug.blur_kernel = 5
    c.model.encoder = "resnet50"
    c.model.encoder_kwargs.stem = "imagenet"
    c.model.proj_hidden_dim = 2048
    c.model.proj_dim = 512
    c.batch_size = 64
    c.num_train_steps = _steps("mrnet", 100, 64)
    c.optim.name = "lars"
    c.optim.lr = 0.1
    c.optim.weight_decay = 1e-6         # GUESS (Sec. C10): LARS momentum 0.9, wd 1e-6
    c.optim.exclude_bias_and_norm = True  # SimCLR: BN and biases skip wd and the trust ratio
    c.optim.warmup_steps = 0
    c.eval_batch_size = 64
  else:
    # Thesis large scale (Ch. 5 / 6): ResNet-50, projector 2048 -> 2048 -> 128, batch 256, LARS
    # lr 0.075 * sqrt(256) = 1.2, momentum 0.9, wd 1e-6, 10-epoch warm-up then cosine [code];
    # ImageNet-1K 100 epochs, ImageNet-100 200 epochs. SimCLR's ImageNet augmentation (with blur).
    if variant == "imagenet":
      c.data.name = "tfds"
      c.data.kwargs.tfds_name = "imagenet2012"  # manual download; `tfds build` it first
      c.data.kwargs.train_split = "train"
      c.data.kwargs.val_split = "validation"
      c.data.kwargs.test_split = "validation"
      c.data.kwargs.data_dir = placeholder(str)
      epochs = 100
    else:
      # ImageNet-100 (the CMC 100-class subset) is not in TFDS: a CSV `path,label,split` listing the
      # images (split in train/val/test; label = class index) under --config.data.root.
      c.data.name = "csv_images"
      c.data.kwargs.csv_path = "imagenet100.csv"
      c.data.kwargs.channels = 3
      epochs = 200
    c.data.kwargs.image_size = 224
    aug.blur_prob = 0.5
    c.model.encoder = "resnet50"
    c.model.encoder_kwargs.stem = "imagenet"
    c.model.proj_hidden_dim = 2048
    c.model.proj_dim = 128
    c.batch_size = 256
    c.num_train_steps = _steps(variant, epochs, 256)
    c.optim.name = "lars"
    c.optim.lr = 0.075 * 256 ** 0.5
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = _steps(variant, 10, 256)
    c.optim.exclude_bias_and_norm = True  # SimCLR: BN and biases skip wd and the trust ratio
    c.eval_batch_size = 1024
  if variant != "fashion_mnist":
    c.log_every = 500
    c.eval_every = c.num_train_steps    # the kNN probe once, at the end
    c.checkpoint_every = 2000
  c.data.augment = aug
  # Projector Linear -> BN -> ReLU -> Linear -> BN (thesis Ch. 4-6). The fashion_mnist variant keeps
  # the plain projector it was benchmarked with (docs/benchmarks.md).
  c.model.proj_batch_norm = variant != "fashion_mnist"
  return c


# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes", "fashion_mnist", "cifar10", "imagenet", "imagenet100")


def get_config(variant: str = "digits_angle"):
  if variant in DATASET_VARIANTS:
    config = self_supervised(base_config(variant))
    config.method = "simclr"
    config.loss.contrastive.temperature = 0.5  # SimCLR's NT-Xent default (Chen et al. 2020, B.9).
    return config
  if variant not in ("fashion_mnist", "cifar10", "imagenet", "imagenet100"):
    raise ValueError(f"Unknown simclr variant {variant!r}; expected one of "
                     f"{DATASET_VARIANTS + ('fashion_mnist', 'cifar10', 'imagenet', 'imagenet100')}.")
  config = ssl_image_config(variant)
  config.method = "simclr"
  # The thesis' SimCLR baseline (Ch. 5 hyperparameters: "SimCLR/DCL 0.1"), also SimCLR's ImageNet tau.
  config.loss.contrastive.temperature = 0.1
  return config
