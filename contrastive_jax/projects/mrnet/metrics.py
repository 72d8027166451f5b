"""The thesis' diagnosis metrics per MRNet task (Tables 3.3, 3.10, 4.4-4.6): AUC, sensitivity,
specificity and accuracy, each with a percentile bootstrap interval (5 %-95 %; [CODE] A8: 100
resamples of size 1000), stratified by the label so that every resample holds both classes.

A score ``>= threshold`` counts as positive (``evaluate.classification``; Eq. 3.4 writes ``> 0.5``:
the two differ only for a score exactly at the threshold).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from contrastive_jax.evaluate import classification

METRICS = ('auc', 'sensitivity', 'specificity', 'accuracy')


def _metric_fns(threshold: float) -> dict:
  return {
      'auc': classification.roc_auc,
      'sensitivity': lambda s, y: classification.sensitivity_specificity(s, y, threshold)[0],
      'specificity': lambda s, y: classification.sensitivity_specificity(s, y, threshold)[1],
      'accuracy': lambda s, y: float(np.mean((np.asarray(s) >= threshold) == (np.asarray(y) > 0))),
  }


def diagnosis_report(scores, labels, *, threshold: float = 0.5, seed: int = 0,
                     num_resamples: int = 100, resample_size: Optional[int] = 1000,
                     percentiles: Sequence[float] = (5.0, 95.0)) -> dict:
  """``{metric: {'estimate', 'low', 'high'}, 'num_exams', 'num_positive'}`` of one binary task.

  A split with one class only reports accuracy alone (AUC, sensitivity and specificity need both),
  with a ``'note'``. Every interval uses the seed ``seed`` (the same resamples for every metric).
  """
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1) > 0
  out = {'num_exams': int(y.size), 'num_positive': int(y.sum())}
  names = METRICS if 0 < y.sum() < y.size else ('accuracy',)
  if len(names) < len(METRICS):
    out['note'] = 'one class only in this split: AUC, sensitivity and specificity are undefined'
  for name in names:
    ci = classification.bootstrap_ci(_metric_fns(threshold)[name], s, y, key=int(seed),
                                     num_resamples=int(num_resamples), percentiles=percentiles,
                                     stratify=y, resample_size=resample_size)
    out[name] = {'estimate': ci.estimate, 'low': ci.low, 'high': ci.high}
  return out


def task_reports(probs, labels, tasks: Sequence[str], **kwargs) -> dict:
  """:func:`diagnosis_report` of every column ``j`` (task ``tasks[j]``) of ``probs`` / ``labels``
  ``[N, J]``; ``kwargs`` as :func:`diagnosis_report`."""
  probs, labels = np.asarray(probs), np.asarray(labels)
  return {t: diagnosis_report(probs[:, j], labels[:, j], **kwargs) for j, t in enumerate(tasks)}


def validation_metrics(probs, labels, tasks: Sequence[str], eps: float = 1e-7) -> dict:
  """The validation scalars of a run: the mean binary cross-entropy of the Monte-Carlo probabilities
  (``'loss'``, the best-state metric) and the AUC of every task that has both classes."""
  p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
  y = np.asarray(labels, np.float64)
  out = {'loss': float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))}
  for j, t in enumerate(tasks):
    if 0 < y[:, j].sum() < len(y):
      out[f'auc_{t}'] = classification.roc_auc(p[:, j], y[:, j])
  return out


def describe(report: dict) -> str:
  """``AUC 0.904 (0.880-0.916) sens ... spec ... acc ...`` for the log."""
  short = {'auc': 'AUC', 'sensitivity': 'sens', 'specificity': 'spec', 'accuracy': 'acc'}
  return ' '.join(f"{short[m]} {report[m]['estimate']:.3f} ({report[m]['low']:.3f}-"
                  f"{report[m]['high']:.3f})" for m in METRICS if m in report)


__all__ = ['METRICS', 'describe', 'diagnosis_report', 'task_reports', 'validation_metrics']
