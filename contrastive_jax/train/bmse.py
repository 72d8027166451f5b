"""Balanced MSE as the trainer's regression loss: ``--config.loss.reg=bmse`` (Ren et al., CVPR 2022).

The loss is :func:`contrastive_jax.losses.balanced_mse`: ``-log N(y; yhat, s2) + log int N(y'; yhat,
s2) p_train(y') dy'`` (the paper's balanced likelihood), scaled by ``2 s2``, with the integral in
closed form against a GMM of the training labels (GAI) or estimated from the batch's targets as
Monte-Carlo samples (BMC). This module wires it into the regression trainer, following the official code
(jiawei-ren/BalancedMSE at c6f2f33, ``imdb-wiki-dir/``; its ``train.py:62`` also takes AgeDB):

* ``loss.bmse.kind`` 'gai' | 'bmc' (``train.py:47``, default 'gai'). BNI (``balanaced_mse.py:51-75``,
  bucket-based) is not implemented here.
* The noise scale ``sigma`` is a trainable scalar (``balanaced_mse.py:12``, an ``nn.Parameter`` of
  the criterion), initialised to ``loss.bmse.init_noise_sigma`` (``train.py:49``, default 1.0; the
  README's IMDB-WIKI commands use 10) and added to the model's optimizer as its own parameter group
  with ``lr = loss.bmse.sigma_lr`` (``train.py:50``, 1e-2; ``train.py:231-232``
  ``optimizer.add_param_group``), which the learning-rate schedule skips (``utils.py:85-88``): a
  constant rate. Here it is the leaf ``params[SIGMA_KEY]`` of the train state (checkpointed and
  restored with the model), updated by the run's optimizer kind (``optim.name``, momentum) at a
  constant ``sigma_lr`` (``optax.multi_transform``). Weight decay: torch's ``add_param_group``
  inherits the optimizer's defaults, so the official SGD decays sigma and the official Adam
  (``train.py:182``, no weight decay) does not; here ``optim.weight_decay`` applies to sigma as to
  the model. With ``loss.bmse.fix_noise_sigma`` it is not trained (``train.py:52, 231``: not added
  to the optimizer).
* GAI's GMM: ``sklearn GaussianMixture(K=8, random_state=0)`` of the training labels
  (``preprocess_gmm.py:43, 70-79``), here :func:`fit_label_gmm` with ``K = loss.bmse.gmm_components``,
  fitted in the UNITS THE LOSS SEES: the normalised targets ``(y - mean) / std`` when
  ``data.normalize_targets`` and ``loss.reg_units='normalized'`` (the default), else the labels
  themselves. ``init_noise_sigma`` is in the same units (the official code regresses raw ages: 1.0
  there is one year; use ``loss.reg_units='label'`` to match it).
* Per-example weights: the official Balanced MSE trainer passes none (``train.py:307-310``: the
  criterion is called without the LDS weights); ACCon's code (Haifengtao/ACCon ``agedb/train.py:
  308-310``, ``--loss bmse``) calls a BMC loss with the LDS weights (``cross_entropy(weight=...)``)
  and a freshly made criterion each step, i.e. a fixed ``sigma = init_noise_sigma``. Here the LDS
  weights are passed when ``loss.lds.enabled`` (off by default: the Balanced MSE paper's setting);
  ACCon's own BMSE run is ``loss.bmse.kind=bmc, loss.bmse.fix_noise_sigma=True`` (+ LDS).
* The loss is scaled by ``stop_gradient(2 sigma^2)`` (``balanaced_mse.py:27, 46``), inside
  ``balanced_mse``.
* On several devices the loss is that of the global batch (:func:`global_loss`), as with PyTorch's
  ``DataParallel``, which gathers the outputs before the criterion: BMC's Monte-Carlo sample is every
  device's targets, and weighted means are normalised by the global sum of the weights.

Limits: scalar labels only; no ``micro_batch`` (gradient caching differentiates the objective with
respect to the model outputs only); the noise scale is not carried over by ``model.init_from``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from contrastive_jax.losses.imbalance import BALANCED_MSE_KINDS
from contrastive_jax.losses.imbalance import balanced_mse
from contrastive_jax.losses.imbalance import fit_label_gmm
from contrastive_jax.losses.regression import REGRESSION_LOSSES
from contrastive_jax.train.optim import make_optimizer

NAME = "bmse"  # the value of `loss.reg` that selects Balanced MSE
TRAINER_REG_LOSSES = REGRESSION_LOSSES + (NAME,)
SIGMA_KEY = "bmse_noise_sigma"  # top-level entry of the state's params next to the model's
DEFAULTS = {"kind": "gai", "init_noise_sigma": 1.0, "sigma_lr": 1e-2, "fix_noise_sigma": False,
            "gmm_components": 8}


def enabled(config) -> bool:
  """Whether ``config.loss.reg`` selects Balanced MSE."""
  return config.loss.get("reg", "l1") == NAME


def options(config) -> dict:
  """``loss.bmse`` (defaults: :data:`DEFAULTS`), validated; ValueError naming the field."""
  section = config.loss.get("bmse")
  given = section.to_dict() if section is not None else {}
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown field(s) {['loss.bmse.' + k for k in unknown]}; expected "
                     f"{sorted(DEFAULTS)}.")
  opts = {**DEFAULTS, **given}
  if opts["kind"] not in BALANCED_MSE_KINDS:
    raise ValueError(f"Unknown `loss.bmse.kind`={opts['kind']!r}; expected one of "
                     f"{BALANCED_MSE_KINDS} (BNI is not implemented).")
  for name in ("init_noise_sigma", "sigma_lr"):
    value = opts[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        np.isfinite(value) and value > 0):
      raise ValueError(f"`loss.bmse.{name}` must be a finite number > 0; got {value!r}.")
    opts[name] = float(value)
  if not isinstance(opts["fix_noise_sigma"], bool):
    raise ValueError(f"`loss.bmse.fix_noise_sigma` must be True or False; got "
                     f"{opts['fix_noise_sigma']!r}.")
  k = opts["gmm_components"]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`loss.bmse.gmm_components` must be a positive integer; got {k!r}.")
  return opts


def check_config(config) -> dict:
  """:func:`options` plus the trainer settings Balanced MSE cannot run with."""
  opts = options(config)
  if config.get("micro_batch", None) is not None:
    raise ValueError("`loss.reg`='bmse' does not run with `micro_batch` (gradient caching does not "
                     "differentiate the noise scale); leave `micro_batch` unset.")
  if len(config.loss.get("reg_kwargs", {})):
    raise ValueError(f"`loss.reg_kwargs`={dict(config.loss.reg_kwargs)!r} are options of the focal "
                     "losses; `loss.reg`='bmse' takes its options from `loss.bmse`.")
  return opts


def loss_units_labels(config, train_labels, mean: float, std: float) -> np.ndarray:
  """The training labels in the units of the targets the loss sees (module docstring)."""
  y = np.asarray(train_labels, np.float64)
  if y.ndim != 1:
    raise ValueError(f"`loss.reg`='bmse' needs scalar labels; the training labels have shape "
                     f"{y.shape}.")
  if config.loss.get("reg_units", "normalized") == "label":
    return y
  return (y - mean) / std


def label_gmm(config, train_labels, mean: float, std: float):
  """GAI's GMM of the training labels in the loss's units (None for BMC)."""
  opts = options(config)
  y = loss_units_labels(config, train_labels, mean, std)
  if opts["kind"] != "gai":
    return None
  distinct = np.unique(y).size
  if opts["gmm_components"] > distinct:
    raise ValueError(f"`loss.bmse.gmm_components`={opts['gmm_components']} exceeds the {distinct} "
                     "distinct training label(s).")
  return fit_label_gmm(y, int(opts["gmm_components"]))


def add_sigma(params: dict, config) -> dict:
  """The model's ``params`` with the noise scale at :data:`SIGMA_KEY` (float32 scalar)."""
  if SIGMA_KEY in params:
    raise ValueError(f"The model already has a parameter named {SIGMA_KEY!r}.")
  return {**params, SIGMA_KEY: jnp.asarray(options(config)["init_noise_sigma"], jnp.float32)}


def model_params(params):
  """``params`` without the noise scale (what ``model.apply`` takes)."""
  if isinstance(params, dict) and SIGMA_KEY in params:
    return {k: v for k, v in params.items() if k != SIGMA_KEY}
  return params


def _labels(params):
  return {k: ("sigma" if k == SIGMA_KEY else "model") for k in params}


def optimizer(tx: optax.GradientTransformation, config) -> optax.GradientTransformation:
  """``tx`` (the model's optimizer) for the model's leaves and, for the noise scale, the same
  optimizer kind at a constant ``loss.bmse.sigma_lr`` (no warm-up, no schedule), or no update with
  ``loss.bmse.fix_noise_sigma`` (module docstring). Weight decay follows ``optim.weight_decay`` and
  ``optim.exclude_bias_and_norm`` (which, like LARS' trust-ratio mask, leaves 0-d leaves alone)."""
  opts = options(config)
  if opts["fix_noise_sigma"]:
    sigma_tx = optax.set_to_zero()
  else:
    cfg = ml_collections.ConfigDict(config.optim.to_dict())
    cfg.lr, cfg.schedule, cfg.warmup_steps = opts["sigma_lr"], "constant", 0
    sigma_tx, _ = make_optimizer(cfg, 1)
  return optax.multi_transform({"model": tx, "sigma": sigma_tx}, _labels)


def noise_sigma(params, opts: dict) -> jax.Array:
  """The noise scale of ``params`` as the loss sees it (a stop-gradient when fixed)."""
  sigma = params[SIGMA_KEY]
  return jax.lax.stop_gradient(sigma) if opts["fix_noise_sigma"] else sigma


def global_loss(pred, targets, sigma, kind: str, gmm, weights, axis_name: str) -> jax.Array:
  """Balanced MSE of the whole batch inside ``shard_map`` over ``axis_name``, from this device's
  ``pred`` / ``targets`` / ``weights`` (equal row counts on every device): the same value on any
  device layout. BMC's denominator runs over the targets gathered from every device; the weighted
  mean ``sum w l / sum w`` is ``pmean(W_d L_d) / pmean(W_d)`` with ``L_d`` the device's weighted mean
  and ``W_d`` its weight sum (the ``2 s2`` scale is a common factor)."""
  sample = jax.lax.all_gather(targets, axis_name, tiled=True) if kind == "bmc" else None
  local = balanced_mse(pred, targets, sigma, kind, gmm, weights=weights, bmc_sample=sample)
  if weights is None:
    return jax.lax.pmean(local, axis_name)
  total = jnp.sum(weights).astype(local.dtype)
  return jax.lax.pmean(total * local, axis_name) / jax.lax.pmean(total, axis_name)
