"""Rank-N-Contrast (Zha et al., NeurIPS 2023), in O(M^2 log M) time and O(M^2) memory.

With ``M = batch * views`` rows, ``s_ij = -||z_i - z_j||_2 / tau`` on the raw features and the label
distance ``d_ij = ||y_i - y_j||_1``:

    L = -(1/(M(M-1))) sum_i sum_{j != i} log[ exp(s_ij) / sum_{k != i, d_ik >= d_ij} exp(s_ik) ]

The official ``RnCLoss`` loops over ``j`` (O(M^3) time and an M x M mask kept per iteration for
autograd). Here each anchor row sorts its label distances once; a reversed cumulative log-sum-exp of
``s_ik`` in that order holds every candidate denominator, and ``searchsorted`` picks, for each ``j``, the
suffix starting at the first ``k`` with ``d_ik >= d_ij``. Ties in ``d`` are resolved exactly (the same
float values are sorted and searched), and the log-space scan never underflows, so tiny temperatures
stay finite.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks


def _row_log_denominators(label_dist: jax.Array, logits: jax.Array) -> jax.Array:
  """``log sum_{k: d_k >= d_j} exp(logits_k)`` for every ``j`` of one anchor row."""
  order = jnp.argsort(label_dist)
  sorted_dist = label_dist[order]
  suffix = jax.lax.cumlogsumexp(logits[order], axis=0, reverse=True)
  start = jnp.searchsorted(sorted_dist, label_dist, side="left")
  return suffix[start]


def rnc(features: jax.Array, labels: jax.Array, temperature: float = 2.0,
        *, axis_name: Optional[str] = None) -> jax.Array:
  """Rank-N-Contrast loss.

  Args:
    features: ``[batch, views, dim]`` raw embeddings (not normalised: RNC uses L2 distances).
    labels: ``[batch]`` or ``[batch, k]`` regression targets (L1 label distance).
    temperature: ``tau`` (2 in the paper).
    axis_name: mesh axis when called per shard inside ``shard_map``.
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels", allow_vector=True)
  _checks.check_positive(temperature, "temperature")
  rows = pairwise.make_rows(features, axis_name)
  anchor_y, column_y = rows.per_sample(labels.astype(features.dtype), axis_name)
  if anchor_y.ndim == 1:
    label_dist = jnp.abs(anchor_y[:, None] - column_y[None, :])
  else:
    label_dist = jnp.sum(jnp.abs(anchor_y[:, None, :] - column_y[None, :, :]), axis=-1)
  logits = -pairwise.pairwise_euclidean(rows.anchors, rows.columns) / temperature
  others = ~rows.is_self
  log_den = jax.vmap(_row_log_denominators)(label_dist, jnp.where(others, logits, -jnp.inf))
  pair_terms = jnp.where(others, logits - log_den, 0.0)
  per_anchor = jnp.sum(pair_terms, axis=1) / (rows.columns.shape[0] - 1)
  return -pairwise.global_mean(per_anchor, axis_name)
