"""Fused (FlashAttention-style) Pallas kernels for the row statistics of the SupCon family.

``impl='fused'`` of :func:`blockwise.row_statistics` for pair functions of the tile's dot products
(:class:`blockwise.DotPairFn`): for anchors ``a [n, d]``, columns ``c [N, d]``, per-row / per-column
auxiliary arrays (labels, sample ids, ECDF values) and hyperparameters, one kernel computes per
anchor ``i`` the statistics (``'lse'``, ``'sum'``, ``'max'``) of the entries
``x_ij = from_dot(params, s_ij, aux_i, aux_j, [j = i])``, ``s_ij = a_i . c_j``. The entries are the
loss's own pair math, shared with the dense and blockwise modes (``from_dot`` is the function a
:class:`~blockwise.DotPairFn` applies after its ``tile_dot``):

* SimCLR / SupCon (Khosla et al. 2020, Eq. 2): ``lse`` of ``s / tau`` over ``j != i``, ``sum`` of it
  over the positives, their count; a callable temperature (``tau(stop_gradient(s))``) too;
* AdaCon (Eq. 4, 6): ``(s + 2 |phi_i - phi_j|) / tau`` on the negatives;
* ACCon (Eq. 4, 7): the angle-compensated ``cos~theta / tau`` on the negatives; the official mode's
  five statistics (row max over all columns, two ``lse``, positive sum and count);
* DySTreSS (Eq. 6.1, 6.16 / Alg. 6.1): ``s / tau(s)``, the per-pair temperature from the
  stop-gradient similarity (or differentiated, ``grad_through_temperature``);
* MIO v1-v3 (Eq. 5.13, 5.16, 5.21): sums of ``softplus(-u)`` / ``-u`` over the positives and of
  ``softplus(u)`` over the negatives, or (v3) their ``lse``; ``u = s / tau``;
* binary contrastive (Eq. 4.14): the sum of the pair log-likelihoods of ``s / tau - log nu`` on
  L2-normalised rows; the Combo (Eq. 4.17-4.18) adds the softmax statistics of ``(2 s - |c_j|^2) /
  tau_c`` (``|c_j|^2`` a per-column constant).

Not expressible: ``binary_contrastive_combo(normalize_contr=False)``, whose contrastive term is on
the raw embeddings while its binary term is on their cosines. With one matmul per block (raw dots
``s``) the cosine is ``s / (|a_i| |c_j|)``, which needs gradients through per-row and per-column
norms; the kernel's per-row / per-column inputs are constants (zero cotangent). That loss, and the
pair functions that are no ``DotPairFn`` (rnc, ranksim, ...), raise a ``ValueError`` for ``'fused'``.

Schedule (FlashAttention-2, Dao 2023, Alg. 1; the structure of JAX's
``pallas.ops.gpu.attention.mha_forward_kernel``): the grid runs over row tiles; each program keeps
its ``[row_tile, d]`` anchors on chip and loops over column tiles, forming the ``[row_tile,
col_tile]`` block of ``s`` and of every entry in registers / shared memory and merging it into the
running statistics (online log-sum-exp, sums, max). Only ``O(n)`` statistics are written.

The backward pass (a ``jax.custom_vjp``; residuals: the inputs and the statistics) recomputes each
block in two more kernels, like FlashAttention's separate dq and dk/dv kernels (no atomics): the
entries' cotangents are ``ct_i exp(x_ij - lse_i)`` (``'lse'``), ``ct_i`` (``'sum'``) and 0
(``'max'``, a stop-gradient shift), pulled back to ``g_ij = d s_ij`` through ``from_dot``
(``jax.vjp`` of the elementwise block function, traced into the kernel); one kernel over row tiles
accumulates ``d a_i = sum_j g_ij c_j``, one over column tiles ``d c_j = sum_i g_ij a_i``.

Hyperparameters enter the kernels as per-row constants (a traced temperature is fine), so inside
``from_dot`` every ``params`` leaf is an ``[r, 1]`` column. ``impl='fused_ring'`` runs the same
forward and backward kernels on every step of the ring schedule (``blockwise.ring``).

The kernels are written for the Pallas Triton backend (GPU; tiles must then be powers of two >= 16)
and run in Pallas interpret mode on every other backend (CPU tests; slow, for correctness only).
``matmul_dtype`` (e.g. bfloat16) casts the inputs of the three matmuls (``s`` and both gradients),
accumulated in float32; entries and statistics are float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from contrastive_jax.pairwise import blockwise

_like_inputs = blockwise._like_inputs  # pylint: disable=protected-access
_varying_axes = blockwise._varying_axes  # pylint: disable=protected-access
_zero_cotangent = blockwise._zero_cotangent  # pylint: disable=protected-access


class _Config(NamedTuple):
  from_dot: Callable
  kinds: tuple
  params_tree: Any  # treedef of the hyperparameters (leaves: [n] row constants)
  row_tree: Any  # treedef of the anchors' auxiliary arrays
  col_tree: Any  # treedef of the columns' auxiliary arrays
  row_tile: int
  col_tile: int
  num_rows: int
  num_cols: int
  matmul_dtype: Any
  interpret: bool

  @property
  def num_params(self) -> int:
    return self.params_tree.num_leaves

  @property
  def num_row_leaves(self) -> int:
    return self.params_tree.num_leaves + self.row_tree.num_leaves


def _on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def _dot(x, y, matmul_dtype, trans_a=False, trans_b=False):
  """``x @ y`` (optionally transposed) with optional low-precision inputs, float32 accumulation."""
  if matmul_dtype is not None:
    x, y = x.astype(matmul_dtype), y.astype(matmul_dtype)
  out = plgpu.dot(x, y, trans_a=trans_a, trans_b=trans_b)
  return out.astype(jnp.float32)


def _entries(cfg: _Config, s, idx_a, col_start, row_vals, col_vals):
  """The statistics' ``[r, k]`` entries of one block (padded columns: 0 for sums, else -inf)."""
  col = col_start + jax.lax.broadcasted_iota(jnp.int32, (1, s.shape[1]), 1)
  is_self = idx_a[:, None] == col
  params = jax.tree.unflatten(cfg.params_tree, [p[:, None] for p in row_vals[:cfg.num_params]])
  a_aux = jax.tree.unflatten(cfg.row_tree, list(row_vals[cfg.num_params:]))
  c_aux = jax.tree.unflatten(cfg.col_tree, list(col_vals))
  channels = cfg.from_dot(params, s, a_aux, c_aux, is_self)
  if len(channels) != len(cfg.kinds):
    raise ValueError(f"the pair function returned {len(channels)} statistics; expected "
                     f"{len(cfg.kinds)} ({cfg.kinds}).")
  real = col < cfg.num_cols
  return tuple(jnp.where(real, x.astype(jnp.float32), 0.0 if kind == "sum" else -jnp.inf)
               for kind, x in zip(cfg.kinds, channels))


def _init(kind, rows):
  if kind == "lse":
    return (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32))
  return jnp.full((rows,), 0.0 if kind == "sum" else -jnp.inf, jnp.float32)


def _update(kind, acc, x):
  """Merges one block's entries into a running statistic (online log-sum-exp for ``'lse'``)."""
  if kind == "sum":
    return acc + jnp.sum(x, axis=1)
  if kind == "max":
    return jnp.maximum(acc, jnp.max(x, axis=1))
  running_max, total = acc
  new_max = jnp.maximum(running_max, jnp.max(x, axis=1))
  shift = jnp.where(new_max > -jnp.inf, new_max, 0.0)
  total = total * jnp.exp(running_max - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
  return new_max, total


def _finish(kind, acc):
  if kind != "lse":
    return acc
  running_max, total = acc
  shift = jnp.where(running_max > -jnp.inf, running_max, 0.0)
  nonempty = total > 0
  return jnp.where(nonempty, jnp.log(jnp.where(nonempty, total, 1.0)) + shift, -jnp.inf)


def _score_grad(cfg: _Config, s, idx_a, col_start, row_vals, col_vals, stats, cts):
  """``g = d s`` of one block: the statistics' cotangents pulled back through ``from_dot``."""
  entries, pullback = jax.vjp(
      lambda s_: _entries(cfg, s_, idx_a, col_start, row_vals, col_vals), s)
  entry_cts = []
  for kind, x, stat, ct in zip(cfg.kinds, entries, stats, cts):
    if kind == "lse":
      finite = stat > -jnp.inf
      prob = jnp.exp(x - jnp.where(finite, stat, 0.0)[:, None])
      entry_cts.append(jnp.where(finite[:, None], ct[:, None] * prob, 0.0))
    elif kind == "sum":
      entry_cts.append(jnp.broadcast_to(ct[:, None], x.shape))
    else:
      entry_cts.append(jnp.zeros_like(x))
  (g,) = pullback(tuple(entry_cts))
  return g


def _streamer(cfg: _Config, size: int, refs):
  """``load(t)``: the ``t``-th ``size``-row slice of every ref.

  On GPU each slice is read from the ref inside the loop (the block streams through on-chip
  memory). In interpret mode the refs are read whole before the loop and sliced as values: JAX
  0.10's HLO interpreter carries refs read inside a loop as loop state and loses their
  ``shard_map`` varying type (a carry type mismatch inside ``shard_map``).
  """
  if not cfg.interpret:
    return lambda t: tuple(r[pl.ds(t * size, size)] for r in refs)
  values = tuple(r[...] for r in refs)
  return lambda t: tuple(jax.lax.dynamic_slice_in_dim(v, t * size, size) for v in values)


def _split(refs, *counts):
  out, start = [], 0
  for n in counts:
    out.append(tuple(refs[start:start + n]))
    start += n
  return out


def _forward_kernel(cfg: _Config, a_ref, c_ref, ia_ref, *refs):
  nk = len(cfg.kinds)
  row_refs, col_refs, out_refs = _split(refs, cfg.num_row_leaves, cfg.col_tree.num_leaves, nk)
  a, idx_a = a_ref[...], ia_ref[...]
  row_vals = tuple(r[...] for r in row_refs)
  rows, k = a.shape[0], cfg.col_tile
  load = _streamer(cfg, k, (c_ref,) + col_refs)

  def body(j, acc):
    c, *col_vals = load(j)
    s = _dot(a, c, cfg.matmul_dtype, trans_b=True)
    entries = _entries(cfg, s, idx_a, j * k, row_vals, col_vals)
    return tuple(_update(kind, st, x) for kind, st, x in zip(cfg.kinds, acc, entries))

  init = tuple(_init(kind, rows) for kind in cfg.kinds)
  acc = jax.lax.fori_loop(0, c_ref.shape[0] // k, body, init)
  for kind, st, ref in zip(cfg.kinds, acc, out_refs):
    ref[...] = _finish(kind, st)


def _anchor_grad_kernel(cfg: _Config, a_ref, c_ref, ia_ref, *refs):
  nk = len(cfg.kinds)
  row_refs, col_refs, stat_refs, ct_refs, (da_ref,) = _split(
      refs, cfg.num_row_leaves, cfg.col_tree.num_leaves, nk, nk, 1)
  a, idx_a = a_ref[...], ia_ref[...]
  row_vals = tuple(r[...] for r in row_refs)
  stats, cts = tuple(r[...] for r in stat_refs), tuple(r[...] for r in ct_refs)
  k = cfg.col_tile
  load = _streamer(cfg, k, (c_ref,) + col_refs)

  def body(j, d_a):
    c, *col_vals = load(j)
    s = _dot(a, c, cfg.matmul_dtype, trans_b=True)
    g = _score_grad(cfg, s, idx_a, j * k, row_vals, col_vals, stats, cts)
    return d_a + _dot(g, c, cfg.matmul_dtype)

  d_a = jax.lax.fori_loop(0, c_ref.shape[0] // k, body, jnp.zeros(a.shape, jnp.float32))
  da_ref[...] = d_a.astype(da_ref.dtype)


def _column_grad_kernel(cfg: _Config, c_ref, a_ref, ia_ref, *refs):
  nk = len(cfg.kinds)
  row_refs, col_refs, stat_refs, ct_refs, (dc_ref,) = _split(
      refs, cfg.num_row_leaves, cfg.col_tree.num_leaves, nk, nk, 1)
  c = c_ref[...]
  col_vals = tuple(r[...] for r in col_refs)
  r = cfg.row_tile
  col_start = pl.program_id(0) * cfg.col_tile
  load = _streamer(cfg, r, (a_ref, ia_ref) + row_refs + stat_refs + ct_refs)
  nr = cfg.num_row_leaves

  def body(i, d_c):
    a, idx_a, *rest = load(i)
    row_vals, stats, cts = rest[:nr], rest[nr:nr + nk], rest[nr + nk:]
    s = _dot(a, c, cfg.matmul_dtype, trans_b=True)
    g = _score_grad(cfg, s, idx_a, col_start, row_vals, col_vals, stats, cts)
    return d_c + _dot(g, a, cfg.matmul_dtype, trans_a=True)

  d_c = jax.lax.fori_loop(0, a_ref.shape[0] // r, body, jnp.zeros(c.shape, jnp.float32))
  dc_ref[...] = d_c.astype(dc_ref.dtype)


def _call(cfg: _Config, kernel, grid, in_specs, out_specs, out_shapes, name, inputs):
  """``pallas_call`` of ``kernel`` on ``inputs``; ``out_shapes``: ``(shape, dtype)`` pairs. Inside
  ``shard_map`` the inputs and outputs are typed as varying along every axis any input varies on."""
  axes = _varying_axes(inputs)
  inputs = [_like_inputs(x, axes) for x in inputs]
  manual = getattr(jax.typeof(inputs[0]), "manual_axis_type", None)
  typed = {} if manual is None else {"manual_axis_type": manual}
  out_shape = [jax.ShapeDtypeStruct(shape, dtype, **typed) for shape, dtype in out_shapes]
  params = None if cfg.interpret else plgpu.CompilerParams(num_warps=4, num_stages=2)
  return pl.pallas_call(functools.partial(kernel, cfg), grid=grid, in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, compiler_params=params,
                        interpret=cfg.interpret, name=name)(*inputs)


def _pad(x, multiple: int, value=None):
  """Pads axis 0 to a multiple of ``multiple`` with ``value`` (None: the edge values, which keep
  every padded entry finite)."""
  extra = (-x.shape[0]) % multiple
  if not extra:
    return x
  widths = [(0, extra)] + [(0, 0)] * (x.ndim - 1)
  if value is None:
    return jnp.pad(x, widths, mode="edge")
  return jnp.pad(x, widths, constant_values=value)


def _pad_dim(x):
  """Zero-pads the feature axis to a power of two >= 16 (Triton's ``dot`` shapes); dot products
  are unchanged."""
  dim = max(16, pl.next_power_of_2(x.shape[1]))
  return jnp.pad(x, [(0, 0), (0, dim - x.shape[1])]) if dim != x.shape[1] else x


def _leaf(x):
  """A per-row / per-column auxiliary array as a kernel input (bool as int32)."""
  x = jnp.asarray(x)
  return x.astype(jnp.int32) if x.dtype == jnp.bool_ else x


def _prepared(cfg: _Config, params, anchors, columns, a_aux, c_aux, row_offset):
  """Padded kernel inputs: anchors, columns, anchor indices, row leaves (hyperparameters as
  ``[n]`` constants, then ``a_aux``) and column leaves."""
  r, k, n = cfg.row_tile, cfg.col_tile, cfg.num_rows
  a, c = _pad(_pad_dim(anchors), r, 0.0), _pad(_pad_dim(columns), k, 0.0)
  idx = _pad(jnp.asarray(row_offset, jnp.int32) + jnp.arange(n, dtype=jnp.int32), r, -1)
  dtype = jnp.promote_types(anchors.dtype, jnp.float32)
  hyper = [jnp.broadcast_to(jnp.asarray(p, dtype), (n,)) for p in jax.tree.leaves(params)]
  rows = [_pad(_leaf(x), r) for x in hyper + jax.tree.leaves(a_aux)]
  cols = [_pad(_leaf(x), k) for x in jax.tree.leaves(c_aux)]
  return a, c, idx, rows, cols


def _forward(cfg: _Config, params, anchors, columns, a_aux, c_aux, row_offset):
  """The statistics (one ``[n]`` array per kind) of ``anchors`` against ``columns``."""
  a, c, idx, rows, cols = _prepared(cfg, params, anchors, columns, a_aux, c_aux, row_offset)
  r, n_pad = cfg.row_tile, a.shape[0]
  whole = lambda x: pl.BlockSpec(x.shape, lambda i: (0,) * x.ndim)
  row_vec = pl.BlockSpec((r,), lambda i: (i,))
  in_specs = ([pl.BlockSpec((r, a.shape[1]), lambda i: (i, 0)), whole(c), row_vec]
              + [row_vec] * len(rows) + [whole(x) for x in cols])
  nk = len(cfg.kinds)
  stats = _call(cfg, _forward_kernel, (n_pad // r,), in_specs, [row_vec] * nk,
                [((n_pad,), jnp.float32)] * nk, "contrastive_fused_forward",
                [a, c, idx] + rows + cols)
  return tuple(x[:cfg.num_rows] for x in stats)


def _backward(cfg: _Config, params, anchors, columns, a_aux, c_aux, row_offset, stats,
              cotangents):
  """``(d_anchors, d_columns)`` of the statistics' ``cotangents``; ``stats``: the statistics of the
  anchors' whole rows (which may span more columns than ``columns`` under the ring)."""
  a, c, idx, rows, cols = _prepared(cfg, params, anchors, columns, a_aux, c_aux, row_offset)
  r, k = cfg.row_tile, cfg.col_tile
  stats = [_pad(jnp.asarray(x, jnp.float32), r) for x in stats]
  cts = [_pad(jnp.asarray(x, jnp.float32), r, 0.0) for x in cotangents]
  whole = lambda x: pl.BlockSpec(x.shape, lambda i: (0,) * x.ndim)
  row_vec, col_vec = pl.BlockSpec((r,), lambda i: (i,)), pl.BlockSpec((k,), lambda i: (i,))
  nk = len(cfg.kinds)

  in_specs = ([pl.BlockSpec((r, a.shape[1]), lambda i: (i, 0)), whole(c), row_vec]
              + [row_vec] * len(rows) + [whole(x) for x in cols] + [row_vec] * (2 * nk))
  (d_a,) = _call(cfg, _anchor_grad_kernel, (a.shape[0] // r,), in_specs,
                 [pl.BlockSpec((r, a.shape[1]), lambda i: (i, 0))], [(a.shape, anchors.dtype)],
                 "contrastive_fused_anchor_grad", [a, c, idx] + rows + cols + stats + cts)

  in_specs = ([pl.BlockSpec((k, c.shape[1]), lambda i: (i, 0)), whole(a), whole(idx)]
              + [whole(x) for x in rows] + [col_vec] * len(cols)
              + [whole(x) for x in stats + cts])
  (d_c,) = _call(cfg, _column_grad_kernel, (c.shape[0] // k,), in_specs,
                 [pl.BlockSpec((k, c.shape[1]), lambda i: (i, 0))], [(c.shape, columns.dtype)],
                 "contrastive_fused_column_grad", [c, a, idx] + rows + cols + stats + cts)
  return d_a[:cfg.num_rows, :anchors.shape[1]], d_c[:cfg.num_cols, :columns.shape[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(cfg, params, anchors, columns, a_aux, c_aux, row_offset):
  return _forward(cfg, params, anchors, columns, a_aux, c_aux, row_offset)


def _fused_fwd(cfg, params, anchors, columns, a_aux, c_aux, row_offset):
  stats = _forward(cfg, params, anchors, columns, a_aux, c_aux, row_offset)
  return stats, (params, anchors, columns, a_aux, c_aux, row_offset, stats)


def _fused_bwd(cfg, residuals, cotangents):
  params, anchors, columns, a_aux, c_aux, row_offset, stats = residuals
  d_a, d_c = _backward(cfg, params, anchors, columns, a_aux, c_aux, row_offset, stats, cotangents)
  zero = lambda tree: jax.tree.map(_zero_cotangent, tree)
  return zero(params), d_a, d_c, zero(a_aux), zero(c_aux), _zero_cotangent(row_offset)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_tiles(row_tile: int, col_tile: int):
  for t in (row_tile, col_tile):
    if t < 16 or t & (t - 1):
      raise ValueError(f"impl='fused' on GPU needs `tile` sizes that are powers of two >= 16 "
                       f"(Triton blocks); got ({row_tile}, {col_tile}).")


def _tiles(block: blockwise.Blocking, num_rows: int, num_cols: int):
  if not _on_gpu():
    return min(block.row_tile, num_rows), min(block.col_tile, num_cols)
  _check_tiles(block.row_tile, block.col_tile)
  return (min(block.row_tile, max(16, pl.next_power_of_2(num_rows))),
          min(block.col_tile, max(16, pl.next_power_of_2(num_cols))))


def row_statistics(from_dot: Callable, kinds, params: Any, anchors: jax.Array, columns: jax.Array,
                   anchor_aux: Any = (), column_aux: Any = (), row_offset=0, *,
                   block: blockwise.Blocking, axis_name: Optional[str] = None):
  """Per-anchor statistics ``[n]`` of the pair matrix ``from_dot(params, a c^T, ...)``, fused.

  Args:
    from_dot: ``from_dot(params, s [r, k], a_aux, c_aux, is_self [r, k]) -> tuple`` of one
      ``[r, k]`` array per entry of ``kinds`` (elementwise in the block; ``params`` leaves arrive as
      ``[r, 1]`` columns). The ``from_dot`` of a :class:`blockwise.DotPairFn`.
    kinds: ``'lse'``, ``'sum'`` or ``'max'`` per statistic.
    params: a pytree of scalar hyperparameters (constants: zero gradient, as in blockwise mode).
    anchors, columns: ``[n, d]`` / ``[N, d]`` embeddings (inside ``shard_map``: this shard's rows
      and the all-gathered batch).
    anchor_aux, column_aux: pytrees of ``[n]`` / ``[N]`` arrays (constants).
    row_offset: global column index of the first anchor (``is_self[i, j] = row_offset + i == j``).
    block: the :class:`blockwise.Blocking` (its tiles and ``matmul_dtype``).
    axis_name: given, the ring schedule over that ``shard_map`` axis (``impl='fused_ring'``):
      ``columns`` must be ``all_gather(anchors)`` and is not read (see ``blockwise.row_statistics``).
  """
  kinds = tuple(kinds)
  num_rows, num_cols = anchors.shape[0], columns.shape[0]
  for leaf in jax.tree.leaves(params):
    if jnp.ndim(leaf) != 0:
      raise ValueError(f"impl='fused' takes scalar hyperparameters; got one of shape "
                       f"{jnp.shape(leaf)}.")
  dtype = jnp.promote_types(anchors.dtype, jnp.float32)
  params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
  cols = num_rows if axis_name is not None else num_cols  # the ring streams [n, d] blocks
  column_tree = jax.tree.structure(anchor_aux if axis_name is not None else column_aux)
  row_tile, col_tile = _tiles(block, num_rows, cols)
  cfg = _Config(from_dot, kinds, jax.tree.structure(params), jax.tree.structure(anchor_aux),
                column_tree, row_tile, col_tile, num_rows, cols, block.matmul_dtype,
                not _on_gpu())
  if axis_name is not None:
    blockwise.check_ring_columns(num_rows, num_cols, axis_name)
    return blockwise.ring(functools.partial(_forward, cfg), functools.partial(_backward, cfg),
                          kinds, params, anchors, anchor_aux, row_offset, axis_name)
  args = (params, anchors, columns, anchor_aux, column_aux, jnp.asarray(row_offset, jnp.int32))
  args = jax.tree.map(functools.partial(_like_inputs, axes=_varying_axes(args)), args)
  return _fused(cfg, *args)
