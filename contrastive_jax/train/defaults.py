"""Shared config defaults: run control and the per-dataset data/model/optimizer sections.

Each ``configs/<method>.py`` starts from :func:`base_config` and sets only what its paper specifies.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

DATASET_VARIANTS = ("digits_angle", "diabetes")


def base_config(variant: str = "digits_angle") -> ml_collections.ConfigDict:
  """Run control + data/model/optimizer defaults for one bundled data set (``variant``)."""
  if variant not in DATASET_VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r}; expected one of {DATASET_VARIANTS}.")
  c = ml_collections.ConfigDict()
  c.method = "none"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = variant
  c.data.seed = 0                  # split seed (the rotations of digits_angle are drawn from it too)
  c.data.kwargs = ml_collections.ConfigDict()
  c.data.views = 2                 # augmented views per sample (AdaCon's "batch augmentation": 8)
  c.data.normalize_targets = True  # regress (y - mean) / std of the training labels
  c.data.augment = ml_collections.ConfigDict()  # options of the augmentation pipeline
  # Augmentation pipeline by name (``data.augment.get_augment_fn``: 'image', 'tabular', 'simclr',
  # 'regression', 'bmd', 'echonet'); None: the dataset's kind ('image' / 'tabular' / 'video' ->
  # 'echonet').
  c.data.augment_kind = placeholder(str)
  c.data.root = placeholder(str)   # data folder of a file source, passed as `root=` when set

  c.model = ml_collections.ConfigDict()
  c.model.encoder_kwargs = ml_collections.ConfigDict()
  c.model.proj_hidden_dim = placeholder(int)  # None: the input width.
  # Projection head: Dense -> ReLU -> Dense(proj_dim) -> L2 (AdaCon Sec. III-B).
  c.model.proj_dim = 128
  c.model.proj_batch_norm = False  # True: Dense -> BN -> ReLU -> Dense -> BN (thesis Ch. 4-6)
  c.model.regress_from = "backbone"  # AdaCon: regression branch on the backbone features
  c.model.head_bias = True
  c.model.dtype = "float32"

  c.loss = ml_collections.ConfigDict()
  c.loss.reg = "l1"                # L_reg in {l1, mse, huber} (AdaCon Eq. 8)
  c.loss.huber_delta = 1.0
  c.loss.reg_kwargs = ml_collections.ConfigDict()  # e.g. focal_beta=0.2, focal_gamma=1.0 (focal-R)
  c.loss.lds = ml_collections.ConfigDict()         # label-distribution smoothing weights (Yang 2021)
  c.loss.lds.enabled = False
  c.loss.lds.kernel = "gaussian"
  c.loss.lds.ks = 5
  c.loss.lds.sigma = 2.0
  c.loss.lds.reweight = "sqrt_inv"
  c.loss.lds.bin_width = 1.0
  c.loss.gamma_reg = 1.0
  c.loss.gamma_con = 0.0
  c.loss.features = "projection"   # which model output the contrastive loss sees
  c.loss.contrastive = ml_collections.ConfigDict()

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 50
  c.optim.end_factor = 0.0
  c.optim.decay_boundaries = (1 / 3, 2 / 3)  # used by schedule='step'
  c.optim.decay_factor = 0.1

  if variant == "digits_angle":
    # Real 8x8 digits from scikit-learn, upsampled to 16x16 and rotated; the target is the angle.
    c.data.augment.max_shift = 1   # translations, brightness and noise only: a flip or rotation
    c.data.augment.noise_std = 0.05  # would change the target angle.
    c.data.augment.brightness = 0.1
    c.model.encoder = "small_cnn"
    c.batch_size = 128
    c.num_train_steps = 1200
    c.optim.lr = 0.05
  else:
    # scikit-learn's diabetes: 442 patients, 10 standardised features, disease progression target.
    c.data.augment.noise_std = 0.1
    c.data.augment.drop_prob = 0.1
    c.model.encoder = "mlp"
    c.model.encoder_kwargs.hidden_sizes = (128, 128)
    c.batch_size = 64
    c.num_train_steps = 600
    c.optim.lr = 0.01

  c.eval = ml_collections.ConfigDict()
  # 'regression': MAE / RMSE / R2 / Pearson of the head or a probe (`eval_with`), best = lowest val
  # MAE; 'knn_top1': class-labelled self-supervised runs, weighted kNN top-1 (InstDisc, k = knn_k,
  # T = knn_temperature) on frozen embeddings of train vs val/test plus linear-probe accuracy, best =
  # highest val kNN top-1.
  c.eval.protocol = "regression"
  c.eval.knn_k = 200               # InstDisc / thesis kNN: k = 200
  c.eval.knn_temperature = 0.1     # the thesis code's T = 0.1 (InstDisc: 0.07)
  c.eval.linear_probe_steps = 500  # full-batch SGD steps of the linear probe (knn_top1 protocol)
  c.eval.linear_probe_lr = 0.1
  c.eval.clip_mode = "first"       # videos: evaluation clip, 'first' or 'center' (AdaCon Sec. IV-B)

  c.eval_batch_size = 256
  c.eval_with = "head"             # 'head' | 'knn' | 'ridge' (probes of frozen embeddings, for SSL)
  c.knn_k = 20
  c.ridge_alpha = 1.0
  c.log_every = 100
  c.eval_every = 200
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.stop_at_step = -1              # >0: stop (checkpointed) after this step, as if preempted
  c.resume = "auto"                # 'force': resume even if the checkpoint's config differs
  c.nonfinite = "stop"             # non-finite loss/gradient: "stop" (error naming the step) or "skip"
  return c


def self_supervised(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns a config into label-free pretraining scored by probes of the frozen embeddings.

  The contrastive loss alone trains the encoder (``gamma_reg = 0``: the regression branch is not
  trained); validation (model selection) and test use kNN regression on the embeddings of the
  training split, and ``results.json`` reports the ridge linear probe too (thesis Ch. 5: kNN for small
  scale, linear probe for large scale).
  """
  config.loss.gamma_reg = 0.0
  config.loss.gamma_con = 1.0
  config.eval_with = "knn"
  return config


# Training-split sizes of the DIR benchmark (Yang et al. 2021; ACCon "Datasets"), for epoch counts.
DIR_TRAIN_SIZES = {"agedb": 12208, "imdb_wiki": 191500}


def dir_benchmark(config: ml_collections.ConfigDict, dataset: str,
                  split_mode: str = "natural") -> ml_collections.ConfigDict:
  """Points ``config`` at AgeDB-DIR / IMDB-WIKI-DIR (``data.root``: the folder holding
  ``agedb.csv`` / ``imdb_wiki.csv`` and the images) with the DIR benchmark's recipe (Yang et al.,
  ICML 2021, whose code ACCon, RankSim and ConR build on): ResNet-50 on 224 x 224 faces, random
  crop (padding 16) + horizontal flip, Adam (lr 1e-3, weight decay 1e-4), batch 256, 90 epochs with
  the rate x0.1 at epochs 60 and 80, L1 loss. ``split_mode``: 'natural' (ACCon Table 1) or
  'balanced' (the benchmark's own split, ACCon Table 2).
  """
  if dataset not in DIR_TRAIN_SIZES:
    raise ValueError(f"dataset must be one of {sorted(DIR_TRAIN_SIZES)}, got {dataset!r}.")
  config.data.name = "dir_benchmark"
  config.data.kwargs = ml_collections.ConfigDict(dict(dataset=dataset, split_mode=split_mode,
                                                      image_size=224, workers=8))
  config.data.augment_kind = "bmd"  # flip + frame shift: RandomCrop(224, padding=16) + HFlip
  config.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, degrees=0.0,
                                                       translate=16 / 224))
  config.model.encoder = "resnet50"
  config.model.encoder_kwargs = ml_collections.ConfigDict(dict(stem="imagenet"))
  config.loss.reg = "l1"
  config.batch_size = 256
  config.optim.name = "adam"
  config.optim.lr = 1e-3
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "step"
  config.optim.decay_boundaries = (60 / 90, 80 / 90)
  config.optim.decay_factor = 0.1
  config.optim.warmup_steps = 0
  steps_per_epoch = DIR_TRAIN_SIZES[dataset] // config.batch_size
  config.num_train_steps = 90 * steps_per_epoch
  config.eval_batch_size = 256
  config.log_every = 50
  config.eval_every = steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  return config


def rnc_agedb_recipe(config: ml_collections.ConfigDict,
                     dataset: str = "agedb") -> ml_collections.ConfigDict:
  """Rank-N-Contrast's AgeDB-DIR run (Zha et al. 2023; official kaiwenzha/Rank-N-Contrast
  ``main_rnc.py`` defaults), also the pipeline of SupReMix's official code: :func:`dir_benchmark`
  data with ResNet-18, SimCLR-style views, SGD lr 0.5 / batch 256 / 400 epochs (cosine), and the
  two-stage protocol (contrastive loss alone, then a linear regressor on frozen features).
  """
  dir_benchmark(config, dataset, split_mode="balanced")  # AgeDB-DIR, the benchmark's split
  config.model.encoder = "resnet18"             # official `--model resnet18` (torchvision)
  # TwoCropTransform of RandomResizedCrop(224, scale=(0.2, 1)), HFlip, ColorJitter(0.4, 0.4, 0.4,
  # 0.1) p = 0.8, RandomGrayscale p = 0.2: SimCLR's recipe without blur.
  config.data.augment_kind = "simclr"
  config.data.augment = ml_collections.ConfigDict(dict(scale=(0.2, 1.0), blur_prob=0.0))
  config.data.views = 2
  config.batch_size = 256                       # `--batch_size 256`
  config.optim.name = "sgd"                     # SGD, `--learning_rate 0.5`, momentum 0.9,
  config.optim.lr = 0.5                         # weight decay 1e-4, cosine schedule
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = 0
  steps_per_epoch = DIR_TRAIN_SIZES[dataset] // config.batch_size
  config.num_train_steps = 400 * steps_per_epoch  # `--epochs 400`
  config.eval_every = 10 * steps_per_epoch
  config.checkpoint_every = 10 * steps_per_epoch
  # Two stages: the encoder by the contrastive loss alone, then a linear regressor on frozen
  # features (Sec. 3 / official `main_linear.py`), here the ridge probe.
  config.loss.gamma_reg = 0.0
  config.loss.gamma_con = 1.0
  config.eval_with = "ridge"
  return config
