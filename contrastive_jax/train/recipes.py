"""Data-set recipes: functions that set a config's data, backbone, batch, budget and optimizer.

Each takes a config (``defaults.run_config()``, possibly with method fields already set) and sets
what its data set or paper decides, nothing else; ``configs/<method>.py`` chooses one per variant.
Configs import recipes from here, never from each other.

* :func:`bundled`: scikit-learn's digits_angle / diabetes demo data (the default runs);
* :func:`self_supervised`: label-free pretraining scored by probes of the frozen embeddings;
* :func:`ssl_image`: the thesis' shared self-supervised image set-ups (Ch. 4-6);
* :func:`dir_benchmark`, :func:`rnc_agedb`: AgeDB-DIR / IMDB-WIKI-DIR (Yang et al. 2021) recipes;
* :func:`sts_b_dir`: STS-B-DIR (Yang et al. 2021), BiLSTM + frozen GloVe-format word vectors.

Imports no JAX (the launcher reads configs without it).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

BUNDLED_VARIANTS = ("digits_angle", "diabetes")


def bundled(c: ml_collections.ConfigDict, variant: str = "digits_angle") -> ml_collections.ConfigDict:
  """The bundled data set ``variant`` ('digits_angle' or 'diabetes') with its small model."""
  if variant not in BUNDLED_VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r}; expected one of {BUNDLED_VARIANTS}.")
  c.data.name = variant
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

  return c


def self_supervised(config: ml_collections.ConfigDict, probe: str = "knn") -> ml_collections.ConfigDict:
  """Turns a config into label-free pretraining scored by probes of the frozen embeddings.

  The contrastive loss alone trains the encoder (``gamma_reg = 0``: the regression branch is not
  trained); validation (model selection) and test use the ``probe`` of the embeddings of the
  training split: 'knn' (kNN regression; ``results.json`` reports the ridge linear probe too: thesis
  Ch. 5, kNN for small scale, linear probe for large scale) or 'ridge' (the ridge probe standing in
  for a second, linear-regressor training stage: RNC's and SupReMix's two-stage recipes).
  """
  config.loss.gamma_reg = 0.0
  config.loss.gamma_con = 1.0
  config.eval_with = probe
  return config


def epochs(config: ml_collections.ConfigDict, train_size: int, num_epochs: int,
           eval_epochs: int = 1) -> ml_collections.ConfigDict:
  """``num_train_steps`` for ``num_epochs`` of ``train_size // batch_size`` full batches (the
  official loaders' ``drop_last=True``), validation and checkpoints every ``eval_epochs`` epochs."""
  steps_per_epoch = train_size // config.batch_size
  config.num_train_steps = num_epochs * steps_per_epoch
  config.eval_every = eval_epochs * steps_per_epoch
  config.checkpoint_every = eval_epochs * steps_per_epoch
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
  epochs(config, DIR_TRAIN_SIZES[dataset], 90)
  config.eval_batch_size = 256
  config.log_every = 50
  return config


# STS-B-DIR's training split (train_new.tsv, 5,249 pairs) and the official trainer's validation
# interval / number of validation checks, for the step budget.
STS_B_TRAIN_SIZE = 5249
STS_B_VAL_INTERVAL, STS_B_MAX_VALS = 400, 100


def sts_b_dir(config: ml_collections.ConfigDict,
              split_mode: str = "natural") -> ml_collections.ConfigDict:
  """Points ``config`` at STS-B-DIR (``data.root``: the folder holding ``train_new.tsv``,
  ``dev_new.tsv``, ``test_new.tsv``; ``data.kwargs.embeddings``: a GloVe-format word-vector file)
  with the DIR benchmark's STS-B recipe (Yang et al., ICML 2021): sentence pairs as frozen 300-d word
  vectors, a 2-layer BiLSTM (1,500 units a direction) with max pooling, the pair feature
  ``[u, v, |u - v|, u * v]`` and a linear regressor, MSE, Adam lr 1e-4 (L2 1e-5), batch 128,
  validation every 400 steps, 100 checks at most (40,000 steps). No augmentation (one view).
  ``split_mode``: 'natural' (ACCon Table 1) or 'balanced' (the benchmark's files, ACCon Table 2).
  Shot groups: 0.1-wide score bins (the official 50 bins over [0, 5], 5.0 in the last), > 100 / < 30
  training pairs: on the official train_new.tsv these give exactly the official fixed lists
  (util.py ``STSShotAverage._shot_idx``; any few-threshold from 28 to 35 does, 20 does not).

  Checked against YyzHarry/imbalanced-regression sts-b-dir/ (ACCon's sts-b/ has the same values):
  train.py:29 glove.840B.300d.txt, :38 max_seq_len 40, :39 max_word_v_size 30000, :43 d_word 300,
  :45 train_words 0 (frozen), :48 d_hid 1500, :49 n_layers_enc 2, :50 n_layers_highway 0,
  :51 dropout 0.2, :54 batch 128, :55 adam, :56 lr 1e-4, :57 loss mse, :60 val_interval 400,
  :61 max_vals 100; trainer.py:21 Adam weight_decay 1e-5 (torch's coupled L2), :23 grad_norm 5
  (``--max_grad_norm``); models.py:16-81 the encoder (:116-) and Linear(4 * 2 * d_hid, 1) regressor,
  :101-106 the MSE on ``label / 5``; util.py:101-113 STSShotAverage: 50 bins of 0.1, fixed many /
  medium / few bin lists.
  Not reproduced: the gradient-norm clipping at 5 (this trainer has no clipping); early stopping
  (patience 10 checks of the validation MSE; we train all 100 checks and keep the best validation
  MAE); targets ``y / 5`` (ours: standardised, ``data.normalize_targets``; MSE is then 25 / std(y)^2
  times the official value, a scale Adam is invariant to); the official shot lists are fixed (those
  of its own training file), ours are counted on the run's training labels (the same lists on
  STS-B-DIR; on STS-B-Natural or with ``data.train_fraction`` the counts of that training split).
  """
  if split_mode not in ("natural", "balanced"):
    raise ValueError(f"split_mode must be 'natural' or 'balanced', got {split_mode!r}.")
  config.data.name = "sts_b"
  # embeddings: the GloVe-format file (glove.840B.300d.txt in the papers), relative to data.root
  # or absolute; required (GloVe is a separate download).
  config.data.kwargs = ml_collections.ConfigDict(dict(
      split_mode=split_mode, embeddings=placeholder(str), max_seq_len=40, max_vocab=30000,
      embedding_dim=300))
  config.data.augment_kind = "identity"
  config.data.views = 1
  config.model.encoder = "bilstm_pair"
  config.model.encoder_kwargs = ml_collections.ConfigDict(dict(hidden_size=1500, num_layers=2,
                                                               dropout=0.2))
  config.loss.reg = "mse"
  config.batch_size = 128
  config.optim.name = "adam"
  config.optim.lr = 1e-4
  config.optim.weight_decay = 1e-5
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.num_train_steps = STS_B_VAL_INTERVAL * STS_B_MAX_VALS
  config.eval_every = STS_B_VAL_INTERVAL
  config.checkpoint_every = STS_B_VAL_INTERVAL
  config.eval.shots = ml_collections.ConfigDict(dict(bin_width=0.1, many=100, few=30, top=5.0))
  config.eval_batch_size = 256
  config.log_every = 100
  return config


def rnc_agedb(config: ml_collections.ConfigDict,
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
  epochs(config, DIR_TRAIN_SIZES[dataset], 400, eval_epochs=10)  # `--epochs 400`
  # Two stages: the encoder by the contrastive loss alone, then a linear regressor on frozen
  # features (Sec. 3 / official `main_linear.py`), here the ridge probe.
  self_supervised(config, probe="ridge")
  return config


FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
# The thesis' small-scale TFDS set-ups: variant -> (TFDS name, long-tail imbalance ratio).
_SMALL_SCALE = {"cifar10": ("cifar10", 1), "cifar100": ("cifar100", 1), "stl10": ("stl10", 1),
                "cifar10_lt": ("cifar10", 100), "cifar100_lt": ("cifar100", 100)}
SSL_IMAGE_VARIANTS = ("fashion_mnist", "fashion_mnist_lt", *_SMALL_SCALE, "imagenet",
                      "imagenet100", "mrnet")
# Training-set sizes, for epochs -> steps.
_TRAIN_SIZE = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000, "imagenet": 1_281_167,
               "imagenet100": 126_689,
               "mrnet": 1_017}  # MRNet: 1130 train exams less the 10 % validation carve-out.
# Long-tailed training splits at ratio 100 (data/long_tail.py): sum of floor(500 * 100^(-c/99))
# over the 100 classes and of floor(5000 * 100^(-c/9)) over the 10.
_LT_TRAIN_SIZE = {"cifar10": 12_406, "cifar100": 10_847}


def _steps(variant: str, epochs: int, batch_size: int) -> int:
  return epochs * (_TRAIN_SIZE[variant] // batch_size)


def ssl_image(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """The shared self-supervised image set-up of thesis Ch. 4-6 for ``variant`` (no method set),
  applied to ``c`` (a :func:`~contrastive_jax.train.defaults.run_config`).

  Data, SimCLR augmentations (``data.augment_kind='simclr'``), ResNet backbone + projector,
  optimizer and budget, and the kNN top-1 evaluation (``eval.protocol='knn_top1'``, k = 200,
  T = 0.1: thesis Ch. 5 "Evaluation", the author's code). Each method's config adds its loss.

  Args:
    variant: one of :data:`SSL_IMAGE_VARIANTS`.

  Raises:
    ValueError: an unknown ``variant``.
  """
  if variant not in SSL_IMAGE_VARIANTS:
    raise ValueError(f"Unknown image variant {variant!r}; expected one of {SSL_IMAGE_VARIANTS}.")
  self_supervised(c)
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

  if variant in ("fashion_mnist", "fashion_mnist_lt"):
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
    if variant == "fashion_mnist_lt":
      # The Ch. 6 long-tailed protocol on Fashion-MNIST (ours, not in the thesis): the 50,000
      # training images cut to the ratio-100 profile (12,370 images at data.seed 0: all 4,964 of
      # class 0 left after the validation carve-out, 2,997 of class 1 ... 50 of class 9), scored
      # like CIFAR10-LT by l2 kNN with k = 1 and 10 on the balanced test set.
      c.data.long_tail_ratio = 100.0
      c.data.kwargs.val_size = 10_000   # the source's default, named so a CLI can change it
      c.eval.l2_knn_ks = (1, 10)
  elif variant in _SMALL_SCALE:
    # Thesis small scale (Sec. 5.5.2, Table 5.2; Sec. 6.5.2.1, Table 6.1): ResNet-18 CIFAR stem
    # (3x3 conv stride 1, no max-pool), projector 512 -> 512 -> 128, batch 128, SGD momentum 0.9,
    # wd 5e-4, cosine, 200 epochs; lr 0.06 on CIFAR-10 / CIFAR-100, 0.03 on STL-10 (Sec. 5.5.2);
    # kNN (k = 200) on the test set. STL-10 (Table 5.1): its 5,000 labelled 96x96 training images
    # (train split; the 100,000 unlabelled ones are not used) and 8,000 test images.
    # Long-tailed (Sec. 6.5.2.1, Tables 6.2, 6.5, 6.6): CIFAR10-LT / CIFAR100-LT, imbalance ratio
    # 100 ([code] imb_factor 0.01), 500 epochs, scored by the unweighted l2 kNN with k = 1 and 10
    # (eval.l2_knn_ks) on the balanced test set, the kNN bank being the long-tailed training split.
    tfds_name, ratio = _SMALL_SCALE[variant]
    c.data.name = "tfds"
    # The TFDS folder: --config.data.root=/data/tfds (passed to the source as its data_dir).
    c.data.kwargs.tfds_name = tfds_name
    c.data.kwargs.train_split = "train"  # the kNN bank is the whole training set;
    c.data.kwargs.val_split = "test"    # val = test, evaluated once at the end (no selection).
    c.data.kwargs.test_split = "test"
    c.data.kwargs.data_dir = placeholder(str)
    if tfds_name == "stl10":
      aug.size = 96                     # RandomResizedCrop(96) on the 96x96 images
    c.data.long_tail_ratio = ratio
    c.model.encoder = "resnet18"
    c.model.encoder_kwargs.stem = "cifar"
    c.model.proj_hidden_dim = 512
    c.model.proj_dim = 128
    c.batch_size = 128
    train_size = _TRAIN_SIZE[tfds_name] if ratio == 1 else _LT_TRAIN_SIZE[tfds_name]
    c.num_train_steps = (200 if ratio == 1 else 500) * (train_size // 128)
    c.optim.lr = 0.03 if tfds_name == "stl10" else 0.06
    c.optim.weight_decay = 5e-4
    c.optim.warmup_steps = 0
    c.eval_batch_size = 1000
    if ratio != 1:
      c.eval.l2_knn_ks = (1, 10)
  elif variant == "mrnet":
    # Thesis Ch. 4 (Sec. 4.4.3, 4.5.2.1): ResNet-50, projector Linear 2048 -> 2048, ReLU, Linear
    # 2048 -> 512 as printed (no BatchNorm; Table 4.2 model 1), batch 64 scans, LARS lr 0.1, cosine,
    # no warm-up, 100 epochs, one model per plane. Positives: ONE random slice of a scan augmented
    # twice (`data.slice_pairs='same'`, the default; 'different' draws a slice per view). Table 4.3
    # augmentations: RandomResizedCrop 224 (0.08, 1), blur 5x5 sigma (0.1, 2), colour jitter
    # 0.2/0.2/0.2/0 (rotation +-30, CutOut and noise 0.1 are not in the 'simclr' pipeline).
    # ImageNet initialisation (Sec. 4.6, "ImageNet pre-trained weights for self-supervised
    # pre-training"): --config.model.init_from=/path/to/resnet50-0676ba61.pth (torchvision); the
    # grey slices are repeated to 3 channels so the ImageNet stem fits.
    c.data.name = "mrnet"
    # data.root is required: --config.data.root=/data/MRNet
    c.data.kwargs.task = "abnormal"     # labels only score the kNN probe; pretraining is label-free
    c.data.kwargs.plane = "sagittal"
    c.data.kwargs.slices = 16
    c.data.kwargs.channels = 3
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
  if not variant.startswith("fashion_mnist"):
    c.log_every = 500
    c.eval_every = c.num_train_steps    # the kNN probe once, at the end
    c.checkpoint_every = 2000
  c.data.augment = aug
  # Projector Linear -> BN -> ReLU -> Linear -> BN (thesis Ch. 5-6). Ch. 4 (mrnet) prints it without
  # BatchNorm (Sec. 4.4.3: "2048 ... followed by a ReLU layer"), and the fashion_mnist variant keeps
  # the plain projector it was benchmarked with (docs/benchmarks.md).
  c.model.proj_batch_norm = not (variant.startswith("fashion_mnist") or variant == "mrnet")
  return c
