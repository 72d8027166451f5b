"""The multi-task objective of AdaCon Eq. 8: ``gamma_reg * L_reg + gamma_con * L_con``.

A method is an entry of the method registry (:mod:`contrastive_jax.losses.registry`: its loss, the
batch inputs it takes, its options and an optional hook on the training labels) plus a config; this
module only maps config fields and batch fields to the loss's arguments. ``method='none'`` is the
plain regression baseline.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax.losses import registry

BASELINE = "none"  # config.method of the regression baseline (no contrastive term)


def methods() -> tuple:
  """The values ``config.method`` may take: the baseline and every registered method."""
  return (BASELINE,) + registry.names()


def check_method(method: str) -> None:
  if method not in methods():
    raise ValueError(f"Unknown `method`={method!r}; expected one of {methods()}.")


def _entry(method: str) -> Optional[registry.Method]:
  """The registry entry of ``method`` (None for the baseline)."""
  check_method(method)
  return registry.get_method(method) if method in registry.names() else None


def contrastive_options(method: str) -> Optional[tuple]:
  """The ``loss.contrastive`` keys ``method``'s loss takes (None for the baseline: not read)."""
  entry = _entry(method)
  return None if entry is None else entry.options


# Config fields (``loss.<name>``) of the pairwise execution mode, passed to the losses that take them.
PAIRWISE_FIELDS = registry.PAIRWISE_OPTIONS
_PAIRWISE_DEFAULTS = {"impl": "auto", "tile": None, "matmul_dtype": None}


def loss_kwargs(method: str, loss_cfg) -> dict:
  """Keyword arguments of ``method``'s loss: ``loss.contrastive`` plus, for the losses with a
  blockwise mode, ``loss.impl`` / ``loss.tile`` / ``loss.matmul_dtype`` where they are set.

  Raises a ValueError when one of those is set for a loss without that option, or twice.
  """
  entry = _entry(method)
  if entry is None:
    return {}
  kwargs = dict(loss_cfg.contrastive)
  for name in PAIRWISE_FIELDS:
    value = loss_cfg.get(name, _PAIRWISE_DEFAULTS[name])
    if value == _PAIRWISE_DEFAULTS[name]:
      continue
    if name not in entry.options:
      raise ValueError(f"`loss.{name}`={value!r}: the {method!r} loss has no such option (it is "
                       "for the SupCon family and rnc); leave it unset.")
    if name in kwargs:
      raise ValueError(f"`loss.{name}` and `loss.contrastive.{name}` are both set; keep one.")
    kwargs[name] = tuple(value) if name == "tile" and isinstance(value, (list, tuple)) else value
  return kwargs


def prepare(config: ml_collections.ConfigDict, train_labels) -> tuple:
  """Runs ``config.method``'s ``prepare`` hook once on the training labels.

  Returns ``(config, prepared)``: a copy of ``config`` whose ``loss.contrastive`` holds the entries
  named by the method's options (e.g. ACCon's label range, then recorded with the run's config),
  and ``prepared``, the other entries (e.g. AdaCon's ECDF), keyword arguments of the loss at every
  step (``make_train_step(..., prepared=prepared)``).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  entry = _entry(config.method)
  if entry is None or entry.prepare is None:
    return config, {}
  out = dict(entry.prepare(np.asarray(train_labels), config.loss))
  for name in [k for k in out if k in entry.options]:
    if config.loss.contrastive.get(name) is not None:
      raise ValueError(f"The {config.method!r} method's prepare hook computed "
                       f"`loss.contrastive.{name}`, which the config sets.")
    config.loss.contrastive[name] = out.pop(name)
  clash = sorted(set(out) & set(config.loss.contrastive))
  if clash:
    raise ValueError(f"`loss.contrastive` sets {clash}, which the {config.method!r} method "
                     "computes from the training labels; remove them from the config.")
  return config, out


def contrastive_term(method: str, features: jax.Array, inputs: dict, loss_kwargs: dict,
                     axis_name: Optional[str]) -> jax.Array:
  """``L_con`` of ``features [b, views, dim]`` for ``method`` (0 for the regression baseline).

  ``inputs``: the batch inputs (:data:`registry.BATCH_INPUTS`); ``loss_kwargs``: the options
  (:func:`loss_kwargs`) and the prepared arguments (:func:`prepare`).
  """
  entry = _entry(method)
  if entry is None:
    return jnp.zeros((), jnp.float32)
  args = [inputs[name] for name in entry.inputs]
  return entry.loss(features, *args, **loss_kwargs, axis_name=axis_name)
