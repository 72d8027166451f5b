"""Frozen-embedding evaluation of self-supervised encoders: kNN regression and a ridge linear probe.

Both run in float64 NumPy on the host over the embeddings of a whole split (the demo data sets are
small); they fit only on the training split's embeddings and labels.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_regression(train_emb, train_y, query_emb, k: int = 20, chunk: int = 1024) -> np.ndarray:
  """Mean label of the ``k`` training embeddings most cosine-similar to each query."""
  train_emb, query_emb = _unit(train_emb), _unit(query_emb)
  train_y = np.asarray(train_y, np.float64)
  if not 1 <= k <= len(train_y):
    raise ValueError(f"`k`={k} must be in [1, number of training examples={len(train_y)}].")
  out = []
  for start in range(0, len(query_emb), chunk):
    sims = query_emb[start:start + chunk] @ train_emb.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    out.append(train_y[top].mean(axis=1))
  return np.concatenate(out)


def ridge_probe(train_emb, train_y, query_emb, alpha: float = 1.0) -> np.ndarray:
  """Closed-form ridge regression on standardised embeddings (intercept not penalised)."""
  if alpha < 0:
    raise ValueError(f"`alpha`={alpha} must be >= 0.")
  x = np.asarray(train_emb, np.float64)
  mean, std = x.mean(0), x.std(0) + 1e-8
  xs = (x - mean) / std
  y = np.asarray(train_y, np.float64)
  y_mean = y.mean()
  gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
  coef = np.linalg.solve(gram, xs.T @ (y - y_mean))
  return ((np.asarray(query_emb, np.float64) - mean) / std) @ coef + y_mean
