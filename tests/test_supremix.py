"""Tests of contrastive_jax.losses.supremix against the float64 references of references_supremix.py.

Values (fixed ``alphas``, default and ``official=True``, 1-3 views, ties, continuous labels, anchors
without hard positives or without any positive), the PRNG path (determinism, ``supremix_alphas``,
Beta(2, 8) in distribution), gradients (``check_grads`` in float64 and finite differences of the
references with the mixtures / official shifts held fixed, i.e. the stop-gradient semantics),
invariances, extreme inputs, input validation, the chunked (``lax.map``) path, dense == row-sharded on
8 forced CPU devices (this file re-runs itself as the worker), and the peak memory at M = 512.
"""

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from inputs import central_difference
import references_supremix as R
import sharded_harness
from contrastive_jax.losses.supcon import supcon
from contrastive_jax.losses.supremix import supremix
from contrastive_jax.losses.supremix import supremix_alphas

# The module itself: the attribute ``contrastive_jax.losses.supremix`` is the function of that name.
supremix_module = importlib.import_module("contrastive_jax.losses.supremix")

RTOL, ATOL = 1e-5, 1e-6

# jit with traced hyperparameters: one compilation per (shape, official, key or alphas), where eager
# execution would compile every primitive for every shape (compile time dominates these tests)
loss = jax.jit(supremix, static_argnames=('beta', 'official', 'axis_name'))
alphas_of = jax.jit(supremix_alphas, static_argnames=('num_rows', 'beta', 'dtype'))


pytestmark = pytest.mark.usefixtures('fast_compile')


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def make_features(seed, batch, views, dim):
  """float32 ``[batch, views, dim]`` with row norms spread over [0.1, 10]."""
  rng = np.random.default_rng(seed)
  f = rng.normal(size=(batch, views, dim))
  f /= np.linalg.norm(f, axis=-1, keepdims=True)
  f *= np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(batch, views, 1)))
  return f.astype(np.float32)


def make_labels(seed, batch, kind):
  rng = np.random.default_rng(seed + 1000)
  if kind == 'ages':  # integer labels: ties and many hard positives within the window
    y = rng.integers(0, 12, size=batch)
  elif kind == 'ties':  # three values: many real positives
    y = rng.integers(0, 3, size=batch)
    y[:2] = [0, 2]
  elif kind == 'continuous':  # all distinct
    y = rng.uniform(-3.0, 3.0, size=batch)
  elif kind == 'spaced':  # all distinct, 10 apart: no hard positive with window 5
    y = 10.0 * rng.permutation(batch)
  elif kind == 'same':  # no negative, no mixture at all
    y = np.full(batch, 2.5)
  else:
    raise ValueError(kind)
  return np.asarray(y, np.float32)


def make_alphas(seed, rows):
  return np.random.default_rng(seed + 2000).beta(2.0, 8.0, size=(rows, rows)).astype(np.float32)


# id -> (seed, batch, views, dim, label kind, window)
CASES = {
    'ages_2view': (0, 8, 2, 8, 'ages', 5.0),
    'ties_2view': (1, 8, 2, 8, 'ties', 5.0),
    'continuous_2view': (2, 8, 2, 8, 'continuous', 1.5),
    'continuous_1view': (3, 8, 1, 8, 'continuous', 2.0),  # anchors without any positive
    'ages_3view': (4, 5, 3, 8, 'ages', 3.0),
    'spaced_2view': (5, 8, 2, 8, 'spaced', 5.0),  # no hard positive anywhere
}


def case_inputs(case_id):
  seed, batch, views, dim, kind, window = CASES[case_id]
  return (make_features(seed, batch, views, dim), make_labels(seed, batch, kind),
          make_alphas(seed, batch * views), window)


def assert_scalar_close(got, expected, rtol=RTOL, atol=ATOL):
  assert got.shape == () and got.dtype == jnp.float32, (got.shape, got.dtype)
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------
# Values vs. the float64 references (fixed alphas)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('case_id', list(CASES))
@pytest.mark.parametrize('temperature', [0.5, 0.1])
def test_matches_reference(case_id, temperature):
  f, y, a, window = case_inputs(case_id)
  got = loss(f, y, None, temperature, window=window, alphas=a)
  assert_scalar_close(got, R.supremix_ref(f, y, a, temperature, window))


@pytest.mark.parametrize('case_id', list(CASES))
@pytest.mark.parametrize('temperature', [0.5, 0.1])
def test_official_matches_reference(case_id, temperature):
  f, y, a, window = case_inputs(case_id)
  got = loss(f, y, None, temperature, window=window, alphas=a, official=True)
  assert_scalar_close(got, R.supremix_official_ref(f, y, a, temperature, window))


def test_official_padding_quirk_is_exercised_and_reproduced():
  """Some anchor's official mixture row max is a padded (-1, ..., -1) slot: we follow it."""
  f, y, a, window = case_inputs('ages_2view')
  assert R.padding_decides_row_max(f, y, a, 0.5, window)
  got = float(loss(f, y, None, 0.5, window=window, alphas=a, official=True))
  without_quirk = R.supremix_official_ref(f, y, a, 0.5, window, pad_quirk=False)
  assert abs(got - without_quirk) > 1e3 * RTOL * abs(without_quirk)
  # and the two shifts differ from the clean log-softmax
  assert abs(got - R.supremix_ref(f, y, a, 0.5, window)) > 1e-3


def test_defaults_and_int_labels():
  """temperature 0.5, window 5 (official AgeDB defaults); integer labels."""
  f, y, a, _ = case_inputs('ages_2view')
  got = loss(f, y.astype(np.int32), None, alphas=a)
  assert_scalar_close(got, R.supremix_ref(f, y, a, 0.5, 5.0))


def test_all_labels_equal_is_supcon():
  """No negative, so no mixture: SupCon with tau_base = tau (the official base temperature)."""
  f = make_features(6, 8, 2, 8)
  y = make_labels(6, 8, 'same')
  a = make_alphas(6, 16)
  expected = jax.jit(supcon)(f, y, 0.3, 0.3)
  for official in (False, True):
    got = loss(f, y, None, 0.3, window=5.0, alphas=a, official=official)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_no_positive_anywhere_is_zero():
  f = make_features(7, 8, 1, 8)
  y = make_labels(7, 8, 'spaced')
  for official in (False, True):
    got = loss(f, y, None, 0.5, window=5.0, alphas=make_alphas(7, 8), official=official)
    np.testing.assert_allclose(got, 0.0, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# The PRNG path
# ----------------------------------------------------------------------------------------------------
def test_key_path_is_deterministic_and_uses_supremix_alphas():
  f, y, _, window = case_inputs('ages_2view')
  key = jax.random.key(3)
  first = loss(f, y, key, window=window)
  np.testing.assert_array_equal(first, loss(f, y, key, window=window))
  a = np.asarray(alphas_of(key, 16))
  np.testing.assert_allclose(first, loss(f, y, None, 0.5, window=window, alphas=a), rtol=1e-6)
  assert_scalar_close(first, R.supremix_ref(f, y, a, 0.5, window))
  assert not np.isclose(first, loss(f, y, jax.random.key(4), window=window), rtol=1e-4)
  # a raw uint32[2] key with the same key data draws the same coefficients
  np.testing.assert_array_equal(alphas_of(jax.random.PRNGKey(3), 16), a)


def test_sampled_alphas_are_beta_2_8():
  a = np.asarray(alphas_of(jax.random.key(0), 256), np.float64).ravel()  # 65536 draws
  assert a.min() >= 0.0 and a.max() <= 1.0
  mean, var = 2.0 / 10.0, 2.0 * 8.0 / (10.0**2 * 11.0)
  assert abs(a.mean() - mean) < 0.003, a.mean()  # sd of the mean: 4.7e-4
  assert abs(a.var() / var - 1.0) < 0.03, a.var()
  scipy_stats = pytest.importorskip('scipy.stats')
  assert scipy_stats.kstest(a, 'beta', args=(2.0, 8.0)).pvalue > 1e-4
  # rows are independent draws (fold_in by global row), not copies
  rows = a.reshape(256, 256)
  assert not np.allclose(rows[0], rows[1])


def test_sampled_alphas_other_beta():
  """Integer parameters use Gamma sums of exponentials; others jax.random.beta."""
  a = np.asarray(alphas_of(jax.random.key(1), 128, beta=(5.0, 5.0)), np.float64)
  assert abs(a.mean() - 0.5) < 0.005
  b = np.asarray(alphas_of(jax.random.key(1), 32, beta=(0.5, 1.5)), np.float64)
  assert abs(b.mean() - 0.25) < 0.04 and b.min() >= 0.0 and b.max() <= 1.0


# ----------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
  assert not jax.config.jax_enable_x64


GRAD_Y = np.array([0.0, 1.0, 2.5, 3.0])  # hard positives for the anchors labelled 1 and 2.5


def test_check_grads_float64(x64):  # pylint: disable=redefined-outer-name,unused-argument
  """``check_grads`` on the hand-written VJP (the hard-positive reduction, a ``custom_vjp``).

  The whole loss cannot go through ``check_grads``: its mixtures are stop-gradient by design, which a
  numerical derivative of the loss does not see; the finite-difference test below checks the whole
  gradient against the reference with the mixtures held fixed instead.
  """
  rng = np.random.default_rng(60)
  logits = jnp.asarray(rng.normal(size=(6, 6)))
  y = jnp.asarray([0.0, 1.0, 1.0, 2.5, 3.0, 4.5])
  window = jnp.asarray(3.0)
  weights = jnp.asarray(rng.normal(size=(2, 6)))

  def fn(x):
    lse, total, _ = supremix_module._hard_positive_stats(  # pylint: disable=protected-access
        supremix_module.CHUNK_ELEMENTS, x, y, y, window)
    return weights[0] * lse + weights[1] * total

  assert fn(logits).dtype == jnp.float64
  check_grads(jax.jit(fn), (logits,), order=1, modes=['rev'], atol=1e-6, rtol=1e-6, eps=1e-6)


@pytest.mark.parametrize('official', [False, True])
def test_grad_matches_finite_difference_of_reference(x64, official):  # pylint: disable=redefined-outer-name,unused-argument
  """d/dx of the reference with the mixtures (and the official shifts) held at x0 = stop-gradient."""
  rng = np.random.default_rng(61)
  f = rng.normal(size=(4, 2, 3))
  a = make_alphas(61, 8).astype(np.float64)
  ref = R.supremix_official_ref if official else R.supremix_ref
  jax_fn = lambda x: supremix(x, GRAD_Y, None, 0.3, alphas=a, official=official)
  np.testing.assert_allclose(float(jax.jit(jax_fn)(jnp.asarray(f))), ref(f, GRAD_Y, a, 0.3), rtol=1e-12,
                             atol=1e-12)
  got = np.asarray(jax.jit(jax.grad(jax_fn))(jnp.asarray(f)))
  expected = central_difference(lambda x: ref(x, GRAD_Y, a, 0.3, frozen_features=f), f)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  # the mixtures really are stop-gradient: differentiating through them gives something else
  through = central_difference(lambda x: ref(x, GRAD_Y, a, 0.3), f)
  assert not np.allclose(got, through, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# The chunked (lax.map) path, used when chunk * N^2 would exceed ``chunk_elements``
# ----------------------------------------------------------------------------------------------------
def test_chunked_path_matches_single_chunk():
  f, y, a, window = case_inputs('ages_3view')  # n = 15 anchors
  fn = lambda x: supremix(x, y, None, 0.2, window=window, alphas=a, official=True)
  whole_v, whole_g = jax.jit(jax.value_and_grad(fn))(f)
  fn2 = lambda x: supremix(x, y, None, 0.2, window=window, alphas=a, official=True,
                           chunk_elements=4 * 15 * 15)  # 4 anchors a step + 3
  jaxpr = str(jax.make_jaxpr(jax.grad(fn2))(f))
  assert 'scan' in jaxpr
  chunk_v, chunk_g = jax.jit(jax.value_and_grad(fn2))(f)
  np.testing.assert_allclose(chunk_v, whole_v, rtol=1e-6)
  np.testing.assert_allclose(chunk_g, whole_g, rtol=1e-5, atol=1e-6 * np.abs(whole_g).max())


# ----------------------------------------------------------------------------------------------------
# Invariances
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('official', [False, True])
def test_batch_permutation_invariance(official):
  f, y, a, window = case_inputs('ages_2view')
  perm = np.random.default_rng(81).permutation(8)
  rows = (perm[:, None] * 2 + np.arange(2)).ravel()  # sample-major rows of the permuted batch
  got = loss(f[perm], y[perm], None, 0.5, window=window, alphas=a[rows][:, rows], official=official)
  np.testing.assert_allclose(got, loss(f, y, None, 0.5, window=window, alphas=a, official=official),
                             rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('official', [False, True])
def test_feature_scale_invariance(official):
  f, y, a, window = case_inputs('continuous_2view')
  scale = np.exp(np.random.default_rng(82).uniform(-3, 3, size=(8, 2, 1))).astype(np.float32)
  got = loss(f * scale, y, None, 0.5, window=window, alphas=a, official=official)
  np.testing.assert_allclose(got, loss(f, y, None, 0.5, window=window, alphas=a, official=official),
                             rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# Extreme inputs: finite values and gradients
# ----------------------------------------------------------------------------------------------------
def _extreme(kind):
  f = make_features(70, 8, 2, 8)
  y = np.array([0, 0, 1, 2, 2, 3, 4.5, 5], np.float32)  # ties and hard positives
  temperature = 0.5
  if kind == 'temperature_0.01':
    temperature = 0.01
  elif kind == 'identical':
    f = np.broadcast_to(f[:1, :1], f.shape).copy()
  elif kind == 'identical_temperature_0.01':
    f = np.broadcast_to(f[:1, :1], f.shape).copy()
    temperature = 0.01
  elif kind == 'zeros':
    f = np.zeros_like(f)
  elif kind == 'norm_1e4':
    f = f * np.float32(1e4)
  elif kind == 'all_ties':
    y = np.full(8, 3.0, np.float32)
  elif kind == 'no_hard_positive':
    y = make_labels(70, 8, 'spaced')
  elif kind == 'huge_labels':
    y = y * np.float32(1e6)
  return f, y, temperature


EXTREME = ['temperature_0.01', 'identical', 'identical_temperature_0.01', 'zeros', 'norm_1e4',
           'all_ties', 'no_hard_positive', 'huge_labels']


_value_and_grad = jax.jit(jax.value_and_grad(supremix), static_argnames=('official',))


@pytest.mark.parametrize('official', [False, True])
@pytest.mark.parametrize('kind', EXTREME)
def test_finite_for_extreme_inputs(kind, official):
  f, y, temperature = _extreme(kind)
  value, grad = _value_and_grad(jnp.asarray(f), jnp.asarray(y), jax.random.key(7), temperature,
                                official=official)
  assert np.isfinite(float(value)), (kind, value)
  assert np.all(np.isfinite(np.asarray(grad))), (kind, grad)


def test_extreme_values_match_reference():
  for kind in ('temperature_0.01', 'identical'):
    f, y, temperature = _extreme(kind)
    a = make_alphas(71, 16)
    got = loss(f, y, None, temperature, window=5.0, alphas=a)
    assert_scalar_close(got, R.supremix_ref(f, y, a, temperature, 5.0), rtol=2e-5)


# ----------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------
def _valid():
  f, y, a, _ = case_inputs('ages_2view')
  return f, y, a


@pytest.mark.parametrize('kwargs,match', [
    (dict(features=np.zeros((8, 8), np.float32)), 'features'),
    (dict(features=np.zeros((8, 2, 8), np.int32)), 'features'),
    (dict(features=np.zeros((1, 1, 8), np.float32), labels=np.zeros(1, np.float32)), 'features'),
    (dict(labels=np.zeros(7, np.float32)), 'labels'),
    (dict(labels=np.zeros((8, 2), np.float32)), 'labels'),
    (dict(labels=np.array([0, 1, 2, np.nan, 4, 5, 6, 7], np.float32)), 'labels'),
    (dict(labels=np.array([0, 1, 2, np.inf, 4, 5, 6, 7], np.float32)), 'labels'),
    (dict(temperature=0.0), 'temperature'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(temperature=float('nan')), 'temperature'),
    (dict(window=0.0), 'window'),
    (dict(window=float('inf')), 'window'),
    (dict(beta=(2.0,)), 'beta'),
    (dict(beta=(2.0, -1.0)), 'beta'),
    (dict(beta='ab'), 'beta'),
    (dict(beta=(2.0, float('nan'))), 'beta'),
    (dict(alphas=np.zeros((16, 15), np.float32)), 'alphas'),
    (dict(alphas=np.zeros((8, 8), np.float32)), 'alphas'),
    (dict(alphas=np.full((16, 16), 1.5, np.float32)), 'alphas'),
    (dict(alphas=np.full((16, 16), np.nan, np.float32)), 'alphas'),
    (dict(alphas=None, key=None), 'key'),
    (dict(alphas=None, key=np.zeros(3, np.uint32)), 'key'),
    (dict(alphas=None, key=np.zeros(2, np.float32)), 'key'),
])
def test_bad_inputs_raise(kwargs, match):
  f, y, a = _valid()
  args = dict(features=f, labels=y, key=jax.random.key(0), temperature=0.5, window=5.0,
              beta=(2.0, 8.0), alphas=a)
  args.update(kwargs)
  features, labels, key = args.pop('features'), args.pop('labels'), args.pop('key')
  with pytest.raises(ValueError, match=match):
    supremix(features, labels, key, **args)


# ----------------------------------------------------------------------------------------------------
# Dense == row-sharded on 8 forced CPU devices (this file re-runs itself as the worker)
# ----------------------------------------------------------------------------------------------------
def _worker():
  """Runs in the subprocess with 8 forced host devices; prints the JSON results."""
  jax.config.update('jax_disable_most_optimizations', True)  # compile time dominates this worker
  mesh = sharded_harness.make_mesh()
  batch = 2 * sharded_harness.N_DEVICES
  results = {}
  key = jax.random.key(11)

  def fn(f, y, k, a, axis_name=None):
    """The key path (drawn by global row) with the official pmax of the mixture counts, plus the
    alphas path (sliced by global row) in default mode."""
    return (supremix(f, y, k, 0.2, window=3.0, official=True, axis_name=axis_name)
            + supremix(f, y, None, 0.3, window=5.0, alphas=a, axis_name=axis_name))

  views = 3
  rng = np.random.default_rng(views)
  feats = make_features(views, batch, views, 8)
  labels = make_labels(views, batch, 'ages')
  x = rng.normal(size=(batch, views, 5)).astype(np.float32)
  w = (rng.normal(size=(5, 8)) / np.sqrt(5)).astype(np.float32)
  sharded_harness.check_loss(results, 'key_official+alphas', fn, feats, (labels,),
                             (key, make_alphas(views, batch * views)), x=x, w=w, mesh=mesh)
  sharded_harness.emit(results)


def test_dense_equals_sharded_on_8_cpu_devices():
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, expected_checks=4)


# ----------------------------------------------------------------------------------------------------
# Memory at M = 512 (batch 256 x 2 views, dim 128), in a fresh process
# ----------------------------------------------------------------------------------------------------
_MEMORY_SCRIPT = r"""
import json, resource
import numpy as np, jax, jax.numpy as jnp
from contrastive_jax.losses.supremix import supremix
rng = np.random.default_rng(0)
f = jnp.asarray(rng.normal(size=(256, 2, 128)).astype(np.float32))
y = jnp.asarray(rng.integers(0, 101, size=256).astype(np.float32))  # AgeDB-like ages, window 5
key = jax.random.key(0)
jnp.zeros(()).block_until_ready()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
compiled = jax.jit(jax.value_and_grad(lambda x: supremix(x, y, key))).lower(f).compile()
analysis = compiled.memory_analysis()
value, grad = compiled(f)
value.block_until_ready()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print('RESULTS ' + json.dumps({'value': float(value), 'grad_finite': bool(np.isfinite(grad).all()),
                               'temp_bytes': analysis.temp_size_in_bytes, 'base': base,
                               'peak': peak}))
"""


def test_peak_memory_at_m512():
  """value_and_grad at M = 512 stays in O(M^2): XLA temp buffers < 256 MiB, peak RSS growth < 2 GiB
  (measured: ~45 MiB temp, ~160 MiB RSS growth; the official [M, M^2, 128] mixture tensor alone would
  be 64 GiB)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=sharded_harness.REPO_ROOT)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-c', _MEMORY_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULTS ')][-1]
  out = json.loads(line[len('RESULTS '):])
  assert np.isfinite(out['value']) and out['grad_finite'], out
  assert out['temp_bytes'] < 256 * 2**20, out
  assert out['peak'] - out['base'] < 2 * 2**30, out


if __name__ == '__main__':
  _worker()
