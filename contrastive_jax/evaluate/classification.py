"""Binary diagnosis metrics with bootstrap intervals (thesis Ch. 3-4, Tables 3.3, 4.4-4.6).

ROC AUC, sensitivity, specificity and accuracy at a threshold, the Youden-optimal threshold, and
percentile bootstrap intervals (the thesis reports 5%-95% intervals; THESIS_CH3_4.md A8: "[CODE] 100
resamples of size 1000"). Everything is float64 NumPy on the host; the resampling generator is
seeded by an explicit JAX PRNG key (or an int seed): an interval is a pure function of its inputs.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.evaluate.metrics import average_ranks
from contrastive_jax.losses._checks import host_vector


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  s = host_vector(scores, "scores")
  y = np.asarray(labels)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.shape != s.shape:
    raise ValueError(f"`labels` must have the shape of `scores` {s.shape}; got {y.shape}.")
  if not (y.dtype == bool or (np.issubdtype(y.dtype, np.number) and np.all(np.isin(y, (0, 1))))):
    raise ValueError("`labels` must be binary: 0/1 or bool (1 = positive / diseased).")
  return s, y.astype(bool)


def _both_classes(y: np.ndarray, what: str):
  if y.all() or not y.any():
    raise ValueError(f"{what} needs both positive and negative `labels`; got {int(y.sum())} "
                     f"positive(s) of {y.size}.")


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve by the rank (Mann-Whitney) formula, ties counted 1/2.

  ``AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N)`` with average ranks for tied scores
  (= ``sklearn.metrics.roc_auc_score``). Needs both classes.
  """
  s, y = _scores_labels(scores, labels)
  _both_classes(y, "ROC AUC")
  ranks = average_ranks(s)  # ties -> average rank
  num_pos, num_neg = int(y.sum()), int((~y).sum())
  return float((ranks[y].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def sensitivity_specificity(scores, labels, threshold: float = 0.5) -> tuple[float, float]:
  """``(TP / P, TN / N)`` with ``score >= threshold`` predicted positive. Needs both classes.

  (Thesis Eq. 3.4 thresholds with ``> 0.5``; the two differ only for a score exactly at the
  threshold. ``>=`` matches the ROC curve, so :func:`youden_threshold` can be passed back here.)
  """
  s, y = _scores_labels(scores, labels)
  _both_classes(y, "Sensitivity/specificity")
  if not np.isfinite(threshold):
    raise ValueError(f"`threshold` must be finite; got {threshold!r}.")
  pred = s >= threshold
  return float(np.mean(pred[y])), float(np.mean(~pred[~y]))


def youden_threshold(scores, labels) -> float:
  """The score threshold maximising Youden's ``J = sensitivity + specificity - 1``.

  Candidates are the distinct scores (classify ``score >= t`` as positive); ties -> the largest.
  """
  s, y = _scores_labels(scores, labels)
  _both_classes(y, "The Youden threshold")
  candidates = np.unique(s)[::-1]  # descending
  pred = s[None, :] >= candidates[:, None]
  j = pred[:, y].mean(1) + (~pred[:, ~y]).mean(1) - 1.0
  return float(candidates[np.argmax(j)])


def binary_metrics(scores, labels, threshold: float = 0.5) -> dict:
  """``{'auc', 'accuracy', 'sensitivity', 'specificity'}`` at ``threshold`` (thesis Table 3.3)."""
  s, y = _scores_labels(scores, labels)
  sens, spec = sensitivity_specificity(s, y, threshold)
  return {"auc": roc_auc(s, y), "accuracy": float(np.mean((s >= threshold) == y)),
          "sensitivity": sens, "specificity": spec}


class BootstrapCI(NamedTuple):
  """A percentile bootstrap interval.

  Attributes:
    estimate: the metric on the original data.
    low, high: the ``percentiles`` of the resampled metric values.
    samples: the metric on every resample where it was defined.
    num_failed: resamples on which the metric raised ValueError (e.g. one class only for AUC) and
      were left out; 0 with ``stratify``.
  """
  estimate: float
  low: float
  high: float
  samples: np.ndarray
  num_failed: int


def _host_rng(key) -> np.random.Generator:
  """A NumPy generator seeded by the bits of a JAX PRNG key (an int ``k`` means ``key(k)``)."""
  if isinstance(key, (int, np.integer)):
    key = jax.random.key(int(key))
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).reshape(-1).tolist())


def bootstrap_ci(metric_fn: Callable[..., float], *arrays, key: Union[jax.Array, int],
                 num_resamples: int = 1000, percentiles: Sequence[float] = (5.0, 95.0),
                 stratify=None, resample_size: Optional[int] = None) -> BootstrapCI:
  """Percentile bootstrap of ``metric_fn(*arrays)`` over examples (the first axis of every array).

  Args:
    metric_fn: e.g. :func:`roc_auc`, ``lambda s, y: sensitivity_specificity(s, y)[0]``.
    *arrays: per-example arrays with a common first axis (scores, labels, ...).
    key: a JAX PRNG key or an int seed; the same key gives the same interval.
    num_resamples: number of bootstrap resamples ``B``.
    percentiles: the interval's lower and upper percentiles (thesis: 5 and 95).
    stratify: optional per-example class; each class is resampled separately keeping its count
      (so every resample has both classes and AUC is always defined).
    resample_size: size of each resample (default: the number of examples; the thesis code used
      1000); with ``stratify`` the class sizes are scaled to it.
  """
  if not arrays:
    raise ValueError("`bootstrap_ci` needs at least one per-example array.")
  data = [np.asarray(a) for a in arrays]
  n = data[0].shape[0] if data[0].ndim else 0
  if n < 1 or any(a.ndim < 1 or a.shape[0] != n for a in data):
    raise ValueError(f"Every array must have the same non-empty first axis; got "
                     f"{[a.shape for a in data]}.")
  if not isinstance(num_resamples, (int, np.integer)) or num_resamples < 1:
    raise ValueError(f"`num_resamples` must be an integer >= 1; got {num_resamples!r}.")
  low_q, high_q = (float(q) for q in percentiles)
  if not 0 <= low_q <= high_q <= 100:
    raise ValueError(f"`percentiles` must be (low, high) with 0 <= low <= high <= 100; got "
                     f"{percentiles!r}.")
  size = n if resample_size is None else int(resample_size)
  if size < 1:
    raise ValueError(f"`resample_size` must be >= 1; got {resample_size!r}.")
  rng = _host_rng(key)
  if stratify is None:
    idx = rng.integers(0, n, (num_resamples, size))
  else:
    strat = np.asarray(stratify)
    if strat.shape != (n,):
      raise ValueError(f"`stratify` must have shape ({n},); got {strat.shape}.")
    parts = []
    for value in np.unique(strat):
      members = np.flatnonzero(strat == value)
      count = max(1, int(round(members.size * size / n)))
      parts.append(members[rng.integers(0, members.size, (num_resamples, count))])
    idx = np.concatenate(parts, axis=1)
  estimate = float(metric_fn(*data))
  samples, failed = [], 0
  for row in idx:
    try:
      samples.append(float(metric_fn(*(a[row] for a in data))))
    except ValueError:
      failed += 1
  samples = np.asarray(samples)
  if samples.size == 0:
    raise ValueError(f"`metric_fn` failed on all {num_resamples} resamples; pass `stratify`.")
  if not np.all(np.isfinite(samples)):
    raise ValueError("`metric_fn` returned non-finite value(s) on some resamples.")
  low, high = np.percentile(samples, [low_q, high_q])
  return BootstrapCI(estimate=estimate, low=float(low), high=float(high), samples=samples,
                     num_failed=failed)
