"""Regression losses for the prediction branch: L1, MSE, Huber (AdaCon Eq. 8's ``L_reg``) and Focal-R.

Focal-R (Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021) scales each example's
L1 / MSE loss by a modulating factor of its absolute residual, exactly as the official
``weighted_focal_l1_loss`` / ``weighted_focal_mse_loss`` (YyzHarry/imbalanced-regression ``loss.py``;
the same code is in Haifengtao/ACCon ``agedb/loss.py``)::

    focal_l1  = |r|  * f(beta |r|)^gamma          f = tanh                      (activation 'tanh')
    focal_mse = r^2  * f(beta |r|)^gamma          f(x) = 2 sigmoid(x) - 1       (activation 'sigmoid')

The modulating factor is not a stop-gradient (the official code differentiates through it).
``2 sigmoid(x) - 1`` is evaluated as the identical ``tanh(x / 2)``, which has no cancellation near 0.
Balanced MSE and LDS weights live in ``contrastive_jax.losses.imbalance``.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.losses._checks import concrete

REGRESSION_LOSSES = ("l1", "mse", "huber", "focal_l1", "focal_mse")
FOCAL_ACTIVATIONS = ("sigmoid", "tanh")


def check_finite(x, name: str) -> None:
  """ValueError naming ``name`` when ``x`` is concrete and has a NaN or inf (tracers are skipped)."""
  host = concrete(x)
  if host is not None and np.issubdtype(host.dtype, np.floating):
    bad = int(np.sum(~np.isfinite(host)))
    if bad:
      raise ValueError(f"`{name}` has {bad} non-finite value(s) (NaN or inf).")


def _check_scalar(value, name: str, *, minimum: float, strict: bool) -> None:
  host = concrete(value)
  if host is None:
    return
  ok = host.ndim == 0 and np.isfinite(host) and (host > minimum if strict else host >= minimum)
  if not ok:
    op = ">" if strict else ">="
    raise ValueError(f"`{name}` must be a finite scalar {op} {minimum}; got {value!r}.")


def focal_factor(abs_residual: jax.Array, activation: str = "sigmoid", beta: float = 0.2,
                 gamma: float = 1.0) -> jax.Array:
  """Focal-R modulating factor ``f(beta |r|)^gamma`` (``f`` = tanh, or 2 sigmoid - 1 = tanh(x/2)).

  Safe at ``|r| = 0`` for any ``gamma >= 0``: the value is ``0**gamma`` (1 for gamma = 0) and the
  gradient there is finite (the power is taken of a masked base, no ``0 * inf``).
  """
  if activation not in FOCAL_ACTIVATIONS:
    raise ValueError(f"Unknown `focal_activation`={activation!r}; expected one of "
                     f"{FOCAL_ACTIVATIONS}.")
  x = beta * abs_residual
  m = jnp.tanh(x) if activation == "tanh" else jnp.tanh(0.5 * x)  # 2*sigmoid(x) - 1 == tanh(x/2)
  positive = m > 0
  powered = jnp.power(jnp.where(positive, m, jnp.ones_like(m)), gamma)
  return jnp.where(positive, powered, jnp.power(jnp.zeros_like(m), gamma))


def regression_loss(predictions: jax.Array, targets: jax.Array, kind: str = "l1",
                    delta: float = 1.0, weights: Optional[jax.Array] = None, *,
                    focal_activation: str = "sigmoid", focal_beta: float = 0.2,
                    focal_gamma: float = 1.0) -> jax.Array:
  """Mean per-example ``L_reg`` between ``predictions`` and ``targets`` (same shape, e.g. ``[N]``).

  ``huber`` is ``0.5 r^2 / delta`` for ``|r| < delta`` else ``|r| - 0.5 delta`` (the SmoothL1 form of
  the official AdaCon / ACCon code). ``focal_l1`` / ``focal_mse`` are Focal-R (module docstring;
  defaults beta = 0.2, gamma = 1, sigmoid activation = the official defaults). ``weights`` (e.g. LDS,
  broadcastable to ``predictions``) multiply each example's loss before the mean, as the official
  ``weighted_*_loss`` functions do. float32, or float64 when the predictions are float64 under x64.
  """
  if kind not in REGRESSION_LOSSES:
    raise ValueError(f"Unknown regression loss `kind`={kind!r}; expected one of {REGRESSION_LOSSES}.")
  if not hasattr(predictions, "shape"):
    predictions = jnp.asarray(predictions)
  if not hasattr(targets, "shape"):
    targets = jnp.asarray(targets)
  if predictions.shape != targets.shape:
    raise ValueError(f"`predictions` {predictions.shape} and `targets` {targets.shape} must match.")
  check_finite(predictions, "predictions")
  check_finite(targets, "targets")
  if kind == "huber":
    _check_scalar(delta, "delta", minimum=0.0, strict=True)
  if kind.startswith("focal_"):
    if focal_activation not in FOCAL_ACTIVATIONS:
      raise ValueError(f"Unknown `focal_activation`={focal_activation!r}; expected one of "
                       f"{FOCAL_ACTIVATIONS}.")
    _check_scalar(focal_beta, "focal_beta", minimum=0.0, strict=True)
    _check_scalar(focal_gamma, "focal_gamma", minimum=0.0, strict=False)
  predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
  dtype = jnp.promote_types(predictions.dtype, jnp.float32)  # float64 under x64, else float32.
  if weights is not None:
    if not hasattr(weights, "shape"):
      weights = jnp.asarray(weights)
    try:
      shape = np.broadcast_shapes(tuple(weights.shape), tuple(predictions.shape))
    except ValueError:
      shape = None
    if shape != tuple(predictions.shape):
      raise ValueError(f"`weights` {tuple(weights.shape)} must broadcast to the predictions' shape "
                       f"{tuple(predictions.shape)}.")
    check_finite(weights, "weights")
    weights = jnp.asarray(weights).astype(dtype)
  return _regression_loss(predictions.astype(dtype), targets.astype(dtype), delta, weights,
                          focal_beta, focal_gamma, kind=kind, activation=focal_activation)


@functools.partial(jax.jit, static_argnames=("kind", "activation"))
def _regression_loss(predictions, targets, delta, weights, beta, gamma, *, kind, activation):
  """The loss after validation: one compiled program per shape (also when called eagerly)."""
  residual = predictions - targets
  abs_r = jnp.abs(residual)
  if kind in ("l1", "focal_l1"):
    per_example = abs_r
  elif kind in ("mse", "focal_mse"):
    per_example = residual * residual
  else:
    per_example = jnp.where(abs_r < delta, 0.5 * residual * residual / delta, abs_r - 0.5 * delta)
  if kind.startswith("focal_"):
    per_example = per_example * focal_factor(abs_r, activation, beta, gamma)
  if weights is not None:
    per_example = per_example * weights
  return jnp.mean(per_example)
