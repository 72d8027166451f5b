"""Optimizers and learning-rate schedules from the config, built from optax pieces."""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("sgd", "adam", "lars")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(cfg, num_train_steps: int) -> optax.Schedule:
  """``cfg.schedule``: 'constant', 'cosine' (linear warm-up then cosine to ``lr * end_factor``) or
  'step' (multiply by ``decay_factor`` at each fraction of training in ``decay_boundaries``)."""
  lr, warmup = float(cfg.lr), int(cfg.get("warmup_steps", 0))
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(num_train_steps, warmup + 1), end_value=lr * float(cfg.get("end_factor", 0.0)))
  elif cfg.schedule == "step":
    boundaries = {int(round(f * num_train_steps)): float(cfg.decay_factor)
                  for f in cfg.decay_boundaries}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(f"Unknown `optim.schedule`={cfg.schedule!r}; expected one of {SCHEDULES}.")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def decay_mask(params):
  """Pytree of bools over ``params``: True where weight decay (and LARS' trust ratio) applies.

  SimCLR (Chen et al. 2020, Appendix B.1; official code's ``EXCLUDE_FROM_WEIGHT_DECAY =
  ['batch_normalization', 'bias']``, also skipped by its LARS adaptation) leaves biases and
  batch-norm parameters alone. Rule: a leaf is excluded (False) if its name is ``bias``, or
  ``scale`` (the gain of Flax's BatchNorm / LayerNorm / GroupNorm), or it has ``ndim <= 1``; every
  other leaf (conv / dense ``kernel``) is True. In this package's models the 1-D leaves are exactly
  the biases and norm scales, whatever the norm layer is called (``BatchNorm_0``, ``bn1``,
  ``stem_bn``, ``norm_proj``, ...). Works on arrays and shape structs alike.
  """
  def keep(path, leaf):
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return not (name in ("bias", "scale") or len(getattr(leaf, "shape", ())) <= 1)
  return jax.tree_util.tree_map_with_path(keep, params)


def exclude_bias_and_norm(cfg) -> bool:
  """``cfg.exclude_bias_and_norm`` (True: no weight decay nor LARS trust ratio on the leaves that
  :func:`decay_mask` excludes); None or unset: the optimizer's convention, True for 'lars'
  (SimCLR), False for the others (the papers' ``torch.optim`` code decays every parameter)."""
  value = cfg.get("exclude_bias_and_norm", None)
  if value is None:
    return cfg.name == "lars"
  if not isinstance(value, bool):
    raise ValueError(f"`optim.exclude_bias_and_norm`={value!r} must be True, False or None (the "
                     "optimizer's convention: True for 'lars', False otherwise).")
  return value


def make_optimizer(cfg, num_train_steps: int):
  """Returns ``(optax transformation, schedule)`` for ``cfg.name`` in :data:`OPTIMIZERS`.

  Weight decay is coupled (added to the gradient before momentum), as ``torch.optim.SGD`` / ``Adam``
  do in the papers' official code. With :func:`exclude_bias_and_norm`, biases and norm parameters
  (:func:`decay_mask`) get neither weight decay nor, for LARS, the trust ratio.
  """
  schedule = make_schedule(cfg, num_train_steps)
  wd = float(cfg.get("weight_decay", 0.0))
  mask = decay_mask if exclude_bias_and_norm(cfg) else None
  if cfg.name == "sgd":
    tx = optax.sgd(schedule, momentum=float(cfg.momentum) or None, nesterov=bool(cfg.get("nesterov", False)))
  elif cfg.name == "adam":
    tx = optax.adam(schedule)
  elif cfg.name == "lars":
    return optax.lars(schedule, weight_decay=wd, momentum=float(cfg.momentum),
                      weight_decay_mask=mask or True, trust_ratio_mask=mask or True), schedule
  else:
    raise ValueError(f"Unknown `optim.name`={cfg.name!r}; expected one of {OPTIMIZERS}.")
  if wd:
    tx = optax.chain(optax.add_decayed_weights(wd, mask=mask), tx)
  return tx, schedule
