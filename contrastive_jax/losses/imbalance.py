"""Imbalanced-regression tools: LDS weights (Yang 2021) and Balanced MSE (Ren 2022).

Host-side (NumPy float64): ``bin_counts``, ``lds_kernel_window``, ``lds_weights``, ``fit_label_gmm``.
Device-side (jit-able JAX): ``balanced_mse`` (GAI and BMC forms).

Label-distribution smoothing follows the official ``AgeDB._prepare_weights`` and
``get_lds_kernel_window`` (YyzHarry/imbalanced-regression ``agedb-dir/datasets.py``, ``utils.py``):

1. count the training labels per bin (``int(label)`` bins of width 1 for ages);
2. transform the counts BEFORE smoothing: ``sqrt_inv`` -> ``sqrt(count)``; ``inverse`` ->
   ``clip(count, 5, 1000)``;
3. convolve the transformed per-bin values with the kernel window (``scipy.ndimage.convolve1d``,
   ``mode='constant'``: zero outside the bin array);
4. weight of an example = ``1 / smoothed[bin(label)]``, rescaled by ``N / sum(weights over the N
   training labels)`` so the training weights have mean 1.

The kernel window is the official one: ``gaussian`` = a length-``ks`` delta filtered by
``scipy.ndimage.gaussian_filter1d(sigma)`` (its default ``mode='reflect'``, ``truncate=4``) divided by
its max -- for ks=5, sigma=2 that is NOT a sampled Gaussian, the reflections fold the tails back in;
``triang`` = ``scipy.signal.windows.triang(ks)`` (sigma unused); ``laplace`` = ``exp(-|x|/sigma)``
divided by its max. All have centre 1. We re-implement these in NumPy (tests compare with SciPy).

Deviations from the official code (all documented on ``lds_weights``): weights are float64 (the
official rounds ``1/x`` to float32); the bin array covers the occupied bins of the training labels
unless ``label_range`` is given (the official array is ``[0, max_target)`` with max_target=121 for
AgeDB / IMDB-WIKI; pass ``label_range=(0, 121)`` to reproduce it -- it only matters for ``inverse``,
whose clip turns empty bins into 5 inside the array but not outside it); bins are ``floor`` instead
of ``int`` (identical for labels >= 0), labels below the range go to the first bin (the official code
raises a KeyError) and labels above it to the last bin (as the official ``min(max_target - 1, .)``).

Balanced MSE (Ren et al., CVPR 2022; official jiawei-ren/BalancedMSE ``balanaced_mse.py``), with
``s2 = noise_sigma**2`` and ``sg`` = stop-gradient::

  BMC:  logits_ij = -0.5 (yhat_i - y_j)^2 / s2;  loss = CE(logits, diag) * sg(2 s2)
  GAI:  l_i = (yhat_i - y_i)^2 / (2 s2) + 0.5 log s2
              + logsumexp_k [log pi_k - 0.5 log(v_k + s2) - 0.5 (yhat_i - mu_k)^2 / (v_k + s2)]
        loss = mean_i(l_i) * sg(2 s2)

i.e. ``-log N(y; yhat, s2) + log sum_k pi_k N(yhat; mu_k, v_k + s2)`` (the 2 pi constants cancel):
the balancing term is the analytical integral of the Gaussian likelihood against the training-label
GMM; BMC estimates the same integral with the batch targets as Monte-Carlo samples.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.losses._checks import concrete
from contrastive_jax.losses._checks import host_vector
from contrastive_jax.losses.regression import check_finite

LDS_KERNELS = ("gaussian", "triang", "laplace")
LDS_REWEIGHTS = ("sqrt_inv", "inverse")
BALANCED_MSE_KINDS = ("gai", "bmc")
INVERSE_CLIP = (5.0, 1000.0)  # official `np.clip(v, 5, 1000)` for reweight='inverse'
_EDGE_DECIMALS = 9  # (y - low) / bin_width is rounded to this many decimals before floor: 0.3/0.1 -> 3


# ----------------------------------------------------------------------------------------------------
# Host-side helpers (NumPy float64)
# ----------------------------------------------------------------------------------------------------
def _as_labels(values, name: str, *, allow_empty: bool = False) -> np.ndarray:
  """1-D float64 finite labels (a trailing axis of size 1 is squeezed); ValueError naming ``name``."""
  return host_vector(values, name, min_size=0 if allow_empty else 1)


def _positive(value, name: str) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}.") from None
  if not np.isfinite(v) or v <= 0:
    raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}.")
  return v


def bin_index(labels, bin_width: float = 1.0, low: float = 0.0) -> np.ndarray:
  """Integer bin ``floor((y - low) / bin_width)`` of each label (bin k = [low + k w, low + (k+1) w)).

  The quotient is rounded to 1e-9 before the floor so labels on a decimal grid land in their own bin
  (0.3 / 0.1 = 2.999... -> bin 3). With ``low=0, bin_width=1`` this is ``int(label)`` for labels >= 0.
  """
  w = _positive(bin_width, "bin_width")
  q = (np.asarray(labels, np.float64) - float(low)) / w
  return np.floor(np.round(q, _EDGE_DECIMALS)).astype(np.int64)


class LabelBins(NamedTuple):
  """Per-bin training counts: bin ``k`` covers ``[low + k*bin_width, low + (k+1)*bin_width)``."""
  low: float
  bin_width: float
  counts: np.ndarray  # int64 [num_bins]

  @property
  def edges(self) -> np.ndarray:
    return self.low + self.bin_width * np.arange(self.counts.size + 1, dtype=np.float64)

  def index(self, labels) -> np.ndarray:
    """Bin of each label, clamped into ``[0, num_bins - 1]`` (official ``min(max_target - 1, .)``)."""
    return np.clip(bin_index(labels, self.bin_width, self.low), 0, self.counts.size - 1)


def bin_counts(train_labels, bin_width: float = 1.0, *,
               label_range: Optional[Tuple[float, float]] = None) -> LabelBins:
  """Counts of ``train_labels`` per bin of width ``bin_width``.

  Bins sit on the grid ``k * bin_width`` (integer bins for width 1, as the official ``int(label)``).
  ``label_range=None`` spans the occupied bins (first to last); ``label_range=(low, high)`` uses the
  bins of ``[low, high)`` -- ``ceil((high - low) / bin_width)`` of them, starting at ``low`` -- and
  clamps labels outside it into the first / last bin. ``(0, 121)`` is the official AgeDB array.
  """
  y = _as_labels(train_labels, "train_labels")
  w = _positive(bin_width, "bin_width")
  if label_range is None:
    idx = bin_index(y, w)
    first = int(idx.min())
    low = first * w
    num_bins = int(idx.max()) - first + 1
  else:
    try:
      low, high = (float(v) for v in label_range)
    except (TypeError, ValueError):
      raise ValueError(f"`label_range` must be a (low, high) pair; got {label_range!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
      raise ValueError(f"`label_range` must be finite with high > low; got {label_range!r}.")
    num_bins = max(1, int(math.ceil(round((high - low) / w, _EDGE_DECIMALS))))
  bins = LabelBins(low, w, np.zeros(num_bins, np.int64))
  counts = np.bincount(bins.index(y), minlength=num_bins).astype(np.int64)
  return LabelBins(low, w, counts)


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
  """SciPy ndimage ``mode='reflect'`` (d c b a | a b c d | d c b a), for any offset."""
  period = 2 * n
  i = np.mod(i, period)
  return np.where(i >= n, period - 1 - i, i)


def _gaussian_filter1d_reflect(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
  """``scipy.ndimage.gaussian_filter1d(x, sigma)`` (mode='reflect', truncate=4, order 0)."""
  radius = int(truncate * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel /= kernel.sum()
  n = x.size
  idx = _reflect_index(np.arange(n)[:, None] + offsets[None, :], n)
  return (x[idx] * kernel[None, :]).sum(axis=1)


def lds_kernel_window(kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0) -> np.ndarray:
  """The official ``get_lds_kernel_window(kernel, ks, sigma)``: float64 ``[ks]``, centre value 1."""
  if kernel not in LDS_KERNELS:
    raise ValueError(f"Unknown LDS `kernel`={kernel!r}; expected one of {LDS_KERNELS}.")
  if isinstance(ks, bool) or not isinstance(ks, (int, np.integer)) or ks < 1 or ks % 2 == 0:
    raise ValueError(f"`ks` (LDS kernel size) must be a positive odd integer; got {ks!r}.")
  sigma = _positive(sigma, "sigma")
  half = (ks - 1) // 2
  if kernel == "gaussian":
    delta = np.zeros(ks)
    delta[half] = 1.0
    window = _gaussian_filter1d_reflect(delta, sigma)
  elif kernel == "triang":  # scipy.signal.windows.triang for odd ks: 2n/(ks+1), n = 1..(ks+1)/2
    rise = 2.0 * np.arange(1, half + 2) / (ks + 1.0)
    window = np.concatenate([rise, rise[-2::-1]])
  else:
    window = np.exp(-np.abs(np.arange(-half, half + 1)) / sigma) / (2.0 * sigma)
  return window / window.max()


def _convolve_constant(values: np.ndarray, window: np.ndarray) -> np.ndarray:
  """``scipy.ndimage.convolve1d(values, window, mode='constant')`` for an odd, symmetric window."""
  half = window.size // 2
  padded = np.concatenate([np.zeros(half), values, np.zeros(half)])
  n = values.size
  idx = np.arange(n)[:, None] + np.arange(window.size)[None, :]
  return (padded[idx] * window[::-1][None, :]).sum(axis=1)


def lds_weights(train_labels, labels=None, *, bin_width: float = 1.0,
                kernel: Optional[str] = "gaussian", ks: int = 5, sigma: float = 2.0,
                reweight: str = "sqrt_inv",
                clip: Optional[Tuple[Optional[float], Optional[float]]] = None,
                label_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
  """LDS per-example loss weights for ``labels`` (float64 NumPy; default: the training labels).

  The official ``_prepare_weights`` (module docstring): per-bin counts of ``train_labels`` ->
  ``sqrt`` (``reweight='sqrt_inv'``) or ``clip`` (``'inverse'``) -> convolution with the
  ``lds_kernel_window(kernel, ks, sigma)`` (``kernel=None``: no smoothing, the official plain
  SQRT_INV / INV re-weighting with ``lds=False``) -> ``1 / value`` -> times the scale that gives the
  training labels mean weight 1. The same scale is applied to ``labels``.

  ``clip``: ``None`` = official (``(5, 1000)`` on the counts for ``inverse``, none for ``sqrt_inv``);
  a ``(low, high)`` pair (either may be None) clips the raw counts before the transform for either
  reweight. ``label_range``: see ``bin_counts`` (``(0, 121)`` reproduces the official AgeDB array).
  A label whose bin has a zero smoothed value (possible for ``sqrt_inv`` without a clip, for labels in
  no training bin's reach) raises a ValueError naming ``labels`` instead of returning inf.

  Deviations from the official code: float64 throughout (official: ``np.float32(1 / x)``); default
  bin array = the occupied bins (official ``[0, max_target)``), ``floor`` bins with clamping.
  """
  if reweight not in LDS_REWEIGHTS:
    raise ValueError(f"Unknown `reweight`={reweight!r}; expected one of {LDS_REWEIGHTS}.")
  if kernel is not None:
    window = lds_kernel_window(kernel, ks, sigma)  # validates kernel, ks, sigma
  bins = bin_counts(train_labels, bin_width, label_range=label_range)
  y_train = _as_labels(train_labels, "train_labels")
  query = y_train if labels is None else _as_labels(labels, "labels", allow_empty=True)

  values = bins.counts.astype(np.float64)
  if clip is None:
    clip = INVERSE_CLIP if reweight == "inverse" else (None, None)
  try:
    lo, hi = clip
  except (TypeError, ValueError):
    raise ValueError(f"`clip` must be None or a (low, high) pair; got {clip!r}.") from None
  if lo is not None or hi is not None:
    if (lo is not None and not np.isfinite(lo)) or (hi is not None and not np.isfinite(hi)) or (
        lo is not None and hi is not None and hi < lo) or (lo is not None and lo < 0):
      raise ValueError(f"`clip` must be finite with 0 <= low <= high; got {clip!r}.")
    values = np.clip(values, lo, hi)
  if reweight == "sqrt_inv":
    values = np.sqrt(values)
  if kernel is not None:
    values = _convolve_constant(values, window)

  train_values = values[bins.index(y_train)]
  if np.any(train_values <= 0):
    # Only reachable with a clip whose low end is 0 and a kernel-free empty bin: it cannot happen for
    # a training label's own bin (count >= 1, window centre 1) unless clip high is 0.
    raise ValueError("`clip` makes a training label's bin value 0; its inverse weight is undefined.")
  scale = y_train.size / np.sum(1.0 / train_values)
  query_values = values[bins.index(query)]
  if np.any(query_values <= 0):
    bad = np.unique(query[query_values <= 0])
    raise ValueError(f"`labels` has {int(np.sum(query_values <= 0))} value(s) in bins with a zero "
                     f"(smoothed) training count, whose inverse weight is infinite: {bad[:5]}.")
  return scale / query_values


class _GMMParams(NamedTuple):
  means: np.ndarray
  variances: np.ndarray
  weights: np.ndarray


def _kmeans_1d(x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 300) -> np.ndarray:
  """Cluster assignment of 1-D ``x`` into ``k`` clusters: k-means++ seeding + Lloyd iterations."""
  centers = [x[rng.integers(x.size)]]
  for _ in range(1, k):
    d2 = np.min((x[:, None] - np.asarray(centers)[None, :]) ** 2, axis=1)
    total = d2.sum()
    p = d2 / total if total > 0 else np.full(x.size, 1.0 / x.size)
    centers.append(x[rng.choice(x.size, p=p)])
  centers = np.asarray(centers, np.float64)
  assign = None
  for _ in range(max_iter):
    new = np.argmin((x[:, None] - centers[None, :]) ** 2, axis=1)
    if assign is not None and np.array_equal(new, assign):
      break
    assign = new
    for j in range(k):
      members = x[assign == j]
      if members.size:
        centers[j] = members.mean()
  return assign


def _m_step(x: np.ndarray, resp: np.ndarray, reg_covar: float) -> _GMMParams:
  nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # as sklearn: no empty component
  means = resp.T @ x / nk
  variances = np.einsum("nk,nk->k", resp, (x[:, None] - means[None, :]) ** 2) / nk + reg_covar
  return _GMMParams(means, variances, nk / x.size)


def _log_prob(x: np.ndarray, p: _GMMParams) -> np.ndarray:
  """``log pi_k + log N(x_n; mu_k, v_k)`` as ``[N, K]``."""
  return (np.log(p.weights)[None, :] - 0.5 * np.log(2 * np.pi * p.variances)[None, :]
          - 0.5 * (x[:, None] - p.means[None, :]) ** 2 / p.variances[None, :])


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
  m = a.max(axis=1, keepdims=True)
  return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def fit_label_gmm(train_labels, n_components: int = 8, *, seed: int = 0, max_iter: int = 100,
                  tol: float = 1e-3, reg_covar: float = 1e-6) -> dict:
  """1-D Gaussian mixture of the training labels by EM (plain NumPy), for ``balanced_mse('gai')``.

  Mirrors the official preprocessing (``sklearn.mixture.GaussianMixture(n_components=K,
  random_state=0)``, K = 8 in ``preprocess_gmm.py``) and sklearn's defaults: k-means initialisation
  (here k-means++ seeding from ``np.random.default_rng(seed)`` + Lloyd), ``reg_covar`` added to the
  variances, stop when the mean log-likelihood changes by less than ``tol``. Deterministic given
  ``seed``. Returns ``{'means', 'variances', 'weights'}`` (float64 ``[K]``, sorted by mean; the keys of
  the official ``gmm.pkl``).
  """
  x = _as_labels(train_labels, "train_labels")
  if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or (
      n_components < 1):
    raise ValueError(f"`n_components` must be a positive integer; got {n_components!r}.")
  n_unique = np.unique(x).size
  if n_unique < n_components:
    raise ValueError(f"`n_components`={n_components} exceeds the {n_unique} distinct value(s) in "
                     "`train_labels`.")
  if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f"`max_iter` must be a positive integer; got {max_iter!r}.")
  tol = _positive(tol, "tol")
  reg_covar = _positive(reg_covar, "reg_covar")
  rng = np.random.default_rng(seed)
  assign = _kmeans_1d(x, int(n_components), rng)
  resp = np.zeros((x.size, n_components))
  resp[np.arange(x.size), assign] = 1.0
  params = _m_step(x, resp, reg_covar)
  lower_bound = -np.inf
  for _ in range(max_iter):
    log_prob = _log_prob(x, params)
    log_norm = _logsumexp_rows(log_prob)
    previous, lower_bound = lower_bound, float(np.mean(log_norm))
    params = _m_step(x, np.exp(log_prob - log_norm[:, None]), reg_covar)
    if abs(lower_bound - previous) < tol:
      break
  order = np.argsort(params.means, kind="stable")
  return {"means": params.means[order], "variances": params.variances[order],
          "weights": params.weights[order]}


# ----------------------------------------------------------------------------------------------------
# Balanced MSE (JAX, jit-able)
# ----------------------------------------------------------------------------------------------------
GMMLike = Union[Mapping[str, jax.Array], Sequence[jax.Array]]


def _gmm_arrays(gmm, dtype):
  """(means, variances, weights) as ``[K]`` arrays of ``dtype`` from a dict or a 3-sequence."""
  if gmm is None:
    raise ValueError("`gmm` is required for kind='gai': the training-label GMM "
                     "{'means', 'variances', 'weights'} (see fit_label_gmm).")
  if isinstance(gmm, Mapping):
    missing = [k for k in ("means", "variances", "weights") if k not in gmm]
    if missing:
      raise ValueError(f"`gmm` is missing key(s) {missing}; expected 'means', 'variances', 'weights'.")
    parts = (gmm["means"], gmm["variances"], gmm["weights"])
  else:
    try:
      parts = tuple(gmm)
    except TypeError:
      raise ValueError(f"`gmm` must be a dict with 'means', 'variances', 'weights' or a 3-tuple; got "
                       f"{type(gmm).__name__}.") from None
    if len(parts) != 3:
      raise ValueError(f"`gmm` must have 3 parts (means, variances, weights); got {len(parts)}.")
  names = ("gmm['means']", "gmm['variances']", "gmm['weights']")
  flat = []
  for part, name in zip(parts, names):
    arr = part if hasattr(part, "shape") else np.asarray(part)
    size = int(np.prod(arr.shape)) if arr.shape else 1
    if size < 1:
      raise ValueError(f"`{name}` is empty.")
    check_finite(arr, name)
    flat.append(jnp.reshape(jnp.asarray(arr), (size,)).astype(dtype))  # asarray: canonical dtype
  sizes = [f.shape[0] for f in flat]
  if len(set(sizes)) != 1:
    raise ValueError(f"`gmm` means / variances / weights must have the same number of components; "
                     f"got {sizes} (sklearn's covariances_ [K, 1, 1] is fine).")
  for arr, name in zip(parts[1:], names[1:]):
    host = concrete(arr)
    if host is not None and np.any(np.asarray(host, np.float64) <= 0):
      raise ValueError(f"`{name}` must be > 0.")
  return tuple(flat)


def _scalar_regression_array(x, name: str):
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  shape = tuple(x.shape)
  if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
    raise ValueError(f"`{name}` must be [N] or [N, 1] (scalar regression); got shape {shape}.")
  return x


def balanced_mse(predictions: jax.Array, targets: jax.Array, noise_sigma, kind: str = "gai",
                 gmm: Optional[GMMLike] = None, *, weights: Optional[jax.Array] = None,
                 bmc_sample: Optional[jax.Array] = None) -> jax.Array:
  """Balanced MSE (Ren et al. 2022): ``kind='gai'`` (needs ``gmm``) or ``'bmc'`` (batch Monte-Carlo).

  ``predictions``, ``targets``: ``[N]`` or ``[N, 1]``, same shape. ``noise_sigma``: a scalar the
  caller keeps in its trainable params (the official init is 1.0 for AgeDB / IMDB-WIKI); only its
  square is used, and ``2 sigma^2`` multiplies the loss as a stop-gradient (official ``.detach()``),
  so ``sigma`` is learned through the likelihood alone. ``gmm``: dict (or 3-sequence) of ``[K]``
  ``means``, ``variances``, ``weights`` of the training labels (``fit_label_gmm``; sklearn's
  ``covariances_ [K, 1, 1]`` is accepted). ``weights`` (optional, ``[N]``): a normalised weighted mean
  ``sum w_i l_i / sum w_i`` -- PyTorch ``cross_entropy(weight=...)`` semantics, as in ACCon's
  ``bmc_loss(..., weight)``; the same rule is used for GAI (no official weighted GAI exists).
  ``bmc_sample`` (BMC only, optional ``[M]``): the labels whose Gaussians form BMC's denominator,
  which must include the ``targets`` (default: the ``targets``, as the official code), e.g. the
  targets of the whole batch gathered from every device; example ``i``'s loss is then
  ``logsumexp_j(-(yhat_i - s_j)^2 / (2 s2)) + (yhat_i - y_i)^2 / (2 s2)``.
  Returns a float32 scalar (float64 for float64 predictions under x64).
  """
  if kind not in BALANCED_MSE_KINDS:
    raise ValueError(f"Unknown Balanced MSE `kind`={kind!r}; expected one of {BALANCED_MSE_KINDS}.")
  predictions = _scalar_regression_array(predictions, "predictions")
  targets = _scalar_regression_array(targets, "targets")
  if tuple(predictions.shape) != tuple(targets.shape):
    raise ValueError(f"`predictions` {tuple(predictions.shape)} and `targets` "
                     f"{tuple(targets.shape)} must match.")
  check_finite(predictions, "predictions")
  check_finite(targets, "targets")
  sigma = noise_sigma if hasattr(noise_sigma, "shape") else np.asarray(noise_sigma)
  if int(np.prod(sigma.shape)) != 1:
    raise ValueError(f"`noise_sigma` must be a scalar; got shape {tuple(sigma.shape)}.")
  host = concrete(sigma)
  if host is not None and (not np.all(np.isfinite(host)) or np.all(host == 0)):
    raise ValueError(f"`noise_sigma` must be finite and non-zero; got {host!r}.")
  predictions = jnp.asarray(predictions)  # canonical dtype: float64 only under x64
  dtype = jnp.promote_types(predictions.dtype, jnp.float32)
  n = predictions.shape[0]
  pred = jnp.reshape(predictions, (n,)).astype(dtype)
  target = jnp.reshape(jnp.asarray(targets), (n,)).astype(dtype)
  noise_var = jnp.square(jnp.reshape(jnp.asarray(sigma), ()).astype(dtype))
  w = None
  if weights is not None:
    w_arr = weights if hasattr(weights, "shape") else np.asarray(weights)
    if int(np.prod(w_arr.shape)) != n or (len(w_arr.shape) not in (1, 2)):
      raise ValueError(f"`weights` must be [N] with N={n}; got shape {tuple(w_arr.shape)}.")
    check_finite(w_arr, "weights")
    w = jnp.reshape(jnp.asarray(w_arr), (n,)).astype(dtype)

  sample = None
  if bmc_sample is not None:
    if kind != "bmc":
      raise ValueError("`bmc_sample` is for kind='bmc' only.")
    sample = _scalar_regression_array(bmc_sample, "bmc_sample")
    check_finite(sample, "bmc_sample")
    sample = jnp.reshape(jnp.asarray(sample), (sample.shape[0],)).astype(dtype)
  gmm_arrays = _gmm_arrays(gmm, dtype) if kind == "gai" else None
  return _balanced_mse(pred, target, noise_var, gmm_arrays, w, sample, kind=kind)


@functools.partial(jax.jit, static_argnames=("kind",))
def _balanced_mse(pred, target, noise_var, gmm_arrays, w, sample=None, *, kind):
  """Balanced MSE after validation: one compiled program per shape (also when called eagerly)."""
  if kind == "bmc":  # the Monte-Carlo sample: the batch's targets unless given
    sample = target if sample is None else sample
    logits = -0.5 * jnp.square(pred[:, None] - sample[None, :]) / noise_var  # [N, M]
    per_example = jax.nn.logsumexp(logits, axis=1) + 0.5 * jnp.square(pred - target) / noise_var
  else:
    means, variances, mix = gmm_arrays
    mse_term = 0.5 * jnp.square(pred - target) / noise_var + 0.5 * jnp.log(noise_var)
    sum_var = variances[None, :] + noise_var  # [1, K]
    balancing = (jnp.log(mix)[None, :] - 0.5 * jnp.log(sum_var)
                 - 0.5 * jnp.square(pred[:, None] - means[None, :]) / sum_var)
    per_example = mse_term + jax.nn.logsumexp(balancing, axis=1)
  if w is None:
    loss = jnp.mean(per_example)
  else:
    loss = jnp.sum(w * per_example) / jnp.sum(w)
  return loss * jax.lax.stop_gradient(2.0 * noise_var)
