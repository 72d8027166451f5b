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
  c.data.augment = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.encoder_kwargs = ml_collections.ConfigDict()
  c.model.proj_hidden_dim = placeholder(int)  # None: the input width.
  # Projection head: Dense -> ReLU -> Dense(proj_dim) -> L2 (AdaCon Sec. III-B).
  c.model.proj_dim = 128
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
