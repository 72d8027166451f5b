"""Rows (this shard's anchors) against columns (the global batch), and the shared reductions.

Layout: ``features [batch, views, dim]`` is flattened sample-major, so row ``r = sample * views + view``.
With ``axis_name`` set, the function runs per shard inside ``jax.shard_map`` over that mesh axis: the
columns are ``all_gather``-ed (its transpose, a reduce-scatter, routes the column gradients back to
their owners) and this shard's anchors are the global rows ``[offset, offset + rows)``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


class Rows(NamedTuple):
  """This shard's anchor rows and the global columns of one contrastive batch.

  Attributes:
    anchors: ``[n, dim]`` embeddings of the local anchors (``n = local_batch * views``).
    columns: ``[N, dim]`` embeddings of the whole global batch (``N = global_batch * views``).
    anchor_sample: ``[n]`` int32 global sample id of each anchor row.
    column_sample: ``[N]`` int32 global sample id of each column.
    num_views: views per sample.
    row_offset: global column index of the first local anchor (``shard * local_batch * views``).
  """
  anchors: jax.Array
  columns: jax.Array
  anchor_sample: jax.Array
  column_sample: jax.Array
  num_views: int
  row_offset: jax.Array

  @property
  def is_self(self) -> jax.Array:
    """``[n, N]`` bool, True where the column is the anchor itself (built on demand)."""
    anchor_index = self.row_offset + jnp.arange(self.anchors.shape[0], dtype=jnp.int32)
    return anchor_index[:, None] == jnp.arange(self.columns.shape[0], dtype=jnp.int32)[None, :]

  def per_sample(self, values: jax.Array, axis_name: Optional[str]):
    """Expands a per-sample array ``[local_batch, ...]`` to (anchor rows, columns)."""
    gathered = gather(values, axis_name)
    return (jnp.repeat(values, self.num_views, axis=0),
            jnp.repeat(gathered, self.num_views, axis=0))


def gather(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """All-gathers ``x`` along its leading (batch) axis over ``axis_name``; identity when None."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def _shard_index(axis_name: Optional[str]):
  return 0 if axis_name is None else jax.lax.axis_index(axis_name)


def make_rows(features: jax.Array, axis_name: Optional[str] = None) -> Rows:
  """Builds the row/column view of ``features [local_batch, views, dim]``."""
  batch, views, dim = features.shape
  columns = gather(features, axis_name).reshape(-1, dim)
  anchors = features.reshape(batch * views, dim)
  offset = _shard_index(axis_name) * batch
  anchor_sample = jnp.repeat(offset + jnp.arange(batch, dtype=jnp.int32), views)
  column_sample = jnp.repeat(jnp.arange(columns.shape[0] // views, dtype=jnp.int32), views)
  row_offset = jnp.asarray(offset * views, jnp.int32)
  return Rows(anchors, columns, anchor_sample, column_sample, views, row_offset)


def global_mean(per_anchor: jax.Array, axis_name: Optional[str] = None) -> jax.Array:
  """Mean of per-anchor values over the global batch (every shard holds equally many anchors)."""
  total = jnp.sum(per_anchor)
  count = per_anchor.shape[0]
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = count * jax.lax.psum(1, axis_name)
  return total / count


# Rows whose largest |entry| is >= 2^_SAFE_EXPONENT are rescaled by a power of two before the sum
# of squares (exact: only the exponent changes); below, dim * 2^(2 * 32) cannot overflow float32.
_SAFE_EXPONENT = 32


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``x / max(||x||, eps)``: a no-op on unit vectors, finite (with finite gradient) at zero.

  Computed as ``x * rsqrt(max(sum(x^2), eps^2))`` in at least float32 (never through ``sqrt`` at 0)
  and returned in the input dtype. Scale-safe: a row whose largest ``|entry|`` is ``>= 2^32`` is first
  multiplied by a power of two that brings it below ``2^32`` (exact, the same direction), so
  ``sum(x^2)`` cannot overflow (it did for norms above ~1.8e19 in float32, turning the row into a zero
  vector with a zero gradient). Other rows are computed exactly as before (bitwise).
  """
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  largest = jax.lax.stop_gradient(jnp.max(jnp.abs(xf), axis=axis, keepdims=True))
  _, exponent = jnp.frexp(largest)  # largest = m 2^exponent, m in [0.5, 1)
  shift = jnp.maximum(exponent - _SAFE_EXPONENT, 0)
  xf = xf * jnp.ldexp(jnp.ones_like(largest), -shift)  # 1.0 (exactly) unless the row is huge
  sq = jnp.sum(xf * xf, axis=axis, keepdims=True)
  return (xf * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))).astype(x.dtype)


def pairwise_euclidean(a: jax.Array, b: jax.Array) -> jax.Array:
  """``||a_i - b_j||`` as ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))``; never the ``[n, N, dim]`` broadcast.

  The gradient at distance 0 is taken as 0 (double-``where``), so identical embeddings stay finite.
  """
  sq = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T)
  sq = jnp.maximum(sq, 0.0)
  positive = sq > 0.0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def masked_logsumexp(logits: jax.Array, valid: jax.Array, axis: int = 1) -> jax.Array:
  """Max-shifted ``log sum_{valid} exp(logits)``; every row must have a valid entry.

  Invalid entries are replaced by ``-inf`` *before* the exponential, so neither their values nor
  their gradients can turn into NaN (no ``-inf - -inf``, no ``0 * inf``).
  """
  masked = jnp.where(valid, logits, -jnp.inf)
  shift = jax.lax.stop_gradient(jnp.max(masked, axis=axis, keepdims=True))
  total = jnp.sum(jnp.exp(masked - shift), axis=axis)
  return jnp.log(total) + jnp.squeeze(shift, axis)
