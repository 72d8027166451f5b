"""Blockwise execution (tiles + online log-sum-exp, custom VJP) == dense, for every loss it serves.

* value and gradient, blockwise vs dense and vs the float64 NumPy references, for tiles that divide
  the batch, tiles that need padding, single-row / single-column tiles and one tile covering all;
* inside ``shard_map`` on 8 forced CPU devices: the blockwise loss of each shard == the dense loss
  (this file re-runs itself as the 8-device worker, see ``sharded_harness``);
* memory: the compiled blockwise loss+gradient never holds an ``[M, M]`` temporary;
* bfloat16 similarity matmul: bounded error against float32;
* argument errors.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import contrastive_jax as cj
from contrastive_jax import pairwise
import references
import references_thesis
import sharded_harness

L = cj.losses
TILES = ((4, 5), 3, (7, 64))  # padded rows and columns, square, one column tile


def _inputs(batch=13, views=2, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(batch, views, dim)) * np.exp(rng.uniform(-1, 1, size=(batch, views, 1)))
  labels = rng.integers(0, 4, size=batch).astype(np.float32)
  labels[:2] = [5.0, 6.0]  # two labels without a partner sample
  train = np.concatenate([labels, np.linspace(-1.0, 7.0, 9)]).astype(np.float32)
  cdf = np.asarray(L.fit_ecdf(train)(labels), np.float32)
  return feats.astype(np.float32), labels, cdf


def _unit(f):
  return f / np.linalg.norm(f, axis=-1, keepdims=True)


# name -> (loss(features, labels, cdf, **mode), float64 reference(features64, labels, cdf))
CASES = {
    'simclr': (lambda f, y, c, **k: L.simclr(f, **k),
               lambda f, y, c: references.simclr_ref(f)),
    'supcon': (lambda f, y, c, **k: L.supcon(f, y, **k),
               lambda f, y, c: references.supcon_ref(f, y)),
    'adacon': (lambda f, y, c, **k: L.adacon(f, y, c, temperature=0.1, **k),
               lambda f, y, c: references.adacon_ref(f, y, c, temperature=0.1)),
    'accon': (lambda f, y, c, **k: L.accon(f, y, 6.0, **k),
              lambda f, y, c: references.accon_ref(f, y, 6.0)),
    'accon_bins': (lambda f, y, c, **k: L.accon(f, y, 6.0, bin_width=2.0, **k),
                   lambda f, y, c: references.accon_ref(f, y, 6.0, bin_width=2.0)),
    'accon_official': (lambda f, y, c, **k: L.accon(f, y, 100.0, official=True, **k), None),
    'dystress': (lambda f, y, c, **k: L.dystress(f, 0.07, 0.2, **k),
                 lambda f, y, c: references_thesis.dystress_ref(f, 0.07, 0.2)),
    'dystress_shifted': (
        lambda f, y, c, **k: L.dystress(f, 0.07, 0.2, 'shifted', 0.2, 0.6, **k),
        lambda f, y, c: references_thesis.dystress_ref(f, 0.07, 0.2, 'shifted', 0.2, 0.6)),
    'mio_v1': (lambda f, y, c, **k: L.mio(f, version=1, **k),
               lambda f, y, c: references_thesis.mio_ref(f, version=1)),
    'mio_v2': (lambda f, y, c, **k: L.mio(f, version=2, **k),
               lambda f, y, c: references_thesis.mio_ref(f, version=2)),
    'mio_v3': (lambda f, y, c, **k: L.mio(f, version=3, **k),
               lambda f, y, c: references_thesis.mio_ref(f, version=3)),
    'bcl': (lambda f, y, c, **k: L.binary_contrastive(f, **k),
            lambda f, y, c: references_thesis.bcl_ref(f)),
    'bcl_combo': (lambda f, y, c, **k: L.binary_contrastive_combo(f, **k),
                  lambda f, y, c: references_thesis.combo_ref(f)),
    'bcl_combo_raw': (lambda f, y, c, **k: L.binary_contrastive_combo(f, normalize_contr=False, **k),
                      lambda f, y, c: references_thesis.combo_ref(f, normalize=False)),
    'rnc': (lambda f, y, c, **k: L.rnc(f, y, **k),
            lambda f, y, c: references.rnc_ref(f, y)),
    'dcl': (lambda f, y, c, **k: L.dcl(f, 0.2, **k),
            lambda f, y, c: references_thesis.dcl_ref(f, 0.2)),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_blockwise_equals_dense_and_reference(name, fast_compile):
  del fast_compile
  fn, ref = CASES[name]
  feats, labels, cdf = _inputs()
  if name == 'accon_official':
    feats = _unit(feats).astype(np.float32)
  tiles = [tile[0] if name == 'rnc' and not isinstance(tile, int) else tile  # RNC tiles anchors only
           for tile in TILES]
  # One program per case holds the dense and every tiled value and gradient (each is its own
  # subgraph, as in separate programs): one compilation instead of four.
  value_and_grad = lambda f, **mode: jax.value_and_grad(lambda f: fn(f, labels, cdf, **mode))(f)
  (dense_v, dense_g), *tiled = jax.jit(lambda f: [value_and_grad(f, impl='dense')] + [
      value_and_grad(f, impl='blockwise', tile=tile) for tile in tiles])(feats)
  if ref is not None:
    np.testing.assert_allclose(float(dense_v), ref(feats.astype(np.float64), labels, cdf),
                               rtol=2e-5)
  scale = float(jnp.max(jnp.abs(dense_g)))
  for tile, (value, grad) in zip(tiles, tiled):
    np.testing.assert_allclose(value, dense_v, rtol=1e-5, err_msg=f'{name} tile={tile}')
    np.testing.assert_allclose(grad, dense_g, rtol=1e-5, atol=1e-6 * scale,
                               err_msg=f'{name} tile={tile}')


def test_rnc_v_order_matches_per_row_sort_with_ties_and_tiny_temperature():
  """Scalar labels use the V-order search; [batch, 1] labels take the per-row-sort path."""
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(24, 2, 6)).astype(np.float32)
  labels = rng.integers(0, 5, size=24).astype(np.float32)  # many ties
  labels[:3] = [0.1, 0.2, 0.30000001]
  # One jitted program, the temperature traced (one compilation serves both temperatures; eager
  # op-by-op dispatch compiled every primitive of both paths). The eager loss equals the jitted one
  # in tests/test_losses.py::test_jit_matches_eager; this test compares the two label paths.
  both = jax.jit(lambda f, t: (jax.value_and_grad(lambda f: L.rnc(f, labels, t))(f),
                               jax.value_and_grad(lambda f: L.rnc(f, labels[:, None], t))(f)))
  for temperature in (2.0, 0.01):
    (v_value, v_grad), (s_value, s_grad) = both(feats, temperature)
    assert np.isfinite(float(v_value))
    np.testing.assert_allclose(v_value, s_value, rtol=1e-5)
    np.testing.assert_allclose(v_grad, s_grad, rtol=1e-5, atol=1e-6 * np.abs(s_grad).max())
    np.testing.assert_allclose(float(v_value),
                               references.rnc_ref(feats.astype(np.float64), labels, temperature),
                               rtol=1e-4)


def test_blockwise_invariant_to_batch_permutation():
  feats, labels, cdf = _inputs(batch=20)
  perm = np.random.default_rng(1).permutation(20)
  for name in ('supcon', 'adacon', 'mio_v3', 'rnc'):
    fn = CASES[name][0]
    a = fn(feats, labels, cdf, impl='blockwise', tile=8 if name == 'rnc' else (8, 16))
    b = fn(feats[perm], labels[perm], cdf[perm], impl='blockwise',
           tile=8 if name == 'rnc' else (8, 16))
    np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=name)


def _temp_bytes(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_memory_is_linear_in_batch():
  """M = 4096 rows: the dense loss+grad holds several [M, M] float32 temporaries (64 MiB each);
  blockwise with 256 x 512 tiles stays within a few tiles plus O(M d)."""
  m, dim = 4096, 16
  feats = jnp.ones((m // 2, 2, dim), jnp.float32)
  labels = jnp.arange(m // 2, dtype=jnp.float32)
  square = m * m * 4
  for name in ('supcon', 'accon_official', 'mio_v3'):
    fn = CASES[name][0]
    grad = lambda f, impl, tile=None, fn=fn: jax.grad(lambda f: fn(f, labels, labels / m, impl=impl,
                                                                   tile=tile))(f)
    dense = _temp_bytes(functools.partial(grad, impl='dense'), feats)
    block = _temp_bytes(functools.partial(grad, impl='blockwise', tile=(256, 512)), feats)
    assert dense >= square, (name, dense)
    assert block < 24 * 256 * 512 * 4 + 64 * m * dim * 4, (name, block)
  rnc_block = _temp_bytes(lambda f: jax.grad(lambda f: L.rnc(f, labels, impl='blockwise',
                                                                tile=64))(f), feats)
  assert rnc_block < square, rnc_block


def test_auto_picks_dense_for_small_and_blockwise_for_large():
  assert pairwise.blockwise.resolve_impl('auto', 128, 128) == 'dense'
  assert pairwise.blockwise.resolve_impl('auto', 1024, 1024, budget_bytes=1 << 20) == 'blockwise'
  assert pairwise.blockwise.resolve_impl('dense', 1 << 20, 1 << 20, budget_bytes=1 << 20) == 'dense'
  feats, labels, _ = _inputs(batch=64)
  np.testing.assert_allclose(L.supcon(feats, labels, impl='auto'),
                             L.supcon(feats, labels, impl='dense'), rtol=1e-5)


def test_bfloat16_matmul_error_is_small():
  """bf16 matmul inputs, f32 accumulation and statistics: measured error against float32."""
  feats, labels, cdf = _inputs(batch=256, dim=128)
  for name in ('supcon', 'simclr', 'accon', 'mio_v3'):
    fn = CASES[name][0]
    # One program per loss for both matmul dtypes (one compilation instead of two).
    value_and_grad = lambda f, **mode: jax.value_and_grad(
        lambda f: fn(f, labels, cdf, impl='blockwise', tile=64, **mode))(f)
    (exact_v, exact_g), (low_v, low_g) = jax.jit(lambda f: (
        value_and_grad(f), value_and_grad(f, matmul_dtype=jnp.bfloat16)))(feats)
    assert abs(float(low_v) - float(exact_v)) < 2e-2 * abs(float(exact_v)), name
    rel = float(jnp.linalg.norm(low_g - exact_g) / jnp.linalg.norm(exact_g))
    assert rel < 5e-2, (name, rel)


@pytest.mark.parametrize('kwargs, match', [
    ({'impl': 'tiled'}, '`impl`'),
    ({'impl': 'blockwise', 'tile': 0}, '`tile`'),
    ({'impl': 'blockwise', 'tile': (4, 4, 4)}, '`tile`'),
    ({'impl': 'blockwise', 'tile': 2.5}, '`tile`'),
    ({'matmul_dtype': 'int8'}, '`matmul_dtype`'),
])
def test_bad_mode_arguments(kwargs, match):
  feats, labels, _ = _inputs()
  with pytest.raises(ValueError, match=match):
    L.supcon(feats, labels, **kwargs)


def test_row_statistics_kinds_and_empty_rows():
  """A row whose 'lse' entries are all excluded gives -inf with a zero (not NaN) gradient."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)

  def pair_fn(params, a_, c_, a_aux, c_aux, is_self):
    logits = a_ @ c_.T
    keep = (a_aux[:, None] > 0) & ~is_self
    return jnp.where(keep, logits, -jnp.inf), logits, logits

  aux = jnp.array([1, 1, 0, 1, 1])
  for block in (pairwise.blocking('dense'), pairwise.blocking('blockwise', (2, 3))):
    def total(x):
      lse, s, m = pairwise.row_statistics(pair_fn, ('lse', 'sum', 'max'), {}, x, x, aux, aux,
                                          block=block)
      return jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)) + jnp.sum(s) + jnp.sum(m), (lse, m)
    (value, (lse, m)), grad = jax.value_and_grad(total, has_aux=True)(a)
    assert lse[2] == -jnp.inf and np.all(np.isfinite(np.asarray(lse)[[0, 1, 3, 4]]))
    chex.assert_trees_all_close(m, jnp.max(a @ a.T, axis=1))
    assert np.all(np.isfinite(np.asarray(grad)))
  with pytest.raises(ValueError, match='kinds'):
    pairwise.row_statistics(pair_fn, ('lse', 'mean', 'max'), {}, a, a, aux, aux)


# ------------------------------------------------------------------ 8 devices: blockwise per shard
def sharded_inputs(seed=0):
  """Inputs of an 8-device worker: 3 samples x 2 views per device (features, their unit version,
  labels, ECDF values) and the ``x @ w`` pair of the inside-``shard_map`` gradient check."""
  batch = 3 * sharded_harness.N_DEVICES
  rng = np.random.default_rng(seed)
  feats = (rng.normal(size=(batch, 2, 8)) *
           np.exp(rng.uniform(-1, 1, size=(batch, 2, 1)))).astype(np.float32)
  unit = _unit(feats).astype(np.float32)
  labels = rng.integers(0, 5, size=batch).astype(np.float32)
  cdf = np.asarray(L.fit_ecdf(labels)(labels), np.float32)
  x = rng.normal(size=(batch, 2, 5)).astype(np.float32)
  w = (rng.normal(size=(5, 8)) / np.sqrt(5)).astype(np.float32)
  return feats, unit, labels, cdf, x, w


# The all-gather + blockwise composition is loss-agnostic (the gathered columns go through the same
# ``row_statistics`` as on one device, where every case is checked above), so the 8-device check runs one
# case per kind of pair function: plain logits, margins, the official ACCon form, per-pair temperatures,
# MIO's extra statistics, BCL's combination, and RNC's ranking sets. Every SupCon-family case also runs
# blockwise tiles inside ``shard_map`` with the ring (tests/test_ring.py), and dense == sharded for every
# loss is tests/test_losses_sharded.py / test_thesis_losses.py.
SHARDED_BLOCKWISE_CASES = ('supcon', 'adacon', 'accon_official', 'dystress', 'mio_v2', 'bcl_combo', 'rnc')


def _worker():
  mesh = sharded_harness.make_mesh()
  feats, unit, labels, cdf, x, w = sharded_inputs(seed=0)
  results = {}
  cases = {}
  for name in SHARDED_BLOCKWISE_CASES:
    fn = CASES[name][0]
    tile = 2 if name == 'rnc' else (2, 5)
    blockwise = lambda f, y, c, axis_name=None, fn=fn, tile=tile: fn(
        f, y, c, impl='blockwise', tile=tile, axis_name=axis_name)
    dense = lambda f, y, c, axis_name=None, fn=fn: fn(f, y, c, impl='dense', axis_name=axis_name)
    official = name == 'accon_official'
    cases[name] = (blockwise, dense, unit if official else feats, official)
  # One jitted program per comparison over all the cases: compilation is the time of tiny cases.
  sharded_harness.check_losses(results, cases, (labels, cdf), x=x, w=w, mesh=mesh)
  sharded_harness.emit(results)


def test_blockwise_inside_shard_map_on_8_cpu_devices():
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, 4 * len(SHARDED_BLOCKWISE_CASES))


if __name__ == '__main__':
  _worker()
