"""Imbalanced-regression tools: Focal-R, Balanced MSE (GAI / BMC), LDS weights, GMM fit, metrics.

References are independent float64 NumPy / SciPy transcriptions of the formulas and of the official
procedures (YyzHarry/imbalanced-regression ``_prepare_weights`` + ``get_lds_kernel_window`` +
``shot_metrics``; jiawei-ren/BalancedMSE ``gai_loss`` / ``bmc_loss``), hand-computed exact values, a
numerical integration of the GAI balancing term, and ``check_grads`` in float64.
"""

from fractions import Fraction
import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
from scipy import integrate
from scipy import stats
from scipy.ndimage import convolve1d
from scipy.ndimage import gaussian_filter1d
from scipy.signal.windows import triang

from contrastive_jax.evaluate import regression_metrics
from contrastive_jax.evaluate import shot_metrics
from contrastive_jax.losses import imbalance
from contrastive_jax.losses.imbalance import balanced_mse
from contrastive_jax.losses.imbalance import bin_counts
from contrastive_jax.losses.imbalance import fit_label_gmm
from contrastive_jax.losses.imbalance import lds_kernel_window
from contrastive_jax.losses.imbalance import lds_weights
from contrastive_jax.losses.regression import REGRESSION_LOSSES
from contrastive_jax.losses.regression import regression_loss


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _residual_case(seed, n=12, scale=3.0):
  rng = np.random.default_rng(seed)
  pred = rng.normal(scale=scale, size=n)
  target = pred + rng.normal(scale=scale, size=n)
  target[0] = pred[0]  # r = 0 exactly
  return pred, target


# ----------------------------------------------------------------------------------------------------
# References (float64 NumPy)
# ----------------------------------------------------------------------------------------------------
def focal_ref(pred, target, kind, activation, beta, gamma, weights=None):
  """Official weighted_focal_{l1,mse}_loss, literally: (2 * sigmoid(b|r|) - 1)**g or tanh(b|r|)**g."""
  r = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  base = np.abs(r) if kind == 'focal_l1' else r * r
  x = beta * np.abs(r)
  factor = np.tanh(x) if activation == 'tanh' else 2.0 / (1.0 + np.exp(-x)) - 1.0
  loss = base * factor ** gamma
  if weights is not None:
    loss = loss * weights
  return float(np.mean(loss))


def _logsumexp(a, axis):
  m = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def bmc_ref(pred, target, sigma, weights=None):
  """Official bmc_loss: cross_entropy(-0.5 (pred - target.T)^2 / s2, arange) * 2 s2."""
  s2 = float(sigma) ** 2
  logits = -0.5 * (pred[:, None] - target[None, :]) ** 2 / s2
  ce = _logsumexp(logits, 1) - np.diag(logits)
  mean = np.mean(ce) if weights is None else np.sum(weights * ce) / np.sum(weights)
  return float(mean * 2 * s2)


def gai_per_example_ref(pred, target, sigma, means, variances, mix):
  """Official gai_loss before the mean and the 2 s2 scale."""
  s2 = float(sigma) ** 2
  mse_term = (pred - target) ** 2 / 2 / s2 + 0.5 * np.log(s2)
  sum_var = variances[None, :] + s2
  bal = -0.5 * np.log(sum_var) - 0.5 * (pred[:, None] - means[None, :]) ** 2 / sum_var + np.log(mix)
  return mse_term + _logsumexp(bal, 1)


def gai_ref(pred, target, sigma, means, variances, mix):
  return float(np.mean(gai_per_example_ref(pred, target, sigma, means, variances, mix))
               * 2 * float(sigma) ** 2)


def official_prepare_weights(train_labels, reweight, lds, kernel, ks, sigma, max_target):
  """Transcription of AgeDB._prepare_weights + get_lds_kernel_window with SciPy (float64 weights)."""
  value_dict = {x: 0 for x in range(max_target)}
  for label in train_labels:
    value_dict[min(max_target - 1, int(label))] += 1
  if reweight == 'sqrt_inv':
    value_dict = {k: np.sqrt(v) for k, v in value_dict.items()}
  elif reweight == 'inverse':
    value_dict = {k: np.clip(v, 5, 1000) for k, v in value_dict.items()}
  num_per_label = [value_dict[min(max_target - 1, int(label))] for label in train_labels]
  if lds:
    half = (ks - 1) // 2
    if kernel == 'gaussian':
      base = [0.] * half + [1.] + [0.] * half
      window = gaussian_filter1d(base, sigma=sigma) / max(gaussian_filter1d(base, sigma=sigma))
    elif kernel == 'triang':
      window = triang(ks)
    else:
      lap = lambda x: np.exp(-abs(x) / sigma) / (2. * sigma)
      window = np.array(list(map(lap, np.arange(-half, half + 1)))) / max(
          map(lap, np.arange(-half, half + 1)))
    smoothed = convolve1d(np.asarray([v for _, v in value_dict.items()], np.float64),
                          weights=window, mode='constant')
    num_per_label = [smoothed[min(max_target - 1, int(label))] for label in train_labels]
  weights = np.array([1.0 / x for x in num_per_label])
  return weights * (len(weights) / np.sum(weights))


def shot_ref(preds, labels, train_labels, many_thr=100, low_thr=20):
  """Official shot_metrics (integer labels), returning {group: (n, mse, l1)}."""
  train_labels = np.array(train_labels).astype(int)
  groups = {'many': [], 'median': [], 'low': []}
  for lab in np.unique(labels):
    c = len(train_labels[train_labels == lab])
    g = 'many' if c > many_thr else ('low' if c < low_thr else 'median')
    groups[g].append(preds[labels == lab] - labels[labels == lab])
  out = {}
  for g, errs in groups.items():
    if errs:
      e = np.concatenate(errs)
      out[g] = (e.size, np.sum(e ** 2) / e.size, np.sum(np.abs(e)) / e.size)
  return out


# ----------------------------------------------------------------------------------------------------
# Focal-R and the existing regression kinds
# ----------------------------------------------------------------------------------------------------
def test_existing_kinds_unchanged():
  assert REGRESSION_LOSSES[:3] == ('l1', 'mse', 'huber')
  assert set(REGRESSION_LOSSES) >= {'focal_l1', 'focal_mse'}
  pred, target = _residual_case(1)
  w = np.random.default_rng(2).uniform(0.5, 2.0, size=pred.size)
  r = pred - target
  for delta in (1.0, 0.3):
    expected = {
        'l1': np.abs(r), 'mse': r * r,
        'huber': np.where(np.abs(r) < delta, 0.5 * r * r / delta, np.abs(r) - 0.5 * delta)}
    for kind, per in expected.items():
      got = regression_loss(pred.astype(np.float32), target.astype(np.float32), kind, delta,
                            w.astype(np.float32))  # positional, as train/step.py calls it
      assert got.dtype == jnp.float32
      np.testing.assert_allclose(float(got), np.mean(per * w), rtol=2e-6)
      np.testing.assert_allclose(float(regression_loss(pred, target, kind, delta)), np.mean(per),
                                 rtol=2e-6)


@pytest.mark.parametrize('kind', ['focal_l1', 'focal_mse'])
@pytest.mark.parametrize('activation', ['sigmoid', 'tanh'])
@pytest.mark.parametrize('beta,gamma', [(0.2, 1.0), (1.0, 2.0), (0.5, 0.5), (3.0, 0.0), (0.05, 3.0)])
def test_focal_matches_reference(kind, activation, beta, gamma):
  pred, target = _residual_case(3)
  w = np.random.default_rng(4).uniform(0.5, 2.0, size=pred.size)
  kw = dict(focal_activation=activation, focal_beta=beta, focal_gamma=gamma)
  got = regression_loss(pred.astype(np.float32), target.astype(np.float32), kind, **kw)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), focal_ref(pred, target, kind, activation, beta, gamma),
                             rtol=1e-5, atol=1e-7)
  with jax.enable_x64(True):
    got64 = regression_loss(pred, target, kind, weights=w, **kw)
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(float(got64),
                               focal_ref(pred, target, kind, activation, beta, gamma, w),
                               rtol=1e-12, atol=1e-15)


def test_focal_defaults_are_official_and_jit():
  pred, target = _residual_case(5)
  for kind in ('focal_l1', 'focal_mse'):
    eager = regression_loss(pred, target, kind)
    np.testing.assert_allclose(float(eager), focal_ref(pred, target, kind, 'sigmoid', 0.2, 1.0),
                               rtol=1e-5)
    jitted = jax.jit(lambda p, t, k=kind: regression_loss(p, t, k))(pred, target)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)


def test_focal_check_grads(x64):  # pylint: disable=redefined-outer-name,unused-argument
  pred, target = _residual_case(6, n=6)
  pred[0] += 0.7  # keep check_grads' finite differences away from the kink at r = 0
  w = np.linspace(0.5, 1.5, 6)
  # one compiled function: the four kind x activation variants with distinct coefficients
  variants = [('focal_l1', 'sigmoid', 1.0), ('focal_l1', 'tanh', 0.3), ('focal_mse', 'sigmoid', 0.7),
              ('focal_mse', 'tanh', 0.11)]
  fn = jax.jit(lambda p: sum(c * regression_loss(p, target, k, weights=w, focal_activation=a,
                                                 focal_beta=0.4, focal_gamma=1.5)
                             for k, a, c in variants))
  check_grads(fn, (jnp.asarray(pred),), order=1, modes=['rev'], atol=1e-6, rtol=1e-6, eps=1e-4)
  for k, a, _ in variants:  # and each against a central difference of the NumPy reference
    g = jax.jit(jax.grad(lambda p, k=k, a=a: regression_loss(
        p, target, k, weights=w, focal_activation=a, focal_beta=0.4, focal_gamma=1.5)))(pred)
    h = 1e-6
    fd = [(focal_ref(pred + h * e, target, k, a, 0.4, 1.5, w)
           - focal_ref(pred - h * e, target, k, a, 0.4, 1.5, w)) / (2 * h) for e in np.eye(6)]
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('gamma', [0.0, 0.5, 1.0, 2.0])
def test_focal_finite_gradient_at_zero_residual(gamma):
  p = jnp.array([1.0, 2.0, 3.0])
  for kind in ('focal_l1', 'focal_mse'):
    g = jax.grad(lambda x, k=kind: regression_loss(x, p, k, focal_gamma=gamma))(p)
    assert np.all(np.isfinite(np.asarray(g)))
    v = regression_loss(p, p, kind, focal_gamma=gamma)
    assert float(v) == 0.0


# ----------------------------------------------------------------------------------------------------
# Balanced MSE
# ----------------------------------------------------------------------------------------------------
_GMM = {'means': np.array([-1.0, 2.0, 6.0]), 'variances': np.array([0.5, 2.0, 0.3]),
        'weights': np.array([0.5, 0.3, 0.2])}


@pytest.mark.parametrize('sigma', [1.0, 0.3, 2.5, -0.8])
def test_bmc_matches_reference(sigma):
  pred, target = _residual_case(7, n=10, scale=2.0)
  got = balanced_mse(pred.astype(np.float32), target.astype(np.float32), np.float32(sigma), 'bmc')
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), bmc_ref(pred, target, sigma), rtol=2e-5)
  w = np.random.default_rng(8).uniform(0.2, 3.0, size=10)
  with jax.enable_x64(True):
    np.testing.assert_allclose(float(balanced_mse(pred[:, None], target[:, None], sigma, 'bmc')),
                               bmc_ref(pred, target, sigma), rtol=1e-12)
    np.testing.assert_allclose(float(balanced_mse(pred, target, sigma, 'bmc', weights=w)),
                               bmc_ref(pred, target, sigma, w), rtol=1e-12)


@pytest.mark.parametrize('sigma', [1.0, 0.4, 3.0])
def test_gai_matches_reference(sigma):
  pred, target = _residual_case(9, n=10, scale=2.0)
  m, v, pi = _GMM['means'], _GMM['variances'], _GMM['weights']
  got = balanced_mse(pred.astype(np.float32), target.astype(np.float32), sigma, 'gai', _GMM)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), gai_ref(pred, target, sigma, m, v, pi), rtol=2e-5)
  # sklearn layout (means_ [K,1], covariances_ [K,1,1]) and a 3-tuple are accepted
  sk = {'means': m[:, None], 'variances': v[:, None, None], 'weights': pi}
  with jax.enable_x64(True):
    for g in (sk, (m, v, pi)):
      np.testing.assert_allclose(float(balanced_mse(pred, target, sigma, 'gai', g)),
                                 gai_ref(pred, target, sigma, m, v, pi), rtol=1e-12)


@pytest.mark.parametrize('gmm', [
    {'means': np.array([1.5]), 'variances': np.array([0.7]), 'weights': np.array([1.0])},
    _GMM,
], ids=['one_component', 'three_components'])
def test_gai_balancing_term_is_the_integral(x64, gmm):  # pylint: disable=redefined-outer-name,unused-argument
  """GAI / (2 s2) = mean_i [-log N(y_i; yhat_i, s2) + log int N(yhat_i; y, s2) p_train(y) dy]."""
  pred, target = _residual_case(10, n=5, scale=2.0)
  sigma = 0.9
  s2 = sigma ** 2
  m, v, pi = gmm['means'], gmm['variances'], gmm['weights']
  pdf = lambda x, mu, var: math.exp(-0.5 * (x - mu) ** 2 / var) / math.sqrt(2 * math.pi * var)
  p_train = lambda y: sum(pk * pdf(y, mk, vk) for mk, vk, pk in zip(m, v, pi))
  per = []
  for yhat, y in zip(pred, target):
    integral, _ = integrate.quad(lambda u, yh=yhat: pdf(yh, u, s2) * p_train(u),
                                 -60, 60, points=list(m), limit=200, epsabs=1e-14, epsrel=1e-12)
    per.append(-stats.norm.logpdf(y, yhat, sigma) + np.log(integral))
  got = float(balanced_mse(pred, target, sigma, 'gai', gmm)) / (2 * s2)
  np.testing.assert_allclose(got, np.mean(per), rtol=1e-9)


def test_bmc_approximates_gai_with_many_samples(x64):  # pylint: disable=redefined-outer-name,unused-argument
  """BMC's batch logsumexp is a Monte-Carlo estimate of GAI's integral: BMC_i ~ GAI_i + log N."""
  rng = np.random.default_rng(11)
  n = 1000
  comp = rng.choice(3, size=n, p=_GMM['weights'])
  target = rng.normal(_GMM['means'][comp], np.sqrt(_GMM['variances'][comp]))
  pred = target + rng.normal(scale=0.5, size=n)
  sigma = 1.0
  bmc = float(balanced_mse(pred, target, sigma, 'bmc')) / 2
  gai = float(balanced_mse(pred, target, sigma, 'gai', _GMM)) / 2
  np.testing.assert_allclose(bmc - np.log(n), gai, atol=0.02)  # observed |error| < 0.005


@pytest.mark.parametrize('kind', ['bmc', 'gai'])
def test_balanced_mse_check_grads(x64, kind):  # pylint: disable=redefined-outer-name,unused-argument
  pred, target = _residual_case(12, n=6, scale=2.0)
  gmm = {k: jnp.asarray(v) for k, v in _GMM.items()}
  sigma0 = 0.8
  # check_grads w.r.t. (predictions, sigma) of the unscaled likelihood: dividing by the same
  # stop-gradient factor gives a function whose value and gradient are the unscaled ones (with sigma
  # fixed, the scaled loss's gradient w.r.t. the predictions is this one times the constant 2 s2)
  unscaled = jax.jit(lambda p, s: balanced_mse(p, target, s, kind, gmm)
                     / jax.lax.stop_gradient(2 * s * s))
  check_grads(unscaled, (jnp.asarray(pred), jnp.asarray(sigma0)), order=1, modes=['rev'],
              atol=1e-6, rtol=1e-6, eps=1e-4)
  # the scale 2 s2 is a stop-gradient (official .detach()): d loss / d s = 2 s2 * d mean(l) / d s
  ref = (lambda s: bmc_ref(pred, target, s) / (2 * s * s)) if kind == 'bmc' else (
      lambda s: gai_ref(pred, target, s, *_GMM.values()) / (2 * s * s))
  h = 1e-6
  fd = (ref(sigma0 + h) - ref(sigma0 - h)) / (2 * h)
  gp, gs = jax.jit(jax.grad(lambda p, s: balanced_mse(p, target, s, kind, gmm), argnums=(0, 1)))(
      jnp.asarray(pred), jnp.asarray(sigma0))
  np.testing.assert_allclose(float(gs), 2 * sigma0 ** 2 * fd, rtol=1e-7)
  scaled_ref = (lambda p: bmc_ref(p, target, sigma0)) if kind == 'bmc' else (
      lambda p: gai_ref(p, target, sigma0, *_GMM.values()))
  fd_p = [(scaled_ref(pred + h * e) - scaled_ref(pred - h * e)) / (2 * h) for e in np.eye(pred.size)]
  np.testing.assert_allclose(np.asarray(gp), fd_p, rtol=1e-6, atol=1e-9)


def test_balanced_mse_jit_with_traced_sigma_and_gmm():
  pred, target = _residual_case(13, n=8)
  gmm = {k: jnp.asarray(v, jnp.float32) for k, v in _GMM.items()}
  for kind in ('bmc', 'gai'):
    fn = jax.jit(lambda p, t, s, g, k=kind: balanced_mse(p, t, s, k, g))
    np.testing.assert_allclose(float(fn(pred, target, jnp.float32(1.3), gmm)),
                               float(balanced_mse(pred, target, 1.3, kind, _GMM)), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# GMM fit
# ----------------------------------------------------------------------------------------------------
def test_fit_label_gmm_recovers_mixture_and_matches_sklearn():
  rng = np.random.default_rng(14)
  y = np.concatenate([rng.normal(20, 3, 600), rng.normal(45, 5, 300), rng.normal(70, 2, 100)])
  gmm = fit_label_gmm(y, 3, seed=0)
  assert set(gmm) == {'means', 'variances', 'weights'}
  np.testing.assert_allclose(gmm['means'], [20, 45, 70], atol=1.0)
  np.testing.assert_allclose(np.sqrt(gmm['variances']), [3, 5, 2], rtol=0.15)
  np.testing.assert_allclose(gmm['weights'], [0.6, 0.3, 0.1], atol=0.03)
  np.testing.assert_allclose(np.sum(gmm['weights']), 1.0, rtol=1e-12)
  again = fit_label_gmm(y, 3, seed=0)
  for k in gmm:
    np.testing.assert_array_equal(gmm[k], again[k])  # deterministic given the seed
  mixture = pytest.importorskip('sklearn.mixture')
  sk = mixture.GaussianMixture(n_components=3, random_state=0).fit(y[:, None])
  order = np.argsort(sk.means_.ravel())
  np.testing.assert_allclose(gmm['means'], sk.means_.ravel()[order], rtol=1e-3)
  np.testing.assert_allclose(gmm['variances'], sk.covariances_.ravel()[order], rtol=1e-2)
  np.testing.assert_allclose(gmm['weights'], sk.weights_[order], rtol=1e-2)
  loss = balanced_mse(y[:50], y[:50] + 1.0, 1.0, 'gai', gmm)
  assert np.isfinite(float(loss))


# ----------------------------------------------------------------------------------------------------
# LDS
# ----------------------------------------------------------------------------------------------------
# bins 0, 1, 2, 3 hold 4, 1, 0, 9 training labels
_TRAIN = np.array([0.0, 0.2, 0.5, 0.9, 1.7] + [3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.99])


def test_lds_kernel_windows_official():
  # gaussian ks=5, sigma=2 (the defaults): gaussian_filter1d of a delta, reflect mode, / max
  np.testing.assert_allclose(lds_kernel_window('gaussian', 5, 2.0),
                             [0.8582852377730948, 0.9458276490853569, 1.0, 0.9458276490853569,
                              0.8582852377730948], rtol=1e-13)
  np.testing.assert_allclose(lds_kernel_window('triang', 5, 2.0), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
  np.testing.assert_allclose(lds_kernel_window('laplace', 3, 1.0), [np.exp(-1), 1, np.exp(-1)])
  for ks in (1, 3, 5, 7, 9, 11):
    for sigma in (0.5, 1.0, 2.0, 3.3):
      base = np.zeros(ks)
      base[ks // 2] = 1
      expected = gaussian_filter1d(base, sigma) / np.max(gaussian_filter1d(base, sigma))
      np.testing.assert_allclose(lds_kernel_window('gaussian', ks, sigma), expected, rtol=1e-12)
    np.testing.assert_allclose(lds_kernel_window('triang', ks, 1.0), triang(ks), rtol=1e-13)


def test_bin_counts():
  bins = bin_counts(_TRAIN)
  assert bins.low == 0.0 and bins.bin_width == 1.0
  np.testing.assert_array_equal(bins.counts, [4, 1, 0, 9])
  np.testing.assert_array_equal(bins.edges, [0, 1, 2, 3, 4])
  wide = bin_counts(_TRAIN, label_range=(0, 6))
  np.testing.assert_array_equal(wide.counts, [4, 1, 0, 9, 0, 0])
  np.testing.assert_array_equal(wide.index([7.2, -3.0, 2.5]), [5, 0, 2])  # clamped
  tenth = bin_counts([0.1, 0.3, 0.3, 0.7], 0.1)  # 0.3 / 0.1 = 2.999... must land in bin 3
  assert tenth.low == pytest.approx(0.1)
  np.testing.assert_array_equal(tenth.counts, [1, 0, 2, 0, 0, 0, 1])


def test_lds_hand_example_sqrt_inv_triang():
  # sqrt counts [2, 1, 0, 3] conv [0.5, 1, 0.5] (zero padded) -> [2.5, 2, 2, 3]; inverse weights
  # 1/2.5 (x4), 1/2 (x1), 1/3 (x9) sum to 5.1, scale 14/5.1 -> 56/51, 70/51, 140/153; bin 2 -> 70/51.
  got = lds_weights(_TRAIN, np.array([0.5, 1.0, 2.5, 3.0]), kernel='triang', ks=3)
  np.testing.assert_allclose(got, [56 / 51, 70 / 51, 70 / 51, 140 / 153], rtol=1e-14)
  train_w = lds_weights(_TRAIN, kernel='triang', ks=3)
  np.testing.assert_allclose(train_w, [56 / 51] * 4 + [70 / 51] + [140 / 153] * 9, rtol=1e-14)
  np.testing.assert_allclose(np.mean(train_w), 1.0, rtol=1e-14)


def test_lds_hand_example_inverse_clip_and_range():
  # inverse: counts clipped to [5, 1000] -> [5, 5, 5, 9]; conv [0.5, 1, 0.5] -> [7.5, 10, 12, 11.5]
  f = Fraction
  s = [f(15, 2), f(10), f(12), f(23, 2)]
  scale = f(14) / (4 / s[0] + 1 / s[1] + 9 / s[3])
  got = lds_weights(_TRAIN, np.array([0.0, 1.0, 2.0, 3.0]), kernel='triang', ks=3,
                    reweight='inverse')
  np.testing.assert_allclose(got, [float(scale / v) for v in s], rtol=1e-14)
  # official array [0, 6): the empty bins 4, 5 are clipped to 5 and feed bin 3: 2.5 + 9 + 2.5 = 14
  s6 = [f(15, 2), f(10), f(12), f(14)]
  scale6 = f(14) / (4 / s6[0] + 1 / s6[1] + 9 / s6[3])
  got6 = lds_weights(_TRAIN, np.array([0.0, 1.0, 2.0, 3.0, 9.0]), kernel='triang', ks=3,
                     reweight='inverse', label_range=(0, 6))
  s6_bin5 = f(5) * f(1, 2) + f(5)  # bin 5 (label 9 clamps into it): 0.5 * 5 + 5 + 0 (padding)
  np.testing.assert_allclose(got6, [float(scale6 / v) for v in s6 + [s6_bin5]], rtol=1e-14)
  # no smoothing (the official plain INV / SQRT_INV, lds=False); clip disabled
  plain = lds_weights(_TRAIN, np.array([0.0, 1.0, 3.0]), kernel=None, reweight='inverse',
                      clip=(None, None))
  scale_p = f(14) / (4 * f(1, 4) + 1 + 9 * f(1, 9))
  np.testing.assert_allclose(plain, [float(scale_p / 4), float(scale_p), float(scale_p / 9)],
                             rtol=1e-14)


@pytest.mark.parametrize('kernel,ks,sigma', [('gaussian', 5, 2.0), ('gaussian', 9, 1.0),
                                             ('triang', 5, 2.0), ('laplace', 5, 2.0),
                                             ('laplace', 7, 0.7)])
@pytest.mark.parametrize('reweight', ['sqrt_inv', 'inverse'])
def test_lds_matches_official_procedure(kernel, ks, sigma, reweight):
  rng = np.random.default_rng(15)
  ages = np.concatenate([rng.normal(35, 12, 900), rng.uniform(0, 110, 60)]).clip(0, 130)
  ages = np.floor(ages * 2) / 2  # half-years: int() truncation matters
  expected = official_prepare_weights(ages, reweight, True, kernel, ks, sigma, 121)
  got = lds_weights(ages, kernel=kernel, ks=ks, sigma=sigma, reweight=reweight,
                    label_range=(0, 121))
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  np.testing.assert_allclose(np.mean(got), 1.0, rtol=1e-12)
  if reweight == 'sqrt_inv':  # zero-padding == empty bins: the default occupied range agrees
    np.testing.assert_allclose(lds_weights(ages, kernel=kernel, ks=ks, sigma=sigma), expected,
                               rtol=1e-12)
  plain = official_prepare_weights(ages, reweight, False, kernel, ks, sigma, 121)
  np.testing.assert_allclose(lds_weights(ages, kernel=None, reweight=reweight, label_range=(0, 121)),
                             plain, rtol=1e-12)


def test_lds_query_in_unreachable_empty_bin_raises():
  train = np.array([0.0, 0.0, 10.0])
  with pytest.raises(ValueError, match='labels'):
    lds_weights(train, np.array([5.0]), kernel='triang', ks=3)


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------
def test_regression_metrics_keys_and_values():
  rng = np.random.default_rng(16)
  t = rng.integers(0, 6, size=40).astype(float)  # ties in both vectors
  p = np.round(t + rng.normal(size=40))
  m = regression_metrics(p, t)
  assert set(m) >= {'mae', 'mse', 'rmse', 'r2', 'pearson', 'gmean', 'spearman'}
  e = p - t
  np.testing.assert_allclose(m['mae'], np.mean(np.abs(e)), rtol=1e-14)
  np.testing.assert_allclose(m['mse'], np.mean(e ** 2), rtol=1e-14)
  np.testing.assert_allclose(m['rmse'], np.sqrt(np.mean(e ** 2)), rtol=1e-14)
  np.testing.assert_allclose(m['r2'], 1 - np.mean(e ** 2) / np.var(t), rtol=1e-13)
  np.testing.assert_allclose(m['pearson'], stats.pearsonr(p, t)[0], rtol=1e-12)
  np.testing.assert_allclose(m['spearman'], stats.spearmanr(p, t)[0], rtol=1e-12)
  np.testing.assert_allclose(m['gmean'], np.exp(np.mean(np.log(np.abs(e) + 1e-12))), rtol=1e-12)
  nz = np.abs(e) > 0
  np.testing.assert_allclose(regression_metrics(p[nz], t[nz])['gmean'], stats.gmean(np.abs(e[nz])),
                             rtol=1e-9)
  assert all(isinstance(v, float) for v in m.values())
  const = regression_metrics(np.ones(5), np.arange(5.0))
  assert const['spearman'] == 0.0 and const['pearson'] == 0.0
  np.testing.assert_allclose(regression_metrics(p[:, None], t)['spearman'], m['spearman'])


def test_average_ranks_are_scipys_rankdata():
  from contrastive_jax.evaluate.metrics import average_ranks  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  for x in (rng.integers(0, 4, size=31).astype(float), rng.normal(size=17), np.ones(5),
            np.array([2.5]), np.array([-0.0, 0.0, 1e-300, -1e300])):
    np.testing.assert_array_equal(average_ranks(x), stats.rankdata(x))


def test_shot_metrics_hand_built():
  # training counts per integer bin: 10 -> 150 (many), 20 -> 101 (many), 30 -> 100 (medium),
  # 40 -> 20 (medium), 50 -> 19 (few), 60 -> 0 (few)
  train = np.concatenate([np.full(150, 10.0), np.full(101, 20.4), np.full(100, 30.0),
                          np.full(20, 40.9), np.full(19, 50.0)])
  targets = np.array([10.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 60.0])
  errors = np.array([1.0, -3.0, 2.0, 0.5, -1.5, 4.0, -2.0, 1.0])
  preds = targets + errors
  out = shot_metrics(preds, targets, train)
  assert set(out) == {'many', 'medium', 'few', 'all'}
  groups = {'many': [0, 1, 2], 'medium': [3, 4], 'few': [5, 6, 7], 'all': list(range(8))}
  for name, idx in groups.items():
    e = errors[idx]
    assert out[name]['n'] == len(idx)
    np.testing.assert_allclose(out[name]['mae'], np.mean(np.abs(e)), rtol=1e-14)
    np.testing.assert_allclose(out[name]['mse'], np.mean(e ** 2), rtol=1e-14)
    np.testing.assert_allclose(out[name]['rmse'], np.sqrt(np.mean(e ** 2)), rtol=1e-14)
    np.testing.assert_allclose(out[name]['gmean'], stats.gmean(np.abs(e)), rtol=1e-9)
  # official shot_metrics on integer labels (train labels truncated by astype(int))
  ref = shot_ref(preds, targets, train)
  for ours, theirs in (('many', 'many'), ('medium', 'median'), ('few', 'low')):
    n, mse, l1 = ref[theirs]
    assert out[ours]['n'] == n
    np.testing.assert_allclose([out[ours]['mse'], out[ours]['mae']], [mse, l1], rtol=1e-14)
  # empty subsets are None, never NaN; custom thresholds and bin width
  only_many = shot_metrics(preds[:2], targets[:2], train)
  assert only_many['medium'] == {'n': 0, 'mae': None, 'mse': None, 'rmse': None, 'gmean': None}
  assert only_many['few']['mae'] is None and only_many['many']['n'] == 2
  wide = shot_metrics(preds, targets + 0.3, train, bin_width=10.0, many=150, few=100)
  assert [wide[k]['n'] for k in ('many', 'medium', 'few')] == [0, 4, 4]


def test_shot_metrics_random_matches_official():
  rng = np.random.default_rng(17)
  train = np.round(np.abs(rng.normal(30, 15, 8000)))
  targets = np.round(rng.uniform(0, 90, 400))
  preds = targets + rng.normal(scale=5, size=400)
  out = shot_metrics(preds, targets, train)
  ref = shot_ref(preds, targets, train)
  for ours, theirs in (('many', 'many'), ('medium', 'median'), ('few', 'low')):
    n, mse, l1 = ref[theirs]
    assert out[ours]['n'] == n
    np.testing.assert_allclose([out[ours]['mse'], out[ours]['mae']], [mse, l1], rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------
_P = np.array([0.0, 1.0, 2.0])
_NAN = np.array([0.0, np.nan, 2.0])


@pytest.mark.parametrize('call,match', [
    (lambda: regression_loss(_P, _P, 'nope'), 'kind'),
    (lambda: regression_loss(_P, _P[:2], 'l1'), 'predictions'),
    (lambda: regression_loss(_NAN, _P, 'mse'), 'predictions'),
    (lambda: regression_loss(_P, _NAN, 'mse'), 'targets'),
    (lambda: regression_loss(_P, _P, 'l1', weights=np.ones(4)), 'weights'),
    (lambda: regression_loss(_P, _P, 'focal_l1', focal_activation='relu'), 'focal_activation'),
    (lambda: regression_loss(_P, _P, 'focal_l1', focal_beta=0.0), 'focal_beta'),
    (lambda: regression_loss(_P, _P, 'focal_mse', focal_gamma=-1.0), 'focal_gamma'),
    (lambda: regression_loss(_P, _P, 'huber', delta=0.0), 'delta'),
    (lambda: balanced_mse(_P, _P, 1.0, 'nope'), 'kind'),
    (lambda: balanced_mse(_P, _P, 1.0, 'gai'), 'gmm'),
    (lambda: balanced_mse(_P, _P, 1.0, 'gai', {'means': [0.0]}), 'gmm'),
    (lambda: balanced_mse(_P, _P, 1.0, 'gai', {'means': [0.0, 1.0], 'variances': [1.0],
                                                'weights': [1.0]}), 'gmm'),
    (lambda: balanced_mse(_P, _P, 1.0, 'gai', {'means': [0.0], 'variances': [-1.0],
                                                'weights': [1.0]}), 'variances'),
    (lambda: balanced_mse(_P, _P[:2], 1.0, 'bmc'), 'predictions'),
    (lambda: balanced_mse(np.ones((3, 2)), np.ones((3, 2)), 1.0, 'bmc'), 'predictions'),
    (lambda: balanced_mse(_NAN, _P, 1.0, 'bmc'), 'predictions'),
    (lambda: balanced_mse(_P, _P, 0.0, 'bmc'), 'noise_sigma'),
    (lambda: balanced_mse(_P, _P, np.ones(2), 'bmc'), 'noise_sigma'),
    (lambda: balanced_mse(_P, _P, 1.0, 'bmc', weights=np.ones(2)), 'weights'),
    (lambda: lds_weights(_P, ks=4), 'ks'),
    (lambda: lds_weights(_P, sigma=0.0), 'sigma'),
    (lambda: lds_weights(_P, kernel='box'), 'kernel'),
    (lambda: lds_weights(_P, reweight='none'), 'reweight'),
    (lambda: lds_weights(np.array([]), kernel='triang'), 'train_labels'),
    (lambda: lds_weights(_NAN), 'train_labels'),
    (lambda: lds_weights(_P, _NAN), 'labels'),
    (lambda: lds_weights(_P, bin_width=0.0), 'bin_width'),
    (lambda: lds_weights(_P, clip=(5.0, 1.0)), 'clip'),
    (lambda: lds_weights(_P, label_range=(3.0, 1.0)), 'label_range'),
    (lambda: fit_label_gmm(np.array([]), 2), 'train_labels'),
    (lambda: fit_label_gmm(np.array([1.0, 1.0, 2.0]), 3), 'n_components'),
    (lambda: fit_label_gmm(_P, 0), 'n_components'),
    (lambda: regression_metrics(_P, _P[:2]), 'predictions'),
    (lambda: regression_metrics(_NAN, _P), 'predictions'),
    (lambda: regression_metrics(_P, _NAN), 'targets'),
    (lambda: shot_metrics(_P, _P, np.array([])), 'train_labels'),
    (lambda: shot_metrics(_P, _P, _NAN), 'train_labels'),
    (lambda: shot_metrics(_P, _P, _P, bin_width=-1.0), 'bin_width'),
    (lambda: shot_metrics(_P, _P, _P, many=10, few=20), 'few'),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_module_exports():
  assert imbalance.BALANCED_MSE_KINDS == ('gai', 'bmc')
  assert imbalance.LDS_KERNELS == ('gaussian', 'triang', 'laplace')
