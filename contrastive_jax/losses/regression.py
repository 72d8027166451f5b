"""Regression losses for the prediction branch: L1, MSE and Huber (AdaCon Eq. 8's ``L_reg``)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

REGRESSION_LOSSES = ("l1", "mse", "huber")


def regression_loss(predictions: jax.Array, targets: jax.Array, kind: str = "l1",
                    delta: float = 1.0, weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean per-example ``L_reg`` between ``predictions [N]`` and ``targets [N]``.

  ``huber`` is ``0.5 r^2 / delta`` for ``|r| < delta`` else ``|r| - 0.5 delta`` (the SmoothL1 form of
  the official AdaCon / ACCon code). ``weights`` (e.g. LDS) multiply each example's loss.
  """
  if kind not in REGRESSION_LOSSES:
    raise ValueError(f"Unknown regression loss `kind`={kind!r}; expected one of {REGRESSION_LOSSES}.")
  if predictions.shape != targets.shape:
    raise ValueError(f"`predictions` {predictions.shape} and `targets` {targets.shape} must match.")
  dtype = jnp.promote_types(predictions.dtype, jnp.float32)  # float64 under x64, else float32.
  residual = predictions.astype(dtype) - targets.astype(dtype)
  if kind == "l1":
    per_example = jnp.abs(residual)
  elif kind == "mse":
    per_example = residual * residual
  else:
    abs_r = jnp.abs(residual)
    per_example = jnp.where(abs_r < delta, 0.5 * residual * residual / delta, abs_r - 0.5 * delta)
  if weights is not None:
    per_example = per_example * weights
  return jnp.mean(per_example)
