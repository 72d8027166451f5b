"""Row statistics of a pairwise loss, dense or blockwise (tiles + online log-sum-exp, O(M) memory).

Every loss of the SupCon family (simclr, supcon, adacon, accon, dystress, mio, binary_contrastive) is
a function of a few per-anchor statistics of its ``[n, N]`` pair matrix:

* ``'lse'``: ``log sum_j exp(x_ij)`` (entries ``-inf`` are excluded; a row without any is ``-inf``);
* ``'sum'``: ``sum_j x_ij``;
* ``'max'``: ``max_j x_ij`` (no gradient: a stop-gradient shift, as in the official ACCon code).

A *pair function* computes the ``[r, c]`` entries of every statistic for one tile of anchors against
one tile of columns; it is the single definition of a loss' per-pair math. :func:`row_statistics`
evaluates it

* ``impl='dense'``: on the whole ``[n, N]`` matrix (plain autodiff; fastest for small batches);
* ``impl='blockwise'``: on ``row_tile x col_tile`` tiles, rows in an outer loop, columns in an inner
  loop with an online (running max) log-sum-exp. A ``jax.custom_vjp`` saves only the per-row
  statistics; its backward recomputes each tile and pulls the statistics' cotangents back through
  the pair function (``jax.vjp`` of one tile), accumulating the anchor and column gradients. Memory
  is O(M d + row_tile * col_tile), never O(M^2);
* ``impl='auto'``: dense when the ``[n, N]`` temporaries fit comfortably in device memory (a quarter
  of it, or 2 GiB where the backend does not report it), blockwise otherwise. It never picks
  ``'fused'`` (below) until that kernel has been timed faster than blockwise on a GPU.
* ``impl='fused'``: the Pallas kernels of ``pairwise.fused`` (one kernel per row tile: matmul, the
  pair function's entries and the online statistics, the ``[tile, tile]`` block never leaving
  on-chip memory). For pair functions of the tile's dot products only (:class:`DotPairFn`: every
  loss of the SupCon family except ``binary_contrastive_combo(normalize_contr=False)``); any other
  pair function raises a ``ValueError``. ``impl='fused_ring'``: the same kernels on each step of the
  ring schedule below (inside ``shard_map``; ``'fused'`` without ``axis_name``).

Inside ``jax.shard_map`` the columns are the all-gathered batch and the anchors this shard's rows;
``row_offset`` (the global index of the first local anchor) identifies each anchor's own column. The
all-gather stays outside the custom VJP, so its transpose (a reduce-scatter) routes the column
gradients back to their owners exactly as in the dense sharded mode.

``impl='ring'`` (inside ``shard_map``, given ``axis_name``) replaces that all-gather by a ring of ``P``
``ppermute`` steps (the Inf-CL schedule, Wang et al. 2024): at step ``s`` a shard streams its anchors
over the ``[n, d]`` block of shard ``i - s`` in tiles, merges the block's statistics into its running
ones (``logaddexp`` / sum / max) and passes the block on. The backward pass sends each block around
the ring again together with the gradient accumulated for it, so after ``P`` steps every block is
back at its owner holding all shards' contributions. No device ever holds more than two blocks of
features, instead of all ``M x d``; outside ``shard_map`` ``'ring'`` is ``'blockwise'``.

In blockwise mode gradients flow to ``anchors`` and ``columns`` only: ``params`` (hyperparameters) and
the per-row / per-column auxiliary arrays (labels, ECDF values, sample ids) are treated as constants.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("lse", "sum", "max")
IMPLS = ("dense", "blockwise", "ring", "fused", "fused_ring", "auto")
FUSED_IMPLS = ("fused", "fused_ring")
# Default tiles: (8192, 8192) on accelerators (measured on an H100: 1.3x the dense time at M = 32768,
# docs/benchmarks.md), smaller on CPU, where the tile's temporaries live in host memory.
DEFAULT_TILE = (8192, 8192)
DEFAULT_CPU_TILE = (1024, 4096)
# impl='fused': on-chip blocks of the Pallas kernel (FlashAttention-sized for d = 128; not yet tuned
# on a GPU), the same on every backend.
DEFAULT_FUSED_TILE = (64, 64)
# Dense temporaries per pair entry (logits, masks, exponentials, their cotangents): a generous
# estimate used by impl='auto'.
_DENSE_BYTES_PER_PAIR = 32
_FALLBACK_DENSE_BUDGET = 2 << 30

PairFn = Callable[..., Tuple[jax.Array, ...]]


class Blocking(NamedTuple):
  """How a pairwise loss schedules its pair matrix.

  Attributes:
    impl: 'dense', 'blockwise', 'ring', 'fused', 'fused_ring' or 'auto' (see the module
      docstring).
    row_tile, col_tile: the blockwise tile shape.
    matmul_dtype: None (the features' dtype) or a low-precision dtype (``jnp.bfloat16``) for the
      similarity matmul's inputs, accumulated in float32 (softmax statistics stay float32).
  """
  impl: str = "auto"  # or 'ring' / 'fused' / 'fused_ring'
  row_tile: int = DEFAULT_CPU_TILE[0]
  col_tile: int = DEFAULT_CPU_TILE[1]
  matmul_dtype: Any = None


def blocking(impl: str = "auto", tile: Union[None, int, Sequence[int]] = None,
             matmul_dtype=None) -> Blocking:
  """Validates ``impl``, ``tile`` (an int for square tiles, or ``(row_tile, col_tile)``) and
  ``matmul_dtype`` (None, or a floating dtype / its name such as ``'bfloat16'``)."""
  if impl not in IMPLS:
    raise ValueError(f"`impl` must be one of {IMPLS}; got {impl!r}.")
  if tile is None and impl in FUSED_IMPLS:
    tile = DEFAULT_FUSED_TILE
  elif tile is None:
    tile = DEFAULT_CPU_TILE if jax.default_backend() == "cpu" else DEFAULT_TILE
  elif isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
    tile = (int(tile), int(tile))
  tile = tuple(tile) if isinstance(tile, (tuple, list)) else (tile,)
  if len(tile) != 2 or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                and t >= 1 for t in tile):
    raise ValueError(f"`tile` must be a positive int or a pair (row_tile, col_tile) of positive "
                     f"ints; got {tile!r}.")
  if matmul_dtype is not None:
    try:
      matmul_dtype = jnp.dtype(matmul_dtype)
    except TypeError as e:
      raise ValueError(f"`matmul_dtype` must be None or a floating dtype; got {matmul_dtype!r}.") from e
    if not jnp.issubdtype(matmul_dtype, jnp.floating):
      raise ValueError(f"`matmul_dtype` must be a floating dtype; got {matmul_dtype}.")
  return Blocking(impl, int(tile[0]), int(tile[1]), matmul_dtype)


def _dense_budget_bytes() -> int:
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (backends without memory stats)
    stats = {}
  limit = stats.get("bytes_limit")
  return int(limit) // 4 if limit else _FALLBACK_DENSE_BUDGET


def resolve_impl(impl: str, num_rows: int, num_cols: int,
                 budget_bytes: Optional[int] = None) -> str:
  """'dense' or 'blockwise' for an ``[num_rows, num_cols]`` pair matrix (see module docstring);
  any other ``impl`` than 'auto' is returned as is ('auto' never gives 'ring' or a fused mode).

  ``budget_bytes``: the most the dense temporaries of 'auto' may take; None: a quarter of the first
  local device's memory (its ``bytes_limit``), or a fixed fallback where the backend reports none.
  """
  if impl != "auto":
    return impl
  dense_bytes = num_rows * num_cols * _DENSE_BYTES_PER_PAIR
  budget = _dense_budget_bytes() if budget_bytes is None else int(budget_bytes)
  return "dense" if dense_bytes <= budget else "blockwise"


def tile_dot(a: jax.Array, c: jax.Array, matmul_dtype=None) -> jax.Array:
  """``a @ c.T`` with optional low-precision inputs (e.g. bfloat16) and float32 accumulation."""
  if matmul_dtype is None:
    return a @ c.T
  out = jnp.promote_types(a.dtype, jnp.float32)
  return jnp.dot(a.astype(matmul_dtype), c.astype(matmul_dtype).T, preferred_element_type=out)


def _check_kinds(kinds):
  for kind in kinds:
    if kind not in KINDS:
      raise ValueError(f"statistic kinds must be in {KINDS}; got {kind!r}.")


def _reduce_dense(kind: str, x: jax.Array) -> jax.Array:
  """One statistic of a full ``[n, N]`` matrix (``-inf``-safe log-sum-exp, value and gradient)."""
  if kind == "sum":
    return jnp.sum(x, axis=1)
  if kind == "max":
    return jax.lax.stop_gradient(jnp.max(x, axis=1))
  shift = jax.lax.stop_gradient(jnp.max(x, axis=1))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  total = jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
  nonempty = total > 0
  return jnp.where(nonempty, jnp.log(jnp.where(nonempty, total, 1.0)) + shift, -jnp.inf)


def _masked_pairs(pair_fn, kinds, params, a, c, a_aux, c_aux, row_index, col_index, num_cols):
  """The pair function on one tile, with padded columns (index >= num_cols) excluded."""
  is_self = row_index[:, None] == col_index[None, :]
  channels = pair_fn(params, a, c, a_aux, c_aux, is_self)
  if len(channels) != len(kinds):
    raise ValueError(f"the pair function returned {len(channels)} statistics; expected "
                     f"{len(kinds)} ({kinds}).")
  real = (col_index < num_cols)[None, :]
  out = []
  for kind, x in zip(kinds, channels):
    fill = 0.0 if kind == "sum" else -jnp.inf
    out.append(jnp.where(real, x, fill))
  return tuple(out)


def pad_rows(x, multiple: int, mode: str = "edge"):
  """Pads axis 0 of every leaf of ``x`` to a multiple of ``multiple`` (default: edge values, which
  keep every padded entry finite; the cotangents are padded with zeros)."""
  def pad(leaf):
    leaf = jnp.asarray(leaf)
    extra = (-leaf.shape[0]) % multiple
    if not extra:
      return leaf
    widths = [(0, extra)] + [(0, 0)] * (leaf.ndim - 1)
    return jnp.pad(leaf, widths, mode=mode)
  return jax.tree.map(pad, x)


def _tiles(x, size: int):
  """``[T * size, ...] -> [T, size, ...]`` for every leaf."""
  return jax.tree.map(lambda leaf: leaf.reshape((-1, size) + leaf.shape[1:]), x)


def _zero_cotangent(x):
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _vma(leaf) -> frozenset:
  """The mesh axes ``leaf`` varies along inside ``shard_map`` (``manual_axis_type.varying`` in jax
  0.10, ``vma`` in other releases); empty outside ``shard_map``."""
  aval = jax.typeof(leaf)
  manual = getattr(aval, "manual_axis_type", None)
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()) or ())


def _varying_axes(*trees) -> frozenset:
  """Mesh axes along which any leaf of ``trees`` varies (inside ``shard_map``; empty outside)."""
  names = frozenset()
  for leaf in jax.tree.leaves(trees):
    names |= _vma(leaf)
  return names


def _like_inputs(x, axes: frozenset):
  """``x`` typed as varying along ``axes`` (a scan carry must match its body's output type)."""
  missing = tuple(sorted(axes - _vma(x)))
  return jax.lax.pcast(x, missing, to="varying") if missing else x


def _init_stat(kind: str, rows: int, dtype):
  if kind == "lse":
    return (jnp.full((rows,), -jnp.inf, dtype), jnp.zeros((rows,), dtype))
  if kind == "sum":
    return jnp.zeros((rows,), dtype)
  return jnp.full((rows,), -jnp.inf, dtype)


def _update_stat(kind: str, acc, x):
  if kind == "sum":
    return acc + jnp.sum(x, axis=1)
  if kind == "max":
    return jnp.maximum(acc, jnp.max(x, axis=1))
  running_max, total = acc
  new_max = jnp.maximum(running_max, jnp.max(x, axis=1))
  shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
  total = total * jnp.exp(running_max - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
  return (new_max, total)


def _finish_stat(kind: str, acc):
  if kind != "lse":
    return acc
  running_max, total = acc
  shift = jnp.where(jnp.isfinite(running_max), running_max, 0.0)
  nonempty = total > 0
  return jnp.where(nonempty, jnp.log(jnp.where(nonempty, total, 1.0)) + shift, -jnp.inf)


class _Layout(NamedTuple):
  row_tile: int
  col_tile: int
  num_rows: int
  num_cols: int


def _prepare(layout: _Layout, anchors, columns, a_aux, c_aux):
  """Padded, tiled inputs and the global row / column indices of every tile."""
  a = _tiles(pad_rows(anchors, layout.row_tile), layout.row_tile)
  c = _tiles(pad_rows(columns, layout.col_tile), layout.col_tile)
  aa = _tiles(pad_rows(a_aux, layout.row_tile), layout.row_tile)
  ca = _tiles(pad_rows(c_aux, layout.col_tile), layout.col_tile)
  col_index = jnp.arange(c.shape[0] * layout.col_tile, dtype=jnp.int32).reshape(c.shape[:2])
  local_rows = jnp.arange(a.shape[0] * layout.row_tile, dtype=jnp.int32).reshape(a.shape[:2])
  return a, c, aa, ca, local_rows, col_index


def _forward(pair_fn, kinds, layout: _Layout, params, anchors, columns, a_aux, c_aux, row_offset):
  a, c, aa, ca, local_rows, col_index = _prepare(layout, anchors, columns, a_aux, c_aux)
  dtype = jnp.promote_types(anchors.dtype, jnp.float32)
  axes = _varying_axes(params, anchors, columns, a_aux, c_aux, row_offset)

  def row_block(row_inputs):
    a_t, aa_t, rows_t = row_inputs
    row_index = rows_t + row_offset

    def col_block(acc, col_inputs):
      c_t, ca_t, cols_t = col_inputs
      channels = _masked_pairs(pair_fn, kinds, params, a_t, c_t, aa_t, ca_t, row_index, cols_t,
                               layout.num_cols)
      return tuple(_update_stat(k, s, x) for k, s, x in zip(kinds, acc, channels)), None

    init = tuple(_init_stat(k, layout.row_tile, dtype) for k in kinds)
    init = jax.tree.map(functools.partial(_like_inputs, axes=axes), init)
    acc, _ = jax.lax.scan(col_block, init, (c, ca, col_index))
    return tuple(_finish_stat(k, s) for k, s in zip(kinds, acc))

  stats = jax.lax.map(row_block, (a, aa, local_rows))
  return tuple(s.reshape(-1)[:layout.num_rows] for s in stats)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _blockwise(pair_fn, kinds, layout, params, anchors, columns, a_aux, c_aux, row_offset):
  return _forward(pair_fn, kinds, layout, params, anchors, columns, a_aux, c_aux, row_offset)


def _blockwise_fwd(pair_fn, kinds, layout, params, anchors, columns, a_aux, c_aux, row_offset):
  stats = _forward(pair_fn, kinds, layout, params, anchors, columns, a_aux, c_aux, row_offset)
  return stats, (params, anchors, columns, a_aux, c_aux, row_offset, stats)


def _backward(pair_fn, kinds, layout: _Layout, params, anchors, columns, a_aux, c_aux, row_offset,
              stats, cotangents):
  """``(d_anchors, d_columns)`` of the statistics' ``cotangents``, recomputing every tile.

  ``stats`` are the statistics of the anchors' WHOLE rows (for ``'lse'``: the normaliser of the
  softmax whose probabilities are the tile's cotangents), which may span more columns than
  ``columns`` (the ring passes one block of them at a time).
  """
  a, c, aa, ca, local_rows, col_index = _prepare(layout, anchors, columns, a_aux, c_aux)
  padded_stats = _tiles(pad_rows(tuple(stats), layout.row_tile), layout.row_tile)
  padded_cts = _tiles(pad_rows(tuple(cotangents), layout.row_tile, "constant"), layout.row_tile)
  axes = _varying_axes(params, anchors, columns, a_aux, c_aux, row_offset, cotangents)
  like_inputs = functools.partial(_like_inputs, axes=axes)

  def row_block(d_columns, row_inputs):
    a_t, aa_t, rows_t, stats_t, cts_t = row_inputs
    row_index = rows_t + row_offset

    def col_block(carry, col_inputs):
      d_anchor, d_columns = carry
      j, c_t, ca_t, cols_t = col_inputs
      tile_fn = lambda a_, c_: _masked_pairs(pair_fn, kinds, params, a_, c_, aa_t, ca_t, row_index,
                                             cols_t, layout.num_cols)
      channels, pullback = jax.vjp(tile_fn, a_t, c_t)
      channel_cts = []
      for kind, x, stat, ct in zip(kinds, channels, stats_t, cts_t):
        if kind == "lse":
          finite = jnp.isfinite(stat)[:, None]
          prob = jnp.exp(x - jnp.where(finite, stat[:, None], 0.0))
          channel_cts.append(jnp.where(finite, ct[:, None] * prob, 0.0))
        elif kind == "sum":
          channel_cts.append(jnp.broadcast_to(ct[:, None], x.shape).astype(x.dtype))
        else:
          channel_cts.append(jnp.zeros_like(x))
      d_a, d_c = pullback(tuple(channel_cts))
      d_columns = jax.lax.dynamic_update_index_in_dim(
          d_columns, jax.lax.dynamic_index_in_dim(d_columns, j, keepdims=False) + d_c, j, axis=0)
      return (d_anchor + d_a, d_columns), None

    init = (like_inputs(jnp.zeros_like(a_t)), d_columns)
    (d_anchor, d_columns), _ = jax.lax.scan(
        col_block, init, (jnp.arange(c.shape[0]), c, ca, col_index))
    return d_columns, d_anchor

  d_columns, d_anchors = jax.lax.scan(row_block, like_inputs(jnp.zeros_like(c)),
                                      (a, aa, local_rows, padded_stats, padded_cts))
  d_anchors = d_anchors.reshape((-1,) + anchors.shape[1:])[:layout.num_rows].astype(anchors.dtype)
  d_columns = d_columns.reshape((-1,) + columns.shape[1:])[:layout.num_cols].astype(columns.dtype)
  return d_anchors, d_columns


def _blockwise_bwd(pair_fn, kinds, layout, residuals, cotangents):
  params, anchors, columns, a_aux, c_aux, row_offset, stats = residuals
  d_anchors, d_columns = _backward(pair_fn, kinds, layout, params, anchors, columns, a_aux, c_aux,
                                   row_offset, stats, cotangents)
  return (jax.tree.map(_zero_cotangent, params), d_anchors, d_columns,
          jax.tree.map(_zero_cotangent, a_aux), jax.tree.map(_zero_cotangent, c_aux),
          _zero_cotangent(row_offset))


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


# ------------------------------------------------------------------------------------------- ring
def _merge_stat(kind: str, acc, x):
  """Combines one statistic over two disjoint column sets (``-inf``-safe for ``'lse'``)."""
  if kind == "sum":
    return acc + x
  if kind == "max":
    return jnp.maximum(acc, x)
  return jnp.logaddexp(acc, x)


def _ring_shift(x, axis_name, axis_size: int):
  """Sends every shard's ``x`` to the next shard of the ring (shard ``i`` -> ``i + 1 mod P``)."""
  perm = [(i, (i + 1) % axis_size) for i in range(axis_size)]
  return jax.tree.map(lambda leaf: jax.lax.ppermute(leaf, axis_name, perm), x)


def _block_offset(row_offset, step, axis_name, axis_size: int, block_rows: int):
  """``row_offset`` relative to the first column of the block a shard holds at ring ``step``: the
  block of shard ``(i - step) mod P``, whose first global column is that shard's index times
  ``block_rows`` (every shard holds equally many rows)."""
  owner = (jax.lax.axis_index(axis_name) - step) % axis_size
  return row_offset - owner * block_rows


def _ring_forward(forward, kinds, num_rows, axis_name, axis_size, params, anchors, a_aux,
                  row_offset):
  axes = _varying_axes(params, anchors, a_aux, row_offset)

  def step(carry, s):
    block, acc = carry
    upcoming = _ring_shift(block, axis_name, axis_size)  # independent of this step's tiles
    offset = _block_offset(row_offset, s, axis_name, axis_size, num_rows)
    stats = forward(params, anchors, block[0], a_aux, block[1], offset)
    acc = tuple(_merge_stat(k, a_, x) for k, a_, x in zip(kinds, acc, stats))
    return (upcoming, acc), None

  dtype = jnp.promote_types(anchors.dtype, jnp.float32)
  init = tuple(jnp.full((num_rows,), 0.0 if k == "sum" else -jnp.inf, dtype) for k in kinds)
  init = jax.tree.map(functools.partial(_like_inputs, axes=axes), init)
  (_, stats), _ = jax.lax.scan(step, ((anchors, a_aux), init), jnp.arange(axis_size))
  return stats


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5))
def _ring(forward, backward, kinds, num_rows, axis_name, axis_size, params, anchors, a_aux,
          row_offset):
  del backward
  return _ring_forward(forward, kinds, num_rows, axis_name, axis_size, params, anchors, a_aux,
                       row_offset)


def _ring_fwd(forward, backward, kinds, num_rows, axis_name, axis_size, params, anchors, a_aux,
              row_offset):
  del backward
  stats = _ring_forward(forward, kinds, num_rows, axis_name, axis_size, params, anchors, a_aux,
                        row_offset)
  return stats, (params, anchors, a_aux, row_offset, stats)


def _ring_bwd(forward, backward, kinds, num_rows, axis_name, axis_size, residuals, cotangents):
  """Each column block travels once around the ring with the gradient accumulated for it; after
  ``P`` shifts it is back at its owner, holding every shard's contribution."""
  del forward, kinds
  params, anchors, a_aux, row_offset, stats = residuals
  axes = _varying_axes(params, anchors, a_aux, row_offset, cotangents)
  like_inputs = functools.partial(_like_inputs, axes=axes)

  def step(carry, s):
    block, d_block, d_anchors = carry
    offset = _block_offset(row_offset, s, axis_name, axis_size, num_rows)
    d_a, d_c = backward(params, anchors, block[0], a_aux, block[1], offset, stats, cotangents)
    upcoming = _ring_shift(block, axis_name, axis_size)
    d_block = _ring_shift(d_block + d_c, axis_name, axis_size)
    return (upcoming, d_block, d_anchors + d_a), None

  zeros = like_inputs(jnp.zeros_like(anchors))
  (_, d_own, d_anchors), _ = jax.lax.scan(step, ((anchors, a_aux), zeros, zeros),
                                          jnp.arange(axis_size))
  return (jax.tree.map(_zero_cotangent, params), d_anchors + d_own,
          jax.tree.map(_zero_cotangent, a_aux), _zero_cotangent(row_offset))


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring(forward, backward, kinds, params, anchors, anchor_aux, row_offset, axis_name: str):
  """The ring schedule over ``axis_name`` for any per-block engine.

  ``forward(params, anchors, columns, a_aux, c_aux, row_offset) -> stats`` and
  ``backward(params, anchors, columns, a_aux, c_aux, row_offset, stats, cotangents) -> (d_anchors,
  d_columns)`` evaluate one block of columns (``stats``: those of the anchors' whole rows); the
  blockwise tiles (:func:`row_statistics`) or the Pallas kernels of ``pairwise.fused``.
  """
  axis_size = jax.lax.axis_size(axis_name)
  return _ring(forward, backward, tuple(kinds), anchors.shape[0], axis_name, axis_size, params,
               anchors, anchor_aux, jnp.asarray(row_offset, jnp.int32))


def check_ring_columns(num_rows: int, num_cols: int, axis_name: str):
  """impl='ring' streams the anchors of every shard: ``columns`` must be their all-gather."""
  axis_size = jax.lax.axis_size(axis_name)
  if num_cols != num_rows * axis_size:
    raise ValueError(f"impl='ring' needs the columns to be the anchors of all {axis_size} shards "
                     f"of `{axis_name}` ({num_rows * axis_size} rows); got {num_cols} columns.")


class DotPairFn:
  """A pair function whose entries depend on the features only through the tile's dot products.

  ``from_dot(params, s [r, k], a_aux, c_aux, is_self) -> tuple`` of ``[r, k]`` statistics entries,
  with ``s = a c^T`` (``tile_dot`` with ``matmul_dtype``). Called as an ordinary pair function it
  forms ``s`` and applies ``from_dot``; ``impl='fused'`` / ``'fused_ring'`` pass ``from_dot`` to the
  Pallas kernel of ``pairwise.fused``, which forms ``s`` on chip (there ``params`` leaves are
  ``[r, 1]`` columns, so ``from_dot`` must broadcast them like scalars).
  """

  def __init__(self, from_dot: Callable[..., Tuple[jax.Array, ...]], matmul_dtype=None):
    self.from_dot = from_dot
    self.matmul_dtype = matmul_dtype

  def __call__(self, params, a, c, a_aux, c_aux, is_self):
    return self.from_dot(params, tile_dot(a, c, self.matmul_dtype), a_aux, c_aux, is_self)


def row_statistics(pair_fn: PairFn, kinds: Sequence[str], params: Any, anchors: jax.Array,
                   columns: jax.Array, anchor_aux: Any = (), column_aux: Any = (),
                   row_offset=0, *, block: Optional[Blocking] = None,
                   axis_name: Optional[str] = None) -> Tuple[jax.Array, ...]:
  """Per-anchor statistics ``[n]`` of the pair matrix defined by ``pair_fn``.

  Args:
    pair_fn: ``pair_fn(params, a [r, d], c [k, d], a_aux, c_aux, is_self [r, k]) -> tuple`` of one
      ``[r, k]`` array per entry of ``kinds`` (``a_aux`` / ``c_aux``: the tile's rows of
      ``anchor_aux`` / ``column_aux``). It must be elementwise in the tile: entry ``(i, j)`` may
      depend only on anchor ``i``, column ``j`` and ``params``.
    kinds: ``'lse'``, ``'sum'`` or ``'max'`` per statistic.
    params: a pytree of hyperparameters (constants in blockwise mode).
    anchors: ``[n, d]`` anchor embeddings.
    columns: ``[N, d]`` column embeddings (the global batch).
    anchor_aux, column_aux: pytrees of per-anchor ``[n, ...]`` / per-column ``[N, ...]`` arrays.
    row_offset: global column index of the first anchor (``is_self[i, j] = row_offset + i == j``).
    block: :class:`Blocking` (default :func:`blocking`: ``impl='auto'``, the backend's tiles).
    axis_name: the ``shard_map`` mesh axis the columns were all-gathered over; used (and needed)
      by ``impl='ring'`` / ``'fused_ring'`` only, which then streams this shard's own block of columns, the anchors
      themselves (``columns`` must be ``all_gather(anchors)``, ``column_aux`` that of
      ``anchor_aux``, and ``row_offset`` the shard index times ``n``), around the ring of shards
      and never reads ``columns`` (XLA drops the unused all-gather). Without ``axis_name``,
      ``'ring'`` is ``'blockwise'`` and ``'fused_ring'`` is ``'fused'``.

  Returns:
    One ``[n]`` array per statistic.
  """
  kinds = tuple(kinds)
  _check_kinds(kinds)
  block = block or blocking()
  num_rows, num_cols = anchors.shape[0], columns.shape[0]
  impl = resolve_impl(block.impl, num_rows, num_cols)
  if impl in FUSED_IMPLS:
    if not isinstance(pair_fn, DotPairFn):
      raise ValueError(f"`impl`={impl!r} (the Pallas kernel of pairwise.fused) needs a pair function "
                       "of the tile's dot products (a DotPairFn); this loss's pair entries are not "
                       "one; use 'dense', 'blockwise', 'ring' or 'auto'.")
    from contrastive_jax.pairwise import fused  # pylint: disable=import-outside-toplevel  (cycle)
    return fused.row_statistics(pair_fn.from_dot, kinds, params, anchors, columns, anchor_aux,
                                column_aux, row_offset, block=block,
                                axis_name=axis_name if impl == "fused_ring" else None)
  row_offset = jnp.asarray(row_offset, jnp.int32)
  if impl == "ring" and axis_name is not None:
    check_ring_columns(num_rows, num_cols, axis_name)
    layout = _Layout(min(block.row_tile, num_rows), min(block.col_tile, num_rows), num_rows,
                     num_rows)
    return ring(functools.partial(_forward, pair_fn, kinds, layout),
                functools.partial(_backward, pair_fn, kinds, layout), kinds, params, anchors,
                anchor_aux, row_offset, axis_name)
  if impl == "dense":
    rows = jnp.arange(num_rows, dtype=jnp.int32) + row_offset
    cols = jnp.arange(num_cols, dtype=jnp.int32)
    channels = _masked_pairs(pair_fn, kinds, params, anchors, columns, anchor_aux, column_aux,
                             rows, cols, num_cols)
    return tuple(_reduce_dense(k, x) for k, x in zip(kinds, channels))
  layout = _Layout(min(block.row_tile, num_rows), min(block.col_tile, num_cols), num_rows,
                   num_cols)
  return _blockwise(pair_fn, kinds, layout, params, anchors, columns, anchor_aux, column_aux,
                    row_offset)
