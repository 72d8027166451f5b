r"""CoWPro: self-supervised one-shot segmentation by correlation-weighted prototype aggregation.

Thesis Ch. 7 (Manna 2025). Trained on superpixel pseudo-masks of unlabelled slices, evaluated 1-shot
(3 chunks, 3-D Dice per query scan) without fine-tuning. The default variant trains a small conv
encoder on generated 64x64 abdominal phantoms (about a minute on 2 CPU cores):
  python -m launch --config=configs/cowpro.py --workdir=/tmp/cowpro
The thesis setting on CHAOS T2-SPIR MR (dilated ResNet-101, 256x256, 100K iterations, ~4.5 h on an
A5000 per the thesis, Sec. 7.5.2) is five-fold cross-validation by patient (Sec. 7.5.1: "one-fifth
of the dataset (a fold) is used as a validation set while the rest is treated as a training set":
16 training / 4 evaluation scans, the support being the last evaluation scan). The :chaos variant
selects fold ``data.fold`` of ``data.num_folds = 5`` (patients permuted by ``data.seed``); run every
fold, then combine the five results.json into Dice per fold and mean +- std per organ (Tables
7.1-7.4 report the fold average):
  for k in 0 1 2 3 4; do
    python -m launch --config=configs/cowpro.py:chaos --config.data.root=/data/CHAOS \
      --config.data.fold=$k --workdir=runs/cowpro/fold$k
  done
  python -m contrastive_jax.projects.cowpro.crossval runs/cowpro/fold{0,1,2,3,4} \
    --output=runs/cowpro/crossval.json
``--config.data.num_folds=0`` gives the earlier fixed 70/15/15 patient split (3 evaluation scans).
Table 7.4's ablations are evaluation fields: ``--config.eval.top_percent=10`` (each query pixel
aggregates its 10 % most correlated prototypes) and ``--config.eval.window=2`` (2x2 averaging).
[code] marks values from the author's code (sadimanna/cowpro), GUESS values found in neither.
"""

import ml_collections

from contrastive_jax.projects.cowpro.data import ORGAN_IDS


# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ('synthetic', 'chaos')


def get_config(variant: str = 'synthetic'):
  """``variant``: 'synthetic' (phantoms, small encoder, CPU) or 'chaos' (the thesis set-up)."""
  if variant not in ('synthetic', 'chaos'):
    raise ValueError(f"Unknown cowpro variant {variant!r}; expected 'synthetic' or 'chaos'.")
  chaos = variant == 'chaos'
  config = ml_collections.ConfigDict()
  config.task = 'cowpro'  # The launcher runs contrastive_jax.projects.cowpro.task.train_cowpro.
  config.method = 'cowpro'
  config.seed = 0

  # Data: scans, training slices and their offline superpixels (Sec. 7.4.1.1).
  config.data = ml_collections.ConfigDict()
  config.data.name = 'chaos' if chaos else 'cowpro_phantom'
  config.data.seed = 0
  config.data.root = ''  # chaos: the CHAOS directory (Train_Sets/MR/<id>/T2SPIR/...).
  config.data.kwargs = {}  # Extra arguments of load_dataset('chaos', ...) (e.g. workers).
  # chaos: five-fold cross-validation by patient (Sec. 7.5.1): fold `fold` of `num_folds` (patients
  # permuted by data.seed) is evaluated, the other four train. num_folds = 0: the source's 70/15/15
  # split by data.seed; training uses its train split, the 1-shot evaluation `eval_split`.
  config.data.num_folds = 5 if chaos else 0
  config.data.fold = 0
  config.data.eval_split = 'val'
  config.data.size = 256 if chaos else 64  # Slice size (Sec. 7.4.1.2: 256x256 input).
  config.data.num_train_volumes = 5  # synthetic only
  config.data.num_eval_volumes = 4  # synthetic only: the last one is the support scan
  config.data.num_slices = 12  # synthetic only
  # Label-exclusion protocol (Sec. 7.4.1.5): training slices containing these labels are dropped,
  # e.g. (2, 3) when testing the kidneys, (1, 4) for liver and spleen. Off by default.
  config.data.exclude_labels = ()
  config.data.cache_dir = ''  # '' -> <workdir>/superpixels
  config.data.superpixels = ml_collections.ConfigDict()
  config.data.superpixels.scale = 1.0  # skimage felzenszwalb default ([code] passes none)
  config.data.superpixels.sigma = 1.0 if chaos else 0.5  # Sec. 7.4.1.1 (Ouyang et al. 2020): 1
  # 400 px at 256x256 (Ouyang et al. 2020); 25 px at 64x64 keeps the same area fraction.
  config.data.superpixels.min_size = 400 if chaos else 25
  config.data.superpixels.body_threshold = 0.05  # GUESS: intensity in [0, 1] (body mask)

  # Query synthesis T_geo(T_int(.)) (Sec. 7.4.1.5); ranges are [code] ``sabs_aug``.
  config.augment = ml_collections.ConfigDict()
  config.augment.rotate = 5.0  # degrees
  config.augment.shift = 5.0  # pixels
  config.augment.shear = 5.0  # degrees
  config.augment.scale = (0.9, 1.2)
  config.augment.elastic_alpha = 10.0
  config.augment.elastic_sigma = 5.0
  config.augment.gamma = (0.5, 1.5)

  # Model: encoder -> 1x1 conv to 256 channels (Sec. 7.4.1.2).
  config.model = ml_collections.ConfigDict()
  if chaos:
    config.model.encoder = 'resnet101_dilated'  # DeepLab-v3 ResNet-101, dilated last 2 stages
    config.model.encoder_kwargs = {}
    config.model.in_channels = 3  # grey slice tiled to 3x256x256 (Sec. 7.4.1.2)
    config.model.feature_dim = 256  # 2048 -> 256: 256x32x32 features
  else:
    config.model.encoder = 'conv'  # output stride 4: 64x64 -> 16x16
    config.model.encoder_kwargs = {'features': (16, 32, 64), 'strides': (1, 2, 2)}
    config.model.in_channels = 1
    config.model.feature_dim = 64
  config.model.dtype = 'float32'  # encoder compute dtype, 'float32' or 'bfloat16' (params float32)
  config.model.bn_train = True  # GUESS: BatchNorm in training mode during training
  # '' = random init; a torchvision ResNet-101 / DeepLab-v3 state dict (.pth / .safetensors; the
  # 'backbone.' prefix is stripped) for the encoder, or a previous run's workdir (see
  # contrastive_jax/train/init_from.py). Ignored when resuming.
  config.model.init_from = ''

  # Prototypes and aggregation (Sec. 7.4.1.3).
  config.prototypes = ml_collections.ConfigDict()
  # 4x4 window on 32x32 features (Eq. 7.2; <= 64 local prototypes); 2x2 on the phantoms' 16x16
  # features gives the same 8x8 prototype grid.
  config.prototypes.window = 4 if chaos else 2
  # zeta of Eq. 7.2 in training: fixed 0.95 ([code]) or 'dynamic' (0.8 max FG / mean BG). Strings,
  # so that either form can be given on the command line.
  config.prototypes.fg_threshold = '0.95'
  config.prototypes.bg_threshold = '0.95'
  config.prototypes.temperature = 0.05  # t of Eq. 7.7 ([code]: softmax of 20 cos)
  config.prototypes.scale = 20.0  # final score 20 <q, P_agg> ([code])
  config.prototypes.renormalize = False  # True: cosine of q and P_agg (Eq. 7.9 read literally)
  config.prototypes.mask_resize = 'bilinear'  # [code] F.interpolate; or 'area'

  # Loss L = L_ssl + L_reg (Eqs. 7.12-7.14).
  config.loss = ml_collections.ConfigDict()
  config.loss.class_weights = (0.05, 1.0)  # background, foreground (Sec. 7.4.1.5)
  config.loss.normalize = 'weights'  # [code] torch weighted-mean CE; 'pixels' = Eq. 7.12 literal
  config.loss.reg_weight = 1.0  # Eq. 7.14
  config.loss.reg_threshold = '0.95'  # CCR prototype threshold (Sec. 7.4.1.5)
  config.loss.reg_class_weights = (1.0, 1.0)  # Eq. 7.13 / [code]: unweighted

  # Optimisation (Sec. 7.5.2): batch 1, SGD lr 1e-3 (momentum 0.9, weight decay 5e-4 [code]),
  # x0.95 every 1K iterations, 100K iterations.
  config.batch_size = 1
  config.num_train_steps = 100_000 if chaos else 400
  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'sgd'
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'step'
  config.optim.decay_factor = 0.95
  if chaos:
    config.optim.lr = 1e-3
    config.optim.decay_boundaries = tuple(k / 100 for k in range(1, 100))  # every 1K of 100K
  else:
    config.optim.lr = 0.01  # GUESS: a small encoder from scratch needs a larger step
    config.optim.decay_boundaries = tuple(k / 4 for k in range(1, 4))

  # 1-shot evaluation (Sec. 7.4.2): last scan = support, 3 chunks, 3-D Dice per query scan.
  config.eval = ml_collections.ConfigDict()
  config.eval.classes = dict(ORGAN_IDS)
  config.eval.support_index = -1
  config.eval.npart = 3
  # zeta per class at test time (Table 7.2: 'dynamic' is better for the kidneys, fixed 0.95 for liver
  # and spleen), e.g. --config.eval.thresholds.right_kidney=dynamic.
  config.eval.thresholds = {name: '0.95' for name in ORGAN_IDS}
  config.eval.window = 0  # 0 -> prototypes.window (Table 7.4 also tries 2x2)
  # Table 7.4 / Sec. 7.5.4.3: aggregate only the Top-k% most correlated prototypes of each query pixel
  # (FG and BG sets; k = max(1, ceil(top_percent / 100 * N)) [GUESS rounding]); 100 = all, 50 / 10 /
  # 5 / 2 the ablation.
  config.eval.top_percent = 100.0
  config.eval.quadrant_masking = False  # Sec. 7.4.2.3 / Table 7.3
  config.eval.batch_size = 8  # query slices per forward pass

  config.log_every = 1000 if chaos else 50
  config.eval_every = 10_000 if chaos else 200
  config.checkpoint_every = 5000 if chaos else 200
  config.keep_checkpoints = 2
  config.stop_at_step = -1
  config.resume = 'auto'
  return config
