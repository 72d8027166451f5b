"""Optimizers and learning-rate schedules from the config, built from optax pieces."""

from __future__ import annotations

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


def make_optimizer(cfg, num_train_steps: int):
  """Returns ``(optax transformation, schedule)`` for ``cfg.name`` in :data:`OPTIMIZERS`.

  Weight decay is coupled (added to the gradient before momentum), as ``torch.optim.SGD`` / ``Adam``
  do in the papers' official code.
  """
  schedule = make_schedule(cfg, num_train_steps)
  wd = float(cfg.get("weight_decay", 0.0))
  if cfg.name == "sgd":
    tx = optax.sgd(schedule, momentum=float(cfg.momentum) or None, nesterov=bool(cfg.get("nesterov", False)))
  elif cfg.name == "adam":
    tx = optax.adam(schedule)
  elif cfg.name == "lars":
    return optax.lars(schedule, weight_decay=wd, momentum=float(cfg.momentum)), schedule
  else:
    raise ValueError(f"Unknown `optim.name`={cfg.name!r}; expected one of {OPTIMIZERS}.")
  if wd:
    tx = optax.chain(optax.add_decayed_weights(wd), tx)
  return tx, schedule
