"""Thesis losses (Manna 2025): binary contrastive + Combo (Ch. 4), MIO v1-v3 (Ch. 5), DySTreSS
(Ch. 6).

Values against the float64 NumPy references of ``references_thesis.py`` (batch 2-16, views 2 and
3), DySTreSS temperature profiles pointwise against Eq. 6.16 / Alg. 6.1 at the thesis' settings
(closed-form values), gradients (``check_grads`` in float64; Jacobians against central differences
of the references, including the stop-gradient temperature), invariances, finiteness for extreme
inputs, ValueErrors, and dense == row-sharded on 8 forced CPU devices (this file re-runs itself as
the worker, see ``sharded_harness``).

Compilation dominates the run time on CPU, so each group of checks evaluates ALL its loss
configurations in one jitted function per input shape (hyperparameters traced where the check
varies them) and the parametrised tests read from that cached evaluation.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from contrastive_jax.losses.binary import binary_contrastive
from contrastive_jax.losses.binary import binary_contrastive_combo
from contrastive_jax.losses.dcl import dcl
from contrastive_jax.losses.dystress import dystress
from contrastive_jax.losses.dystress import dystress_temperature
from contrastive_jax.losses.mio import capped_exp
from contrastive_jax.losses.mio import mio
from contrastive_jax.losses.supcon import simclr
from inputs import central_difference
from inputs import make_features
import references_thesis as RT
import sharded_harness

RTOL, ATOL = 1e-5, 1e-6
# Alg. 6.1 / Table 6.15 settings: (shift dc, scale k_s)
TABLE_6_15 = [(0.0, 0.5), (0.2, 0.6), (0.4, 0.7), (-0.2, 0.6), (-0.4, 0.7)]


pytestmark = pytest.mark.usefixtures('fast_compile')


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


# id -> (seed, batch, views, dim, norm)
CASES = {
    'b2_v2': (0, 2, 2, 4, 'rand'),
    'b5_v3': (1, 5, 3, 8, 'moderate'),
    'b16_v2': (3, 16, 2, 16, 'rand'),
}
CASE_IDS = list(CASES)


def case_features(case_id):
  return make_features(*CASES[case_id])


def assert_close(got, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------
# Values vs. the float64 references
# ----------------------------------------------------------------------------------------------------
# (tau_min, tau_max, profile, shift, scale)
DYSTRESS_SETTINGS = ([(0.07, 0.2, 'cosine', 0.0, 1.0), (0.1, 0.2, 'linear', 0.0, 1.0),
                      (0.1, 0.2, 'exponential', 0.0, 1.0)] +
                     [(0.1, 0.2, 'shifted', s, k) for s, k in TABLE_6_15] +
                     [(0.1, 0.2, 'shifted_literal', 0.0, 0.5), (0.1, 0.2, 'shifted_literal', -0.4, 0.7)])


def _value_configs():
  """name -> (loss of float32 features, float64 reference of the features)."""
  configs = {
      'bcl_default': (binary_contrastive, RT.bcl_ref),
      'bcl_t0.1_nu2.5': (lambda f: binary_contrastive(f, 0.1, nu=2.5),
                         lambda f: RT.bcl_ref(f, 0.1, 2.5)),
      'bcl_nce': (lambda f: binary_contrastive(f, nu='nce'), lambda f: RT.bcl_ref(f, 0.25, 'nce')),
      'combo_default': (binary_contrastive_combo, RT.combo_ref),
      'combo_raw_w0.5_nce': (
          lambda f: binary_contrastive_combo(f, 0.25, 0.33, 0.5, nu='nce', normalize_contr=False),
          lambda f: RT.combo_ref(f, 0.25, 0.33, 0.5, 'nce', normalize=False)),
      'combo_w0_is_bcl': (lambda f: binary_contrastive_combo(f, contr_weight=0.0), RT.bcl_ref),
      'mio_default': (mio, RT.mio_ref),
      # on unit vectors L_Contr is NT-Xent at tau_c / 2 (|a - b|^2 = 2 - 2 cos)
      'contr_is_ntxent': (lambda f: (binary_contrastive_combo(f) - binary_contrastive(f)),
                          lambda f: RT.dystress_ref(f, 0.165, 0.165)),
  }
  for version in (1, 2, 3):
    for t in (0.2, 0.07):
      configs[f'mio_v{version}_t{t}'] = (lambda f, v=version, t=t: mio(f, t, v),
                                         lambda f, v=version, t=t: RT.mio_ref(f, t, v))
  for setting in DYSTRESS_SETTINGS:
    name = 'dystress_{2}_{3}_{4}_{0}_{1}'.format(*setting)
    configs[name] = (lambda f, s=setting: dystress(f, *s),
                     lambda f, s=setting: RT.dystress_ref(f, *s))
  configs['dystress_through_shifted'] = (
      lambda f: dystress(f, 0.1, 0.2, 'shifted', -0.4, 0.7, grad_through_temperature=True),
      lambda f: RT.dystress_ref(f, 0.1, 0.2, 'shifted', -0.4, 0.7))
  # constant temperature: NT-Xent (the reference and simclr)
  configs['dystress_const_cosine'] = (lambda f: dystress(f, 0.3, 0.3),
                                      lambda f: RT.dystress_ref(f, 0.3, 0.3))
  configs['dystress_const_shifted'] = (lambda f: dystress(f, 0.3, 0.3, 'shifted', -0.4, 0.7),
                                       lambda f: RT.dystress_ref(f, 0.3, 0.3))
  configs['simclr_t0.3'] = (lambda f: simclr(f, 0.3), lambda f: RT.dystress_ref(f, 0.3, 0.3))
  configs['dcl_default'] = (dcl, RT.dcl_ref)  # DCL (Yeh et al. Eq. 6), the Ch. 5 / 6 comparator
  configs['dcl_t0.5'] = (lambda f: dcl(f, 0.5), lambda f: RT.dcl_ref(f, 0.5))
  configs['dclw_default'] = (lambda f: dcl(f, sigma=0.5), lambda f: RT.dclw_ref(f, 0.1, 0.5))
  return configs


VALUE_CONFIGS = _value_configs()


@functools.lru_cache(maxsize=None)
def _values(case_id):
  """All VALUE_CONFIGS on one case, from a single compiled function."""
  fn = jax.jit(lambda f: {name: loss(f) for name, (loss, _) in VALUE_CONFIGS.items()})
  return jax.device_get(fn(case_features(case_id)))


@pytest.mark.parametrize('case_id', CASE_IDS)
@pytest.mark.parametrize('name', list(VALUE_CONFIGS))
def test_value_matches_reference(case_id, name):
  got = _values(case_id)[name]
  assert got.shape == () and got.dtype == np.float32, (got.shape, got.dtype)
  assert_close(got, VALUE_CONFIGS[name][1](case_features(case_id)))


def test_nce_nu_and_mio_relations():
  assert RT.nce_nu(16, 2) == 30.0  # Eq. 4.10-4.11, two views: nu = 2N - 2
  assert RT.nce_nu(5, 3) == 6.0  # (M - V) / (V - 1) = 12 / 2
  values = _values('b16_v2')
  f = case_features('b16_v2').reshape(32, -1).astype(np.float64)
  z = f / np.linalg.norm(f, axis=1, keepdims=True)
  pos_c = np.sum(z[0::2] * z[1::2], axis=1)  # c_nn' of the 16 samples
  # Eq. 5.17: L_v1 = L_v2 + E_{p+}[ln(1 + e^{c/tau})] (R_pp);  Eq. 5.19: L_v3 >= L_v2
  r_pp = np.mean(np.log1p(np.exp(pos_c / 0.2)))
  assert_close(values['mio_v1_t0.2'], float(values['mio_v2_t0.2']) + r_pp)
  assert values['mio_v3_t0.2'] > values['mio_v2_t0.2']


# ----------------------------------------------------------------------------------------------------
# DySTreSS temperature profiles, pointwise
# ----------------------------------------------------------------------------------------------------
# Closed forms of Alg. 6.1, tau = tau_min + dtau/2 (1 + cos((pi/k_s)(dc + c))) on the cosine branch:
# 'max' where the argument is 0 or +-2 pi, 'min' where it is +-pi, 'mid' where it is +-pi/2 or
# +-3pi/2, and 'max' on the constant branch. Derived by hand for each (dc, k_s) of Table 6.15.
SHIFTED_POINTS = {
    # dc <= 0: cosine branch for c <= -dc, tau_max above; minimum at c = -dc - k_s
    (-0.4, 0.7): [(-1.0, 'max'), (-0.65, 'mid'), (-0.3, 'min'), (0.05, 'mid'), (0.4, 'max'),
                  (0.41, 'max'), (0.7, 'max'), (1.0, 'max')],
    (-0.2, 0.6): [(-1.0, 'max'), (-0.7, 'mid'), (-0.4, 'min'), (-0.1, 'mid'), (0.2, 'max'),
                  (0.5, 'max'), (1.0, 'max')],
    # dc >= 0: cosine branch for c >= -dc, tau_max below; minimum at c = -dc + k_s
    (0.2, 0.6): [(-1.0, 'max'), (-0.5, 'max'), (-0.2, 'max'), (0.1, 'mid'), (0.4, 'min'),
                 (0.7, 'mid'), (1.0, 'max')],
    (0.4, 0.7): [(-1.0, 'max'), (-0.6, 'max'), (-0.4, 'max'), (-0.05, 'mid'), (0.3, 'min'),
                 (0.65, 'mid'), (1.0, 'max')],
    # dc = 0 (Sec. 6.5.4.1): the cosine (period 2 k_s = 1) on c <= 0, tau_max on c > 0
    (0.0, 0.5): [(-1.0, 'max'), (-0.75, 'mid'), (-0.5, 'min'), (-0.25, 'mid'), (0.0, 'max'),
                 (0.25, 'max'), (0.5, 'max'), (0.75, 'max'), (1.0, 'max')],
    # dc = 1, k_s = 1 is Eq. 6.16: tau_min at 0, tau_max at +-1
    (1.0, 1.0): [(-1.0, 'max'), (-0.5, 'mid'), (0.0, 'min'), (0.5, 'mid'), (1.0, 'max')],
}


@functools.lru_cache(maxsize=None)
def _tau_fn(profile):
  """dystress_temperature jitted with traced parameters (one compilation per profile and shape)."""
  if profile in ('shifted', 'shifted_literal'):
    return jax.jit(lambda c, lo, hi, s, k, r: dystress_temperature(c, lo, hi, profile, s, k,
                                                                   rate=r))
  return jax.jit(lambda c, lo, hi, s, k, r: dystress_temperature(c, lo, hi, profile, rate=r))


def _tau(c, tau_min, tau_max, profile='cosine', shift=0.0, scale=1.0, rate=3.5):
  """dystress_temperature of a 1-D list, padded to one shape (512,) to share compilations."""
  c = np.asarray(c, np.float32).ravel()
  padded = np.zeros(512, np.float32)
  padded[:c.size] = c
  out = _tau_fn(profile)(padded, tau_min, tau_max, shift, scale, rate)
  assert out.shape == (512,) and out.dtype == jnp.float32
  return np.asarray(out)[:c.size]


def _level(kind, tau_min, tau_max):
  return {'min': tau_min, 'max': tau_max, 'mid': 0.5 * (tau_min + tau_max)}[kind]


@pytest.mark.parametrize('tau_range', [(0.1, 0.2), (0.07, 0.2)])
@pytest.mark.parametrize('setting', list(SHIFTED_POINTS), ids=str)
def test_shifted_profile_closed_form_points(setting, tau_range):
  tau_min, tau_max = tau_range
  shift, scale = setting
  c = [p for p, _ in SHIFTED_POINTS[setting]]
  expected = [_level(k, tau_min, tau_max) for _, k in SHIFTED_POINTS[setting]]
  np.testing.assert_allclose(_tau(c, tau_min, tau_max, 'shifted', shift, scale), expected, rtol=0,
                             atol=1e-6)
  # and on a dense grid: the printed algorithm (plain Python), within [tau_min, tau_max]
  grid = np.linspace(-1.0, 1.0, 401).astype(np.float32)
  got = _tau(grid, tau_min, tau_max, 'shifted', shift, scale)
  ref = [RT.temperature_ref(x, tau_min, tau_max, 'shifted', shift, scale) for x in grid]
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
  assert got.min() >= tau_min - 1e-7 and got.max() <= tau_max + 1e-7


def test_shifted_literal_is_alg_6_1_as_printed():
  """Issue 13 item 4: at dc = 0 both printed conditions hold, so the literal profile is the cosine
  everywhere (symmetric); it equals 'shifted' for every other shift."""
  points = [(-1.0, 'max'), (-0.75, 'mid'), (-0.5, 'min'), (-0.25, 'mid'), (0.0, 'max'),
            (0.25, 'mid'), (0.5, 'min'), (0.75, 'mid'), (1.0, 'max')]
  expected = [_level(k, 0.1, 0.2) for _, k in points]
  np.testing.assert_allclose(_tau([p for p, _ in points], 0.1, 0.2, 'shifted_literal', 0.0, 0.5),
                             expected, rtol=0, atol=1e-6)
  grid = np.linspace(-1.0, 1.0, 401).astype(np.float32)
  for shift, scale in TABLE_6_15:
    ref = [RT.temperature_ref(x, 0.1, 0.2, 'shifted_literal', shift, scale) for x in grid]
    np.testing.assert_allclose(_tau(grid, 0.1, 0.2, 'shifted_literal', shift, scale), ref, rtol=0,
                               atol=1e-6)
    if shift != 0.0:
      np.testing.assert_array_equal(_tau(grid, 0.1, 0.2, 'shifted_literal', shift, scale),
                                    _tau(grid, 0.1, 0.2, 'shifted', shift, scale))
  # the right half plane at dc = 0: constant tau_max by default, the cosine when literal
  right = np.float32([0.1, 0.3, 0.5, 0.9])
  assert np.all(_tau(right, 0.1, 0.2, 'shifted', 0.0, 0.5) == np.float32(0.2))
  assert np.all(_tau(right, 0.1, 0.2, 'shifted_literal', 0.0, 0.5) < 0.2)


def test_cosine_profile_eq_6_16():
  c = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.0000001, -1.0000001]  # beyond +-1: clipped
  np.testing.assert_allclose(_tau(c, 0.1, 0.2), [0.2, 0.15, 0.1, 0.15, 0.2, 0.2, 0.2], rtol=0,
                             atol=1e-7)
  # Eq. 6.16 is Alg. 6.1 at (dc, k_s) = (1, 1)
  grid = np.linspace(-1.0, 1.0, 201).astype(np.float32)
  np.testing.assert_allclose(_tau(grid, 0.07, 0.2), _tau(grid, 0.07, 0.2, 'shifted', 1.0, 1.0),
                             atol=1e-7)
  ref = [RT.temperature_ref(x, 0.07, 0.2) for x in grid]
  np.testing.assert_allclose(_tau(grid, 0.07, 0.2), ref, rtol=0, atol=1e-7)
  # the defaults of the public function are Eq. 6.16
  np.testing.assert_allclose(dystress_temperature(np.float32(0.5), 0.1, 0.2), 0.15, atol=1e-7)


def test_linear_and_exponential_profiles():
  c = [-1.0, -0.5, 0.0, 0.25, 1.0]
  np.testing.assert_allclose(_tau(c, 0.1, 0.2, 'linear'), [0.2, 0.15, 0.1, 0.125, 0.2], atol=1e-7)
  e = math.exp(-3.5)
  np.testing.assert_allclose(_tau(c, 0.1, 0.2, 'exponential'),
                             [0.2 - 0.1 * e, 0.2 - 0.1 * math.exp(-1.75), 0.1,
                              0.2 - 0.1 * math.exp(-0.875), 0.2 - 0.1 * e], atol=1e-7)
  np.testing.assert_allclose(_tau(c, 0.1, 0.2, 'exponential', rate=1.0),
                             [0.2 - 0.1 * math.exp(-abs(x)) for x in c], atol=1e-7)


def test_temperature_is_vectorised_pure_and_differentiable():
  c = np.random.default_rng(5).uniform(-1, 1, size=(8, 64)).astype(np.float32)
  for profile, shift, scale in [('cosine', 0, 1), ('shifted', -0.4, 0.7), ('linear', 0, 1),
                                ('exponential', 0, 1)]:
    got = _tau_fn(profile)(c, 0.1, 0.2, shift, scale, 3.5)  # any shape, parameters traced
    assert got.shape == c.shape and got.dtype == jnp.float32
    expected = np.vectorize(lambda x, p=profile, s=shift, k=scale: RT.temperature_ref(
        x, 0.1, 0.2, p, s, k))(c)
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(_tau(c[3], 0.1, 0.2, profile, shift, scale), got[3], atol=0)
  fn = _tau_fn('shifted')
  np.testing.assert_allclose(jax.vmap(fn, (0,) + (None,) * 5)(c, 0.1, 0.2, -0.4, 0.7, 3.5),
                             fn(c, 0.1, 0.2, -0.4, 0.7, 3.5), rtol=0, atol=1e-7)
  # the cosine profile's slope: d tau / dc = -(dtau/2) pi sin(pi (1 + c)) = (dtau/2) pi sin(pi c)
  g = jax.jit(jax.grad(lambda x: jnp.sum(dystress_temperature(x, 0.1, 0.2))))(c)
  np.testing.assert_allclose(g, 0.05 * np.pi * np.sin(np.pi * c.astype(np.float64)), rtol=1e-4,
                             atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Gradients (float64)
# ----------------------------------------------------------------------------------------------------
# name -> (loss of features, reference of float64 features); all differentiable in the usual sense
GRAD_CONFIGS = {
    'bcl_nu2': (lambda f: binary_contrastive(f, 0.25, nu=2.0), lambda f: RT.bcl_ref(f, 0.25, 2.0)),
    'bcl_nce': (lambda f: binary_contrastive(f, 0.5, nu='nce'),
                lambda f: RT.bcl_ref(f, 0.5, 'nce')),
    'combo': (binary_contrastive_combo, RT.combo_ref),
    'combo_raw': (lambda f: binary_contrastive_combo(f, 0.25, 0.33, 0.5, normalize_contr=False),
                  lambda f: RT.combo_ref(f, 0.25, 0.33, 0.5, normalize=False)),
    'mio1': (lambda f: mio(f, 0.2, 1), lambda f: RT.mio_ref(f, 0.2, 1)),
    'mio2': (lambda f: mio(f, 0.2, 2), lambda f: RT.mio_ref(f, 0.2, 2)),
    'mio3': (lambda f: mio(f, 0.2, 3), lambda f: RT.mio_ref(f, 0.2, 3)),
    'dcl': (lambda f: dcl(f, 0.2), lambda f: RT.dcl_ref(f, 0.2)),
}
for _p, _s, _k in [('cosine', 0.0, 1.0), ('shifted', -0.4, 0.7), ('shifted', 0.2, 0.6),
                   ('linear', 0.0, 1.0), ('exponential', 0.0, 1.0)]:
  GRAD_CONFIGS[f'dystress_through_{_p}_{_s}_{_k}'] = (
      lambda f, p=_p, s=_s, k=_k: dystress(f, 0.1, 0.2, p, s, k, grad_through_temperature=True),
      lambda f, p=_p, s=_s, k=_k: RT.dystress_ref(f, 0.1, 0.2, p, s, k))

# Stop-gradient temperature (the default): the gradient with tau FROZEN at its current value
_X_GRAD = np.random.default_rng(60).normal(size=(3, 2, 3))
SG_PROFILES = [('cosine', 0.0, 1.0), ('shifted', -0.4, 0.7), ('linear', 0.0, 1.0)]
SG_CONFIGS = {}
for _p, _s, _k in SG_PROFILES:
  _tau0 = RT.temperature_matrix_ref(_X_GRAD, 0.1, 0.2, _p, _s, _k)
  SG_CONFIGS[f'dystress_sg_{_p}_{_s}_{_k}'] = (
      lambda f, p=_p, s=_s, k=_k: dystress(f, 0.1, 0.2, p, s, k),
      lambda f, t=_tau0: RT.dystress_ref(f, None, None, tau_matrix=t))
SG_CONFIGS['dystress_sg_constant'] = (lambda f: dystress(f, 0.2, 0.2),
                                      lambda f: RT.dystress_ref(f, 0.2, 0.2))
SG_CONFIGS['dystress_through_constant'] = (
    lambda f: dystress(f, 0.2, 0.2, grad_through_temperature=True),
    lambda f: RT.dystress_ref(f, 0.2, 0.2))
ALL_GRAD_CONFIGS = {**GRAD_CONFIGS, **SG_CONFIGS}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
  assert not jax.config.jax_enable_x64


def _stacked(configs):
  return lambda f: jnp.stack([loss(f) for loss, _ in configs.values()])


@functools.lru_cache(maxsize=None)
def _values_and_jacobian():
  """(values [K], Jacobians [K, 3, 2, 3]) of ALL_GRAD_CONFIGS at _X_GRAD, float64 (under x64)."""
  x = jnp.asarray(_X_GRAD)
  assert x.dtype == jnp.float64
  fn = _stacked(ALL_GRAD_CONFIGS)
  values, jacobian = jax.jit(lambda f: (fn(f), jax.jacrev(fn)(f)))(x)
  assert values.dtype == jnp.float64
  return np.asarray(values), np.asarray(jacobian)


def test_check_grads_float64(x64):  # pylint: disable=redefined-outer-name,unused-argument
  """``check_grads`` on all the fully differentiable losses at once (vector output, random VJPs)."""
  check_grads(jax.jit(_stacked(GRAD_CONFIGS)), (jnp.asarray(_X_GRAD),), order=1, modes=['rev'],
              atol=1e-5, rtol=1e-5, eps=1e-5)


@pytest.mark.parametrize('name', list(ALL_GRAD_CONFIGS))
def test_gradient_matches_finite_difference_of_reference(x64, name):  # pylint: disable=redefined-outer-name,unused-argument
  values, jacobian = _values_and_jacobian()
  k = list(ALL_GRAD_CONFIGS).index(name)
  ref = ALL_GRAD_CONFIGS[name][1]
  np.testing.assert_allclose(values[k], ref(_X_GRAD), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(jacobian[k], central_difference(ref, _X_GRAD), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('profile,shift,scale', SG_PROFILES)
def test_stop_gradient_and_gradient_through_temperature_differ(x64, profile, shift, scale):  # pylint: disable=redefined-outer-name,unused-argument
  """Same value; different gradients unless the temperature is constant."""
  values, jacobian = _values_and_jacobian()
  names = list(ALL_GRAD_CONFIGS)
  sg = names.index(f'dystress_sg_{profile}_{shift}_{scale}')
  through = names.index(f'dystress_through_{profile}_{shift}_{scale}')
  np.testing.assert_allclose(values[sg], values[through], rtol=1e-14)
  diff = np.max(np.abs(jacobian[sg] - jacobian[through]))
  assert diff > 1e-2 * np.max(np.abs(jacobian[sg])), diff
  const_sg, const_through = names.index('dystress_sg_constant'), names.index(
      'dystress_through_constant')
  np.testing.assert_allclose(jacobian[const_sg], jacobian[const_through], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------------
# Invariances
# ----------------------------------------------------------------------------------------------------
LOSS_FNS = {
    'bcl': binary_contrastive,
    'bcl_nce': lambda f: binary_contrastive(f, nu='nce'),
    'combo': binary_contrastive_combo,
    'combo_raw': lambda f: binary_contrastive_combo(f, normalize_contr=False),
    'mio1': lambda f: mio(f, version=1),
    'mio2': lambda f: mio(f, version=2),
    'mio3': lambda f: mio(f, version=3),
    'dystress_cosine': lambda f: dystress(f, 0.07, 0.2),
    'dystress_shifted': lambda f: dystress(f, 0.1, 0.2, 'shifted', -0.2, 0.6),
    'dystress_exponential': lambda f: dystress(f, 0.1, 0.2, 'exponential'),
    'dcl': dcl,
    'dclw': lambda f: dcl(f, sigma=0.5),
}
SCALE_INVARIANT = [n for n in LOSS_FNS if n != 'combo_raw']
_INV = make_features(80, 5, 3, 8, 'moderate')


@functools.lru_cache(maxsize=None)
def _invariance_values():
  """LOSS_FNS on the base input and its transformations (one compilation)."""
  fn = jax.jit(lambda f: {name: loss(f) for name, loss in LOSS_FNS.items()})
  rng = np.random.default_rng(81)
  perm = rng.permutation(5)
  per_sample_views = np.stack([_INV[b, rng.permutation(3)] for b in range(5)])
  row_scales = rng.uniform(0.01, 7.5, size=(5, 3, 1)).astype(np.float32)
  inputs = {'base': _INV, 'batch_perm': _INV[perm], 'view_perm': _INV[:, [2, 0, 1]],
            'per_sample_view_perm': per_sample_views, 'row_scaled': _INV * row_scales,
            'scaled2': _INV * np.float32(2.0)}
  return {k: jax.device_get(fn(v)) for k, v in inputs.items()}, inputs


@pytest.mark.parametrize('name', list(LOSS_FNS))
def test_batch_and_view_permutation_invariance(name):
  values, _ = _invariance_values()
  for kind in ('batch_perm', 'view_perm', 'per_sample_view_perm'):
    assert_close(values[kind][name], values['base'][name])


@pytest.mark.parametrize('name', SCALE_INVARIANT)
def test_cosine_losses_scale_invariant(name):
  values, _ = _invariance_values()
  assert_close(values['row_scaled'][name], values['base'][name])


def test_raw_combo_is_not_scale_invariant():
  values, inputs = _invariance_values()
  assert not np.isclose(values['scaled2']['combo_raw'], values['base']['combo_raw'], rtol=1e-3)
  assert_close(values['scaled2']['combo_raw'], RT.combo_ref(inputs['scaled2'], normalize=False))


# ----------------------------------------------------------------------------------------------------
# Extreme finite inputs: finite values and gradients; closed forms for identical features
# ----------------------------------------------------------------------------------------------------
TRACED_FNS = {  # t: the temperature (tau_min for DySTreSS), traced
    'bcl': lambda f, t: binary_contrastive(f, t),
    'bcl_nce': lambda f, t: binary_contrastive(f, t, nu='nce'),
    'combo': lambda f, t: binary_contrastive_combo(f, t, t),
    'combo_raw': lambda f, t: binary_contrastive_combo(f, t, t, normalize_contr=False),
    'mio1': lambda f, t: mio(f, t, 1),
    'mio2': lambda f, t: mio(f, t, 2),
    'mio3': lambda f, t: mio(f, t, 3),
    'dystress_cosine': lambda f, t: dystress(f, t, 0.2),
    'dystress_shifted_through': lambda f, t: dystress(f, t, 0.2, 'shifted', -0.4, 0.7,
                                                      grad_through_temperature=True),
    'dystress_linear': lambda f, t: dystress(f, t, 0.2, 'linear'),
    'dystress_exponential_through': lambda f, t: dystress(f, t, 0.2, 'exponential',
                                                          grad_through_temperature=True),
    'dcl': dcl,
    'dclw': lambda f, t: dcl(f, t, 0.5),
}
_BASE = make_features(70, 5, 3, 8, 'unit')
EXTREME_INPUTS = {
    'random': _BASE,
    'identical': np.broadcast_to(_BASE[:1, :1], _BASE.shape).copy(),
    'one_sample_twice': np.concatenate([_BASE[:1], _BASE[:1], _BASE[2:]]),
    'norm_1e4': _BASE * np.float32(1e4),
    'norm_1e-6': _BASE * np.float32(1e-6),
    'zeros': np.zeros_like(_BASE),
}


@functools.lru_cache(maxsize=None)
def _extreme(kind, t):
  fn = _extreme_fn()
  return jax.device_get(fn(jnp.asarray(EXTREME_INPUTS[kind]), jnp.float32(t)))


@functools.lru_cache(maxsize=None)
def _extreme_fn():
  return jax.jit(lambda f, t: {n: jax.value_and_grad(loss)(f, t) for n, loss in TRACED_FNS.items()})


@pytest.mark.parametrize('kind,t', [('random', 0.01), ('identical', 0.01), ('identical', 0.2),
                                    ('one_sample_twice', 0.01), ('norm_1e4', 0.01),
                                    ('norm_1e-6', 0.2), ('zeros', 0.01)])
def test_finite_for_extreme_inputs(kind, t):
  for name, (value, grad) in _extreme(kind, t).items():
    assert np.isfinite(value), (name, value)
    assert np.all(np.isfinite(grad)), name


def test_dcl_is_lightlys_two_way_loss_and_below_nt_xent():
  """Two views: the mean over the 2N anchors is lightly's (l(z1, z2) + l(z2, z1)) / 2 (DCL and DCLW);
  dropping the positive from the denominator makes DCL smaller than NT-Xent at the same tau."""
  f = make_features(91, 6, 2, 5)
  assert_close(dcl(f, 0.1), RT.dcl_two_way_ref(f, 0.1))
  assert_close(dcl(f, 0.1, 0.5), RT.dclw_lightly_ref(f, 0.1, 0.5))
  assert float(simclr(f, 0.1)) > float(dcl(f, 0.1))
  np.testing.assert_allclose(np.mean(RT.dclw_weights(f, 0.5)), 1.0, rtol=1e-12)  # weights mean 1


def test_dclw_gradient_treats_the_weights_as_constants(x64):  # pylint: disable=redefined-outer-name,unused-argument
  """DCLW's weights are stop-gradient (lightly): the gradient is the finite difference of the
  reference with the weights frozen at the point's values, not of the reference itself."""
  f = _X_GRAD
  frozen = RT.dclw_weights(f, 0.5)
  grad = jax.jit(jax.grad(lambda x: dcl(x, 0.2, 0.5)))(jnp.asarray(f))
  np.testing.assert_allclose(np.asarray(grad),
                             central_difference(lambda x: RT.dclw_ref(x, 0.2, 0.5, frozen), f),
                             rtol=1e-6, atol=1e-8)
  moving = central_difference(lambda x: RT.dclw_ref(x, 0.2, 0.5), f)
  assert np.max(np.abs(np.asarray(grad) - moving)) > 1e-4


def test_identical_features_closed_forms():
  """Every cosine is 1; M = 15 rows, V = 3: T_p = M (V - 1) = 30, T_n = M (M - V) = 180."""
  m, t_p, t_n = 15, 30, 180
  sp = lambda x: math.log1p(math.exp(x))
  for t in (0.2, 0.01):
    values = {n: v for n, (v, _) in _extreme('identical', t).items()}
    assert_close(values['bcl'], (t_p * sp(-1 / t) + t_n * sp(1 / t)) / m**2)
    assert_close(values['mio1'], sp(-1 / t) + sp(1 / t))
    assert_close(values['mio2'], -1 / t + sp(1 / t))
    for name in ('dystress_cosine', 'dystress_shifted_through', 'dystress_linear',
                 'dystress_exponential_through'):
      assert_close(values[name], math.log(m - 1))  # all tau equal: uniform over the M - 1 others
  assert_close(_extreme('identical', 0.2)['mio3'][0], -5.0 + math.exp(5.0))
  # tau = 0.01: e^100 is not a float32; documented tangent continuation above log(max) - 20
  cap = math.log(np.finfo(np.float32).max) - 20.0
  assert_close(_extreme('identical', 0.01)['mio3'][0], -100.0 + math.exp(cap) * (101.0 - cap),
               rtol=1e-4)


def test_capped_exp_is_exact_below_the_cap_and_c1_at_it():
  cap = math.log(np.finfo(np.float32).max) - 20.0
  x = jnp.asarray([-3.0, 0.0, 20.0, 60.0, cap - 1e-3, cap + 1e-3, 1e3], jnp.float32)
  value, grad = jax.jit(jax.vmap(jax.value_and_grad(capped_exp)))(x)
  np.testing.assert_allclose(value[:4], np.exp(np.asarray(x[:4], np.float64)), rtol=1e-6)
  np.testing.assert_allclose(grad[4:], [math.exp(cap)] * 3, rtol=2e-3)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------------------------------
# Input validation: ValueError naming the argument (raised before any computation)
# ----------------------------------------------------------------------------------------------------
_F = make_features(90, 4, 2, 3)


def _all_with(features=_F):
  return {
      'bcl': lambda: binary_contrastive(features),
      'combo': lambda: binary_contrastive_combo(features),
      'mio': lambda: mio(features),
      'dystress': lambda: dystress(features, 0.1, 0.2),
      'dcl': lambda: dcl(features),
  }


@pytest.mark.parametrize('name', list(_all_with()))
@pytest.mark.parametrize('bad', [np.ones((8, 3), np.float32), np.ones((4, 2, 3, 1), np.float32),
                                 np.ones((4, 2, 3), np.int32), np.ones((4, 2, 0), np.float32)],
                         ids=['rank2', 'rank4', 'int', 'empty'])
def test_bad_features_raise(name, bad):
  with pytest.raises(ValueError, match='features'):
    _all_with(bad)[name]()


@pytest.mark.parametrize('call,match', [
    (lambda: binary_contrastive(_F, 0.0), 'temperature'),
    (lambda: dcl(_F, -0.1), 'temperature'),
    (lambda: dcl(_F[:, :1]), 'views'),
    (lambda: dcl(_F[:1]), 'at least 2 samples'),
    (lambda: dcl(_F, 0.1, 0.0), 'sigma'),
    (lambda: binary_contrastive(_F, float('nan')), 'temperature'),
    (lambda: binary_contrastive(_F, nu=0.0), 'nu'),
    (lambda: binary_contrastive(_F, nu=-1.0), 'nu'),
    (lambda: binary_contrastive(_F, nu='batch'), 'nu'),
    (lambda: binary_contrastive(_F[:, :1], nu='nce'), 'features'),  # one view: refused first
    (lambda: binary_contrastive(_F[:1], nu='nce'), 'nu'),
    (lambda: binary_contrastive_combo(_F, -0.25), 'temperature'),
    (lambda: binary_contrastive_combo(_F, contr_temperature=0.0), 'contr_temperature'),
    (lambda: binary_contrastive_combo(_F, contr_weight=-1.0), 'contr_weight'),
    (lambda: binary_contrastive_combo(_F, nu=0.0), 'nu'),
    (lambda: mio(_F, 0.0), 'temperature'),
    (lambda: mio(_F, version=0), 'version'),
    (lambda: mio(_F, version=4), 'version'),
    (lambda: mio(_F, version='3'), 'version'),
    (lambda: mio(_F, version=True), 'version'),
    (lambda: mio(_F[:, :1]), 'views'),
    (lambda: mio(_F[:1]), '2 samples'),
    (lambda: dystress(_F, 0.0, 0.2), 'tau_min'),
    (lambda: dystress(_F, 0.1, -0.2), 'tau_max'),
    (lambda: dystress(_F, 0.3, 0.2), 'tau_min'),
    (lambda: dystress(_F, 0.1, 0.2, 'sine'), 'profile'),
    (lambda: dystress(_F, 0.1, 0.2, 'shifted', -0.4, 0.0), 'scale'),
    (lambda: dystress(_F, 0.1, 0.2, 'shifted', float('inf'), 0.7), 'shift'),
    (lambda: dystress(_F, 0.1, 0.2, 'cosine', -0.4, 0.7), 'shift'),
    (lambda: dystress(_F, 0.1, 0.2, 'linear', 0.0, 0.7), 'scale'),
    (lambda: dystress(_F, 0.1, 0.2, 'exponential', rate=0.0), 'rate'),
    (lambda: dystress_temperature(0.5, 0.2, 0.1), 'tau_min'),
    (lambda: dystress_temperature(0.5, 0.1, 0.2, 'cubic'), 'profile'),
], ids=lambda v: v if isinstance(v, str) else '')
def test_invalid_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ----------------------------------------------------------------------------------------------------
# Dense == row-sharded (shard_map over 8 forced CPU devices)
# ----------------------------------------------------------------------------------------------------
# name -> (loss(features, axis_name), views): the structurally distinct paths (each ~4 compilations)
SHARDED_LOSSES = {
    'bcl_nce': (lambda f, axis_name=None: binary_contrastive(
        f, 0.1, nu='nce', axis_name=axis_name), 3),
    'combo_raw': (lambda f, axis_name=None: binary_contrastive_combo(
        f, 0.25, 0.33, 0.5, normalize_contr=False, axis_name=axis_name), 2),
    'mio1': (lambda f, axis_name=None: mio(f, 0.2, 1, axis_name=axis_name), 2),
    'mio3': (lambda f, axis_name=None: mio(f, 0.2, 3, axis_name=axis_name), 3),
    'dystress_shifted': (lambda f, axis_name=None: dystress(
        f, 0.1, 0.2, 'shifted', -0.4, 0.7, axis_name=axis_name), 3),
    'dcl': (lambda f, axis_name=None: dcl(f, 0.2, axis_name=axis_name), 2),
    'dclw': (lambda f, axis_name=None: dcl(f, 0.2, 0.5, axis_name=axis_name), 2),
}


def _worker():
  """Runs in the subprocess with 8 forced host devices; prints the JSON results."""
  jax.config.update('jax_disable_most_optimizations', True)  # compile time dominates at this size
  mesh = sharded_harness.make_mesh()
  batch = 2 * sharded_harness.N_DEVICES
  results = {}
  # One jitted program per comparison for all the losses with the same number of views
  # (compilation is the time of these tiny cases).
  for views in sorted({v for _, v in SHARDED_LOSSES.values()}):
    rng = np.random.default_rng(views)
    feats = rng.normal(size=(batch, views, 8))
    feats *= np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=(batch, views, 1)))
    x = rng.normal(size=(batch, views, 5)).astype(np.float32)
    w = (rng.normal(size=(5, 8)) / np.sqrt(5)).astype(np.float32)
    cases = {f'{name}/views{v}': (fn, fn, feats.astype(np.float32), False)
             for name, (fn, v) in SHARDED_LOSSES.items() if v == views}
    sharded_harness.check_losses(results, cases, x=x, w=w, mesh=mesh)
  sharded_harness.emit(results)


def test_dense_equals_sharded_on_8_cpu_devices():
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, expected_checks=len(SHARDED_LOSSES) * 4)


if __name__ == '__main__':
  _worker()
