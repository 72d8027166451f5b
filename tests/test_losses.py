"""Numerical tests of contrastive_jax.losses against float64 NumPy references (tests/references.py).

Covers: values vs. the references (ties, anchors without positives, batch 2, 1-4 views, unit and
non-unit norms, ACCon bins and official mode, RNC vector labels and exact distance ties), gradients
(``check_grads`` in float64 and a finite difference of the NumPy reference), finiteness for extreme
inputs, invariances (batch / view permutation, feature scale, jit), and input validation.
"""

import functools

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import contrastive_jax as cj
from inputs import central_difference
from inputs import make_features
import references as R

RTOL, ATOL = 1e-5, 1e-6
ACCON_RANGE = 6.0  # label_range used with the label sets below (labels live in about [-3, 16])


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def make_labels(seed, batch, kind):
  """float32 ``[batch]`` labels of a given structure."""
  rng = np.random.default_rng(seed + 1000)
  if kind == 'ties':  # small integer set: many positives, exact ties
    y = rng.integers(0, 3, size=batch)
    y[:2] = [0, 1]  # at least two distinct labels
  elif kind == 'continuous':  # all distinct, non-integer
    y = rng.uniform(-3.0, 3.0, size=batch)
  elif kind == 'unique':  # all distinct integers (+ a fraction)
    y = rng.permutation(batch) + 0.25
  elif kind == 'mixed':  # first half: two repeated labels; second half: unique labels
    half = batch // 2
    y = np.concatenate([np.arange(half) % 2, 10.0 + np.arange(batch - half)])
    y = y[rng.permutation(batch)]
  elif kind == 'same':
    y = np.full(batch, 1.5)
  else:
    raise ValueError(kind)
  return np.asarray(y, np.float32)


def adacon_cdf(labels):
  """phi(labels) for a training set that contains the batch labels (never constant)."""
  train = np.concatenate([np.asarray(labels, np.float64), np.linspace(-3.0, 3.0, 7)])
  return R.ecdf_ref(train, labels).astype(np.float32)


def adacon_cdf_jnp(labels):
  """``adacon_cdf`` with jnp ops (traceable under jit), same training set."""
  labels = jnp.asarray(labels)
  train = jnp.concatenate([labels, jnp.linspace(-3.0, 3.0, 7, dtype=labels.dtype)])
  return jnp.mean(train[None, :] <= labels[:, None], axis=1).astype(labels.dtype)


def unit(f):
  f = np.asarray(f, np.float64)
  return (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float32)


# id -> (seed, batch, views, dim, label kind, norm kind)
CASES = {
    # (few distinct shapes: every new shape costs compilations)
    'ties_s0': (0, 8, 2, 8, 'ties', 'rand'),
    'ties_s1_unit': (1, 8, 2, 8, 'ties', 'unit'),
    'ties_s2': (2, 8, 2, 8, 'ties', 'rand'),
    'continuous': (3, 8, 2, 8, 'continuous', 'rand'),
    'nopos_1view_unique': (4, 8, 1, 8, 'unique', 'rand'),
    'mixed_1view': (5, 8, 1, 8, 'mixed', 'unit'),
    'mixed_2view': (6, 8, 2, 8, 'mixed', 'rand'),
    'b2_1view_same': (7, 2, 1, 4, 'same', 'rand'),
    'b2_1view_unique': (8, 2, 1, 4, 'unique', 'rand'),
    'b2_2view_unique': (9, 2, 2, 4, 'unique', 'unit'),
    'b2_2view_same': (10, 2, 2, 4, 'same', 'rand'),
    'views3_ties': (11, 5, 3, 8, 'ties', 'rand'),
    'views4_mixed': (12, 4, 4, 8, 'mixed', 'unit'),
    'b16_d32_ties': (13, 16, 2, 32, 'ties', 'rand'),
}
CASE_IDS = list(CASES)


def case_inputs(case_id):
  seed, batch, views, dim, label_kind, norm = CASES[case_id]
  return make_features(seed, batch, views, dim, norm), make_labels(seed, batch, label_kind)


def assert_scalar_close(got, expected):
  assert got.shape == () and got.dtype == jnp.float32, (got.shape, got.dtype)
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# Values vs. the float64 references
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('case_id', [c for c in CASE_IDS if CASES[c][2] > 1])  # one view: refused
@pytest.mark.parametrize('temperature,base_temperature', [(0.5, None), (0.1, 0.07)])
def test_simclr_matches_reference(case_id, temperature, base_temperature):
  f, _ = case_inputs(case_id)
  got = cj.losses.simclr(f, temperature=temperature, base_temperature=base_temperature)
  assert_scalar_close(got, R.simclr_ref(f, temperature, base_temperature))


def test_simclr_default_temperature():
  f, _ = case_inputs('ties_s0')
  assert_scalar_close(cj.losses.simclr(f), R.simclr_ref(f, 0.5, 0.5))


@pytest.mark.parametrize('case_id', CASE_IDS)
@pytest.mark.parametrize('temperature,base_temperature', [(0.07, 0.07), (0.2, 0.07)])
def test_supcon_matches_reference(case_id, temperature, base_temperature):
  f, y = case_inputs(case_id)
  got = cj.losses.supcon(f, y, temperature=temperature, base_temperature=base_temperature)
  assert_scalar_close(got, R.supcon_ref(f, y, temperature, base_temperature))


def test_supcon_defaults_and_int_labels():
  f, y = case_inputs('ties_s0')
  assert_scalar_close(cj.losses.supcon(f, y.astype(np.int32)), R.supcon_ref(f, y, 0.07, 0.07))


def test_supcon_no_positive_anywhere_is_zero():
  f, y = case_inputs('nopos_1view_unique')
  np.testing.assert_allclose(cj.losses.supcon(f, y), 0.0, atol=ATOL)


@pytest.mark.parametrize('case_id', CASE_IDS)
@pytest.mark.parametrize('temperature', [1.0 / 150, 0.1])
def test_adacon_matches_reference(case_id, temperature):
  f, y = case_inputs(case_id)
  cdf = adacon_cdf(y)
  got = cj.losses.adacon(f, y, cdf, temperature=temperature)
  assert_scalar_close(got, R.adacon_ref(f, y, cdf, temperature))


def test_adacon_default_temperature_and_fit_ecdf_pipeline():
  f, y = case_inputs('continuous')
  train = np.random.default_rng(0).uniform(-4, 4, size=50).astype(np.float32)
  ecdf = cj.losses.fit_ecdf(train)
  cdf = np.asarray(ecdf(jnp.asarray(y)), np.float32)
  np.testing.assert_allclose(cdf, R.ecdf_ref(train, y), rtol=0, atol=1e-7)
  assert_scalar_close(cj.losses.adacon(f, y, cdf), R.adacon_ref(f, y, cdf, 1.0 / 150))


@pytest.mark.parametrize('seed', [0, 1])
def test_fit_ecdf_matches_definition(seed):
  rng = np.random.default_rng(seed)
  train = rng.integers(0, 6, size=40).astype(np.float32)  # heavy ties: phi counts y_j <= y
  train[:3] = [0.5, 2.25, 5.0]
  ecdf = cj.losses.fit_ecdf(train)
  queries = np.concatenate([np.unique(train), [-1.0, 0.25, 1.0, 2.5, 5.5, 100.0],
                            rng.uniform(-1, 7, size=10)]).astype(np.float32)
  got = np.asarray(ecdf(jnp.asarray(queries)))
  np.testing.assert_allclose(got, R.ecdf_ref(train, queries), rtol=0, atol=1e-7)
  assert got.min() >= 0.0 and got.max() <= 1.0
  jitted = np.asarray(jax.jit(lambda q: ecdf(q))(jnp.asarray(queries)))  # pylint: disable=unnecessary-lambda
  np.testing.assert_allclose(jitted, got, rtol=0, atol=0)


@pytest.mark.parametrize('case_id', CASE_IDS)
@pytest.mark.parametrize('temperature', [0.05, 0.3])
def test_accon_matches_reference(case_id, temperature):
  f, y = case_inputs(case_id)
  got = cj.losses.accon(f, y, ACCON_RANGE, temperature=temperature)
  assert_scalar_close(got, R.accon_ref(f, y, ACCON_RANGE, temperature))


def test_accon_defaults_and_large_range():
  f, y = case_inputs('ties_s0')
  y = y * 20.0  # ages-like integer labels
  assert_scalar_close(cj.losses.accon(f, y, 100.0), R.accon_ref(f, y, 100.0, 0.05))


@pytest.mark.parametrize('seed,views,bin_width', [(20, 2, 1.0), (21, 2, 2.5), (22, 1, 0.5),
                                                  (24, 2, 0.7)])
def test_accon_bin_width_matches_reference(seed, views, bin_width):
  f = make_features(seed, 8, views, 8)
  y = np.random.default_rng(seed).uniform(-3.0, 3.0, size=8).astype(np.float32)
  got = cj.losses.accon(f, y, ACCON_RANGE, temperature=0.1, bin_width=bin_width)
  assert_scalar_close(got, R.accon_ref(f, y, ACCON_RANGE, 0.1, bin_width=bin_width))
  # binning changes the positive sets here, so it must change the value
  assert not np.isclose(R.accon_ref(f, y, ACCON_RANGE, 0.1), R.accon_ref(f, y, ACCON_RANGE, 0.1,
                                                                          bin_width=bin_width))


@pytest.mark.parametrize('case_id', CASE_IDS)
@pytest.mark.parametrize('temperature,label_range', [(0.05, 100.0), (0.2, ACCON_RANGE)])
def test_accon_official_matches_reference(case_id, temperature, label_range):
  f, y = case_inputs(case_id)
  f = unit(f)  # the official code works on unit vectors
  got = cj.losses.accon(f, y, label_range, temperature=temperature, official=True)
  assert_scalar_close(got, R.accon_official_ref(f, y, label_range, temperature))


def test_accon_official_base_temperature_and_no_positive_anchor():
  f = unit(make_features(30, 8, 1, 8))
  y = np.array([0, 0, 1, 2, 3, 3, 5, 6], np.float32)  # rows 2, 3, 6, 7 have no positive
  got = cj.losses.accon(f, y, 100.0, temperature=0.05, official=True, base_temperature=0.07)
  assert_scalar_close(got, R.accon_official_ref(f, y, 100.0, 0.05, base_temperature=0.07))
  # all anchors without positive: each contributes -(tau / tau_base)
  y_unique = np.arange(8, dtype=np.float32)
  got = cj.losses.accon(f, y_unique, 100.0, temperature=0.05, official=True, base_temperature=0.07)
  assert_scalar_close(got, R.accon_official_ref(f, y_unique, 100.0, 0.05, base_temperature=0.07))
  np.testing.assert_allclose(got, -0.05 / 0.07, rtol=RTOL)


def test_accon_epsilon_is_used():
  f, y = case_inputs('ties_s0')
  got = cj.losses.accon(f, y, ACCON_RANGE, temperature=0.1, epsilon=1e-2)
  assert_scalar_close(got, R.accon_ref(f, y, ACCON_RANGE, 0.1, epsilon=1e-2))


# Jitted with the temperature traced: one compilation per input shape serves both temperatures,
# where the eager loss compiles its many primitives op by op for every new shape (2-4 s each). The
# eager loss equals the jitted one in test_jit_matches_eager (value and gradient), and the eager RNC
# tests below (vector labels, int labels, invariances) check eager values against the reference.
_rnc_jit = jax.jit(cj.losses.rnc)


@pytest.mark.parametrize('case_id', CASE_IDS)
@pytest.mark.parametrize('temperature', [2.0, 0.5])
def test_rnc_matches_reference(case_id, temperature):
  f, y = case_inputs(case_id)
  got = _rnc_jit(f, y, temperature)
  assert_scalar_close(got, R.rnc_ref(f, y, temperature))


@pytest.mark.parametrize('seed,batch,views,label_kind', [
    (40, 8, 2, 'vector_continuous'),
    (41, 8, 2, 'vector_int'),  # exact L1-distance ties across different label vectors
    (42, 5, 3, 'vector_int'),
    (43, 2, 1, 'vector_continuous'),
    (44, 8, 2, 'int_scalar'),  # exact ties, including |y_i - y_j| == |y_i - y_k| with y_j != y_k
    (45, 8, 1, 'int_scalar'),
    (46, 8, 2, 'scalar_k1'),  # [batch, 1] labels
])
def test_rnc_vector_labels_and_ties(seed, batch, views, label_kind):
  f = make_features(seed, batch, views, 8)
  rng = np.random.default_rng(seed)
  if label_kind == 'vector_continuous':
    y = rng.normal(size=(batch, 2))
  elif label_kind == 'vector_int':
    y = rng.integers(-2, 3, size=(batch, 2))
  elif label_kind == 'int_scalar':
    y = rng.integers(-3, 4, size=batch)
    y[:3] = [-2, 0, 2]  # symmetric around 0: distance ties on both sides
  else:
    y = rng.integers(0, 4, size=(batch, 1))
  y = y.astype(np.float32)
  # Scalar labels: the jitted loss of test_rnc_matches_reference (same shapes: no new compilation;
  # eager == jit for scalar labels is test_jit_matches_eager[rnc]). Vector labels run eagerly.
  got = _rnc_jit(f, y, 2.0) if y.ndim == 1 else cj.losses.rnc(f, y)
  assert_scalar_close(got, R.rnc_ref(f, y, 2.0))


def test_rnc_int_dtype_labels():
  f = make_features(47, 8, 2, 8)
  y = np.array([0, 1, 1, 2, 4, 0, 7, 3], np.int32)
  assert_scalar_close(cj.losses.rnc(f, y), R.rnc_ref(f, y, 2.0))


@pytest.mark.parametrize('kind', ['l1', 'mse', 'huber'])
@pytest.mark.parametrize('weighted', [False, True])
@pytest.mark.parametrize('delta', [1.0, 0.3])
def test_regression_loss_matches_reference(kind, weighted, delta):
  rng = np.random.default_rng(50)
  pred = rng.normal(size=12).astype(np.float32)
  target = (pred + rng.normal(scale=1.0, size=12)).astype(np.float32)
  target[0] = pred[0] + np.float32(delta)  # |r| == delta boundary (within float32 rounding)
  weights = rng.uniform(0.1, 3.0, size=12).astype(np.float32) if weighted else None
  got = cj.losses.regression_loss(pred, target, kind=kind, delta=delta, weights=weights)
  assert_scalar_close(got, R.regression_ref(pred, target, kind, delta, weights))


# ----------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------
def _l2n(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _grad_cases():
  """name -> (loss of features for fixed labels, labels); small float64-friendly problems."""
  y = np.array([0.0, 1.0, 1.0, 2.5], np.float64)
  yv = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 2.0], [0.0, 1.0]], np.float64)
  cdf = adacon_cdf(y).astype(np.float64)
  return {
      'simclr': lambda f: cj.losses.simclr(f, temperature=0.5),
      'supcon': lambda f: cj.losses.supcon(f, y, temperature=0.3, base_temperature=0.07),
      'adacon': lambda f: cj.losses.adacon(f, y, cdf, temperature=0.2),
      'accon': lambda f: cj.losses.accon(f, y, 4.0, temperature=0.2),
      'accon_bins': lambda f: cj.losses.accon(f, y, 4.0, temperature=0.2, bin_width=2.0),
      # official mode on the unit sphere (its row max is a stop-gradient in the official code)
      'accon_official': lambda f: cj.losses.accon(_l2n(f), y, 4.0, temperature=0.2, official=True),
      'rnc': lambda f: cj.losses.rnc(f, y, temperature=2.0),
      'rnc_vector': lambda f: cj.losses.rnc(f, yv, temperature=0.5),
  }


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
  assert not jax.config.jax_enable_x64


@pytest.mark.parametrize('name', list(_grad_cases()))
def test_check_grads_float64(x64, name):  # pylint: disable=redefined-outer-name,unused-argument
  fn = _grad_cases()[name]
  f = jnp.asarray(np.random.default_rng(60).normal(size=(4, 2, 3)))
  assert f.dtype == jnp.float64
  # jit: the eager (op-by-op) loss and vjp of some losses are slow to dispatch; the math is the
  # same (eager == jit: test_jit_matches_eager), and the dtype check reuses check_grads' program.
  jitted = jax.jit(fn)
  assert jitted(f).dtype == jnp.float64  # the losses follow x64
  check_grads(jitted, (f,), order=1, modes=['rev'], atol=1e-5, rtol=1e-5, eps=1e-5)


@pytest.mark.parametrize('name', ['supcon', 'simclr', 'adacon', 'accon', 'accon_official', 'rnc',
                                  'rnc_vector'])
def test_grad_matches_finite_difference_of_reference(x64, name):  # pylint: disable=redefined-outer-name,unused-argument
  rng = np.random.default_rng(61)
  f = rng.normal(size=(4, 2, 3))
  y = np.array([0.0, 1.0, 1.0, 2.5])
  yv = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 2.0], [0.0, 1.0]])
  cdf = R.ecdf_ref(np.concatenate([y, np.linspace(-3.0, 3.0, 7)]), y)
  unit_np = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  pairs = {
      'supcon': (lambda x: cj.losses.supcon(x, y, 0.3, 0.07), lambda x: R.supcon_ref(x, y, 0.3, 0.07)),
      'simclr': (lambda x: cj.losses.simclr(x, 0.5), lambda x: R.simclr_ref(x, 0.5)),
      'adacon': (lambda x: cj.losses.adacon(x, y, cdf, 0.2), lambda x: R.adacon_ref(x, y, cdf, 0.2)),
      'accon': (lambda x: cj.losses.accon(x, y, 4.0, 0.2), lambda x: R.accon_ref(x, y, 4.0, 0.2)),
      'accon_official': (
          lambda x: cj.losses.accon(_l2n(x), y, 4.0, 0.2, official=True),
          lambda x: R.accon_official_ref(unit_np(x), y, 4.0, 0.2)),
      'rnc': (lambda x: cj.losses.rnc(x, y, 2.0), lambda x: R.rnc_ref(x, y, 2.0)),
      'rnc_vector': (lambda x: cj.losses.rnc(x, yv, 0.5), lambda x: R.rnc_ref(x, yv, 0.5)),
  }
  jax_fn, ref_fn = pairs[name]
  # One jitted program for the value and the gradient (eager == jit: test_jit_matches_eager).
  value, got = jax.jit(jax.value_and_grad(jax_fn))(jnp.asarray(f))
  np.testing.assert_allclose(float(value), ref_fn(f), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(got), central_difference(ref_fn, f), rtol=1e-6, atol=1e-7)


def test_float32_grad_matches_finite_difference_of_reference():
  """The float32 gradient is close to the float64 truth (loose: float32 rounding)."""
  f, y = case_inputs('ties_s0')
  # jit: one compilation, not op-by-op dispatch of the vjp (eager == jit: test_jit_matches_eager)
  got = np.asarray(jax.jit(jax.grad(lambda x: cj.losses.supcon(x, y)))(jnp.asarray(f)))
  assert got.dtype == np.float32
  expected = central_difference(lambda x: R.supcon_ref(x, y), f.astype(np.float64), h=1e-5)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_regression_loss_grad():
  """float32 gradient of every kind vs. a central difference of the float64 reference."""
  rng = np.random.default_rng(62)
  pred = rng.normal(size=8).astype(np.float32)
  target = (pred + rng.uniform(0.1, 2.0, size=8) * rng.choice([-1, 1], size=8)).astype(np.float32)
  w = rng.uniform(0.5, 2.0, size=8).astype(np.float32)
  for kind in ('l1', 'mse', 'huber'):
    got = jax.grad(lambda p, k=kind: cj.losses.regression_loss(p, target, k, 0.7, w))(pred)
    expected = central_difference(lambda p, k=kind: R.regression_ref(p, target, k, 0.7, w),
                                   pred.astype(np.float64))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Finite values and gradients for extreme finite inputs
# ----------------------------------------------------------------------------------------------------
def _loss_fns(temperature=None):
  """name -> loss(features, labels); temperature None: the default."""
  t = {} if temperature is None else {'temperature': temperature}
  return {
      'simclr': lambda f, y: cj.losses.simclr(f, **t),
      'supcon': lambda f, y: cj.losses.supcon(f, y, **t),
      'adacon': lambda f, y: cj.losses.adacon(f, y, adacon_cdf_jnp(y), **t),
      'accon': lambda f, y: cj.losses.accon(f, y, ACCON_RANGE, **t),
      'accon_bins': lambda f, y: cj.losses.accon(f, y, ACCON_RANGE, bin_width=2.0, **t),
      'accon_official': lambda f, y: cj.losses.accon(f, y, ACCON_RANGE, official=True, **t),
      'rnc': lambda f, y: cj.losses.rnc(f, y, **t),
  }


LOSS_NAMES = list(_loss_fns())
COSINE_LOSSES = ['simclr', 'supcon', 'adacon', 'accon', 'accon_bins']


def extreme_features(kind):
  """float32 ``[8, 2, 8]`` features for the finiteness tests (also used by test_comparator_losses)."""
  base = make_features(70, 8, 2, 8, 'unit')
  if kind == 'temperature_0.01':
    return base
  if kind == 'identical':
    return np.broadcast_to(base[:1, :1], base.shape).copy()
  if kind == 'norm_1e4':
    return base * np.float32(1e4)
  if kind == 'norm_1e-6':
    return base * np.float32(1e-6)
  if kind == 'zeros':
    return np.zeros_like(base)
  if kind == 'one_zero_row':
    out = base.copy()
    out[2, 1] = 0.0
    return out
  raise ValueError(kind)


EXTREME_LABELS = np.array([0, 0, 1, 2, 2, 3, 4.5, 5], np.float32)
EXTREME = ['temperature_0.01', 'identical', 'norm_1e4', 'norm_1e-6', 'zeros', 'one_zero_row']


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grad(name, temperature):
  """One jitted loss per (name, temperature), shared by the kinds of input (all of one shape):
  traced and compiled once instead of once per test."""
  return jax.jit(jax.value_and_grad(_loss_fns(temperature)[name]))


@pytest.mark.parametrize('kind', EXTREME)
@pytest.mark.parametrize('name', LOSS_NAMES)
def test_finite_for_extreme_inputs(name, kind):
  temperature = 0.01 if kind == 'temperature_0.01' else None
  f = jnp.asarray(extreme_features(kind))
  y = jnp.asarray(EXTREME_LABELS)
  value, grad = _jitted_value_and_grad(name, temperature)(f, y)
  assert np.isfinite(float(value)), (name, kind, value)
  assert np.all(np.isfinite(np.asarray(grad))), (name, kind, grad)


@pytest.mark.parametrize('name', ['simclr', 'supcon', 'adacon', 'accon'])
def test_cosine_losses_identical_features_values(name):
  """All rows identical: every cosine is 1 and the loss has a closed form through the reference."""
  f = extreme_features('identical')
  y = EXTREME_LABELS
  fn = _loss_fns()[name]
  expected = {
      'simclr': lambda: R.simclr_ref(f, 0.5),
      'supcon': lambda: R.supcon_ref(f, y),
      'adacon': lambda: R.adacon_ref(f, y, adacon_cdf(y)),
      'accon': lambda: R.accon_ref(f, y, ACCON_RANGE),
  }[name]()
  # ACCon near cos = 1: d/dc sqrt(1 - c^2 + eps) = -c / sqrt(eps) = -1e3, so the float32 rounding of
  # the cosine itself (~6e-8) moves each negative logit by ~1e-3 at tau = 0.05: looser tolerance.
  rtol = 2e-4 if name == 'accon' else 1e-5
  np.testing.assert_allclose(float(fn(jnp.asarray(f), jnp.asarray(y))), expected, rtol=rtol,
                             atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Invariances
# ----------------------------------------------------------------------------------------------------
def _inv_inputs(name, seed=80, views=3):
  batch = 5 if views == 3 else 8  # shapes shared with CASES
  f = make_features(seed, batch, views, 8, 'unit' if name == 'accon_official' else 'rand')
  y = make_labels(seed, batch, 'ties')
  return f, y


@pytest.mark.parametrize('name', LOSS_NAMES)
def test_batch_permutation_invariance(name):
  fn = _loss_fns()[name]
  f, y = _inv_inputs(name)
  perm = np.random.default_rng(81).permutation(5)
  np.testing.assert_allclose(fn(f[perm], y[perm]), fn(f, y), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('name', LOSS_NAMES)
def test_view_permutation_invariance(name):
  fn = _loss_fns()[name]
  f, y = _inv_inputs(name)
  np.testing.assert_allclose(fn(f[:, [2, 0, 1]], y), fn(f, y), rtol=RTOL, atol=ATOL)
  # permuting the views independently per sample is also a relabelling of rows
  rng = np.random.default_rng(82)
  g = np.stack([f[b, rng.permutation(3)] for b in range(5)])
  np.testing.assert_allclose(fn(g, y), fn(f, y), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('name', COSINE_LOSSES)
@pytest.mark.parametrize('scale', [0.01, 7.5])
def test_cosine_losses_scale_invariant(name, scale):
  fn = _loss_fns()[name]
  f, y = _inv_inputs(name)
  np.testing.assert_allclose(fn(f * np.float32(scale), y), fn(f, y), rtol=RTOL, atol=ATOL)
  # per-row positive scales too (cosine normalises every row)
  s = np.random.default_rng(83).uniform(0.2, 5.0, size=(5, 3, 1)).astype(np.float32)
  np.testing.assert_allclose(fn(f * s, y), fn(f, y), rtol=RTOL, atol=ATOL)


def test_rnc_is_not_scale_invariant():
  fn = _loss_fns()['rnc']
  f, y = _inv_inputs('rnc')
  scaled = float(fn(f * np.float32(3.0), y))
  assert not np.isclose(scaled, float(fn(f, y)), rtol=1e-3)
  np.testing.assert_allclose(scaled, R.rnc_ref(f * np.float32(3.0), y), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('name', LOSS_NAMES)
def test_jit_matches_eager(name):
  fn = _loss_fns()[name]
  f, y = _inv_inputs(name, views=2)
  eager_v, eager_g = jax.value_and_grad(fn)(f, y)
  jit_v, jit_g = jax.jit(jax.value_and_grad(fn))(f, y)
  np.testing.assert_allclose(jit_v, eager_v, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(jit_g, eager_g, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(eager_g))))


def test_jit_regression_and_adacon_traced_cdf():
  f, y = case_inputs('ties_s0')
  cdf = adacon_cdf(y)
  eager = cj.losses.adacon(f, y, cdf)
  jitted = jax.jit(lambda a, b, c: cj.losses.adacon(a, b, c))(f, y, cdf)
  np.testing.assert_allclose(jitted, eager, rtol=RTOL, atol=ATOL)
  p, t = y, y + 0.5
  for kind in ('l1', 'mse', 'huber'):
    np.testing.assert_allclose(jax.jit(lambda a, b, k=kind: cj.losses.regression_loss(a, b, k))(p, t),
                               cj.losses.regression_loss(p, t, kind), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# Input validation: ValueError naming the argument
# ----------------------------------------------------------------------------------------------------
_F = make_features(90, 4, 2, 3)
_Y = np.array([0.0, 1.0, 1.0, 2.0], np.float32)
_CDF = np.array([0.1, 0.5, 0.5, 0.9], np.float32)


def _all_losses_with(features=_F, labels=_Y, **kw):
  return {
      'simclr': lambda: cj.losses.simclr(features, **kw),
      'supcon': lambda: cj.losses.supcon(features, labels, **kw),
      'adacon': lambda: cj.losses.adacon(features, labels, _CDF, **kw),
      'accon': lambda: cj.losses.accon(features, labels, 10.0, **kw),
      'accon_official': lambda: cj.losses.accon(features, labels, 10.0, official=True, **kw),
      'rnc': lambda: cj.losses.rnc(features, labels, **kw),
  }


_SUPERVISED = ['supcon', 'adacon', 'accon', 'accon_official', 'rnc']


@pytest.mark.parametrize('name', list(_all_losses_with()))
@pytest.mark.parametrize('shape', [(8, 3), (4, 2, 3, 1), (3,)])
def test_bad_feature_rank_raises(name, shape):
  bad = np.ones(shape, np.float32)
  with pytest.raises(ValueError, match='features'):
    _all_losses_with(features=bad)[name]()


@pytest.mark.parametrize('name', _SUPERVISED)
@pytest.mark.parametrize('labels', [
    np.array([0.0, 1.0, 2.0], np.float32),  # wrong length
    np.array([0.0, 1.0, 2.0, 3.0, 4.0], np.float32),  # wrong length
    np.float32(1.0),  # rank 0
    np.zeros((4, 2, 1), np.float32),  # rank 3
], ids=['short', 'long', 'rank0', 'rank3'])
def test_bad_labels_shape_raises(name, labels):
  with pytest.raises(ValueError, match='labels'):
    _all_losses_with(labels=labels)[name]()


@pytest.mark.parametrize('name', ['supcon', 'adacon', 'accon', 'accon_official'])
def test_vector_labels_rejected_by_scalar_label_losses(name):
  with pytest.raises(ValueError, match='labels'):
    _all_losses_with(labels=np.zeros((4, 2), np.float32))[name]()


def test_rnc_vector_labels_wrong_batch_raises():
  with pytest.raises(ValueError, match='labels'):
    cj.losses.rnc(_F, np.zeros((3, 2), np.float32))


@pytest.mark.parametrize('name', _SUPERVISED)
@pytest.mark.parametrize('bad_value', [np.nan, np.inf, -np.inf])
def test_non_finite_labels_raise(name, bad_value):
  labels = _Y.copy()
  labels[2] = bad_value
  with pytest.raises(ValueError, match='labels'):
    _all_losses_with(labels=labels)[name]()


def test_rnc_non_finite_vector_labels_raise():
  labels = np.zeros((4, 2), np.float32)
  labels[1, 1] = np.nan
  with pytest.raises(ValueError, match='labels'):
    cj.losses.rnc(_F, labels)


@pytest.mark.parametrize('name', list(_all_losses_with()))
@pytest.mark.parametrize('temperature', [0.0, -0.5])
def test_non_positive_temperature_raises(name, temperature):
  with pytest.raises(ValueError, match='temperature'):
    _all_losses_with(temperature=temperature)[name]()


@pytest.mark.parametrize('official', [False, True])
@pytest.mark.parametrize('label_range', [0.0, -3.0])
def test_accon_non_positive_label_range_raises(official, label_range):
  with pytest.raises(ValueError, match='label_range'):
    cj.losses.accon(_F, _Y, label_range, official=official)


@pytest.mark.parametrize('cdf', [
    np.array([0.1, 0.5, 1.5, 0.9], np.float32),
    np.array([-0.1, 0.5, 0.5, 0.9], np.float32),
    np.array([0.1, 0.5, 0.9], np.float32),
    np.array([0.1, 0.5, 0.5, 0.9, 0.2], np.float32),
    np.array([0.1, np.nan, 0.5, 0.9], np.float32),
], ids=['above1', 'below0', 'short', 'long', 'nan'])
def test_adacon_bad_cdf_raises(cdf):
  with pytest.raises(ValueError, match='cdf'):
    cj.losses.adacon(_F, _Y, cdf)


@pytest.mark.parametrize('train', [
    np.array([], np.float32),
    np.full(5, 2.0, np.float32),
    np.array([0.0, np.nan, 1.0], np.float32),
    np.array([0.0, np.inf, 1.0], np.float32),
], ids=['empty', 'constant', 'nan', 'inf'])
def test_fit_ecdf_bad_train_labels_raise(train):
  with pytest.raises(ValueError, match='train_labels'):
    cj.losses.fit_ecdf(train)


def test_regression_loss_unknown_kind_raises():
  with pytest.raises(ValueError, match='kind'):
    cj.losses.regression_loss(_Y, _Y, kind='nope')


def test_get_contrastive_loss():
  with pytest.raises(ValueError, match='nope'):
    cj.losses.get_contrastive_loss('nope')
  for name in ('simclr', 'supcon', 'adacon', 'accon', 'rnc'):
    assert cj.losses.get_contrastive_loss(name) is getattr(cj.losses, name)
