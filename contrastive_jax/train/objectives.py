"""The multi-task objective of AdaCon Eq. 8: ``gamma_reg * L_reg + gamma_con * L_con``.

A method is a contrastive loss from :mod:`contrastive_jax.losses` plus a config; this module only maps
batch fields to the loss's arguments. ``method='none'`` is the plain regression baseline.
"""

from __future__ import annotations

import inspect
from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import losses

# The inputs each contrastive loss takes after ``features`` (by position). The train step provides
# 'labels' (natural units), 'cdf' (AdaCon's ECDF of the labels), 'preds' (stop-gradient predictions
# per view, natural units) and 'key' (a PRNG key, the same on every device).
LOSS_INPUTS = {
    "simclr": (),
    "supcon": ("labels",),
    "adacon": ("labels", "cdf"),
    "accon": ("labels",),
    "rnc": ("labels",),
    "supremix": ("labels", "key"),
    "conr": ("labels", "preds"),
    "ranksim": ("labels", "key"),
    "npair": ("labels",),
    "adaptive_triplet": ("labels",),
    "binary_contrastive": (),
    "binary_contrastive_combo": (),
    "mio": (),
    "dystress": (),
}
METHODS = ("none",) + tuple(LOSS_INPUTS)


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"Unknown `method`={method!r}; expected one of {METHODS}.")


# Config fields (``loss.<name>``) of the pairwise execution mode, passed to the losses that take them.
PAIRWISE_FIELDS = ("impl", "tile", "matmul_dtype")
_PAIRWISE_DEFAULTS = {"impl": "auto", "tile": None, "matmul_dtype": None}


def loss_kwargs(method: str, loss_cfg) -> dict:
  """Keyword arguments of ``method``'s loss: ``loss.contrastive`` plus, for the losses with a
  blockwise mode, ``loss.impl`` / ``loss.tile`` / ``loss.matmul_dtype`` where they are set.

  Raises a ValueError when one of those is set for a loss without that option, or twice.
  """
  if method == "none":
    return {}
  kwargs = dict(loss_cfg.contrastive)
  accepted = inspect.signature(losses.get_contrastive_loss(method)).parameters
  for name in PAIRWISE_FIELDS:
    value = loss_cfg.get(name, _PAIRWISE_DEFAULTS[name])
    if value == _PAIRWISE_DEFAULTS[name]:
      continue
    if name not in accepted:
      raise ValueError(f"`loss.{name}`={value!r}: the {method!r} loss has no such option (it is "
                       "for the SupCon family and rnc); leave it unset.")
    if name in kwargs:
      raise ValueError(f"`loss.{name}` and `loss.contrastive.{name}` are both set; keep one.")
    kwargs[name] = tuple(value) if name == "tile" and isinstance(value, (list, tuple)) else value
  return kwargs


def contrastive_term(method: str, features: jax.Array, inputs: dict, loss_kwargs: dict,
                     axis_name: Optional[str]) -> jax.Array:
  """``L_con`` of ``features [b, views, dim]`` for ``method`` (0 for the regression baseline)."""
  if method == "none":
    return jnp.zeros((), jnp.float32)
  fn = losses.get_contrastive_loss(method)
  args = [inputs[field] for field in LOSS_INPUTS[method]]
  return fn(features, *args, **loss_kwargs, axis_name=axis_name)
