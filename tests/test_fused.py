"""impl='fused' / 'fused_ring' (Pallas kernels, interpret mode on CPU) == dense, for the SupCon family.

* value and gradient vs dense (rtol 1e-5, float32) for every loss with a fused kernel (simclr,
  supcon, adacon, accon paper / official, dystress, mio, binary_contrastive and its Combo), with
  tiles that need row and column padding; the other variants (ACCon bins, DySTreSS shifted profile
  and temperature gradient, MIO v1-v2, one view, a callable SupCon temperature), traced
  hyperparameters and larger sizes are slow;
* inside ``shard_map`` on 8 forced CPU devices (this file re-runs itself as the 8-device worker, see
  ``sharded_harness``): the fused loss of each shard, with the all-gathered columns (``'fused'``)
  or on the ring (``'fused_ring'``), == the dense loss, value and gradients (wrt the features, and
  wrt parameters inside ``shard_map``); every listed loss once in the default suite, every variant
  with both schedules in the slow one. Each comparison is one jitted program over all the losses
  (``sharded_harness.check_losses``; compilation is the time of these tiny cases);
* bfloat16 matmul inputs: the error against float32 is like blockwise's (slow);
* 'auto' never picks 'fused'; the pair functions that are no function of one dot product (rnc, the
  Combo with ``normalize_contr=False``, a plain pair function) reject it by name.
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
# Interpret mode (CPU) takes any tile; the Triton kernels (GPU) powers of two >= 16. 26 rows: both
# pad rows and columns.
ON_GPU = jax.default_backend() == 'gpu'
PADDED_TILE = (16, 16) if ON_GPU else (4, 5)


def _features(name, feats):
  """The official ACCon code assumes unit vectors (normalised here, inside the traced function)."""
  if name not in UNIT_INPUTS:
    return feats
  return feats / jax.numpy.linalg.norm(feats, axis=-1, keepdims=True)


def _value_and_grad(fn, feats, labels, cdf, **mode):
  return jax.jit(jax.value_and_grad(lambda f: fn(f, labels, cdf, **mode)))(feats)


def _check(names, feats, labels, cdf, tile):
  """fused == dense (value, gradient) for every loss of ``names``: the dense and the fused
  ``value_and_grad`` of all of them are one jitted program each (one compilation per mode)."""
  def all_losses(impl, **mode):
    return jax.jit(lambda f: [jax.value_and_grad(lambda f_, n=n: CASES[n](
        _features(n, f_), labels, cdf, impl=impl, **mode))(f) for n in names])(feats)
  dense, fused = all_losses('dense'), all_losses('fused', tile=tile)
  for name, (dense_v, dense_g), (value, grad) in zip(names, dense, fused):
    scale = float(np.max(np.abs(dense_g)))
    np.testing.assert_allclose(value, dense_v, rtol=1e-5, err_msg=f'{name} tile={tile}')
    np.testing.assert_allclose(grad, dense_g, rtol=1e-5, atol=1e-6 * scale,
                               err_msg=f'{name} tile={tile}')


# The default suite: one case per loss (ACCon: paper and official, BCL: alone and Combo); the other
# variants (label bins, shifted profile, temperature gradient, MIO v1-v2, one view, a callable
# SupCon temperature) run in the slow suite.
DEFAULT_LOSSES = ('simclr', 'supcon', 'adacon', 'accon', 'accon_official', 'dystress', 'mio_v3',
                  'bcl', 'bcl_combo', 'dcl')
OTHER_VARIANTS = tuple(sorted(set(CASES) - set(DEFAULT_LOSSES)))


def test_fused_equals_dense():
  """26 rows, ``PADDED_TILE``: padded rows and columns."""
  _check(DEFAULT_LOSSES, *_inputs(), tile=PADDED_TILE)


@pytest.mark.slow
def test_fused_equals_dense_other_variants():
  _check(OTHER_VARIANTS, *_inputs(), tile=PADDED_TILE)


@pytest.mark.slow
@pytest.mark.parametrize('tile', [64, (32, 16)] + ([] if ON_GPU else [(7, 33)]))
def test_fused_equals_dense_larger(tile):
  _check(sorted(CASES), *_inputs(batch=150, views=2, dim=32, seed=1), tile=tile)


@pytest.mark.slow
def test_fused_traced_hyperparameters():
  """Hyperparameters enter the kernels as per-row constants: traced ones (under jit) work."""
  feats, labels, _ = _inputs()
  def both(impl, **mode):
    fn = lambda f, t, r: (L.supcon(f, labels, temperature=t, base_temperature=None, impl=impl,
                                   **mode) +
                          L.accon(f, labels, label_range=r, temperature=t, impl=impl, **mode))
    return jax.jit(jax.value_and_grad(fn))(feats, 0.2, 6.0)
  (dense_v, dense_g), (fused_v, fused_g) = both('dense'), both('fused', tile=PADDED_TILE)
  np.testing.assert_allclose(fused_v, dense_v, rtol=1e-5)
  np.testing.assert_allclose(fused_g, dense_g, rtol=1e-5, atol=1e-6 * np.max(np.abs(dense_g)))


@pytest.mark.slow
def test_fused_ring_without_mesh_is_fused():
  fn = CASES['adacon']
  feats, labels, cdf = _inputs()
  ring = _value_and_grad(fn, feats, labels, cdf, impl='fused_ring', tile=PADDED_TILE)
  fused = _value_and_grad(fn, feats, labels, cdf, impl='fused', tile=PADDED_TILE)
  np.testing.assert_array_equal(ring[0], fused[0])
  np.testing.assert_array_equal(ring[1], fused[1])


BF16_LOSSES = ('supcon', 'adacon', 'accon', 'accon_official', 'dystress', 'mio_v1', 'mio_v3', 'bcl',
               'bcl_combo')


def _check_bfloat16_error(name):
  """bf16 inputs of the three matmuls, float32 accumulation: relative error of the value < 2e-3 and
  of the gradient < 2e-2 against float32 dense, and the gradient error at most twice blockwise's
  (whose backward matmuls stay float32)."""
  fn = CASES[name]
  feats, labels, cdf = _inputs()
  feats = np.asarray(_features(name, feats))
  exact_v, exact_g = _value_and_grad(fn, feats, labels, cdf, impl='dense')
  errors = {}
  for impl in ('blockwise', 'fused'):
    v, g = _value_and_grad(fn, feats, labels, cdf, impl=impl, tile=PADDED_TILE,
                           matmul_dtype='bfloat16')
    errors[impl] = (abs(float(v - exact_v)) / abs(float(exact_v)),
                    float(np.linalg.norm(g - exact_g) / np.linalg.norm(exact_g)))
  assert errors['fused'][0] < 2e-3 and errors['fused'][1] < 2e-2, (name, errors)
  assert errors['fused'][1] < 2 * errors['blockwise'][1], (name, errors)
  return errors


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
IMPLS = ('fused', 'fused_ring')


def _worker():
  mesh = sharded_harness.make_mesh()
  feats, unit, labels, cdf, x, w = sharded_inputs(seed=0)
  cases = {}
  for case in os.environ['FUSED_WORKER_CASES'].split(','):
    name, impl = case.split('/')
    fn = CASES[name]
    official = name in UNIT_INPUTS
    dense = lambda f, y, c, axis_name=None, fn=fn: fn(f, y, c, impl='dense', axis_name=axis_name)
    fused = lambda f, y, c, axis_name=None, fn=fn, impl=impl: fn(
        f, y, c, impl=impl, tile=SHARDED_TILE, axis_name=axis_name)
    cases[case] = (fused, dense, unit if official else feats, official)
  results = {}
  sharded_harness.check_losses(results, cases, (labels, cdf), x=x, w=w, mesh=mesh)
  sharded_harness.emit(results)


# The default suite: every listed loss once, half of them with the all-gathered columns, half on
# the ring (official ACCon: five statistics, a max among them); the slow suite: every variant with
# both schedules.
SHARDED_DEFAULT = ('simclr/fused,supcon/fused_ring,adacon/fused,accon_official/fused_ring,'
                   'dystress/fused,mio_v3/fused_ring,bcl/fused_ring')
SHARDED_SLOW = ','.join(f'{name}/{impl}' for name in sorted(CASES) for impl in IMPLS)


@pytest.mark.parametrize('cases', [
    SHARDED_DEFAULT, pytest.param(SHARDED_SLOW, marks=pytest.mark.slow)])
def test_fused_inside_shard_map_on_8_cpu_devices(cases, monkeypatch):
  monkeypatch.setenv('FUSED_WORKER_CASES', cases)
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, 4 * len(cases.split(',')))


if __name__ == '__main__':
  _worker()
