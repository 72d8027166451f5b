"""Fused (FlashAttention-style) Pallas kernels for the label-softmax statistics of the SupCon family.

For anchors ``a [n, d]`` (already divided by the temperature), columns ``c [N, d]``, per-row labels
``y`` and the anchors' global column indices, one kernel computes per anchor ``i``

* ``lse_i = log sum_{j != i} exp(s_ij)``,
* ``sum_i = sum_{j in P(i)} s_ij``, ``P(i) = {j != i : y_j = y_i}``,
* ``count_i = |P(i)|``,

with ``s_ij = a_i . c_j`` (SupCon / SimCLR, Khosla et al. 2020 Eq. 2) or, given per-row margins
``phi`` (already scaled by ``2 / tau``), ``s_ij = a_i . c_j + [j not in P(i)] |phi_i - phi_j|``
(AdaCon Eq. 4, 6). These are the ``SOFTMAX_KINDS`` statistics of ``losses.supcon``.

Schedule (FlashAttention-2, Dao 2023, Alg. 1; the structure of JAX's
``pallas.ops.gpu.attention.mha_forward_kernel``): the grid runs over row tiles; each program keeps
its ``[row_tile, d]`` anchors on chip and loops over column tiles, forming the ``[row_tile,
col_tile]`` block of ``s`` in registers / shared memory, merging it into a running max and sum of
exponentials (online log-sum-exp) and the positive sums. Only ``O(n)`` statistics are written.

The backward pass (a ``jax.custom_vjp``; residual: the forward's ``lse``) recomputes each block in two
more kernels, like FlashAttention's separate dq and dk/dv kernels (no atomics): with
``g = d s_ij = ct_lse_i exp(s_ij - lse_i) [j != i] + ct_sum_i [j in P(i)]``, one kernel over row
tiles accumulates ``d a_i = sum_j g_ij c_j`` and one over column tiles ``d c_j = sum_i g_ij a_i``.

The kernels are written for the Pallas Triton backend (GPU; tiles must then be powers of two >= 16)
and run in Pallas interpret mode on every other backend (CPU tests; slow, for correctness only).
Labels, indices and margins are constants (zero cotangent), as in ``blockwise``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from contrastive_jax.pairwise import blockwise


class _Config(NamedTuple):
  row_tile: int
  col_tile: int
  num_rows: int
  num_cols: int
  margin: bool
  matmul_dtype: Any
  interpret: bool


def _on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def _dot(x, y, matmul_dtype, trans_a=False, trans_b=False):
  """``x @ y`` (optionally transposed) with optional low-precision inputs, float32 accumulation."""
  if matmul_dtype is not None:
    x, y = x.astype(matmul_dtype), y.astype(matmul_dtype)
  out = plgpu.dot(x, y, trans_a=trans_a, trans_b=trans_b)
  return out.astype(jnp.float32)


def _block(cfg: _Config, a, c, y_a, y_c, idx_a, col_start, phi_a=None, phi_c=None):
  """One ``[r, k]`` block: (scores ``s``, valid ``j != i`` and real, positive)."""
  col = col_start + jax.lax.broadcasted_iota(jnp.int32, (1, c.shape[0]), 1)
  valid = (col < cfg.num_cols) & (idx_a[:, None] != col)
  positive = valid & (y_a[:, None] == y_c[None, :])
  s = _dot(a, c, cfg.matmul_dtype, trans_b=True)
  if cfg.margin:
    s = s + jnp.where(positive, 0.0, jnp.abs(phi_a[:, None] - phi_c[None, :]))
  return s, valid, positive


def _streamer(cfg: _Config, size: int, *refs):
  """``load(t)``: the ``t``-th ``size``-row slice of every ref (``None`` stays ``None``).

  On GPU each slice is read from the ref inside the loop (the block streams through on-chip
  memory). In interpret mode the refs are read whole before the loop and sliced as values: JAX
  0.10's HLO interpreter carries refs read inside a loop as loop state and loses their
  ``shard_map`` varying type (a carry type mismatch inside ``shard_map``).
  """
  if not cfg.interpret:
    return lambda t: tuple(None if r is None else r[pl.ds(t * size, size)] for r in refs)
  values = tuple(None if r is None else r[...] for r in refs)
  return lambda t: tuple(None if v is None else jax.lax.dynamic_slice_in_dim(v, t * size, size)
                         for v in values)


def _forward_kernel(cfg: _Config, a_ref, c_ref, ya_ref, yc_ref, ia_ref, *refs):
  if cfg.margin:
    pa_ref, pc_ref, lse_ref, sum_ref, count_ref = refs
    phi_a = pa_ref[...]
  else:
    (lse_ref, sum_ref, count_ref), pc_ref, phi_a = refs, None, None
  a, y_a, idx_a = a_ref[...], ya_ref[...], ia_ref[...]
  rows, k = a.shape[0], cfg.col_tile
  load = _streamer(cfg, k, c_ref, yc_ref, pc_ref)

  def body(j, carry):
    running_max, total, pos_sum, count = carry
    c, y_c, phi_c = load(j)
    s, valid, positive = _block(cfg, a, c, y_a, y_c, idx_a, j * k, phi_a, phi_c)
    x = jnp.where(valid, s, -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(x, axis=1))
    shift = jnp.where(new_max > -jnp.inf, new_max, 0.0)
    total = total * jnp.exp(running_max - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
    pos_sum = pos_sum + jnp.sum(jnp.where(positive, s, 0.0), axis=1)
    count = count + jnp.sum(positive.astype(jnp.float32), axis=1)
    return new_max, total, pos_sum, count

  zeros = jnp.zeros((rows,), jnp.float32)
  init = (jnp.full((rows,), -jnp.inf, jnp.float32), zeros, zeros, zeros)
  running_max, total, pos_sum, count = jax.lax.fori_loop(0, c_ref.shape[0] // k, body, init)
  shift = jnp.where(running_max > -jnp.inf, running_max, 0.0)
  nonempty = total > 0
  lse_ref[...] = jnp.where(nonempty, jnp.log(jnp.where(nonempty, total, 1.0)) + shift, -jnp.inf)
  sum_ref[...] = pos_sum
  count_ref[...] = count


def _score_grad(s, valid, positive, lse, ct_lse, ct_sum):
  """``d s`` of one block from the rows' ``lse`` and the statistics' cotangents."""
  finite = lse > -jnp.inf
  prob = jnp.exp(jnp.where(valid, s, -jnp.inf) - jnp.where(finite, lse, 0.0)[:, None])
  return ct_lse[:, None] * prob + jnp.where(positive, ct_sum[:, None], 0.0)


def _anchor_grad_kernel(cfg: _Config, a_ref, c_ref, ya_ref, yc_ref, ia_ref, lse_ref, gl_ref,
                        gs_ref, *refs):
  if cfg.margin:
    pa_ref, pc_ref, da_ref = refs
    phi_a = pa_ref[...]
  else:
    (da_ref,), pc_ref, phi_a = refs, None, None
  a, y_a, idx_a = a_ref[...], ya_ref[...], ia_ref[...]
  lse, ct_lse, ct_sum = lse_ref[...], gl_ref[...], gs_ref[...]
  k = cfg.col_tile
  load = _streamer(cfg, k, c_ref, yc_ref, pc_ref)

  def body(j, d_a):
    c, y_c, phi_c = load(j)
    s, valid, positive = _block(cfg, a, c, y_a, y_c, idx_a, j * k, phi_a, phi_c)
    g = _score_grad(s, valid, positive, lse, ct_lse, ct_sum)
    return d_a + _dot(g, c, cfg.matmul_dtype)

  d_a = jax.lax.fori_loop(0, c_ref.shape[0] // k, body, jnp.zeros(a.shape, jnp.float32))
  da_ref[...] = d_a.astype(da_ref.dtype)


def _column_grad_kernel(cfg: _Config, c_ref, a_ref, yc_ref, ya_ref, ia_ref, lse_ref, gl_ref,
                        gs_ref, *refs):
  if cfg.margin:
    pc_ref, pa_ref, dc_ref = refs
    phi_c = pc_ref[...]
  else:
    (dc_ref,), pa_ref, phi_c = refs, None, None
  c, y_c = c_ref[...], yc_ref[...]
  r, k = cfg.row_tile, cfg.col_tile
  col_start = pl.program_id(0) * k
  load = _streamer(cfg, r, a_ref, ya_ref, ia_ref, lse_ref, gl_ref, gs_ref, pa_ref)

  def body(i, d_c):
    a, y_a, idx_a, lse, ct_lse, ct_sum, phi_a = load(i)
    s, valid, positive = _block(cfg, a, c, y_a, y_c, idx_a, col_start, phi_a, phi_c)
    g = _score_grad(s, valid, positive, lse, ct_lse, ct_sum)
    return d_c + _dot(g, a, cfg.matmul_dtype, trans_a=True)

  d_c = jax.lax.fori_loop(0, a_ref.shape[0] // r, body, jnp.zeros(c.shape, jnp.float32))
  dc_ref[...] = d_c.astype(dc_ref.dtype)


def _call(cfg: _Config, kernel, grid, in_specs, out_specs, out_shapes, name, inputs):
  """``pallas_call`` of ``kernel`` on ``inputs``; ``out_shapes``: ``(shape, dtype)`` pairs. Inside
  ``shard_map`` the inputs and outputs are typed as varying along every axis any input varies on."""
  axes = blockwise._varying_axes(inputs)  # pylint: disable=protected-access
  inputs = [blockwise._like_inputs(x, axes) for x in inputs]  # pylint: disable=protected-access
  manual = getattr(jax.typeof(inputs[0]), "manual_axis_type", None)
  typed = {} if manual is None else {"manual_axis_type": manual}
  out_shape = [jax.ShapeDtypeStruct(shape, dtype, **typed) for shape, dtype in out_shapes]
  params = None if cfg.interpret else plgpu.CompilerParams(num_warps=4, num_stages=2)
  return pl.pallas_call(functools.partial(kernel, cfg), grid=grid, in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, compiler_params=params,
                        interpret=cfg.interpret, name=name)(*inputs)


def _pad(x, multiple: int, value=None):
  """Pads axis 0 to a multiple of ``multiple`` with ``value`` (None: the edge values)."""
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


def _prepared(cfg: _Config, a, c, y_a, y_c, idx_a, phi_a, phi_c):
  r, k = cfg.row_tile, cfg.col_tile
  a, c = _pad(_pad_dim(a), r, 0.0), _pad(_pad_dim(c), k, 0.0)
  rows = (_pad(y_a, r), _pad(idx_a, r, -1)) + ((_pad(phi_a, r),) if cfg.margin else ())
  cols = (_pad(y_c, k),) + ((_pad(phi_c, k),) if cfg.margin else ())
  return a, c, rows, cols


def _forward(cfg: _Config, a, c, y_a, y_c, idx_a, phi_a, phi_c):
  a_p, c_p, (ya, ia, *pa), (yc, *pc) = _prepared(cfg, a, c, y_a, y_c, idx_a, phi_a, phi_c)
  r, n_pad = cfg.row_tile, a_p.shape[0]
  row_vec = pl.BlockSpec((r,), lambda i: (i,))
  whole = lambda x: pl.BlockSpec(x.shape, lambda i: (0,) * x.ndim)
  in_specs = [pl.BlockSpec((r, a_p.shape[1]), lambda i: (i, 0)), whole(c_p), row_vec, whole(yc),
              row_vec]
  inputs = [a_p, c_p, ya, yc, ia]
  if cfg.margin:
    in_specs += [row_vec, whole(pc[0])]
    inputs += [pa[0], pc[0]]
  stats = _call(cfg, _forward_kernel, (n_pad // r,), in_specs, [row_vec] * 3,
                [((n_pad,), jnp.float32)] * 3, "supcon_fused_forward", inputs)
  return tuple(s[:cfg.num_rows] for s in stats)


def _backward(cfg: _Config, a, c, y_a, y_c, idx_a, phi_a, phi_c, lse, ct_lse, ct_sum):
  a_p, c_p, (ya, ia, *pa), (yc, *pc) = _prepared(cfg, a, c, y_a, y_c, idx_a, phi_a, phi_c)
  r, k = cfg.row_tile, cfg.col_tile
  row_stats = (_pad(lse, r), _pad(ct_lse.astype(jnp.float32), r, 0.0),
               _pad(ct_sum.astype(jnp.float32), r, 0.0))
  whole = lambda x: pl.BlockSpec(x.shape, lambda i: (0,) * x.ndim)
  row_vec, col_vec = pl.BlockSpec((r,), lambda i: (i,)), pl.BlockSpec((k,), lambda i: (i,))

  in_specs = ([pl.BlockSpec((r, a_p.shape[1]), lambda i: (i, 0)), whole(c_p), row_vec, whole(yc),
               row_vec] + [row_vec] * 3)
  inputs = [a_p, c_p, ya, yc, ia, *row_stats]
  if cfg.margin:
    in_specs += [row_vec, whole(pc[0])]
    inputs += [pa[0], pc[0]]
  (d_a,) = _call(cfg, _anchor_grad_kernel, (a_p.shape[0] // r,), in_specs,
                 [pl.BlockSpec((r, a_p.shape[1]), lambda i: (i, 0))], [(a_p.shape, a.dtype)],
                 "supcon_fused_anchor_grad", inputs)

  in_specs = ([pl.BlockSpec((k, c_p.shape[1]), lambda i: (i, 0)), whole(a_p), col_vec, whole(ya),
               whole(ia)] + [whole(row_stats[0])] * 3)
  inputs = [c_p, a_p, yc, ya, ia, *row_stats]
  if cfg.margin:
    in_specs += [col_vec, whole(pa[0])]
    inputs += [pc[0], pa[0]]
  (d_c,) = _call(cfg, _column_grad_kernel, (c_p.shape[0] // k,), in_specs,
                 [pl.BlockSpec((k, c_p.shape[1]), lambda i: (i, 0))], [(c_p.shape, c.dtype)],
                 "supcon_fused_column_grad", inputs)
  return d_a[:cfg.num_rows, :a.shape[1]], d_c[:cfg.num_cols, :c.shape[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(cfg, a, c, y_a, y_c, idx_a, phi_a, phi_c):
  return _forward(cfg, a, c, y_a, y_c, idx_a, phi_a, phi_c)


def _fused_fwd(cfg, a, c, y_a, y_c, idx_a, phi_a, phi_c):
  stats = _forward(cfg, a, c, y_a, y_c, idx_a, phi_a, phi_c)
  return stats, (a, c, y_a, y_c, idx_a, phi_a, phi_c, stats[0])


def _fused_bwd(cfg, residuals, cotangents):
  a, c, y_a, y_c, idx_a, phi_a, phi_c, lse = residuals
  ct_lse, ct_sum, _ = cotangents  # the positive count does not depend on the features
  d_a, d_c = _backward(cfg, a, c, y_a, y_c, idx_a, phi_a, phi_c, lse, ct_lse, ct_sum)
  zero = blockwise._zero_cotangent  # pylint: disable=protected-access
  return (d_a, d_c, zero(y_a), zero(y_c), zero(idx_a), zero(phi_a), zero(phi_c))


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_tiles(row_tile: int, col_tile: int):
  for t in (row_tile, col_tile):
    if t < 16 or t & (t - 1):
      raise ValueError(f"impl='fused' on GPU needs `tile` sizes that are powers of two >= 16 "
                       f"(Triton blocks); got ({row_tile}, {col_tile}).")


def _label_dtype(y):
  y = jnp.asarray(y)
  if jnp.issubdtype(y.dtype, jnp.floating):
    return y.astype(jnp.float32)
  return y.astype(jnp.int32)


def softmax_statistics(anchors: jax.Array, columns: jax.Array, anchor_labels: jax.Array,
                       column_labels: jax.Array, row_offset=0, *,
                       block: blockwise.Blocking, anchor_margin: Optional[jax.Array] = None,
                       column_margin: Optional[jax.Array] = None):
  """``(lse, positive_sum, positive_count)`` per anchor (see the module docstring), fused.

  Args:
    anchors: ``[n, d]`` anchors already divided by the temperature (``s_ij = a_i . c_j``).
    columns: ``[N, d]`` columns (inside ``shard_map``: the all-gathered batch).
    anchor_labels, column_labels: ``[n]`` / ``[N]`` labels or sample ids; positives are equal ones.
    row_offset: global column index of the first anchor (its own column is excluded).
    block: the :class:`blockwise.Blocking` (its tiles and ``matmul_dtype``).
    anchor_margin, column_margin: optional ``[n]`` / ``[N]`` AdaCon margins ``2 phi / tau``.
  """
  num_rows, num_cols = anchors.shape[0], columns.shape[0]
  interpret = not _on_gpu()
  if interpret:
    row_tile, col_tile = min(block.row_tile, num_rows), min(block.col_tile, num_cols)
  else:
    _check_tiles(block.row_tile, block.col_tile)
    row_tile = min(block.row_tile, max(16, pl.next_power_of_2(num_rows)))
    col_tile = min(block.col_tile, max(16, pl.next_power_of_2(num_cols)))
  margin = anchor_margin is not None
  if margin != (column_margin is not None):
    raise ValueError("give both `anchor_margin` and `column_margin`, or neither.")
  cfg = _Config(row_tile, col_tile, num_rows, num_cols, margin, block.matmul_dtype, interpret)
  y_a, y_c = _label_dtype(anchor_labels), _label_dtype(column_labels)
  if y_a.dtype != y_c.dtype:
    y_a, y_c = y_a.astype(jnp.float32), y_c.astype(jnp.float32)
  idx_a = jnp.asarray(row_offset, jnp.int32) + jnp.arange(num_rows, dtype=jnp.int32)
  dtype = jnp.promote_types(anchors.dtype, jnp.float32)
  phi_a = (anchor_margin if margin else jnp.zeros((num_rows,))).astype(dtype)
  phi_c = (column_margin if margin else jnp.zeros((num_cols,))).astype(dtype)
  axes = blockwise._varying_axes(anchors, columns, y_a, y_c, idx_a, phi_a, phi_c)  # pylint: disable=protected-access
  cast = functools.partial(blockwise._like_inputs, axes=axes)  # pylint: disable=protected-access
  args = tuple(cast(x) for x in (anchors, columns, y_a, y_c, idx_a, phi_a, phi_c))
  return _fused(cfg, *args)
