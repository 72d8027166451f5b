"""The neutral base of every config: run control and the schema of the trainer's fields.

:func:`run_config` holds what no data set decides (seeds, heads, losses, optimizer options, run
control). The fields a data set must decide are unset (None): ``data.name``, ``model.encoder``,
``batch_size``, ``num_train_steps`` and ``optim.lr``; a recipe of :mod:`contrastive_jax.train.recipes`
sets them. Each ``configs/<method>.py`` is ``run_config()`` + one data-set recipe + what its paper
specifies, so a paper config never starts from the demo data's settings and never undoes them.
:func:`base_config` is the bundled-data start (``run_config()`` + ``recipes.bundled``).

The fields of :func:`run_config` are the schema: ``loop.check_config_fields`` refuses any other
field outside the free-form sections (keyword arguments of a function).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import FieldReference
from ml_collections.config_dict import placeholder

from contrastive_jax.train import recipes

DATASET_VARIANTS = recipes.BUNDLED_VARIANTS

# Fields that a data-set recipe must set (None in ``run_config``), with what they mean.
REQUIRED_FIELDS = {"data.name": "the data source", "model.encoder": "the backbone",
                   "batch_size": "examples per step", "num_train_steps": "training steps",
                   "optim.lr": "the peak learning rate"}


def base_config(variant: str = "digits_angle") -> ml_collections.ConfigDict:
  """``run_config()`` with the bundled data set ``variant`` ('digits_angle' or 'diabetes')."""
  return recipes.bundled(run_config(), variant)


def run_config() -> ml_collections.ConfigDict:
  """The neutral base: run control + every schema field, data-set fields unset (module doc)."""
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
  c.data.name = placeholder(str)  # a recipe sets it
  c.data.seed = 0                  # split seed (the rotations of digits_angle are drawn from it too)
  # Fraction of the training split used, drawn from data.seed (ACCon Fig. 4: limited training data);
  # validation and test unchanged.
  c.data.train_fraction = 1.0
  # Long-tailed training split (thesis Ch. 6, Tables 6.2-6.6): imbalance ratio n_max / n_min of the
  # exponential profile n_c = n_max * ratio^(-c / (C - 1)) over class ids c (data/long_tail.py),
  # drawn from data.seed; 1: the whole training split. Validation and test unchanged.
  c.data.long_tail_ratio = 1.0
  c.data.kwargs = ml_collections.ConfigDict()
  c.data.views = 2                 # augmented views per sample (AdaCon's "batch augmentation": 8)
  c.data.normalize_targets = True  # regress (y - mean) / std of the training labels
  c.data.augment = ml_collections.ConfigDict()  # options of the augmentation pipeline
  # Augmentation pipeline by name (``data.augment.get_augment_fn``: 'image', 'tabular', 'simclr',
  # 'regression', 'bmd', 'echonet'); None: the dataset's kind ('image' / 'tabular' / 'video' ->
  # 'echonet').
  c.data.augment_kind = placeholder(str)
  # MR volumes (kind 'volume'): 'same' = both views of a scan from one random slice, augmented twice
  # (thesis Sec. 4.5.2.1); 'different' = each view its own random slice (train.loop.slice_pairs).
  c.data.slice_pairs = "same"
  c.data.root = placeholder(str)   # data folder of a file source, passed as `root=` when set
  # Where the 'simclr' augmentation's random-resized crop is taken from: 'decoded' (on the device,
  # from the source's fixed-size image, e.g. csv_images' centre crop at image_size) or 'full' (on the
  # host, from the whole file, one crop per view, SimCLR's ImageNet recipe; data.pipeline.HostCrop:
  # data.augment.scale / ratio / size then steer the host crop, the device skips its crop; image
  # file sources only). Cost: data.pipeline's docstring and docs/benchmarks.md.
  c.data.crop_from = "decoded"
  # Training batches built ahead of the step by a background thread, each already on the devices
  # (train.run, data.prefetch); 0: built in the loop. Not part of the run's identity.
  c.data.prefetch = 2
  # Per-channel input normalisation (x - mean) / std, applied inside the model after augmentation,
  # so training and evaluation see the same inputs (regression trainer only): '' = none; 'imagenet'
  # = mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) for torchvision's ImageNet weights
  # (3-channel inputs only: grey images raise a ValueError, replicate them with
  # data.kwargs.channels=3 or give explicit statistics); or explicit (mean, std), each a number or
  # one value per channel, e.g. ((0.5,), (0.25,)). Any type: a string or a tuple.
  c.data.normalize = FieldReference("", field_type=object)

  c.model = ml_collections.ConfigDict()
  c.model.encoder = placeholder(str)  # a recipe sets it
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
  # L_reg (AdaCon Eq. 8) in {l1, mse, huber, focal_l1, focal_mse, bmse}; 'bmse' = Balanced MSE (Ren
  # et al. 2022; train/bmse.py), options in loss.bmse.
  c.loss.reg = "l1"
  c.loss.huber_delta = 1.0
  # Units of L_reg with `data.normalize_targets`: 'normalized' (the head's target (y - mean) / std;
  # L1 shrinks by 1/std, MSE by 1/std^2) or 'label' (the head's output mapped back, mean + std *
  # output, against y: L_reg and huber_delta in the label's units, the balance gamma_reg : gamma_con
  # a paper tuned; AdaCon Eq. 8 "weighted loss values within similar magnitudes").
  c.loss.reg_units = "normalized"
  c.loss.reg_kwargs = ml_collections.ConfigDict()  # e.g. focal_beta=0.2, focal_gamma=1.0 (focal-R)
  c.loss.lds = ml_collections.ConfigDict()         # label-distribution smoothing weights (Yang 2021)
  c.loss.lds.enabled = False
  c.loss.lds.kernel = "gaussian"
  c.loss.lds.ks = 5
  c.loss.lds.sigma = 2.0
  c.loss.lds.reweight = "sqrt_inv"
  c.loss.lds.bin_width = 1.0
  # Balanced MSE (loss.reg='bmse'; train/bmse.py, official jiawei-ren/BalancedMSE defaults): 'gai'
  # (GMM of the training labels, gmm_components) or 'bmc' (batch Monte-Carlo); the noise scale sigma
  # (in the units of L_reg's targets, see loss.reg_units) starts at init_noise_sigma and is trained
  # at the constant rate sigma_lr, or frozen with fix_noise_sigma.
  c.loss.bmse = ml_collections.ConfigDict(dict(kind="gai", init_noise_sigma=1.0, sigma_lr=1e-2,
                                               fix_noise_sigma=False, gmm_components=8))
  c.loss.gamma_reg = 1.0
  c.loss.gamma_con = 0.0
  c.loss.features = "projection"   # which model output the contrastive loss sees
  c.loss.contrastive = ml_collections.ConfigDict()
  # Execution of the pairwise losses that have one (the SupCon family and rnc; see
  # contrastive_jax/pairwise/blockwise.py): 'auto' | 'dense' | 'blockwise' | 'ring' (inside
  # shard_map, ppermute instead of all_gather) | 'fused' / 'fused_ring' (the SupCon family: the Pallas
  # kernel of contrastive_jax/pairwise/fused.py; not yet timed on a GPU), the blockwise tile (an int or (rows, cols); None:
  # the backend's default) and the similarity matmul's input dtype (None or 'bfloat16').
  c.loss.impl = "auto"
  c.loss.tile = placeholder(tuple)
  c.loss.matmul_dtype = placeholder(str)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.lr = placeholder(float)  # a recipe sets it
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
  # knn_top1 protocol: the test evaluation adds, for each k here, the accuracy of an unweighted
  # majority vote of the k nearest training features by l2 distance (thesis Ch. 6 long-tailed
  # evaluation, k = 1 and 10: Tables 6.5 / 6.6), as `l2_knn{k}_top1`. () = none.
  c.eval.l2_knn_ks = ()
  c.eval.clip_mode = "first"       # videos: evaluation clip, 'first' or 'center' (AdaCon Sec. IV-B)
  # Many / medium / few-shot groups in results.json (Yang et al. 2021; evaluate.shot_metrics): a test
  # label's group by the count of training labels in its bin, bins `bin_width` wide (1: integer
  # ages), > `many` / < `few`; `top`: the closed top of the label range (None: none).
  c.eval.shots = ml_collections.ConfigDict(dict(bin_width=1.0, many=100, few=20,
                                                top=placeholder(float)))

  c.batch_size = placeholder(int)       # a recipe sets it
  c.num_train_steps = placeholder(int)  # a recipe sets it
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


def ssl_config(name: str, variant: str, image_variants) -> ml_collections.ConfigDict:
  """The shared set-up of a self-supervised config's ``variant``: a bundled data set scored by kNN
  (``recipes.self_supervised``) or one of ``image_variants`` (``recipes.ssl_image``: the backbone,
  budget and augmentations every self-supervised method shares); ``name`` (the config file) names
  it in the error for an unknown variant. The caller sets the method and its loss options."""
  if variant in DATASET_VARIANTS:
    return recipes.self_supervised(base_config(variant))
  if variant in image_variants:
    return recipes.ssl_image(run_config(), variant)
  raise ValueError(f"Unknown {name} variant {variant!r}; expected one of "
                   f"{DATASET_VARIANTS + tuple(image_variants)}.")
