"""Regression metrics (MAE, MSE, RMSE, R^2, Pearson, Spearman, G-mean) and many/medium/few-shot splits.

Everything is float64 NumPy on the host.
"""

from __future__ import annotations

import numpy as np

from contrastive_jax.losses._checks import host_vector

GMEAN_EPS = 1e-12  # G-mean = exp(mean(log(|e| + eps))): finite when an error is exactly 0
SHOT_SUBSETS = ("many", "medium", "few", "all")




def _pair(predictions, targets, min_size: int):
  p = np.asarray(predictions).reshape(-1)  # any shape is flattened (as before Spearman was added)
  t = np.asarray(targets).reshape(-1)
  if p.shape != t.shape or p.size < min_size:
    raise ValueError(f"`predictions` {p.shape} and `targets` {t.shape} must be equal-length 1-D "
                     f"arrays with at least {min_size} entr{'y' if min_size == 1 else 'ies'}.")
  return host_vector(p, "predictions"), host_vector(t, "targets")


def average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of a finite 1-D array, tied values sharing their average rank (= scipy.stats.
  rankdata's default, without importing SciPy's stats package, 0.4 s of every process' start)."""
  _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)  # 1-based rank of each distinct value's last occurrence
  return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
  ac, bc = a - a.mean(), b - b.mean()
  denom = float(np.sqrt(np.sum(ac * ac) * np.sum(bc * bc)))
  return float(np.sum(ac * bc) / denom) if denom > 0 else 0.0


def _gmean(abs_err: np.ndarray) -> float:
  return float(np.exp(np.mean(np.log(abs_err + GMEAN_EPS))))


def regression_metrics(predictions, targets) -> dict:
  """Metrics of ``predictions`` against ``targets`` (flattened; same length, >= 2 examples).

  Keys: ``mae``, ``mse``, ``rmse``, ``r2``, ``pearson``, ``spearman``, ``gmean``. ``gmean`` is the
  geometric mean of the absolute errors (imbalanced-regression papers; official code uses
  ``scipy.stats.gmean``), computed as ``exp(mean(log(|e| + 1e-12)))`` so an exact-zero error gives a
  tiny value instead of 0. ``spearman`` is the Pearson correlation of the ranks with ties averaged
  (:func:`average_ranks`, = ``scipy.stats.spearmanr``). Pearson, Spearman and R^2 are NaN-free: a
  constant vector gives 0. Non-finite inputs raise a ValueError naming the argument.
  """
  p, t = _pair(predictions, targets, 2)
  err = p - t
  mse = float(np.mean(err * err))
  var = float(np.var(t))
  return {
      "mae": float(np.mean(np.abs(err))),
      "mse": mse,
      "rmse": float(np.sqrt(mse)),
      "r2": 1.0 - mse / var if var > 0 else 0.0,
      "pearson": _correlation(p, t),
      "spearman": _correlation(average_ranks(p), average_ranks(t)),
      "gmean": _gmean(np.abs(err)),
  }


def _subset_metrics(err: np.ndarray) -> dict:
  if err.size == 0:
    return {"n": 0, "mae": None, "mse": None, "rmse": None, "gmean": None}
  mse = float(np.mean(err * err))
  return {"n": int(err.size), "mae": float(np.mean(np.abs(err))), "mse": mse,
          "rmse": float(np.sqrt(mse)), "gmean": _gmean(np.abs(err))}


def shot_metrics(predictions, targets, train_labels, *, bin_width: float = 1.0, many: int = 100,
                 few: int = 20, top: float | None = None) -> dict:
  """Many / medium / few-shot metrics (Yang et al. 2021 ``shot_metrics``; used by RankSim, ConR, ...).

  A test example's shot group is set by the number ``c`` of TRAINING labels in its label's bin
  (``floor(y / bin_width)``; width 1 = integer bins): ``c > many`` -> many-shot, ``c < few`` ->
  few-shot, ``few <= c <= many`` -> medium-shot (official: ``> 100``, ``< 20``, else "median").
  Returns ``{'many', 'medium', 'few', 'all'}``, each ``{'n', 'mae', 'mse', 'rmse', 'gmean'}`` over the
  subset's examples (the official per-subset MSE / L1 are sums over the subset's examples divided by
  their count, i.e. these means). An empty subset is ``{'n': 0, 'mae': None, ...}`` (never NaN).

  Deviation from the official code: it bins train labels with ``astype(int)`` and compares them with
  the raw test labels, which equals ours for non-negative integer labels; ours floors both (so a
  non-integer test label is matched to its bin rather than counted as few-shot, and negative labels
  are floored rather than truncated toward 0). G-mean uses ``GMEAN_EPS`` as ``regression_metrics``.

  ``y / bin_width`` is rounded to 4 decimals before the floor, so a float32 label on a bin edge
  (2.6 in float32 is 2.59999990) falls in the bin it starts, as the official STS-B code's float32
  comparison with float32 edges puts it (a label within 5e-5 bins below an edge joins that bin). ``top``: the closed upper end of the label range; labels
  equal to it join the bin below (``np.histogram``'s last bin, e.g. STS-B's score 5.0 in [4.9, 5.0]:
  ``STSShotAverage`` of the DIR code, 50 bins over [0, 5]). None: no such bin.
  """
  p, t = _pair(predictions, targets, 1)
  train = host_vector(train_labels, "train_labels", min_size=1)
  try:
    w = float(bin_width)
  except (TypeError, ValueError):
    w = float("nan")
  if not np.isfinite(w) or w <= 0:
    raise ValueError(f"`bin_width` must be a finite number > 0; got {bin_width!r}.")
  if not (np.isfinite(many) and np.isfinite(few)) or few < 0 or many < few:
    raise ValueError(f"Shot thresholds need 0 <= `few` <= `many`; got few={few!r}, many={many!r}.")
  train_bins = np.floor(np.round(train / w, 4)).astype(np.int64)
  test_bins = np.floor(np.round(t / w, 4)).astype(np.int64)
  if top is not None:
    last = int(np.floor(np.round(float(top) / w, 4))) - 1  # the bin that ends at `top`
    train_bins = np.where(train >= top, np.minimum(train_bins, last), train_bins)
    test_bins = np.where(t >= top, np.minimum(test_bins, last), test_bins)
  uniq, counts = np.unique(train_bins, return_counts=True)
  pos = np.clip(np.searchsorted(uniq, test_bins), 0, uniq.size - 1)
  count = np.where(uniq[pos] == test_bins, counts[pos], 0)
  err = p - t
  groups = {"many": count > many, "few": count < few}
  groups["medium"] = ~(groups["many"] | groups["few"])
  out = {name: _subset_metrics(err[groups[name]]) for name in ("many", "medium", "few")}
  out["all"] = _subset_metrics(err)
  return out
