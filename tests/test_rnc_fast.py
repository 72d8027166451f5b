"""The fast scalar-label paths of Rank-N-Contrast (``contrastive_jax.losses.rnc``).

``'analytic'`` (shared-vector searches + closed-form custom VJP) and ``'shared_search'`` (the same
searches, autodiff) against float64 NumPy references written from the loss (Zha et al. 2023, Eq. 2):
values with label ties, rounding collisions of the float32 label distances and tiny temperatures,
tiles that pad, and gradients (features and temperature) against central differences in float64.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import contrastive_jax as cj
import references as R

rnc_module = importlib.import_module('contrastive_jax.losses.rnc')
pytestmark = pytest.mark.usefixtures('fast_compile')

FAST = ('analytic', 'shared_search')


@pytest.fixture
def variant(request):
  return request.param


def rnc_ref_float32_distances(features, labels, temperature):
  """RNC in float64 with ``d_ij = |y_i - y_j|`` rounded as float32 arithmetic rounds it (the tie
  semantics of float32 labels: distinct labels whose differences round to the same value tie)."""
  f = np.asarray(features, np.float64)
  b, v, _ = f.shape
  z = f.reshape(b * v, -1)
  y = np.repeat(np.asarray(labels, np.float32), v)
  s = -np.linalg.norm(z[:, None, :] - z[None, :, :], axis=-1) / temperature
  d = np.abs(y[:, None] - y[None, :])  # float32 subtraction, as the loss computes it
  return R.rnc_from_matrices_ref(s, d)


def central_difference(fn, x, h=1e-5):
  x = np.array(x, np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (fn(up) - fn(down)) / (2 * h)
  return grad


@functools.lru_cache(maxsize=None)
def _jitted(variant, impl, tile):
  fn = lambda f, y, t: cj.losses.rnc(f, y, t, impl=impl, tile=tile, variant=variant)
  return jax.jit(jax.value_and_grad(fn))


def _value_and_grad(variant, features, labels, temperature, impl, tile):
  """One compilation per (variant, impl, tile, shapes): labels and temperature are traced."""
  fn = _jitted(variant, impl, tile)
  return fn(features, labels, np.float32(temperature))


@pytest.mark.parametrize('num', [1, 2, 3, 7, 8, 9, 31, 100])
@pytest.mark.parametrize('bits', [1, 2, 3, 4])
def test_first_true_matches_searchsorted(num, bits):
  values = np.sort(np.random.default_rng(num).integers(0, 12, size=num)).astype(np.float32)
  queries = np.arange(-1.0, 13.0, 0.5, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  y = jnp.asarray(values)
  first_true = rnc_module._first_true  # pylint: disable=protected-access
  got = first_true(lambda k: y[k] >= queries, num, queries.shape, bits)
  np.testing.assert_array_equal(got, np.searchsorted(values, queries, side='left'))
  got = first_true(lambda k: y[k] > queries, num, queries.shape, bits)
  np.testing.assert_array_equal(got, np.searchsorted(values, queries, side='right'))


@pytest.mark.parametrize('variant', FAST, indirect=True)
@pytest.mark.parametrize('temperature', [2.0, 0.05])
def test_value_with_ties_matches_reference_dense_and_padded_tiles(variant, temperature):
  rng = np.random.default_rng(11)
  # dim 3, the shape of the rounding-collision and tiny-temperature cases: their tile-5 program
  # (one RNC compilation per variant, ~2-4 s) serves this test too; the ties and the tiling, not
  # the feature width, are the point here.
  feats = rng.normal(size=(12, 2, 3)).astype(np.float32)
  labels = rng.integers(0, 4, size=12).astype(np.float32)  # many ties
  labels[:2] = [0.1, 7.5]
  expected = R.rnc_ref(feats.astype(np.float64), labels, temperature)
  dense_v, dense_g = _value_and_grad(variant, feats, labels, temperature, 'dense', 256)
  np.testing.assert_allclose(float(dense_v), expected, rtol=1e-5, err_msg=variant)
  scale = float(np.abs(dense_g).max())
  for tile in (5, 8):  # 24 rows: tiles of 5 pad by 1, tiles of 8 divide them
    value, grad = _value_and_grad(variant, feats, labels, temperature, 'blockwise', tile)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5, err_msg=f'{variant} tile={tile}')
    np.testing.assert_allclose(grad, dense_g, rtol=1e-5, atol=1e-6 * scale,
                               err_msg=f'{variant} tile={tile}')


@pytest.mark.parametrize('variant', FAST, indirect=True)
@pytest.mark.parametrize('temperature', [1.0, 0.01])
def test_rounding_collisions_of_float32_label_distances(variant, temperature):
  """Labels 1e8 apart from small ones: fl(1e8 - y_k) is the same for distinct small y_k, so those
  pairs tie exactly (the run-of-equal-labels shortcut fails its check and the tile falls back to two
  full searches); the per-row-sort path and a reference with float32 distances agree."""
  rng = np.random.default_rng(5)
  feats = rng.normal(size=(12, 2, 3)).astype(np.float32)
  labels = np.array([1e8, -1e8, 0.25, 0.5, 0.75, 1.0, 1.0, 3.0, 1e8 + 8, 2.5, -0.5, 0.5],
                    np.float32)
  expected = rnc_ref_float32_distances(feats, labels, temperature)
  value, grad = _value_and_grad(variant, feats, labels, temperature, 'blockwise', 5)
  assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  sort_v, sort_g = _value_and_grad(variant, feats, labels[:, None], temperature, 'auto', 256)
  np.testing.assert_allclose(float(value), float(sort_v), rtol=1e-5)
  np.testing.assert_allclose(grad, sort_g, rtol=1e-4, atol=1e-5 * np.abs(sort_g).max())


@pytest.mark.parametrize('variant', FAST, indirect=True)
@pytest.mark.parametrize('impl, tile', [('dense', 256), ('blockwise', 3)])
def test_float64_gradient_matches_central_differences(variant, impl, tile):
  rng = np.random.default_rng(61)
  f = rng.normal(size=(4, 2, 3))
  y = np.array([0.0, 1.0, 1.0, 2.5])
  with jax.enable_x64(True):
    # The temperature is traced: one compilation serves both temperatures.
    fn = lambda x, t: cj.losses.rnc(x, y, t, impl=impl, tile=tile, variant=variant)
    value_and_grad = jax.jit(jax.value_and_grad(fn))
    for temperature in (2.0, 0.1):
      ref = lambda x, t=temperature: R.rnc_ref(x, y, t)
      value, grad = value_and_grad(jnp.asarray(f), jnp.float64(temperature))
      assert grad.dtype == jnp.float64
      np.testing.assert_allclose(float(value), ref(f), rtol=1e-12, err_msg=variant)
      np.testing.assert_allclose(np.asarray(grad), central_difference(ref, f), rtol=1e-6, atol=1e-8,
                                 err_msg=f'{variant} {impl} tau={temperature}')


@pytest.mark.parametrize('variant', FAST, indirect=True)
def test_float64_temperature_gradient(variant):
  rng = np.random.default_rng(62)
  f = rng.normal(size=(3, 2, 4))
  y = np.array([2.0, 0.5, 2.0])
  with jax.enable_x64(True):
    got = jax.jit(jax.grad(lambda t: cj.losses.rnc(jnp.asarray(f), y, t, impl='blockwise',
                                                   tile=4, variant=variant)))(0.7)
    h = 1e-6
    expected = (R.rnc_ref(f, y, 0.7 + h) - R.rnc_ref(f, y, 0.7 - h)) / (2 * h)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6, err_msg=variant)


@pytest.mark.parametrize('variant', FAST, indirect=True)
def test_tiny_temperature_stays_finite_and_matches_sort_path(variant):
  """tau = 1e-3: the logits span thousands; every denominator is a log-space scan."""
  rng = np.random.default_rng(8)
  feats = rng.normal(size=(12, 2, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=12).astype(np.float32)
  value, grad = _value_and_grad(variant, feats, labels, 1e-3, 'blockwise', 5)
  assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(float(value), R.rnc_ref(feats.astype(np.float64), labels, 1e-3),
                             rtol=1e-4)
  sort_v, sort_g = _value_and_grad(variant, feats, labels[:, None], 1e-3, 'auto', 256)
  np.testing.assert_allclose(float(value), float(sort_v), rtol=1e-5)
  np.testing.assert_allclose(grad, sort_g, rtol=1e-3, atol=1e-4 * np.abs(sort_g).max())


def test_unknown_variant_or_radix_bits_raise():
  f, y = np.zeros((2, 2, 3), np.float32), np.zeros(2, np.float32)
  with pytest.raises(ValueError, match='`variant`'):
    cj.losses.rnc(f, y, variant='fastest')
  with pytest.raises(ValueError, match='`search_radix_bits`'):
    cj.losses.rnc(f, y, search_radix_bits=0)


def test_default_variant_follows_backend():
  expected = 'shared_search' if jax.default_backend() == 'cpu' else 'analytic'
  assert rnc_module._variant(None) == expected  # pylint: disable=protected-access


def test_options_are_arguments_per_call():
  """``variant`` / ``search_method`` / ``search_radix_bits`` are per call: every combination gives
  the value of the default call (no module state)."""
  rng = np.random.default_rng(3)
  f = rng.normal(size=(6, 2, 3)).astype(np.float32)
  y = rng.integers(0, 3, size=6).astype(np.float32)
  expected = float(cj.losses.rnc(f, y, impl='blockwise', tile=5))
  for variant, method, bits in [('per_row_search', 'sort', None), ('per_row_search', 'scan', None),
                                ('shared_search', 'scan', 3), ('analytic', 'scan', 2)]:
    got = cj.losses.rnc(f, y, impl='blockwise', tile=5, variant=variant, search_method=method,
                        search_radix_bits=bits)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, err_msg=(variant, method, bits))
