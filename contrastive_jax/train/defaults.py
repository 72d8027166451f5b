"""Shared config defaults: run control and the per-dataset data/model/optimizer sections.

Each ``configs/<method>.py`` starts from :func:`base_config` and sets only what its paper specifies.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import FieldReference
from ml_collections.config_dict import placeholder

DATASET_VARIANTS = ("digits_angle", "diabetes")


def base_config(variant: str = "digits_angle") -> ml_collections.ConfigDict:
  """Run control + data/model/optimizer defaults for one bundled data set (``variant``)."""
  if variant not in DATASET_VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r}; expected one of {DATASET_VARIANTS}.")
  c = ml_collections.ConfigDict()
  c.method = "none"
  c.seed = 0

  # Rows (images x views) per device per encoder pass; None: the whole local batch in one pass.
  # Smaller values train batches whose activations do not fit, by gradient caching (GradCache,
  # train.step.embedding_cache_grads): about one more forward pass; BatchNorm then sees micro-batches.
  c.micro_batch = placeholder(int)
  # How the micro-batches run: None picks by backend (unrolled on CPU, ``lax.scan`` elsewhere);
  # True / False force one (the same step up to rounding; see embedding_cache_grads).
  c.micro_batch_unroll = placeholder(bool)

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
  # Per-channel input normalisation (x - mean) / std, applied inside the model after augmentation,
  # so training and evaluation see the same inputs (regression trainer only): '' = none; 'imagenet'
  # = mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) for torchvision's ImageNet weights
  # (3-channel inputs only: grey images raise a ValueError, replicate them with
  # data.kwargs.channels=3 or give explicit statistics); or explicit (mean, std), each a number or
  # one value per channel, e.g. ((0.5,), (0.25,)). Any type: a string or a tuple.
  c.data.normalize = FieldReference("", field_type=object)

  c.model = ml_collections.ConfigDict()
  c.model.encoder_kwargs = ml_collections.ConfigDict()
  c.model.proj_hidden_dim = placeholder(int)  # None: the input width.
  # Projection head: Dense -> ReLU -> Dense(proj_dim) -> L2 (AdaCon Sec. III-B).
  c.model.proj_dim = 128
  c.model.proj_batch_norm = False  # True: Dense -> BN -> ReLU -> Dense -> BN (thesis Ch. 4-6)
  c.model.regress_from = "backbone"  # AdaCon: regression branch on the backbone features
  c.model.head_bias = True
  c.model.dtype = "float32"
  # Pretrained start (contrastive_jax/train/init_from.py): '' = random init; a torchvision state
  # dict (.pth / .pt / .safetensors) = the encoder's params and batch_stats, heads random; a
  # directory = a previous run's workdir (its latest checkpoint) or its checkpoints/ or best/
  # directory: encoder copied (must match), heads where path and shape match. Ignored when the
  # workdir already holds a checkpoint (resuming wins). Regression and CoWPro trainers (not jigsaw).
  c.model.init_from = ""

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
  # Execution of the pairwise losses that have one (the SupCon family and rnc; see
  # contrastive_jax/pairwise/blockwise.py): 'auto' | 'dense' | 'blockwise' | 'ring' (inside
  # shard_map, ppermute instead of all_gather), the blockwise tile (an int or (rows, cols); None:
  # the backend's default) and the similarity matmul's input dtype (None or 'bfloat16').
  c.loss.impl = "auto"
  c.loss.tile = placeholder(tuple)
  c.loss.matmul_dtype = placeholder(str)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  # True: no weight decay (nor LARS trust ratio) on biases and norm scales / offsets (SimCLR,
  # ``optim.decay_mask``); None: the optimizer's convention, True for 'lars', False for sgd / adam
  # (the papers' torch.optim code decays every parameter).
  c.optim.exclude_bias_and_norm = placeholder(bool)
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
  crop (padding 16) + horizontal flip, inputs normalised by mean 0.5 / std 0.5, Adam (lr 1e-3, no
  weight decay), batch 256, 90 epochs with the rate x0.1 at epochs 60 and 80, L1 loss.
  ``split_mode``: 'natural' (ACCon Table 1) or 'balanced' (the benchmark's own split, ACCon
  Table 2).

  Checked against YyzHarry/imbalanced-regression (agedb-dir/ and imdb-wiki-dir/, same values):
  train.py:52 resnet50, :56 adam, :57 l1, :58 lr 1e-3, :59 90 epochs, :62 schedule [60, 80],
  :63 batch 256, :65 img_size 224; train.py:163 builds ``Adam(model.parameters(), lr=args.lr)``
  (``--weight_decay`` 1e-4 only reaches the SGD branch), hence weight decay 0;
  agedb-dir/datasets.py:40-52 Resize((224, 224)) + RandomCrop(224, padding=16) +
  RandomHorizontalFlip + Normalize(0.5, 0.5) (evaluation: Resize + Normalize). Not reproduced:
  the official Resize((224, 224)) stretches each image to a square, our source centre-crops to
  the aspect ratio first (data/sources/dir_benchmark.py); the official loader keeps the last
  partial batch (``drop_last=False``, train.py:129: 48 updates an epoch on AgeDB) where we take
  ``N // batch_size`` full batches an epoch (47).
  """
  if dataset not in DIR_TRAIN_SIZES:
    raise ValueError(f"dataset must be one of {sorted(DIR_TRAIN_SIZES)}, got {dataset!r}.")
  config.data.name = "dir_benchmark"
  # csv_path: another meta file with the same columns (e.g. ACCon's official agedb_natural.csv
  # with split_mode='balanced', which reads its split column); None: root/<dataset>.csv.
  config.data.kwargs = ml_collections.ConfigDict(dict(dataset=dataset, split_mode=split_mode,
                                                      image_size=224, workers=8,
                                                      csv_path=placeholder(str)))
  config.data.augment_kind = "bmd"  # flip + frame shift: RandomCrop(224, padding=16) + HFlip
  config.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, degrees=0.0,
                                                       translate=16 / 224))
  config.data.normalize = (0.5, 0.5)  # transforms.Normalize([.5, .5, .5], [.5, .5, .5])
  config.model.encoder = "resnet50"
  config.model.encoder_kwargs = ml_collections.ConfigDict(dict(stem="imagenet"))
  config.loss.reg = "l1"
  config.batch_size = 256
  config.optim.name = "adam"
  config.optim.lr = 1e-3
  config.optim.weight_decay = 0.0  # torch.optim.Adam(model.parameters(), lr=args.lr): no decay
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
  """Rank-N-Contrast's AgeDB-DIR run (Zha et al. 2023; official kaiwenzha/Rank-N-Contrast,
  ``main_rnc.py`` defaults): :func:`dir_benchmark` data (AgeDB-DIR's balanced split: the official
  data/agedb.csv is byte-identical to the DIR benchmark's) with ResNet-18, two SimCLR-style views,
  SGD lr 0.5 / batch 256 / 400 epochs, cosine to lr x 1e-3, then the second stage (a linear
  regressor on frozen features) by the ridge probe.

  Checked against the official code: main_rnc.py:22 batch 256, :24 400 epochs, :25 lr 0.5, :26
  lr_decay_rate 0.1, :27 weight decay 1e-4, :28 momentum 0.9, :33 resnet18, :35 aug
  'crop,flip,color,grayscale', :38-40 temp 2 / label_diff 'l1' / feature_sim 'l2', :85
  drop_last=True (47 steps an epoch); utils.py:96-98 torch.optim.SGD over all parameters; utils.py
  :76-81 cosine annealing from lr to eta_min = lr * lr_decay_rate ** 3, set once per epoch (ours
  per step); utils.py:15-39 RandomResizedCrop(224, scale=(0.2, 1)), HFlip, ColorJitter(0.4, 0.4,
  0.4, 0.1) p = 0.8, RandomGrayscale p = 0.2, Normalize(0.5, 0.5); model.py:72-137 ResNet-18 built
  from scratch (no ImageNet weights), loss on its 512-d pooled features (no projection head).

  What this trainer does differently (it has no second training stage):
  * Stage 2 (main_linear.py) trains Linear(512, 1) (:95) with L1 (:91) by SGD lr 0.05 (:23),
    momentum 0.9 (:26), weight decay 0 (:25), batch 64 (:20), 100 epochs (:22), cosine to
    0.05 * 0.2 ** 3 (:24), on augmented training images (:33, :63) through the frozen encoder
    (:119, :134), keeping the epoch with the lowest validation L1 (:212-224). Here: the closed-form
    ridge probe (squared loss, ``ridge_alpha``) on un-augmented training embeddings.
  * The official encoder is the last epoch's (main_rnc.py:184, no validation in stage 1); here the
    encoder checkpoint (every 10 epochs) with the lowest validation MAE of the ridge probe is kept
    (``--config.eval_every=<num_train_steps>`` scores only the last).
  * Evaluation images: official Resize(256) + CenterCrop(224) (utils.py:41-46); ours the whole
    centre-cropped square at 224, and RandomResizedCrop draws from that square, not from the
    original image.
  """
  dir_benchmark(config, dataset, split_mode="balanced")  # AgeDB-DIR, the benchmark's split
  config.model.encoder = "resnet18"             # `--model resnet18` (model.py, random init)
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
  config.optim.end_factor = 0.1 ** 3            # eta_min = lr * lr_decay_rate ** 3 (utils.py:78)
  config.optim.warmup_steps = 0                 # no warm-up (utils.py:76-81)
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
