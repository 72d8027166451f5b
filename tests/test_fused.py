"""impl='fused' / 'fused_ring' (Pallas kernels, interpret mode on CPU) == dense, for the SupCon family.

* value and gradient vs dense (rtol 1e-5, float32) for every loss with a fused kernel (simclr,
  supcon, adacon, accon paper / bins / official, dystress, mio v1-v3, binary_contrastive and its
  Combo), with tiles that need row and column padding; larger sizes and more tiles are slow;
* inside ``shard_map`` on 8 forced CPU devices (this file re-runs itself as the 8-device worker, see
  ``sharded_harness``): the fused loss of each shard, with the all-gathered columns and with the
  ring (``'fused_ring'``), == the dense loss; one worker run checks every loss;
* bfloat16 matmul inputs: the error against float32 is like blockwise's;
* 'auto' never picks 'fused'; the losses whose pair entries are no function of one dot product
  (rnc, the Combo with ``normalize_contr=False``) reject it by name.

Interpret mode is slow: the default cases are tiny; larger ones are marked slow.
"""

import functools
import os

import jax
import numpy as np
import pytest

import contrastive_jax as cj
from contrastive_jax import pairwise
import sharded_harness
from test_blockwise import CASES as BLOCKWISE_CASES, _inputs, _unit, sharded_inputs

L = cj.losses
_PROFILE = functools.partial(L.dystress_temperature, tau_min=0.07, tau_max=0.2)
# name -> loss(features, labels, cdf, **mode)
CASES = {name: fn for name, (fn, _) in BLOCKWISE_CASES.items()
         if name not in ('rnc', 'bcl_combo_raw')}
CASES.update({
    'supcon_int_labels_one_view': lambda f, y, c, **k: L.supcon(f[:, :1], y.astype(np.int32), **k),
    'supcon_dystress_temperature': lambda f, y, c, **k: L.supcon(
        f, y, temperature=_PROFILE, base_temperature=None, **k),
    'dystress_grad_through_temperature': lambda f, y, c, **k: L.dystress(
        f, 0.07, 0.2, grad_through_temperature=True, **k),
})
UNIT_INPUTS = ('accon_official',)  # the official code assumes unit vectors


def _features(name, feats):
  return _unit(feats).astype(np.float32) if name in UNIT_INPUTS else feats


def _value_and_grad(fn, feats, labels, cdf, **mode):
  return jax.jit(jax.value_and_grad(lambda f: fn(f, labels, cdf, **mode)))(feats)


def _check(name, feats, labels, cdf, tiles):
  fn, feats = CASES[name], _features(name, feats)
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


def test_fused_ring_without_mesh_is_fused():
  fn = CASES['adacon']
  feats, labels, cdf = _inputs()
  ring = _value_and_grad(fn, feats, labels, cdf, impl='fused_ring', tile=(4, 5))
  fused = _value_and_grad(fn, feats, labels, cdf, impl='fused', tile=(4, 5))
  np.testing.assert_array_equal(ring[0], fused[0])
  np.testing.assert_array_equal(ring[1], fused[1])


BF16_LOSSES = ('supcon', 'adacon', 'accon_official', 'dystress', 'mio_v1', 'mio_v3', 'bcl',
               'bcl_combo')


def _check_bfloat16_error(name):
  """bf16 inputs of the three matmuls, float32 accumulation: relative error of the value < 2e-3 and
  of the gradient < 2e-2 against float32 dense, and the gradient error at most twice blockwise's
  (whose backward matmuls stay float32)."""
  fn = CASES[name]
  feats, labels, cdf = _inputs()
  feats = _features(name, feats)
  exact_v, exact_g = _value_and_grad(fn, feats, labels, cdf, impl='dense')
  errors = {}
  for impl in ('blockwise', 'fused'):
    v, g = _value_and_grad(fn, feats, labels, cdf, impl=impl, tile=(4, 5),
                           matmul_dtype='bfloat16')
    errors[impl] = (abs(float(v - exact_v)) / abs(float(exact_v)),
                    float(np.linalg.norm(g - exact_g) / np.linalg.norm(exact_g)))
  assert errors['fused'][0] < 2e-3 and errors['fused'][1] < 2e-2, (name, errors)
  assert errors['fused'][1] < 2 * errors['blockwise'][1], (name, errors)


def test_fused_bfloat16_matmul_error_accon():
  """ACCon in the default suite: the angle compensation of bf16 cosines."""
  _check_bfloat16_error('accon')


@pytest.mark.slow
@pytest.mark.parametrize('name', BF16_LOSSES)
def test_fused_bfloat16_matmul_error_is_like_blockwise(name):
  _check_bfloat16_error(name)


def test_auto_never_picks_fused():
  for rows in (8, 1 << 20):
    assert pairwise.blockwise.resolve_impl('auto', rows, rows) in ('dense', 'blockwise')
    assert pairwise.blockwise.resolve_impl('auto', rows, rows, budget_bytes=1) == 'blockwise'
  assert pairwise.blockwise.resolve_impl('fused', 8, 8) == 'fused'
  assert pairwise.blocking('fused').row_tile == pairwise.blockwise.DEFAULT_FUSED_TILE[0]
  assert pairwise.blocking('fused_ring').col_tile == pairwise.blockwise.DEFAULT_FUSED_TILE[1]


@pytest.mark.parametrize('call, match', [
    (lambda f, y, c: L.rnc(f, y, impl='fused'), "rnc does not support impl='fused'"),
    (lambda f, y, c: L.binary_contrastive_combo(f, normalize_contr=False, impl='fused'),
     'normalize_contr=False.*per-row and per-column norms'),
    (lambda f, y, c: pairwise.row_statistics(
        lambda p, a, b, aa, ca, s: (a @ b.T,), ('sum',), {}, f[:, 0], f[:, 0],
        block=pairwise.blocking('fused')), 'DotPairFn'),
])
def test_pair_functions_without_a_fused_kernel_name_impl(call, match):
  feats, labels, cdf = _inputs()
  with pytest.raises(ValueError, match=match):
    call(feats, labels, cdf)


# ------------------------------------------------------------ 8 devices: fused and fused_ring per shard
# Per shard: 3 samples x 2 views = 6 rows; tile (4, 16): padded rows, one padded column tile
# (all-gather: 48 columns, 3 column tiles; ring: one 6-row block per step).
SHARDED_TILE = (4, 16)


def _worker():
  mesh = sharded_harness.make_mesh()
  feats, unit, labels, cdf, x, w = sharded_inputs(seed=0)
  results = {}
  for name in os.environ['FUSED_WORKER_LOSSES'].split(','):
    fn = CASES[name]
    official = name in UNIT_INPUTS
    dense = lambda f, y, c, axis_name=None, fn=fn: fn(f, y, c, impl='dense', axis_name=axis_name)
    for impl in ('fused', 'fused_ring'):
      fused = lambda f, y, c, axis_name=None, fn=fn, impl=impl: fn(
          f, y, c, impl=impl, tile=SHARDED_TILE, axis_name=axis_name)
      sharded_harness.check_loss(results, f'{name}/{impl}', fused, unit if official else feats,
                                 (labels, cdf), x=x, w=w, normalise=official, mesh=mesh,
                                 reference_fn=dense)
  sharded_harness.emit(results)


SHARDED_DEFAULT = ('simclr', 'adacon', 'accon', 'accon_official', 'dystress', 'mio_v3', 'bcl_combo')
SHARDED_SLOW = tuple(sorted(set(CASES) - set(SHARDED_DEFAULT) - {'supcon_int_labels_one_view'}))


@pytest.mark.parametrize('losses', [
    ','.join(SHARDED_DEFAULT),
    pytest.param(','.join(SHARDED_SLOW), marks=pytest.mark.slow),
])
def test_fused_inside_shard_map_on_8_cpu_devices(losses, monkeypatch):
  monkeypatch.setenv('FUSED_WORKER_LOSSES', losses)
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, 2 * 4 * len(losses.split(',')))


if __name__ == '__main__':
  _worker()
