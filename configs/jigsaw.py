r"""Jigsaw pretext training (thesis Ch. 3): SSLACL (Alg. 3.1 Hamming set) and SKID v1/v2/v3.

A small CPU run by default (about 1 minute on 2 shared cores): the bundled digits upsampled to 64x64,
a 3x3 grid of 21x21 patches cropped to 16x16, nets of the thesis topology with 1/32 of its widths and
100 permutation classes (SSLACL, seed 0: test accuracy 14% against 1% chance):
  python -m launch --config=configs/jigsaw.py --workdir=/tmp/jigsaw              # SSLACL
  python -m launch --config=configs/jigsaw.py:skid_v3 --workdir=/tmp/skid_v3
The thesis values are given in the comments (Sec. 3.4.1, 3.5.2.1; Tables 3.1, 3.9, 3.12). The
``*_mrnet`` variants set them: MRNet slices (256x256, patches 85, crops 64; one uniformly drawn slice
of each scan per step), the full-width nets, 1000 classes, RMSProp 1e-4 x0.95 per epoch, 50 epochs;
one run per plane (spec B4), whose workdir starts the downstream configs/mrnet.py:
  python -m launch --config=configs/jigsaw.py:skid_v3_mrnet --config.data.root=/data/MRNet \
      --config.data.kwargs.plane=axial --workdir=runs/skid_v3_axial
``sslacl_mrnet_oversampled`` is Table 3.11's "with oversampling": the SSLACL pretext on the MRNet
training exams with the ACL-positive minority drawn again until both classes are equally frequent
(``data.oversample``; Sec. 3.5.4.2), its epochs counted over that balanced set.
"""

import ml_collections
from ml_collections.config_dict import placeholder

VARIANTS = ('sslacl', 'skid_v1', 'skid_v2', 'skid_v3', 'sslacl_mrnet', 'skid_v1_mrnet',
            'skid_v2_mrnet', 'skid_v3_mrnet', 'sslacl_mrnet_oversampled')
MRNET_TRAIN_EXAMS = 1017  # MRNet's 1130 training exams less the 10 % val carve-out
# Those exams with the ACL-positive minority oversampled: ~830 negatives x 2 (922 of MRNet's 1130
# are negative, Sec. 3.5.2.2; 10 % of them are held out). [GUESS] as configs/mrnet.py's SSLACL epoch.
MRNET_OVERSAMPLED_EXAMS = 2 * 830


def get_config(variant: str = 'sslacl') -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f'Unknown config variant {variant!r}; expected one of {VARIANTS}.')
  oversampled = variant.endswith('_oversampled')  # Table 3.11
  variant = variant[:-len('_oversampled')] if oversampled else variant
  mrnet = variant.endswith('_mrnet')
  variant = variant[:-len('_mrnet')] if mrnet else variant
  c = ml_collections.ConfigDict()
  c.task = 'jigsaw'                 # launcher: contrastive_jax.projects.jigsaw.task.train_pretext
  c.method = variant
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'digits_angle'      # any grayscale image set of contrastive_jax.data.load_dataset
  c.data.seed = 0
  c.data.kwargs = ml_collections.ConfigDict()
  c.data.kwargs.upsample = 8        # 8x8 digits -> 64x64 images (thesis: 256x256 MRNet slices)
  c.data.kwargs.copies = 1
  c.data.channels = 3               # grayscale repeated to 3 channels, range [-1, 1] ([CODE] B1)
  c.data.prefetch = 2               # training batches built ahead by a background thread (run.py)

  c.jigsaw = ml_collections.ConfigDict()
  sslacl = variant == 'sslacl'
  c.jigsaw.permutations = 'hamming' if sslacl else 'uniform'  # Alg. 3.1 (SSLACL) / uniform (SKID)
  c.jigsaw.num_classes = 100        # thesis: 500 or 1000 (Tables 3.9, 3.12; 1000 for downstream)
  c.jigsaw.perm_seed = 0            # which C - 1 permutations are drawn (the identity is class 0)
  c.jigsaw.cache_dir = placeholder(str)  # None: ~/.cache/contrastive_jax
  c.jigsaw.crop_size = 16           # thesis: 64 from 85x85 patches (Alg. 3.2)
  c.jigsaw.crop_then_augment = False  # thesis: augment the patch, then crop ([CODE]: crop first)
  c.jigsaw.max_crop_offset = placeholder(int)  # None: patch side - crop (thesis 21); [CODE]: 9
  c.jigsaw.augment = ml_collections.ConfigDict()  # the discrete set G (Sec. 3.4.1.3) + AWGN
  c.jigsaw.augment.rotations = (-15.0, 0.0, 15.0)  # thesis R
  c.jigsaw.augment.translations = (-1.0, 0.0, 1.0)  # +-floor(0.1 * crop); thesis +-6 px for 64
  c.jigsaw.augment.scales = (1.0, 1.2)  # thesis S ([CODE]: 1, 1.1)
  c.jigsaw.augment.noise_std = 0.1  # AWGN, variance 0.01 (Sec. 3.4.1.3, Table 3.12)
  c.jigsaw.augment.noise_clip = placeholder(float)  # [CODE]: clip the noisy patch to [-1, 1]
  c.jigsaw.augment.brightness = 0.0  # [CODE] brightness jitter; not in the thesis
  c.jigsaw.augment.fill_value = -1.0  # black where rotation/shift/zoom uncovers the patch border

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'sslacl' if sslacl else 'skid'
  c.model.variant = 'v3' if sslacl else variant.split('_')[1]  # Table 3.1 widths (SKID only)
  c.model.width_factor = 1 / 32     # thesis: 1 (SSLACL 173M, SKID-v3 217.7M parameters)
  c.model.use_bn = True             # BN + ReLU after every conv ([CODE] SKID, [GUESS] SSLACL)
  c.model.skip_scale = 0.25         # Skip block scale s (Table 3.12)
  c.model.no_blocks = False         # SKIDv3-NoBlocks ablation (Tables 3.5, 3.6)
  c.model.kernel_init = 'he_normal'  # [CODE]
  # The 9 unshared branches are one nn.vmap; 'shifted_matmul' convs vmap to batched matmuls (fast
  # everywhere), 'xla' to a grouped lax.conv (cuDNN on GPU; very slow on CPU). Same parameters.
  c.model.branch_conv_impl = 'shifted_matmul'
  c.model.dtype = 'float32'  # compute dtype, 'float32' or 'bfloat16' (parameters stay float32)

  c.optim = ml_collections.ConfigDict()
  # Thesis (Sec. 3.5.2.1): RMSProp, lr 1e-4, x0.95 per epoch, 50 epochs, early stop on validation;
  # e.g. name='rmsprop', lr=1e-4, schedule='step', decay_factor=0.95,
  # decay_boundaries=[e / 50 for e in range(1, 50)] with num_train_steps = 50 epochs.
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 20
  c.optim.end_factor = 0.0
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9            # used by sgd / lars only
  c.optim.decay_boundaries = (1 / 3, 2 / 3)
  c.optim.decay_factor = 0.1

  c.batch_size = 32                 # thesis: 32 (SSLACL), 16 (SKID)
  c.num_train_steps = 300
  c.eval_batch_size = 128
  c.max_eval_examples = 256         # -1: the whole validation / test split
  c.log_every = 50
  c.eval_every = 100
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.stop_at_step = -1
  c.resume = 'auto'
  c.nonfinite = 'stop'
  if mrnet:
    _mrnet(c, variant, oversampled)
  return c


def _mrnet(c: ml_collections.ConfigDict, variant: str, oversampled: bool = False) -> None:
  """The thesis' pretext set-up on MRNet (Sec. 3.4.1, 3.5.2.1, Tables 3.9 / 3.12; 3.11)."""
  c.data.name = 'mrnet'
  c.data.root = placeholder(str)    # required: --config.data.root=/data/MRNet
  # 16 slices per scan (nearest resampling), one drawn per step; the labels are unused, except by
  # `data.oversample` (Table 3.11: the `task` label's minority drawn again to balance the exams).
  c.data.kwargs = ml_collections.ConfigDict(dict(plane='sagittal', task='acl', slices=16, size=256,
                                                 workers=4))
  c.data.oversample = oversampled
  c.jigsaw.num_classes = 1000       # the downstream models start from the 1000-class runs
  c.jigsaw.crop_size = 64
  c.jigsaw.augment.translations = (-6.0, 0.0, 6.0)  # +-floor(0.1 * 64)
  c.model.width_factor = 1.0
  c.batch_size = 32 if variant == 'sslacl' else 16
  epochs = 50
  exams = MRNET_OVERSAMPLED_EXAMS if oversampled else MRNET_TRAIN_EXAMS
  c.num_train_steps = epochs * (exams // c.batch_size)
  c.optim.name = 'rmsprop'
  c.optim.lr = 1e-4
  c.optim.schedule = 'step'
  c.optim.decay_factor = 0.95
  c.optim.decay_boundaries = tuple(e / epochs for e in range(1, epochs))
  c.optim.warmup_steps = 0
  c.eval_batch_size = 32
  c.max_eval_examples = -1
  c.eval_every = exams // c.batch_size
  c.checkpoint_every = c.eval_every
