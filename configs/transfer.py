r"""Transfer fine-tuning of a pretrained encoder on another data set (thesis Sec. 5.5.3.3 / 6.5.3.4).

Pretrain with a self-supervised config, then fine-tune its encoder end to end under a new linear
classifier on the target set (``task='finetune'``, ``contrastive_jax/train/finetune.py``); the
results report the test top-1 and top-5 of the best validation state:

  python -m launch --config=configs/simclr.py:fashion_mnist --workdir=/tmp/ssl_fm
  python -m launch --config=configs/transfer.py:digits --config.model.init_from=/tmp/ssl_fm \
      --workdir=/tmp/ssl_fm_to_digits

Without ``model.init_from`` the same run trains from a random init (the from-scratch reference).
The encoder (``model.encoder`` / ``encoder_kwargs``) must be the pretraining run's.

Thesis protocol (Sec. 5.5.3.3, 6.5.2.2; Tables 5.6 / 5.7 / 6.11 / 6.12): every parameter
fine-tuned for 50 epochs by SGD, batch 128, lr 0.1 for multi-class and 1.0 for binary tasks,
multiplied by 0.1 at epochs 30 and 40, class weights on the imbalanced (medical) sets
(``finetune.class_weights``: MURA 0.7097, ISIC2016 4.24, MHIST 2.45 as the positive class's weight,
e.g. ``--config.finetune.class_weights="(4.24,)"``; Chaoyang ``"(1.264, 1.667, 1.0, 2.114)"``), none
on CIFAR-10 / CIFAR-100; binary tasks also take ``--config.optim.lr=1.0``. Not stated there (GUESS, kept
as fields): SGD momentum 0.9 and weight decay 5e-4 (the pretraining recipe's), the augmentation
(random translation, brightness and noise: ``data.augment_kind='image'``), no warm-up.

Variants (each the thesis protocol on its target set):

* ``digits`` (default): scikit-learn's 8x8 digits (10 classes, bundled) zoomed to 28x28, the
  target of the Fashion-MNIST pretraining of ``configs/{simclr,mio,dystress,bcl}.py:fashion_mnist``
  (same encoder: ResNet-18, CIFAR stem, width 8): 1,257 training images, 9 steps an epoch.
* ``fashion_mnist``: the Fashion-MNIST IDX files (class labels), the same encoder: the reverse
  transfer (digits -> Fashion-MNIST) or a fine-tuning of a Fashion-MNIST pretraining.
* ``cifar10``, ``cifar100``: Tables 5.7 / 6.12's natural-image targets (TFDS, ``--config.data.root=``
  the TFDS folder) for the ImageNet-1K pretraining of ``configs/<method>.py:imagenet`` (ResNet-50,
  ImageNet stem); images resized to 224 (GUESS: the thesis gives no resolution). Thesis (MIOv3 /
  DySTreSS / SimCLR): CIFAR-10 97.11 / 97.14 / 96.93, CIFAR-100 83.77 / 83.96 / 82.99.

* ``mura``, ``chaoyang``, ``isic2016``, ``mhist``: Tables 5.6 / 6.11's medical targets, from the
  ImageNet-1K pretraining (ResNet-50, ImageNet stem), images listed in ``<variant>.csv``
  (``path,label,split`` with split in train/val/test, label the class index) under
  ``--config.data.root=`` (``csv_images``; resized to 224, 3 channels); the thesis' class weights
  and learning rates (binary: lr 1.0 and the positive class's weight). These sets cannot be fetched
  here (MURA needs a registration); their training-split sizes, which only set the 50-epoch step
  count, are the data sets' own papers' (GUESS where the thesis gives none: ISIC2016 900 images is
  the thesis'; MHIST 2,175, Chaoyang 4,021, MURA 36,808 are not in it). A one-logit sigmoid with
  ``pos_weight`` is what a binary thesis run most likely used; here a binary task is a 2-way softmax
  with class weights (1, w).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from contrastive_jax.train import recipes
from contrastive_jax.train.defaults import run_config

# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits", "fashion_mnist", "cifar10", "cifar100", "mura", "chaoyang", "isic2016",
            "mhist")
# Training-split sizes (after the validation carve-out), for 50 epochs of full batches.
_TRAIN_SIZE = {"digits": 1257, "fashion_mnist": 50_000, "cifar10": 50_000, "cifar100": 50_000,
               "mura": 36_808, "chaoyang": 4_021, "isic2016": 900, "mhist": 2_175}
# Thesis Sec. 5.5.3.3 / 6.5.2.2: (class weights, lr) of the medical targets.
_MEDICAL = {"mura": ((0.7097,), 1.0), "chaoyang": ((1.264, 1.667, 1.0, 2.114), 0.1),
            "isic2016": ((4.24,), 1.0), "mhist": ((2.45,), 1.0)}
EPOCHS, DECAY_EPOCHS = 50, (30, 40)


def get_config(variant: str = "digits"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown transfer variant {variant!r}; expected one of {VARIANTS}.")
  c = run_config()
  c.task = "finetune"
  c.method = "none"
  c.finetune = ml_collections.ConfigDict()
  c.finetune.class_weights = placeholder(tuple)   # None: unweighted; (w,): binary, class 1 weight w
  c.finetune.num_classes = placeholder(int)       # None: from the labels
  c.data.views = 1
  c.data.normalize_targets = False                # class ids
  c.data.augment_kind = "image"
  c.data.kwargs = ml_collections.ConfigDict()
  c.model.encoder_kwargs = ml_collections.ConfigDict()
  c.model.init_from = ""                          # --config.model.init_from=<pretraining workdir>
  if variant in ("digits", "fashion_mnist"):
    # The encoder of recipes.ssl_image(..., 'fashion_mnist'): ResNet-18, CIFAR stem, width 8.
    c.model.encoder = "resnet18"
    c.model.encoder_kwargs.stem = "cifar"
    c.model.encoder_kwargs.num_filters = 8
    c.data.augment = ml_collections.ConfigDict(dict(max_shift=2, noise_std=0.02, brightness=0.1))
    if variant == "digits":
      c.data.name = "digits"
      c.data.kwargs.upsample = 3.5                # 8x8 -> 28x28, Fashion-MNIST's size
      c.eval_batch_size = 280                     # the 270 validation / test images, one batch
    else:
      c.data.name = "fashion_mnist"
      c.data.root = recipes.FASHION_MNIST_ROOT
      c.data.kwargs.target = "class"
      c.data.kwargs.val_size = 10_000             # held out of the 60,000 training images
      c.eval_batch_size = 500
  elif variant in _MEDICAL:
    c.data.name = "csv_images"
    c.data.kwargs.csv_path = f"{variant}.csv"   # relative to --config.data.root
    c.data.kwargs.image_size = 224
    c.data.kwargs.channels = 3
    c.model.encoder = "resnet50"
    c.model.encoder_kwargs.stem = "imagenet"
    c.data.augment = ml_collections.ConfigDict(dict(max_shift=28, noise_std=0.0, brightness=0.1))
    c.finetune.class_weights = _MEDICAL[variant][0]
    c.eval_batch_size = 256
  else:
    c.data.name = "tfds"
    c.data.kwargs.tfds_name = variant
    c.data.kwargs.train_split = "train[:90%]"     # GUESS: 10 % of the training set for selection
    c.data.kwargs.val_split = "train[90%:]"
    c.data.kwargs.test_split = "test"
    c.data.kwargs.image_size = 224
    c.data.kwargs.data_dir = placeholder(str)
    c.model.encoder = "resnet50"
    c.model.encoder_kwargs.stem = "imagenet"
    c.data.augment = ml_collections.ConfigDict(dict(max_shift=28, noise_std=0.0, brightness=0.1))
    c.eval_batch_size = 500
  c.batch_size = 128
  steps_per_epoch = _TRAIN_SIZE[variant] // c.batch_size
  if variant in ("cifar10", "cifar100"):
    steps_per_epoch = int(_TRAIN_SIZE[variant] * 0.9) // c.batch_size
  c.num_train_steps = EPOCHS * steps_per_epoch
  c.optim.name = "sgd"
  c.optim.lr = _MEDICAL[variant][1] if variant in _MEDICAL else 0.1  # multi-class 0.1, binary 1.0
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.decay_boundaries = tuple(e / EPOCHS for e in DECAY_EPOCHS)
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 0
  c.eval_every = 5 * steps_per_epoch
  c.checkpoint_every = 5 * steps_per_epoch
  c.log_every = steps_per_epoch
  return c
