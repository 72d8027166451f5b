"""impl='fused' (Pallas kernels, interpret mode on CPU) == dense, for simclr, supcon and adacon.

* value and gradient vs dense (rtol 1e-5, float32) for tiles that need row and column padding, a
  square tile and one tile covering all;
* inside ``shard_map`` on 8 forced CPU devices (this file re-runs itself as the 8-device worker, see
  ``sharded_harness``): the fused loss of each shard == the dense loss;
* 'auto' never picks 'fused'; every other loss (and a callable temperature) rejects it by name.

Interpret mode is slow: the default cases are tiny; larger ones are marked slow.
"""

import os

import jax
import numpy as np
import pytest

import contrastive_jax as cj
from contrastive_jax import pairwise
import sharded_harness

L = cj.losses


def _inputs(batch=13, views=2, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(batch, views, dim)) * np.exp(rng.uniform(-1, 1, size=(batch, views, 1)))
  labels = rng.integers(0, 4, size=batch).astype(np.float32)
  labels[:2] = [5.0, 6.0]  # two labels without a partner sample
  cdf = np.asarray(L.fit_ecdf(np.concatenate([labels, np.linspace(-1.0, 7.0, 9)]))(labels),
                   np.float32)
  return feats.astype(np.float32), labels, cdf


CASES = {
    'simclr': lambda f, y, c, **k: L.simclr(f, **k),
    'supcon': lambda f, y, c, **k: L.supcon(f, y, **k),
    'supcon_int_labels_one_view': lambda f, y, c, **k: L.supcon(f[:, :1], y.astype(np.int32), **k),
    'adacon': lambda f, y, c, **k: L.adacon(f, y, c, temperature=0.1, **k),
}


def _value_and_grad(fn, feats, labels, cdf, **mode):
  return jax.jit(jax.value_and_grad(lambda f: fn(f, labels, cdf, **mode)))(feats)


def _check(name, feats, labels, cdf, tiles):
  fn = CASES[name]
  dense_v, dense_g = _value_and_grad(fn, feats, labels, cdf, impl='dense')
  scale = float(np.max(np.abs(dense_g)))
  for tile in tiles:
    value, grad = _value_and_grad(fn, feats, labels, cdf, impl='fused', tile=tile)
    np.testing.assert_allclose(value, dense_v, rtol=1e-5, err_msg=f'{name} tile={tile}')
    np.testing.assert_allclose(grad, dense_g, rtol=1e-5, atol=1e-6 * scale,
                               err_msg=f'{name} tile={tile}')


@pytest.mark.parametrize('name', sorted(CASES))
def test_fused_equals_dense(name):
  # 26 rows: (4, 5) pads rows and columns; 64 is one tile covering everything.
  _check(name, *_inputs(), tiles=((4, 5), 64) if name == 'supcon' else ((4, 5),))


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(CASES))
def test_fused_equals_dense_larger(name):
  _check(name, *_inputs(batch=150, views=2, dim=32, seed=1), tiles=((32, 16), (64, 64), (7, 33)))


@pytest.mark.slow
def test_fused_bfloat16_matmul_error_is_like_blockwise():
  feats, labels, cdf = _inputs()
  for name in ('supcon', 'adacon'):
    fn = CASES[name]
    exact_v, exact_g = _value_and_grad(fn, feats, labels, cdf, impl='dense')
    errors = {}
    for impl in ('blockwise', 'fused'):
      v, g = _value_and_grad(fn, feats, labels, cdf, impl=impl, tile=(4, 5),
                             matmul_dtype='bfloat16')
      errors[impl] = (abs(float(v - exact_v)) / abs(float(exact_v)),
                      float(np.linalg.norm(g - exact_g) / np.linalg.norm(exact_g)))
    assert errors['fused'][0] < 2e-3 and errors['fused'][1] < 2e-2, (name, errors)
    assert errors['fused'][1] < 2 * errors['blockwise'][1], (name, errors)


def test_auto_never_picks_fused():
  for rows in (8, 1 << 20):
    assert pairwise.blockwise.resolve_impl('auto', rows, rows) in ('dense', 'blockwise')
    assert pairwise.blockwise.resolve_impl('auto', rows, rows, budget_bytes=1) == 'blockwise'
  assert pairwise.blockwise.resolve_impl('fused', 8, 8) == 'fused'
  assert pairwise.blocking('fused').row_tile == pairwise.blockwise.DEFAULT_FUSED_TILE[0]


@pytest.mark.parametrize('call', [
    lambda f, y, c: L.accon(f, y, 6.0, impl='fused'),
    lambda f, y, c: L.dystress(f, 0.07, 0.2, impl='fused'),
    lambda f, y, c: L.mio(f, version=3, impl='fused'),
    lambda f, y, c: L.binary_contrastive(f, impl='fused'),
    lambda f, y, c: L.rnc(f, y, impl='fused'),
    lambda f, y, c: L.supcon(f, y, temperature=lambda cos: 0.1 + 0.0 * cos, base_temperature=None,
                             impl='fused'),
])
def test_losses_without_a_fused_kernel_name_impl(call):
  feats, labels, cdf = _inputs()
  with pytest.raises(ValueError, match='`impl`|impl='):
    call(feats, labels, cdf)


# ---------------------------------------------------------------------- 8 devices: fused per shard
def _worker():
  mesh = sharded_harness.make_mesh()
  batch = 3 * sharded_harness.N_DEVICES
  rng = np.random.default_rng(0)
  feats = (rng.normal(size=(batch, 2, 8)) *
           np.exp(rng.uniform(-1, 1, size=(batch, 2, 1)))).astype(np.float32)
  labels = rng.integers(0, 5, size=batch).astype(np.float32)
  cdf = np.asarray(L.fit_ecdf(labels)(labels), np.float32)
  x = rng.normal(size=(batch, 2, 5)).astype(np.float32)
  w = (rng.normal(size=(5, 8)) / np.sqrt(5)).astype(np.float32)
  results = {}
  for name in os.environ['FUSED_WORKER_LOSSES'].split(','):
    fn = CASES[name]
    fused = lambda f, y, c, axis_name=None, fn=fn: fn(f, y, c, impl='fused', tile=(4, 16),
                                                      axis_name=axis_name)
    dense = lambda f, y, c, axis_name=None, fn=fn: fn(f, y, c, impl='dense', axis_name=axis_name)
    sharded_harness.check_loss(results, name, fused, feats, (labels, cdf), x=x, w=w, mesh=mesh,
                               reference_fn=dense)
  sharded_harness.emit(results)


@pytest.mark.parametrize('losses', [
    'simclr,adacon',  # both kernel variants (sample ids; labels with margins)
    pytest.param('supcon', marks=pytest.mark.slow),
])
def test_fused_inside_shard_map_on_8_cpu_devices(losses, monkeypatch):
  monkeypatch.setenv('FUSED_WORKER_LOSSES', losses)
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, 4 * len(losses.split(',')))


if __name__ == '__main__':
  _worker()
