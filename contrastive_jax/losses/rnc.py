"""Rank-N-Contrast (Zha et al., NeurIPS 2023), in O(M^2 log M) time and O(M^2) or O(tile * M) memory.

With ``M = batch * views`` rows, ``s_ij = -||z_i - z_j||_2 / tau`` on the raw features and the label
distance ``d_ij = ||y_i - y_j||_1``:

    L = -(1/(M(M-1))) sum_i sum_{j != i} log[ exp(s_ij) / sum_{k != i, d_ik >= d_ij} exp(s_ik) ]

The official ``RnCLoss`` loops over ``j`` (O(M^3) time and an M x M mask kept per iteration for
autograd). Here each anchor row sorts its label distances once; a reversed cumulative log-sum-exp of
``s_ik`` in that order holds every candidate denominator, and ``searchsorted`` picks, for each ``j``, the
suffix starting at the first ``k`` with ``d_ik >= d_ij``. Ties in ``d`` are resolved exactly (the same
float values are sorted and searched), and the log-space scan never underflows, so tiny temperatures
stay finite.

Scalar labels need no per-row sort: with the columns sorted ONCE by label, the label distances of
anchor ``i`` fall and then rise along that order (a "V" around ``y_i``), so ``{k : d_ik >= d_ij}`` is a
prefix plus a suffix of it. Its log-sum-exp is ``logaddexp`` of an exclusive prefix and a suffix
cumulative log-sum-exp of the row, at positions found by binary search over the row's (monotone)
distances on each side of the V, computed with the same float subtraction as ``d``. Vector labels
(``[batch, k]``, L1 distance) keep the per-row sort.

``impl='blockwise'`` evaluates the anchors in tiles of ``tile`` rows against all ``M`` columns under
``jax.checkpoint``, so the backward pass recomputes one tile at a time: memory O(M d + tile * M).
``'dense'`` is the same function on all rows at once; ``'auto'`` picks blockwise when the dense
temporaries would not fit comfortably (see ``pairwise.blockwise``).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks

DEFAULT_ROW_TILE = 256
SEARCH_METHOD = "scan"  # jnp.searchsorted's method for the V-order search (benchmarks/losses.py)


def _row_log_denominators(label_dist: jax.Array, logits: jax.Array) -> jax.Array:
  """``log sum_{k: d_k >= d_j} exp(logits_k)`` for every ``j`` of one anchor row (per-row sort)."""
  order = jnp.argsort(label_dist)
  sorted_dist = label_dist[order]
  suffix = jax.lax.cumlogsumexp(logits[order], axis=0, reverse=True)
  start = jnp.searchsorted(sorted_dist, label_dist, side="left")
  return suffix[start]


def _v_log_denominators(label_dist: jax.Array, logits: jax.Array, pivot: jax.Array) -> jax.Array:
  """The same for one row whose columns are sorted by label: ``label_dist`` falls on ``[0, pivot)``
  and rises on ``[pivot, M)``; ``{k: d_k >= d_j}`` = prefix ``[0, lo_j)`` + suffix ``[hi_j, M)``."""
  num = label_dist.shape[0]
  below = jnp.arange(num) < pivot
  falling = jnp.where(below, -label_dist, jnp.inf)   # nondecreasing
  rising = jnp.where(below, -jnp.inf, label_dist)    # nondecreasing
  lo = jnp.searchsorted(falling, -label_dist, side="right", method=SEARCH_METHOD)  # #{k < pivot: d_k >= d_j}
  hi = jnp.searchsorted(rising, label_dist, side="left", method=SEARCH_METHOD)  # first k >= pivot, d_k >= d_j
  neg_inf = jnp.full((1,), -jnp.inf, logits.dtype)
  prefix = jnp.concatenate([neg_inf, jax.lax.cumlogsumexp(logits, axis=0)])
  suffix = jnp.concatenate([jax.lax.cumlogsumexp(logits, axis=0, reverse=True), neg_inf])
  return jnp.logaddexp(prefix[lo], suffix[hi])


def _tile_sums(temperature, columns, column_y, column_index, sorted_by_label, tile):
  """``sum_{j != i} [s_ij - log sum_{k != i: d_ik >= d_ij} e^{s_ik}]`` for one tile of anchors."""
  anchors, anchor_y, anchor_index = tile
  logits = -pairwise.pairwise_euclidean(anchors, columns) / temperature
  others = anchor_index[:, None] != column_index[None, :]
  logits = jnp.where(others, logits, -jnp.inf)
  if anchor_y.ndim == 1:
    label_dist = jnp.abs(anchor_y[:, None] - column_y[None, :])
  else:
    label_dist = jnp.sum(jnp.abs(anchor_y[:, None, :] - column_y[None, :, :]), axis=-1)
  if sorted_by_label:
    pivot = jnp.searchsorted(column_y, anchor_y, side="left")
    log_den = jax.vmap(_v_log_denominators)(label_dist, logits, pivot)
  else:
    log_den = jax.vmap(_row_log_denominators)(label_dist, logits)
  return jnp.sum(jnp.where(others, logits - log_den, 0.0), axis=1)


def rnc(features: jax.Array, labels: jax.Array, temperature: float = 2.0,
        *, axis_name: Optional[str] = None, impl: str = "auto",
        tile: int = DEFAULT_ROW_TILE) -> jax.Array:
  """Rank-N-Contrast loss.

  Args:
    features: ``[batch, views, dim]`` raw embeddings (not normalised: RNC uses L2 distances).
    labels: ``[batch]`` or ``[batch, k]`` regression targets (L1 label distance).
    temperature: ``tau`` (2 in the paper).
    axis_name: mesh axis when called per shard inside ``shard_map``.
    impl: 'dense', 'blockwise' (anchor tiles, recomputed in the backward pass) or 'auto'.
    tile: anchors per tile in blockwise mode.
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels", allow_vector=True)
  _checks.check_positive(temperature, "temperature")
  block = pairwise.blocking(impl, tile)
  rows = pairwise.make_rows(features, axis_name)
  anchor_y, column_y = rows.per_sample(labels.astype(features.dtype), axis_name)
  num_rows, num_cols = rows.anchors.shape[0], rows.columns.shape[0]
  columns = rows.columns
  column_index = jnp.arange(num_cols, dtype=jnp.int32)
  sorted_by_label = anchor_y.ndim == 1
  if sorted_by_label:
    order = jnp.argsort(column_y)
    columns, column_y, column_index = columns[order], column_y[order], column_index[order]
  anchor_index = rows.row_offset + jnp.arange(num_rows, dtype=jnp.int32)
  tile_fn = lambda t: _tile_sums(temperature, columns, column_y, column_index, sorted_by_label, t)
  inputs = (rows.anchors, anchor_y, anchor_index)
  if pairwise.blockwise.resolve_impl(block.impl, num_rows, num_cols) == "dense":
    sums = tile_fn(inputs)
  else:
    size = min(block.row_tile, num_rows)
    padded = pairwise.blockwise.pad_rows(inputs, size)
    tiles = jax.tree.map(lambda x: x.reshape((-1, size) + x.shape[1:]), padded)
    sums = jax.lax.map(jax.checkpoint(tile_fn), tiles).reshape(-1)[:num_rows]
  return -pairwise.global_mean(sums / (num_cols - 1), axis_name)
