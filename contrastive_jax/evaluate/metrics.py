"""Regression metrics (MAE, RMSE, MSE, R^2, Pearson, G-mean), in float64 NumPy on the host."""

from __future__ import annotations

import numpy as np


def regression_metrics(predictions, targets) -> dict:
  """Metrics of ``predictions`` against ``targets`` (1-D, same length, at least 2 examples).

  ``gmean`` is the geometric mean of the absolute errors (imbalanced-regression papers), computed as
  ``exp(mean(log(|e| + 1e-12)))``. Pearson and R^2 are NaN-free: a constant vector gives 0.
  """
  p = np.asarray(predictions, np.float64).reshape(-1)
  t = np.asarray(targets, np.float64).reshape(-1)
  if p.shape != t.shape or p.size < 2:
    raise ValueError(f"`predictions` {p.shape} and `targets` {t.shape} must be equal-length 1-D "
                     "arrays with at least 2 entries.")
  err = p - t
  mse = float(np.mean(err * err))
  var = float(np.var(t))
  pc, tc = p - p.mean(), t - t.mean()
  denom = float(np.sqrt(np.sum(pc * pc) * np.sum(tc * tc)))
  return {
      "mae": float(np.mean(np.abs(err))),
      "mse": mse,
      "rmse": float(np.sqrt(mse)),
      "r2": 1.0 - mse / var if var > 0 else 0.0,
      "pearson": float(np.sum(pc * tc) / denom) if denom > 0 else 0.0,
      "gmean": float(np.exp(np.mean(np.log(np.abs(err) + 1e-12)))),
  }
