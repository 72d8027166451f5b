"""Run-control checks and clean-up shared by the trainers (``train.loop``, ``projects.*.task``).

* :func:`check_run_control`: the step counts, intervals and learning rates of a config, refused
  before any data are read (the launcher calls it before importing a trainer, each trainer again at
  its start).
* :func:`finished_results`: the stored results of a run that already finished, so that re-running it
  rewrites nothing.
* :func:`check_restorable`: a checkpoint whose parameter shapes the model no longer has is refused
  by name before Orbax tries to read it.
* :func:`closes_resources` / :func:`opened`: checkpoint managers and metric writers closed on every
  way out of a trainer, errors included (an Orbax manager left open at exit prints asyncio "Event
  loop is closed" tracebacks after the error message).

Imports no JAX: the launcher uses it to refuse a bad config in a fraction of a second.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
import numbers
import os
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger("contrastive_jax")

# Run-control integers that must be >= 1 (checked when the config has them).
POSITIVE_INT_FIELDS = {
    "num_train_steps": "the number of training steps",
    "batch_size": "examples per step",
    "log_every": "steps between progress lines",
    "eval_every": "steps between validations",
    "checkpoint_every": "steps between checkpoints",
    "keep_checkpoints": "latest checkpoints kept; a resumable run needs at least its newest one",
}


def _learning_rate_fields(tree: dict, prefix: str = ""):
  """``(dotted path, value)`` of every field named ``lr`` or ``*_lr``."""
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      yield from _learning_rate_fields(value, path + ".")
    elif key == "lr" or str(key).endswith("_lr"):
      yield path, value


def check_run_control(config) -> None:
  """Raises a ValueError naming the field if a run-control field of ``config`` is unusable.

  Checked: :data:`POSITIVE_INT_FIELDS` (integers >= 1; ``num_train_steps`` and ``batch_size`` are
  required, the others only when present) and every learning rate (fields ``lr`` / ``*_lr``: finite
  and >= 0).

  Raises:
    ValueError: naming the field, its value and what was expected.
  """
  for name, meaning in POSITIVE_INT_FIELDS.items():
    if name not in config:
      if name in ("num_train_steps", "batch_size"):
        raise ValueError(f"The config has no `{name}` ({meaning}).")
      continue
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f"`{name}` must be an integer >= 1 ({meaning}), got {value!r}.")
  for path, value in _learning_rate_fields(config.to_dict()):
    if value is None:
      continue
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
        or value < 0):
      raise ValueError(f"`{path}` (a learning rate) must be a finite number >= 0, got {value!r}.")


def finished_results(workdir: str, step: int, num_train_steps: int) -> Optional[dict]:
  """The results of the finished run in ``workdir``, or None if it must (re)start or continue.

  A run is finished when its latest checkpoint (``step``, written with the same config: the caller
  checks that) is at ``num_train_steps`` and its ``results.json`` reports that many steps. The
  caller then returns these results without writing anything (no metrics line, no TensorBoard file).
  A larger ``num_train_steps`` continues the run as usual.
  """
  if int(step) != int(num_train_steps):
    return None
  path = os.path.join(workdir, "results.json")
  try:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None  # killed between the last checkpoint and results.json: evaluated again
  if not isinstance(results, dict) or results.get("steps") != int(num_train_steps):
    return None
  log.info("This run already finished (%d steps): nothing to do; results in %s. (A larger "
           "num_train_steps continues it; a new --workdir starts afresh.)", int(step), path)
  return results


def _shape_differences(saved, current, path: str) -> list:
  if isinstance(saved, Mapping) or isinstance(current, Mapping):
    saved = saved if isinstance(saved, Mapping) else {}
    current = current if isinstance(current, Mapping) else {}
    out = []
    for key in sorted(set(saved) | set(current), key=str):
      if key not in saved:
        out.append(f"{path}.{key}: not in the checkpoint")
      elif key not in current:
        out.append(f"{path}.{key}: not in the model")
      else:
        out += _shape_differences(saved[key], current[key], f"{path}.{key}")
    return out
  now = tuple(getattr(current, "shape", ()))
  return [] if tuple(saved) == now else [f"{path}: checkpoint {tuple(saved)} vs now {now}"]


def check_restorable(checkpointer, state) -> None:
  """Raises a ValueError naming the parameters whose shapes differ between the latest checkpoint of
  ``checkpointer`` and ``state`` (e.g. ``model.proj_dim`` changed under ``resume=force``), before a
  restore that would fail deep inside Orbax (and leave TensorStore reads racing the interpreter's
  exit: asyncio "Event loop is closed" tracebacks)."""
  try:
    saved = checkpointer.saved_shapes()
  except Exception:  # pylint: disable=broad-except
    return  # Unreadable metadata: the restore verifies it and falls back to an earlier checkpoint.
  differences = []
  for name in ("params", "batch_stats"):
    differences += _shape_differences(saved[name], getattr(state, name, None) or {}, name)
  if differences:
    shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4
                                          else "")
    raise ValueError(f"The checkpoint in {checkpointer.directory} was written with a different "
                     f"model: {shown}. Use a new --workdir, or the config the checkpoint was written "
                     "with (resume=force cannot change parameter shapes).")


_OPENED: contextvars.ContextVar = contextvars.ContextVar("contrastive_jax_opened", default=None)


def opened(resource: Any) -> Any:
  """Registers ``resource`` (anything with ``close()``) with the innermost trainer decorated by
  :func:`closes_resources`, which closes it when it returns or raises; returns ``resource``."""
  registry = _OPENED.get()
  if registry is not None:
    registry.append(resource)
  return resource


def closes_resources(trainer: Callable) -> Callable:
  """Decorates a trainer so that every resource it registered with :func:`opened` is closed when it
  returns or raises (newest first; closing twice is harmless, an error while closing after an
  error is logged, not raised over it)."""

  @functools.wraps(trainer)
  def wrapper(*args, **kwargs):
    registry = []
    token = _OPENED.set(registry)
    failed = True
    try:
      result = trainer(*args, **kwargs)
      failed = False
      return result
    finally:
      _OPENED.reset(token)
      for resource in reversed(registry):
        try:
          resource.close()
        except Exception as e:  # pylint: disable=broad-except
          if not failed:
            raise
          log.warning("While closing %s after an error: %s", type(resource).__name__, e)

  return wrapper
