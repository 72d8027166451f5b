"""ConR, RankSim, N-pair and adaptive triplet vs. float64 NumPy references (tests/references_comparators.py).

Covers: values vs. the references (label ties, anchors without positives / negatives, batch 2, 1-3
views), ConR ``official=True`` vs. a NumPy transliteration of the official code, RankSim forward and its
blackbox backward vs. NumPy, ``check_grads`` in float64, finiteness for extreme inputs, batch-permutation
invariance, input validation, and dense == row-sharded on 8 forced CPU devices (this file re-runs itself
as the worker, see tests/sharded_harness.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from inputs import make_features
import references_comparators as R
import sharded_harness
import test_losses as loss_inputs
from contrastive_jax.losses.conr import conr
from contrastive_jax.losses.metric_learning import adaptive_triplet
from contrastive_jax.losses.metric_learning import npair
from contrastive_jax.losses.ranksim import blackbox_rank
from contrastive_jax.losses.ranksim import normalised_rank
from contrastive_jax.losses.ranksim import ranksim
from contrastive_jax.losses.ranksim import ranksim_representatives

RTOL, ATOL = 1e-5, 1e-6

# Jitted entry points for the value tests: hyperparameters that are plain numbers are traced, so one
# compilation per input shape serves every setting (eager mode would compile every op per shape).
conr_j = jax.jit(conr, static_argnames=('official',))
npair_j = jax.jit(npair, static_argnames=('normalize',))
triplet_j = jax.jit(adaptive_triplet, static_argnames=('mining', 'distance'))
ranksim_j = jax.jit(ranksim, static_argnames=('lambda_',))
representatives_j = jax.jit(ranksim_representatives, static_argnames=('views',))


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def make_labels(seed, batch, kind):
  """float32 ``[batch]`` labels: ``test_losses.make_labels``' kinds, but 'ties' on {0, .., 3} (so that
  |dy| hits the window boundaries), plus 'spread'."""
  rng = np.random.default_rng(seed + 1000)
  if kind == 'ties':  # small integer set: exact ties, |dy| == window boundaries
    y = rng.integers(0, 4, size=batch)
    y[:2] = [0, 3]
  elif kind == 'spread':  # distinct labels 2.5 apart (no positive within window 1 across samples)
    y = 2.5 * rng.permutation(batch)
    y[-1] = y[0]  # one tie
  else:  # 'continuous', 'unique', 'mixed', 'same'
    return loss_inputs.make_labels(seed, batch, kind)
  return np.asarray(y, np.float32)


def make_preds(seed, labels, views, noise=1.5):
  """Per-view predictions near the labels: some pairs are 'confusing' (|dyhat| <= 1), some not."""
  rng = np.random.default_rng(seed + 2000)
  return (labels[:, None] + noise * rng.normal(size=(labels.shape[0], views))).astype(np.float32)


# id -> (seed, batch, views, dim, label kind)
CASES = {
    'ties': (0, 8, 2, 8, 'ties'),
    'continuous': (1, 8, 2, 8, 'continuous'),
    'unique_1view': (2, 8, 1, 8, 'unique'),
    'spread_1view': (3, 8, 1, 8, 'spread'),  # anchors without positives
    'mixed_1view': (4, 8, 1, 8, 'mixed'),
    'b2_same': (5, 2, 1, 4, 'same'),  # no negatives at all
    'b2_unique_2view': (6, 2, 2, 4, 'unique'),
    'views3_ties': (7, 5, 3, 8, 'ties'),
}
CASE_IDS = list(CASES)


def case_inputs(case_id):
  seed, batch, views, dim, kind = CASES[case_id]
  y = make_labels(seed, batch, kind)
  return make_features(seed, batch, views, dim), y, make_preds(seed, y, views)


def assert_scalar_close(got, expected, rtol=RTOL, atol=ATOL):
  assert got.shape == () and got.dtype == jnp.float32, (got.shape, got.dtype)
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol, atol=atol)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# ----------------------------------------------------------------------------------------------------
# ConR
# ----------------------------------------------------------------------------------------------------
# (the weights=None default is the same computation as weights=1; it is exercised by the extreme-input,
# permutation and sharded tests, here weights are always passed to share one compilation per shape)
@pytest.mark.parametrize('case_id', CASE_IDS)
def test_conr_matches_reference(case_id):
  f, y, p = case_inputs(case_id)
  ones = np.ones_like(y)
  weights = np.random.default_rng(9).uniform(0.2, 3.0, size=y.shape).astype(np.float32)
  weights[0] = 0.0  # a zero-weight anchor contributes exactly 0
  settings = [(ones, dict(window=1.0, temperature=0.07, e=0.01)),  # the paper's defaults
              (weights, dict(window=1.5, temperature=0.2, e=0.5))]
  for w, kw in settings:
    assert_scalar_close(conr_j(f, y, p, weights=w, **kw), R.conr_ref(f, y, p, weights=w, **kw))
  assert_scalar_close(conr_j(f, y, p, weights=ones), R.conr_ref(f, y, p))  # defaults


@pytest.mark.parametrize('case_id', CASE_IDS)
def test_conr_official_matches_official_code(case_id):
  f, y, p = case_inputs(case_id)
  weights = np.random.default_rng(10).uniform(0.5, 2.0, size=y.shape).astype(np.float32)
  for w in (np.ones_like(y), weights):
    got = conr_j(f, y, p, weights=w, official=True, temperature=0.2)  # tau ignored: 0.07
    expected = R.conr_official_ref(f, y, p, weights=w, zero_empty_positives=True)
    assert_scalar_close(got, expected)
    official = R.conr_official_ref(f, y, p, weights=w)
    if np.isfinite(official):  # every anchor has a positive: the unmodified official value
      assert_scalar_close(got, official)
    else:  # the official code divides 0/0 for anchors without positives
      assert case_id in ('spread_1view', 'unique_1view', 'mixed_1view', 'b2_unique_2view'), case_id


@pytest.mark.parametrize('case_id', ['ties', 'continuous', 'spread_1view', 'views3_ties'])
def test_accon_conr_matches_references(case_id):
  """"+ACCon+ConR" (``angle_range``): the paper form against a loop reference, ``official=True``
  against a NumPy transliteration of Haifengtao/ACCon ``acConR``; R = 12 (a visible compensation on
  these labels) and the official 100."""
  f, y, p = case_inputs(case_id)
  w = np.random.default_rng(11).uniform(0.5, 2.0, size=y.shape).astype(np.float32)
  for angle_range in (12.0, 100.0):
    assert_scalar_close(conr_j(f, y, p, weights=w, temperature=0.1, angle_range=angle_range),
                        R.conr_ref(f, y, p, temperature=0.1, weights=w,
                                              angle_range=angle_range))
    # rtol 1e-4: the official clamp of s / 0.07 puts cos theta at +-1, where float32's
    # sqrt(1 - cos^2 + 1e-6) loses a few digits (as the official float32 code does)
    assert_scalar_close(conr_j(f, y, p, weights=w, official=True, angle_range=angle_range),
                        R.acconr_official_ref(f, y, p, angle_range, weights=w), rtol=1e-4)
  plain = float(conr_j(f, y, p, weights=w, temperature=0.1))
  if case_id != 'spread_1view':  # there no anchor has both a positive and a negative
    assert not np.isclose(plain, float(conr_j(f, y, p, weights=w, temperature=0.1,
                                              angle_range=12.0)), rtol=1e-4)
  with pytest.raises(ValueError, match='angle_range'):
    conr(f, y, p, angle_range=0.0)


def test_conr_official_differs_from_paper_form_and_ignores_temperature():
  f, y, p = case_inputs('ties')
  w = np.ones_like(y)
  official = float(conr_j(f, y, p, weights=w, official=True))
  assert not np.isclose(official, float(conr_j(f, y, p, weights=w)), rtol=1e-3)
  for tau in (0.01, 0.5, 3.0):
    np.testing.assert_allclose(float(conr_j(f, y, p, weights=w, official=True, temperature=tau)),
                               official, rtol=RTOL)


def test_conr_without_negatives_is_zero():
  f, y, _ = case_inputs('ties')
  far = (np.arange(16, dtype=np.float32) * 10.0).reshape(8, 2)  # |dyhat| > w everywhere
  w = np.ones_like(y)
  assert float(conr_j(f, y, far, weights=w)) == 0.0
  assert float(conr_j(f, y, far, weights=w, official=True)) == 0.0
  f2, y2, p2 = case_inputs('b2_same')  # one label: positives only
  assert float(conr_j(f2, y2, p2, weights=np.ones_like(y2))) == 0.0


def test_conr_predictions_are_stop_gradient_and_accept_trailing_axis():
  f, y, p = case_inputs('ties')
  grad_p = jax.jit(jax.grad(lambda q: conr(f, y, q)))(jnp.asarray(p))
  assert np.all(np.asarray(grad_p) == 0.0)
  w = np.ones_like(y)
  assert_scalar_close(conr_j(f, y, p[..., None], weights=w), float(conr_j(f, y, p, weights=w)))


# ----------------------------------------------------------------------------------------------------
# RankSim
# ----------------------------------------------------------------------------------------------------
def test_normalised_rank_matches_reference_with_ties():
  rng = np.random.default_rng(20)
  values = rng.integers(0, 4, size=(5, 9)).astype(np.float32)  # many ties
  values[0] = rng.normal(size=9)
  valid = rng.uniform(size=(5, 9)) < 0.7
  valid[:, 0] = True
  got = np.asarray(jax.jit(normalised_rank)(values, valid))
  for r in range(5):
    sub = values[r][valid[r]]
    np.testing.assert_allclose(got[r][valid[r]], R.rank_ref(sub), rtol=0, atol=1e-7)
    np.testing.assert_allclose(got[r][valid[r]], R.rank_official_ref(sub), rtol=0, atol=1e-7)
    assert np.all(got[r][~valid[r]] == 0.0)


@pytest.mark.parametrize('lambda_', [2.0, 0.5])
def test_blackbox_rank_backward_matches_reference(lambda_):
  rng = np.random.default_rng(21)
  values = rng.normal(size=(4, 10)).astype(np.float32)
  g = rng.normal(size=(4, 10)).astype(np.float32)
  valid = rng.uniform(size=(4, 10)) < 0.8
  valid[:, :2] = True
  @jax.jit
  def ranks_and_vjp(v, cotangent):
    ranks, vjp = jax.vjp(lambda x: blackbox_rank(x, valid, lambda_), v)
    return ranks, vjp(cotangent)[0]

  ranks, grad = ranks_and_vjp(jnp.asarray(values), jnp.asarray(g))
  np.testing.assert_allclose(ranks, jax.jit(normalised_rank)(values, valid), rtol=0, atol=0)
  for r in range(4):
    expected = R.blackbox_rank_grad_ref(values[r][valid[r]], g[r][valid[r]], lambda_)
    np.testing.assert_allclose(np.asarray(grad)[r][valid[r]], expected, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(grad)[r][~valid[r]] == 0.0)


RANKSIM_CASES = ['ties', 'continuous', 'unique_1view', 'mixed_1view', 'b2_same', 'b2_unique_2view',
                 'views3_ties']


@pytest.mark.parametrize('case_id', RANKSIM_CASES)
def test_ranksim_matches_reference(case_id):
  f, y, _ = case_inputs(case_id)
  views = f.shape[1]
  for seed in (0, 1):
    key = jax.random.key(seed)
    selected = np.asarray(representatives_j(y, key, views))
    assert_scalar_close(ranksim_j(f, y, key), R.ranksim_ref(f, y, selected))


def test_ranksim_label_rank_ties_follow_official_order():
  """Labels symmetric around anchors (ties in -|dy|): the later (larger) label ranks first."""
  f = make_features(22, 8, 1, 8)
  y = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], np.float32)
  key = jax.random.key(0)
  assert_scalar_close(ranksim_j(f, y, key), R.ranksim_ref(f, y, np.ones(8, bool)))


def test_ranksim_representatives_one_per_label_uniformly():
  y = np.array([0, 0, 0, 1, 2, 2, 5, 0], np.float32)
  counts = np.zeros(16)
  for seed in range(60):
    sel = np.asarray(representatives_j(y, jax.random.key(seed), views=2))
    rows_y = np.repeat(y, 2)
    assert sorted(rows_y[sel].tolist()) == sorted(set(y.tolist()))
    counts += sel
  label0_rows = np.flatnonzero(np.repeat(y, 2) == 0.0)  # 8 rows share label 0
  assert np.all(counts[label0_rows] > 0)  # every candidate is drawn at some point
  assert counts[np.repeat(y, 2) == 5.0].sum() == 60
  # all labels unique and one view: every row is a representative, whatever the key
  assert np.all(np.asarray(representatives_j(np.arange(8.0), jax.random.key(3), views=1)))


@pytest.mark.parametrize('scale,lambda_', [(1.0, 2.0), (100.0, 0.5)])
def test_ranksim_grad_matches_blackbox_reference(x64, scale, lambda_):  # pylint: disable=redefined-outer-name,unused-argument
  """jax.grad of scale * ranksim == the hand-written blackbox chain (scale: the loss weight gamma)."""
  seed, batch, views, dim, kind = CASES['ties']
  f = make_features(seed, batch, views, dim).astype(np.float64)
  y = make_labels(seed, batch, kind).astype(np.float64)
  key = jax.random.key(5)
  selected = np.asarray(representatives_j(y, key, views))
  got = jax.jit(jax.grad(lambda x: scale * ranksim(x, y, key, lambda_=lambda_)))(jnp.asarray(f))
  assert got.dtype == jnp.float64
  expected = R.ranksim_grad_ref(f, y, selected, lambda_=lambda_, scale=scale)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-12)
  assert np.any(expected != 0.0)


def test_ranksim_key_irrelevant_without_repeated_labels():
  f, y, _ = case_inputs('unique_1view')
  values = [float(ranksim_j(f, y, jax.random.key(s))) for s in range(3)]
  np.testing.assert_allclose(values, values[0], rtol=0)


# ----------------------------------------------------------------------------------------------------
# N-pair and adaptive triplet
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('case_id', CASE_IDS)
def test_npair_matches_reference(case_id):
  f, y, _ = case_inputs(case_id)
  assert_scalar_close(npair_j(f, y), R.npair_ref(f, y))
  if case_id in ('ties', 'mixed_1view'):  # Sohn's form: raw dot products (+ the L2 regulariser)
    g = f / np.float32(4.0)  # keep raw dot products moderate
    for l2_reg in (0.0, 0.01):
      assert_scalar_close(npair_j(g, y, normalize=False, l2_reg=l2_reg),
                          R.npair_ref(g, y, False, l2_reg))


def test_npair_degenerate_batches_are_zero():
  f, y, _ = case_inputs('spread_1view')
  y = np.arange(8, dtype=np.float32)  # no positive pair anywhere
  assert float(npair_j(f, y)) == 0.0
  f2, y2, _ = case_inputs('b2_same')  # positives but no negatives
  assert float(npair_j(f2, y2)) == 0.0


# (mining, distance) -> the cases it runs on (every variant compiles once per shape)
TRIPLET_VARIANTS = {
    ('all', 'squared'): CASE_IDS,
    ('batch_hard', 'squared'): ['ties', 'spread_1view', 'b2_same', 'views3_ties'],
    ('all', 'euclidean'): ['continuous', 'views3_ties'],
    ('batch_hard', 'euclidean'): ['ties', 'views3_ties'],
}


@pytest.mark.parametrize('case_id', CASE_IDS)
def test_adaptive_triplet_matches_reference(case_id):
  f, y, _ = case_inputs(case_id)
  for (mining, distance), cases in TRIPLET_VARIANTS.items():
    if case_id not in cases:
      continue
    for margin_scale in (1.0, 0.3, 0.0):
      got = triplet_j(f, y, margin_scale=margin_scale, mining=mining, distance=distance)
      assert_scalar_close(got, R.adaptive_triplet_ref(f, y, margin_scale, mining, distance))


def test_adaptive_triplet_all_chunked_map_matches():
  """Anchors processed in chunks (lax.map + remat, the large-batch path): same value as the reference
  and the same gradient as the single-step (vmap) path."""
  f = make_features(30, 24, 1, 4)
  y = make_labels(30, 24, 'continuous')
  value_and_grad = lambda **k: jax.jit(jax.value_and_grad(
      lambda a, b: adaptive_triplet(a, b, margin_scale=0.5, **k)))(f, y)
  expected_value, expected_grad = value_and_grad()
  value, grad = value_and_grad(chunk_elements=5 * 24 * 24)  # 5 anchors per step, remainder 4
  assert_scalar_close(value, R.adaptive_triplet_ref(f, y, 0.5, 'all', 'squared'))
  np.testing.assert_allclose(value, expected_value, rtol=RTOL)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------
# Gradients (float64)
# ----------------------------------------------------------------------------------------------------
def _grad_groups():
  """group -> loss(features) returning a tuple of losses (one compilation per group)."""
  y = np.array([0.0, 1.0, 1.0, 2.5], np.float64)
  p = np.array([[0.3, -0.2], [1.8, 1.1], [0.4, 2.2], [1.9, 3.0]], np.float64)
  w = np.array([1.0, 0.5, 2.0, 1.5], np.float64)
  return {
      'conr': lambda f: (conr(f, y, p, temperature=0.3, e=0.5, weights=w),
                         conr(f, y, p, official=True, weights=w),
                         conr(f, y, p, temperature=0.3, weights=w, angle_range=3.0)),
      'npair': lambda f: (npair(f, y), npair(f, y, normalize=False, l2_reg=0.01)),
      'triplet': lambda f: (
          adaptive_triplet(f, y, margin_scale=0.4),
          adaptive_triplet(f, y, margin_scale=0.4, mining='batch_hard', distance='euclidean')),
  }


@pytest.mark.parametrize('group', list(_grad_groups()))
def test_check_grads_float64(x64, group):  # pylint: disable=redefined-outer-name,unused-argument
  fn = jax.jit(_grad_groups()[group])
  f = jnp.asarray(np.random.default_rng(60).normal(size=(4, 2, 3)))
  values = fn(f)
  assert all(v.dtype == jnp.float64 and float(v) > 0.0 for v in values)  # non-trivial points
  check_grads(fn, (f,), order=1, modes=['rev'], atol=1e-5, rtol=1e-5, eps=1e-5)


# ----------------------------------------------------------------------------------------------------
# Finite values / gradients for extreme inputs, and batch-permutation invariance
# ----------------------------------------------------------------------------------------------------
_EXTREME_Y = np.array([0, 0, 1, 2, 2, 3, 4.5, 5], np.float32)
_EXTREME_P = make_preds(70, _EXTREME_Y, 2, noise=0.8)


@functools.lru_cache(maxsize=None)
def _jitted(name, temperature=None):
  """name -> jitted value_and_grad of loss(features, labels, preds) (one compilation per shape)."""
  t = {} if temperature is None else {'temperature': temperature}
  key = jax.random.key(0)
  fns = {
      'conr': lambda f, y, p: conr(f, y, p, **t),
      'conr_official': lambda f, y, p: conr(f, y, p, official=True),
      'ranksim': lambda f, y, p: ranksim(f, y, key),
      'npair': lambda f, y, p: npair(f, y),
      'triplet_all': lambda f, y, p: adaptive_triplet(f, y),
      'triplet_hard_euclidean': lambda f, y, p: adaptive_triplet(f, y, mining='batch_hard',
                                                                 distance='euclidean'),
  }
  return jax.jit(jax.value_and_grad(fns[name]))


LOSS_NAMES = ['conr', 'conr_official', 'ranksim', 'npair', 'triplet_all', 'triplet_hard_euclidean']


@pytest.mark.parametrize('kind', ['temperature_0.01', 'identical', 'norm_1e4', 'zeros', 'one_zero_row'])
@pytest.mark.parametrize('name', LOSS_NAMES)
def test_finite_for_extreme_inputs(name, kind):
  temperature = 0.01 if kind == 'temperature_0.01' and name == 'conr' else None
  features = loss_inputs.extreme_features(kind)
  value, grad = _jitted(name, temperature)(features, _EXTREME_Y, _EXTREME_P)
  assert np.isfinite(float(value)), (name, kind, value)
  assert np.all(np.isfinite(np.asarray(grad))), (name, kind)


def test_conr_identical_features_closed_form():
  """All cosines 1: the reference value (denominators of equal logits) at temperature 0.01."""
  f = loss_inputs.extreme_features('identical')
  value, _ = _jitted('conr', 0.01)(f, _EXTREME_Y, _EXTREME_P)
  np.testing.assert_allclose(float(value), R.conr_ref(f, _EXTREME_Y, _EXTREME_P, temperature=0.01),
                             rtol=1e-5)


@pytest.mark.parametrize('name', [n for n in LOSS_NAMES if n != 'ranksim'])
def test_batch_permutation_invariance(name):
  f = make_features(80, 8, 2, 8)
  perm = np.random.default_rng(81).permutation(8)
  fn = _jitted(name)
  v, g = fn(f, _EXTREME_Y, _EXTREME_P)
  vp, gp = fn(f[perm], _EXTREME_Y[perm], _EXTREME_P[perm])
  np.testing.assert_allclose(vp, v, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(gp, np.asarray(g)[perm], rtol=1e-4, atol=1e-6 * float(np.abs(g).max()))


def test_ranksim_batch_permutation_invariance_with_same_representatives():
  """The representatives are drawn per row, so a permutation redraws them; the test removes that
  dependence: (a) unique labels and one view (every row represents itself); (b) repeated labels with
  the features constant within each label (every choice of representatives gives the same value)."""
  perm = np.random.default_rng(82).permutation(8)
  key = jax.random.key(4)
  fn = _jitted('ranksim')
  f1 = make_features(83, 8, 1, 8)
  y1 = np.random.default_rng(83).permutation(8).astype(np.float32) * 0.7
  v, g = fn(f1, y1, None)
  vp, gp = fn(f1[perm], y1[perm], None)
  np.testing.assert_allclose(vp, v, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(gp, np.asarray(g)[perm], rtol=1e-5, atol=1e-7)
  # (b): labels with ties, two views; features a function of the label only
  y2 = _EXTREME_Y
  table = make_features(84, 8, 1, 8)[:, 0]
  f2 = np.stack([table[np.searchsorted(np.unique(y2), y2)]] * 2, axis=1)
  for k in (key, jax.random.key(5)):
    np.testing.assert_allclose(ranksim_j(f2[perm], y2[perm], k), ranksim_j(f2, y2, key), rtol=RTOL)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------
_F, _Y, _P = case_inputs('ties')
_KEY = jax.random.key(0)


def _calls(features=_F, labels=_Y):
  return {
      'conr': lambda **kw: conr(features, labels, _P, **kw),
      'ranksim': lambda **kw: ranksim(features, labels, _KEY, **kw),
      'npair': lambda **kw: npair(features, labels, **kw),
      'adaptive_triplet': lambda **kw: adaptive_triplet(features, labels, **kw),
  }


@pytest.mark.parametrize('name', list(_calls()))
def test_bad_features_and_labels_raise(name):
  for bad in (np.ones((8, 3), np.float32), np.ones((8, 2, 3, 1), np.float32)):
    with pytest.raises(ValueError, match='features'):
      _calls(features=bad)[name]()
  nan_labels = _Y.copy()
  nan_labels[1] = np.nan
  for bad in (_Y[:5], np.zeros((8, 2), np.float32), nan_labels):
    with pytest.raises(ValueError, match='labels'):
      _calls(labels=bad)[name]()


@pytest.mark.parametrize('name,kwargs,match', [
    ('conr', dict(temperature=0.0), 'temperature'),
    ('conr', dict(window=-1.0), 'window'),
    ('conr', dict(e=np.inf), '`e`'),
    ('conr', dict(weights=np.ones(5, np.float32)), 'weights'),
    ('conr', dict(weights=-np.ones(8, np.float32)), 'weights'),
    ('ranksim', dict(lambda_=0.0), 'lambda_'),
    ('npair', dict(l2_reg=-1.0), 'l2_reg'),
    ('adaptive_triplet', dict(margin_scale=-0.5), 'margin_scale'),
    ('adaptive_triplet', dict(mining='semi_hard'), 'mining'),
    ('adaptive_triplet', dict(distance='cosine'), 'distance'),
])
def test_bad_hyperparameters_raise(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _calls()[name](**kwargs)


def test_conr_bad_preds_and_ranksim_bad_key_raise():
  for bad in (_P[:, :1], _P[:5], np.ones((8, 2, 2), np.float32), np.full((8, 2), np.nan, np.float32)):
    with pytest.raises(ValueError, match='preds'):
      conr(_F, _Y, bad)
  for bad in (None, np.float32(3.0), np.zeros((2, 2), np.uint32)):
    with pytest.raises(ValueError, match='key'):
      ranksim(_F, _Y, bad)
  assert np.isfinite(float(ranksim_j(_F, _Y, jax.random.PRNGKey(0))))  # raw uint32 keys work too


# ----------------------------------------------------------------------------------------------------
# Dense == row-sharded on 8 CPU devices
# ----------------------------------------------------------------------------------------------------
def _worker():
  """Runs in the subprocess with 8 forced host devices; prints the JSON results."""
  mesh = sharded_harness.make_mesh()
  batch = 2 * sharded_harness.N_DEVICES
  # name -> (views, loss(features, labels, preds, weights, key, axis_name)). Two losses share a case
  # where that is cheaper (one compilation); a value or gradient mismatch in either shows in the sum.
  losses = {
      'conr_weighted+accon_conr+npair': (2, lambda f, y, p, w, k, axis_name=None: conr(
          f, y, p, weights=w, temperature=0.1, axis_name=axis_name) + conr(
              f, y, p, weights=w, temperature=0.1, angle_range=12.0, axis_name=axis_name) + npair(
              f, y, axis_name=axis_name)),
      'conr_official+triplet_all': (1, lambda f, y, p, w, k, axis_name=None: conr(
          f, y, p, official=True, axis_name=axis_name) + adaptive_triplet(
              f, y, margin_scale=0.5, axis_name=axis_name)),
      # x100: the paper's loss weight (the blackbox backward depends on the cotangent's scale)
      'ranksim_x100': (2, lambda f, y, p, w, k, axis_name=None: 100.0 * ranksim(
          f, y, k, axis_name=axis_name)),
      'triplet_hard_euclidean+npair_raw': (3, lambda f, y, p, w, k, axis_name=None: adaptive_triplet(
          f, y, margin_scale=0.5, mining='batch_hard', distance='euclidean',
          axis_name=axis_name) + npair(f, y, normalize=False, l2_reg=0.01, axis_name=axis_name)),
  }
  results = {}
  for name, (views, fn) in losses.items():
    rng = np.random.default_rng(len(name) + views)
    feats = rng.normal(size=(batch, views, 8)).astype(np.float32)
    y = rng.integers(0, 6, size=batch).astype(np.float32)
    y[:3] = [7.5, 9.0, 12.0]  # unique labels among ties
    p = (y[:, None] + 1.5 * rng.normal(size=(batch, views))).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=batch).astype(np.float32)
    x = rng.normal(size=(batch, views, 5)).astype(np.float32)
    wmat = (rng.normal(size=(5, 8)) / np.sqrt(5)).astype(np.float32)
    sharded_harness.check_loss(results, name, fn, feats, sharded_args=(y, p, w),
                               replicated_args=(jax.random.key(7),), x=x, w=wmat, mesh=mesh)
  sharded_harness.emit(results)


def test_dense_equals_sharded_on_8_cpu_devices():
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, expected_checks=4 * 4)


if __name__ == '__main__':
  _worker()
