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

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.losses.supcon import softmax_loss
from contrastive_jax.losses.supcon import unit_rows


def compensated_cosine(cos: jax.Array, label_diff: jax.Array, label_range: float, eps: float,
                       trailing_eps: bool = True) -> jax.Array:
  """``cos~theta`` of Eq. 7 for cosine similarities ``cos`` and label differences ``label_diff``."""
  phi = math.pi * (1.0 - label_diff / label_range)
  cos = jnp.clip(cos, -1.0, 1.0)
  value = cos * jnp.cos(phi) - jnp.abs(jnp.sin(phi)) * jnp.sqrt(1.0 - cos * cos + eps)
  return value + eps if trailing_eps else value


def _positives(params, binned: bool, a_y, c_y):
  """Same label (or, with ``bin_width``, the same bin ``floor(y / bin_width)``); ``bin_width`` may
  be a scalar or an ``[r, 1]`` column (impl='fused')."""
  if binned:
    width = params["bin_width"]
    return jnp.floor(a_y[:, None] / width) == jnp.floor(c_y[None, :] / width)
  return a_y[:, None] == c_y[None, :]


def _paper_logits(binned, params, cos, a_y, c_y):
  """ACCon tile (Eq. 4, 7): ``c / tau`` for positives, ``cos~theta / tau`` for negatives."""
  positive = _positives(params, binned, a_y, c_y)
  label_diff = c_y[None, :] - a_y[:, None]
  negative = compensated_cosine(cos, label_diff, params["label_range"], params["epsilon"])
  return jnp.where(positive, cos, negative) / params["temperature"], positive


# Official-mode statistics: row max of c/tau over ALL columns (self included; the official shift),
# log-sum-exp of c/tau over the positives and of cos~theta/tau over the negatives (both a != i),
# sum of c/tau over the positives, |P(i)|.
_OFFICIAL_KINDS = ("max", "lse", "lse", "sum", "sum")


def _official_pairs(binned, params, cos, a_y, c_y, is_self):
  cos = jnp.clip(cos, -1.0, 1.0)
  logits = cos / params["temperature"]
  valid = ~is_self
  positive = _positives(params, binned, a_y, c_y) & valid
  negative = valid & ~positive
  label_diff = c_y[None, :] - a_y[:, None]
  negative_logits = compensated_cosine(cos, label_diff, params["label_range"], params["epsilon"],
                                       trailing_eps=False) / params["temperature"]
  return (logits, jnp.where(positive, logits, -jnp.inf), jnp.where(negative, negative_logits, -jnp.inf),
          jnp.where(positive, logits, 0.0), positive.astype(logits.dtype))


def _official_per_anchor(row_max, lse_positive, lse_negative, positive_sum, count, epsilon):
  """``(sum_p [c_ip/tau - max - log den_i] + eps) / (|P(i)| + eps)``, ``den_i = sum_{p} e^{c_ip/tau -
  max} + sum_{m} e^{cos~theta_im / tau}`` (the official shifted positives, unshifted negatives)."""
  log_denominator = jnp.logaddexp(lse_positive - row_max, lse_negative)
  summed = positive_sum - count * row_max - jnp.where(count > 0, count * log_denominator, 0.0)
  return (summed + epsilon) / (count + epsilon)


def resolve_label_range(train_labels, loss_cfg) -> dict:
  """The method registry's hook: ``{'label_range': max - min}`` of the training labels (Eq. 2's R)
  when ``loss_cfg.contrastive.label_range`` is unset (None), else ``{}``.

  Raises:
    ValueError: if every training label is equal (R = 0: Eq. 2's angle compensation is undefined).
  """
  if loss_cfg.contrastive.get("label_range") is not None:
    return {}
  y = np.asarray(train_labels)
  label_range = float(np.max(y) - np.min(y))
  if not label_range > 0:
    raise ValueError(
        f"ACCon's label range R = max - min of the training labels is {label_range}: all training "
        "labels are equal, so the angle compensation (Eq. 2) is undefined. Check the target "
        "column, or set loss.contrastive.label_range.")
  return {"label_range": label_range}


def accon(features: jax.Array, labels: jax.Array, label_range: float, temperature: float = 0.05,
          *, bin_width: Optional[float] = None, epsilon: float = 1e-6, official: bool = False,
          base_temperature: Optional[float] = None, axis_name: Optional[str] = None,
          impl: str = "auto", tile=None, matmul_dtype=None) -> jax.Array:
  """Angle-compensated contrastive loss (ACCon Eq. 4-7).

  Args:
    features: ``[batch, views, dim]`` projections (L2-normalised here; the official code assumes
      unit vectors and does not normalise, so ``official=True`` matches it on unit inputs). One
      view is fine (positives: the other samples with the same label or bin).
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
    impl, tile, matmul_dtype: execution mode ('dense' | 'blockwise' | 'ring' | 'fused' |
      'fused_ring' | 'auto'), tile shape and optional bfloat16 similarity matmul (see
      ``pairwise.blockwise``; 'fused': the Pallas kernel of ``pairwise.fused``).
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  _checks.check_positive(label_range, "label_range")
  _checks.check_positive(temperature, "temperature")
  if bin_width is not None:
    _checks.check_positive(bin_width, "bin_width")
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  anchor_y, column_y = rows.per_sample(labels.astype(features.dtype), axis_name)
  params = {"temperature": temperature, "label_range": label_range, "epsilon": epsilon}
  if bin_width is not None:
    params["bin_width"] = bin_width
  binned = bin_width is not None
  guard = functools.partial(_checks.nan_unless_valid, axis_name=axis_name,
                            finite=(features, labels, epsilon),
                            positive=(label_range, temperature, bin_width, base_temperature))
  if not official:
    logits_fn = functools.partial(_paper_logits, binned)
    return guard(softmax_loss(logits_fn, params, rows, anchor_y, column_y, 1.0, axis_name, block))
  base_temperature = temperature if base_temperature is None else base_temperature
  _checks.check_positive(base_temperature, "base_temperature")
  pair_fn = pairwise.DotPairFn(functools.partial(_official_pairs, binned), block.matmul_dtype)
  stats = pairwise.row_statistics(pair_fn, _OFFICIAL_KINDS, params, rows.anchors, rows.columns,
                                  anchor_y, column_y, rows.row_offset, block=block,
      axis_name=axis_name)
  per_anchor = _official_per_anchor(*stats, epsilon)
  return guard(-(temperature / base_temperature) * pairwise.global_mean(per_anchor, axis_name))
