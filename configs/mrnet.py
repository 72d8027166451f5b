r"""MRNet downstream classification (thesis Ch. 3 SKID / SSLACL, Ch. 4 BCL fine-tuning), one run per plane.

  python -m launch --config=configs/mrnet.py:table3_3_skid --config.data.root=/data/MRNet \
      --config.data.plane=sagittal --config.model.init_from=runs/skid_v3 --workdir=runs/skid_sag
  python -m contrastive_jax.projects.mrnet.ensemble --runs runs/skid_axi runs/skid_cor runs/skid_sag \
      --out runs/skid_ensemble                                           # Table 3.3 "Ensemble" rows
  python -m launch --config=configs/mrnet.py:table4_4 --config.data.root=/data/MRNet \
      --config.data.plane=coronal --config.data.tasks=acl --config.model.init_from=runs/bcl_coronal \
      --workdir=runs/bcl_cor_acl                 # one of the 9 (plane, task) models; then the ensemble

Variants, named after the thesis table each reproduces (values of Sec. 3.5.2.2 / 4.5.2.2 unless marked):
* ``table3_3_skid``: SKID-v3 downstream (Fig. 3.7; Tables 3.3, 3.5-3.8 "SKIDv3"): frozen trunk of a
  SKID-v3 pretext run (``model.init_from``: its workdir, configs/jigsaw.py:skid_v3 with 1000
  classes), 2 ConvLSTM 512, 3 outputs, weighted BCE, lr 1e-5 x0.95 per epoch, 20 epochs, 16
  uniform slices; evaluation: 8 Monte-Carlo draws of 16 slices ~ Normal(N_S/2, N_S/4) (Eq. 3.3).
  One run per plane; the 3 runs' ensemble (Eq. 3.1-3.4) by ``projects.mrnet.ensemble``.
* ``table3_5_skid_noblocks``: the same on SKIDv3-NoBlocks (Tables 3.5 / 3.6).
* ``table3_13_skid_conv3d``: the same with a 3-D CNN classifier in place of the ConvLSTMs (Tables
  3.13 / 3.14; ``model.temporal='conv3d'``: [GUESS] 3x3x3 convolutions of the ConvLSTMs' widths,
  the thesis gives no layers).
* ``table3_10_sslacl``: SSLACL Divide-and-Teach (Alg. 3.3, Fig. 3.6; Tables 3.4, 3.7, 3.8, 3.10
  "Proposed"): ACL, sagittal, 36 slices, batch 1 (one device; the batch must divide over the
  devices), Adam 1e-5, ACL tears oversampled to balance.
* ``table3_10_model1`` / ``table3_10_model2``: Table 3.10's classifier ablations.
* ``table4_4``: Ch. 4 fine-tuning of a ResNet-50 BCL encoder (Fig. 4.4; Tables 4.4-4.6 models 1-4
  and Fig. 4.6 model 6, which differ only in their pretraining): max over 16 slices + Linear, all
  weights trained, BCE, Adam 1e-5 x0.9 per epoch, 10 epochs, batch 4, random resized crop 224.
  ``model.init_from``: the BCL run of the same plane (configs/bcl.py:mrnet). One run per (plane,
  task): 9 runs, then the ensemble (Eq. 4.19-4.20) of all 9.
* ``table4_6_model5``: the same with ResNet-101 (Table 4.6 model 5).

``model.init_from`` must name a pretext run whose architecture fields (``model.variant``,
``width_factor``, ``data.channels``; ``model.encoder`` for Ch. 4) match this config's; a mismatch is
one error naming the first array. The ensemble weights are fitted on the val exams (held out from
MRNet's training set, spec B10), never on the reported test set (MRNet's ``valid``).
"""

import ml_collections
from ml_collections.config_dict import placeholder

# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("table3_3_skid", "table3_5_skid_noblocks", "table3_10_sslacl", "table3_10_model1",
            "table3_10_model2", "table4_4", "table4_6_model5", "table3_13_skid_conv3d")
TRAIN_EXAMS = 1017  # MRNet's 1130 training exams less the 10 % val carve-out


def _per_epoch(c, epochs: int, decay: float, batch_size: int, train_exams: int = TRAIN_EXAMS):
  """``epochs`` epochs of full batches; the rate x ``decay`` after every epoch (as the thesis'
  per-epoch decay), validation and checkpoints once an epoch."""
  per_epoch = train_exams // batch_size
  c.batch_size = batch_size
  c.num_train_steps = epochs * per_epoch
  c.optim.schedule = "step" if decay != 1.0 else "constant"
  c.optim.decay_factor = decay
  c.optim.decay_boundaries = tuple(e / epochs for e in range(1, epochs))
  c.eval_every = per_epoch
  c.checkpoint_every = per_epoch


def get_config(variant: str = "table3_3_skid") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r}; expected one of {VARIANTS}.")
  chapter3 = variant.startswith("table3")
  skid = "skid" in variant
  sslacl = variant.startswith("table3_10")
  c = ml_collections.ConfigDict()
  c.task = "mrnet"                  # launcher: contrastive_jax.projects.mrnet.task.train_downstream
  c.method = variant
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "mrnet"
  c.data.root = placeholder(str)    # required: --config.data.root=/data/MRNet
  c.data.seed = 0                   # the val carve-out (same for every plane: one ensemble) + draws
  c.data.val_fraction = 0.1         # of MRNet's train exams, stratified on the joint label
  c.data.train_fraction = 1.0       # Fig. 3.14a: 0.1 / 0.5 of the (remaining) training exams
  c.data.plane = "sagittal"         # one model per plane (Sec. 3.4.2.3, 4.5.2.2)
  # SKID: the 3 tasks at once (Binary Relevance, Sec. 3.4.2); SSLACL: ACL; Ch. 4: one per run.
  c.data.tasks = ("abnormal", "acl", "meniscus") if skid else ("acl",)
  c.data.size = 256                 # MRNet slices are 256 x 256
  c.data.channels = 3               # grey repeated: the pretext nets' input ([CODE] B1; Ch. 4 ImageNet)
  c.data.range = "signed" if chapter3 else "unit"  # jigsaw pretext: [-1, 1]; BCL: [0, 1]
  c.data.workers = 4                # threads reading the volumes (not part of the run's identity)
  c.data.prefetch = 2

  c.slices = ml_collections.ConfigDict()
  c.slices.train = 36 if sslacl else 16
  c.slices.train_sampling = "uniform"   # "chosen randomly according to a uniform distribution"
  c.slices.eval = c.slices.train
  # SKID: 8 draws ~ Normal(N_S/2, N_S/4) (Sec. 3.4.2.3); Ch. 4: 8 uniform draws (Sec. 4.5.2.2);
  # SSLACL: one uniform draw of min(N_S, 36) (Sec. 3.5.2.2; we draw 36 with replacement when
  # N_S < 36, so one compiled program serves every scan).
  c.slices.eval_sampling = "normal" if skid else "uniform"
  c.slices.eval_draws = 8 if skid or not chapter3 else 1

  c.augment = ml_collections.ConfigDict()
  if chapter3:
    # SKID: "the same as those applied in the pretext" (rotation +-15 deg, shift 10 %, zoom 1-1.2,
    # AWGN variance 0.01; drawn continuously here [GUESS]); SSLACL: "random rotation, translation
    # and scaling ... on each slice" (same ranges [GUESS], no noise).
    c.augment.kind = "affine"
    c.augment.degrees = 15.0
    c.augment.translate = 0.1
    c.augment.scale = (1.0, 1.2)
    c.augment.noise_std = 0.1 if skid else 0.0
  else:
    c.augment.kind = "crop"         # "no augmentations except random cropping with resizing"
    c.augment.size = 224
    c.augment.crop_scale = (0.08, 1.0)  # torchvision's RandomResizedCrop default [GUESS]

  c.model = ml_collections.ConfigDict()
  c.model.init_from = ""            # the pretext run's workdir (see the module doc)
  c.model.dtype = "float32"         # compute dtype, 'float32' or 'bfloat16' (parameters float32)
  if skid:
    c.model.arch = "skid"
    c.model.variant = "v3"          # Table 3.1
    c.model.width_factor = 1.0      # that of the pretext run (configs/jigsaw.py: 1 in the thesis)
    c.model.skip_scale = 0.25
    c.model.no_blocks = variant == "table3_5_skid_noblocks"
    c.model.use_bn = True
    c.model.kernel_init = "he_normal"
    c.model.branch_conv_impl = "shifted_matmul"
    c.model.lstm_features = (512, 512)  # Fig. 3.7
    # Tab. 3.13-3.14: a 3-D CNN in place of the ConvLSTMs ([GUESS] 3x3x3 convolutions of the same
    # widths; the thesis names Ji et al. 2013 and "the same experimental configuration" only).
    c.model.temporal = "conv3d" if variant == "table3_13_skid_conv3d" else "convlstm"
    c.model.freeze = True           # "we froze the weights of the pretext model"
  elif sslacl:
    c.model.arch = "sslacl"
    c.model.width_factor = 1.0
    c.model.use_bn = True
    c.model.kernel_init = "he_normal"
    c.model.branch_conv_impl = "shifted_matmul"
    # Table 3.10: Proposed [512, 1024, 1024] blocks + FC 1024 x 2; Model-1 a max-pool for block 1,
    # 512 in block 2, one FC; Model-2 a max-pool, 1024, two FC.
    c.model.conv_features = {"table3_10_sslacl": (512, 1024, 1024),
                             "table3_10_model1": ("max", 512, 1024),
                             "table3_10_model2": ("max", 1024, 1024)}[variant]
    c.model.fc_features = (1024,) if variant == "table3_10_model1" else (1024, 1024)
    c.model.classifier_bn = False
    c.model.freeze = True           # [GUESS] (spec A5)
  else:
    c.model.arch = "slice_max"
    c.model.encoder = "resnet101" if variant == "table4_6_model5" else "resnet50"
    c.model.encoder_kwargs = ml_collections.ConfigDict(dict(stem="imagenet", num_filters=64))

  c.loss = ml_collections.ConfigDict()
  # SKID: weighted BCE, the minority class of each task weighted n_major / n_minor ([CODE], A6);
  # SSLACL balances by oversampling instead; Ch. 4: plain BCE.
  c.loss.class_weights = "minority" if skid else "none"
  c.loss.oversample = sslacl

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 1e-5
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9            # unused by adam
  c.optim.warmup_steps = 0
  c.optim.end_factor = 0.0
  if skid:
    _per_epoch(c, 20, 0.95, 4)      # <= 20 epochs, x0.95 per epoch; batch 4 scans [GUESS]
  elif sslacl:
    _per_epoch(c, 20, 1.0, 1,       # batch 1; constant rate (only its start is given), 20 epochs
               2 * 830)             # [GUESS]; an epoch of the oversampled set (~830 negatives x 2)
  else:
    _per_epoch(c, 10, 0.9, 4)       # Sec. 4.5.2.2: 10 epochs, x0.9 per epoch, batch 4

  c.eval = ml_collections.ConfigDict()
  # The state reported: 'loss' = the lowest validation BCE of the Monte-Carlo probabilities (early
  # stopping, "a maximum of 20 epochs" [GUESS]); 'last' = the final state (Ch. 4's fixed 10 epochs).
  c.eval.select = "loss" if chapter3 else "last"
  c.eval.threshold = 0.5            # Eq. 3.4
  c.eval.bootstrap_resamples = 100  # [CODE] A8: 100 resamples of size 1000, 5 %-95 % intervals
  c.eval.bootstrap_size = 1000
  c.eval.percentiles = (5.0, 95.0)
  c.eval.bootstrap_seed = 0

  c.eval_batch_size = 1 if sslacl else 4
  c.log_every = 50
  c.keep_checkpoints = 2
  c.stop_at_step = -1
  c.resume = "auto"
  c.nonfinite = "stop"
  return c
