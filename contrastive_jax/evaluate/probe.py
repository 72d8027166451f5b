"""Frozen-embedding evaluation of self-supervised encoders: kNN regression and a ridge linear probe.

Both run in float64 NumPy on the host over the embeddings of a whole split (the demo data sets are
small); they fit only on the training split's embeddings and labels. ``host_matrix`` and
``fit_standardizer`` are shared with the other frozen-feature protocols (``knn``, ``linear_probe``,
``analysis``).
"""

from __future__ import annotations

import numpy as np

STD_EPS = 1e-8  # added to the training std so a constant feature is centred, not divided by 0


def host_matrix(x, name: str, *, min_rows: int = 1) -> np.ndarray:
  """``x`` as a finite float64 ``[N, D]`` host array with ``N >= min_rows``; else ValueError."""
  if x is None:
    raise ValueError(f"`{name}` is required.")
  arr = np.asarray(x)
  if arr.ndim != 2 or arr.shape[1] < 1:
    raise ValueError(f"`{name}` must be a 2-D [examples, dim] array; got shape {arr.shape}.")
  if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    raise ValueError(f"`{name}` must be numeric; got dtype {arr.dtype}.")
  if arr.shape[0] < min_rows:
    raise ValueError(f"`{name}` needs at least {min_rows} row(s); got {arr.shape[0]}.")
  arr = arr.astype(np.float64)
  bad = int(np.sum(~np.isfinite(arr)))
  if bad:
    raise ValueError(f"`{name}` has {bad} non-finite value(s) (NaN or inf).")
  return arr


def fit_standardizer(train_x) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature ``(mean, std + 1e-8)`` of the TRAINING features; apply as ``(x - mean) / std``."""
  x = np.asarray(train_x, np.float64)
  return x.mean(0), x.std(0) + STD_EPS


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
  """Closed-form ridge regression on standardised embeddings (intercept not penalised).

  Minimises ``||y - mean(y) - xs w||^2 + alpha ||w||^2`` with ``xs`` the training embeddings
  standardised by :func:`fit_standardizer`.
  """
  if alpha < 0:
    raise ValueError(f"`alpha`={alpha} must be >= 0.")
  x = np.asarray(train_emb, np.float64)
  mean, std = fit_standardizer(x)
  xs = (x - mean) / std
  y = np.asarray(train_y, np.float64)
  y_mean = y.mean()
  gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
  coef = np.linalg.solve(gram, xs.T @ (y - y_mean))
  return ((np.asarray(query_emb, np.float64) - mean) / std) @ coef + y_mean
