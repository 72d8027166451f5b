"""ACCon: angle-compensated supervised contrastive loss (Zhao et al., AAAI 2025; Eq. 2-7).

For a negative ``m`` of anchor ``i`` (a different label bin), with ``c = cos theta_im`` and
``R = max(Y) - min(Y)`` (``label_range``):

    phi        = pi (1 - (y_m - y_i) / R)                                         (Eq. 6)
    cos~theta  = c cos(phi) - |sin(phi)| sqrt(1 - c^2 + eps) + eps                  (Eq. 7)
    L_i = -(1/|P(i)|) sum_p log[ exp(c_ip/tau) /
                                 (sum_{k in P(i)} exp(c_ik/tau) + sum_{m in N(i)} exp(cos~theta_im/tau)) ]  (Eq. 4)
    L   = mean_i L_i                                                              (Eq. 5)

The ``eps`` inside the square root keeps the gradient finite at ``|c| = 1``; the trailing ``eps`` is
Eq. 7's smoothing term. ``cos`` and ``|sin|`` of ``phi`` are even in ``y_m - y_i``, so the sign
convention of the difference does not matter.

``official=True`` reproduces Haifengtao/ACCon ``agedb/loss.py::ACCon`` (built there with
``base_temperature=temperature``):
  * positive logits are shifted by the row max of ``c/tau`` over all columns (self included: ``1/tau``
    for unit vectors) but the negative logits are NOT, so negatives weigh ``e^{max}`` times more;
  * the positive mean is ``(sum + eps) / (|P| + eps)`` (an anchor without positives contributes
    ``-tau/tau_base`` instead of 0);
  * ``c`` clamped to [-1, 1], ``sqrt(1 - c^2 + eps)``, no trailing ``eps``; ``label_range`` is the
    official ``max_inernal`` (default 100 there).
Our log-denominator is evaluated with a log-sum-exp, so it equals the official value wherever that is
finite and stays finite where the official ``exp`` overflows (temperatures below ~0.012).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.losses.supcon import cosine_rows
from contrastive_jax.losses.supcon import supcon_from_logits


def compensated_cosine(cos: jax.Array, label_diff: jax.Array, label_range: float, eps: float,
                       trailing_eps: bool = True) -> jax.Array:
  """``cos~theta`` of Eq. 7 for cosine similarities ``cos`` and label differences ``label_diff``."""
  phi = math.pi * (1.0 - label_diff / label_range)
  cos = jnp.clip(cos, -1.0, 1.0)
  value = cos * jnp.cos(phi) - jnp.abs(jnp.sin(phi)) * jnp.sqrt(1.0 - cos * cos + eps)
  return value + eps if trailing_eps else value


def accon(features: jax.Array, labels: jax.Array, label_range: float, temperature: float = 0.05,
          *, bin_width: Optional[float] = None, epsilon: float = 1e-6, official: bool = False,
          base_temperature: Optional[float] = None, axis_name: Optional[str] = None) -> jax.Array:
  """Angle-compensated contrastive loss (ACCon Eq. 4-7).

  Args:
    features: ``[batch, views, dim]`` projections (L2-normalised here; the official code assumes
      unit vectors and does not normalise, so ``official=True`` matches it on unit inputs).
    labels: ``[batch]`` regression labels.
    label_range: ``R = max(Y) - min(Y)`` of the label space (> 0).
    temperature: ``tau`` (0.05 in the official runs).
    bin_width: positives share the bin ``floor(y / bin_width)``; ``None``: exactly equal labels
      (the official code, whose labels are integer ages).
    epsilon: ``eps`` of Eq. 7 (and of the official positive mean).
    official: reproduce the official implementation's quirks (see module docstring).
    base_temperature: ``official=True`` only: the loss is scaled by ``tau / tau_base``; defaults to
      ``temperature`` as in the official training script.
    axis_name: mesh axis when called per shard inside ``shard_map``.
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  _checks.check_positive(label_range, "label_range")
  _checks.check_positive(temperature, "temperature")
  if bin_width is not None:
    _checks.check_positive(bin_width, "bin_width")
  rows, cos = cosine_rows(features, axis_name)
  anchor_y, column_y = rows.per_sample(labels.astype(cos.dtype), axis_name)
  if bin_width is None:
    positive = anchor_y[:, None] == column_y[None, :]
  else:
    positive = (jnp.floor(anchor_y / bin_width)[:, None] == jnp.floor(column_y / bin_width)[None, :])
  label_diff = column_y[None, :] - anchor_y[:, None]
  if not official:
    negative_logits = compensated_cosine(cos, label_diff, label_range, epsilon) / temperature
    logits = jnp.where(positive, cos / temperature, negative_logits)
    return supcon_from_logits(rows, logits, positive, 1.0, axis_name)

  base_temperature = temperature if base_temperature is None else base_temperature
  _checks.check_positive(base_temperature, "base_temperature")
  cos = jnp.clip(cos, -1.0, 1.0)
  logits = cos / temperature
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  shifted = logits - row_max
  negative_logits = compensated_cosine(cos, label_diff, label_range, epsilon,
                                       trailing_eps=False) / temperature
  valid = ~rows.is_self
  positive = positive & valid
  log_denominator = pairwise.masked_logsumexp(jnp.where(positive, shifted, negative_logits), valid)
  log_prob = shifted - log_denominator[:, None]
  count = jnp.sum(positive, axis=1).astype(cos.dtype)
  summed = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1)
  per_anchor = (summed + epsilon) / (count + epsilon)
  return -(temperature / base_temperature) * pairwise.global_mean(per_anchor, axis_name)
