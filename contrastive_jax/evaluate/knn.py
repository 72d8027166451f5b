"""Weighted kNN classification on frozen features (InstDisc, Wu et al. 2018, Sec. 3.4).

For a query with cosine similarities ``s_i`` to its ``k`` nearest training features (L2-normalised),
each neighbour votes for its class with weight ``exp(s_i / T)`` and the class scores are the summed
votes; the prediction is the top-scoring class. Defaults ``k = 200``, ``T = 0.07`` are InstDisc's,
the protocol of the SSL papers' kNN tables (thesis Table 5.2 / 6.1; the thesis's own code uses
``T = 0.1``, THESIS_CH5_7.md "Evaluation").

The core is a jit-compiled ``jnp`` function mapped over fixed-size query chunks (``lax.map``), so
the similarity matrix never exceeds ``[chunk, num_train]`` (60k training x 10k queries: 256 x 60k
floats at a time).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.evaluate.probe import host_matrix


def _class_ids(labels, name: str, size: int) -> np.ndarray:
  arr = np.asarray(labels)
  if arr.ndim != 1 or arr.shape[0] != size:
    raise ValueError(f"`{name}` must be a 1-D array of {size} class ids; got shape {arr.shape}.")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    if not np.issubdtype(arr.dtype, np.floating) or np.any(arr != np.round(arr)):
      raise ValueError(f"`{name}` must hold integer class ids; got dtype {arr.dtype}.")
  arr = arr.astype(np.int64)
  if arr.size and arr.min() < 0:
    raise ValueError(f"`{name}` must hold class ids >= 0; got {arr.min()}.")
  return arr


def _checked_inputs(train_features, train_labels, query_features, k, num_classes):
  """The host arrays of a kNN call, checked: ``(train [N, D], query [Q, D], labels [N], num_classes)``
  with ``num_classes`` defaulting to ``max(labels) + 1``; a ValueError names the bad argument."""
  train = host_matrix(train_features, "train_features")
  query = host_matrix(query_features, "query_features")
  if query.shape[1] != train.shape[1]:
    raise ValueError(f"`query_features` dim {query.shape[1]} must equal `train_features` dim "
                     f"{train.shape[1]}.")
  labels = _class_ids(train_labels, "train_labels", train.shape[0])
  num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
  if num_classes < 1 or labels.max() >= num_classes:
    raise ValueError(f"`num_classes`={num_classes} must exceed every train label (max "
                     f"{labels.max()}).")
  if isinstance(k, bool) or not 1 <= int(k) <= train.shape[0]:
    raise ValueError(f"`k`={k} must be in [1, number of training examples={train.shape[0]}].")
  return train, query, labels, num_classes


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "chunk"))
def weighted_knn_scores(train_features: jax.Array, train_labels: jax.Array,
                        query_features: jax.Array, temperature, *, k: int, num_classes: int,
                        chunk: int) -> jax.Array:
  """Jit-able core: ``[Q, num_classes]`` class scores ``sum_{i in kNN} exp((s_i - 1) / T)``.

  The ``- 1`` shift (``s <= 1``) keeps ``exp`` finite for any ``T > 0``; it multiplies every score
  by the same ``exp(-1/T)``, so predictions and normalised scores equal InstDisc's. Features are
  L2-normalised here; queries are processed ``chunk`` at a time (padded to a multiple of ``chunk``).
  """
  def unit(x):
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  train, queries = unit(train_features), unit(query_features)
  num_queries = queries.shape[0]
  pad = (-num_queries) % chunk
  blocks = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, queries.shape[1])

  def block_scores(block):
    sims, idx = jax.lax.top_k(block @ train.T, k)  # [chunk, k], ties: lower training index first
    weights = jnp.exp((sims - 1.0) / temperature)
    votes = jax.nn.one_hot(train_labels[idx], num_classes, dtype=weights.dtype)  # [chunk, k, C]
    return jnp.einsum("qk,qkc->qc", weights, votes)

  scores = jax.lax.map(block_scores, blocks)
  return scores.reshape(-1, num_classes)[:num_queries]


def knn_class_scores(train_features, train_labels, query_features, *, k: int = 200,
                     temperature: float = 0.07, num_classes: Optional[int] = None,
                     chunk: int = 256) -> jax.Array:
  """InstDisc weighted-kNN class scores ``[Q, C]`` (scaled by ``exp(-1/T)``, see the core).

  Args:
    train_features: ``[N, D]`` frozen training features (cosine similarity: normalised here).
    train_labels: ``[N]`` integer class ids in ``[0, num_classes)``.
    query_features: ``[Q, D]`` features to classify.
    k: number of neighbours, ``1 <= k <= N`` (InstDisc: 200).
    temperature: ``T > 0`` of the vote weights ``exp(s / T)`` (InstDisc: 0.07).
    num_classes: number of classes ``C``; default ``max(train_labels) + 1``.
    chunk: queries per block of the similarity matrix.
  """
  train, query, labels, num_classes = _checked_inputs(train_features, train_labels,
                                                      query_features, k, num_classes)
  if not (np.isfinite(temperature) and temperature > 0):
    raise ValueError(f"`temperature` must be a finite number > 0; got {temperature!r}.")
  if chunk < 1:
    raise ValueError(f"`chunk` must be >= 1; got {chunk}.")
  chunk = min(chunk, query.shape[0])
  return weighted_knn_scores(jnp.asarray(train, jnp.float32), jnp.asarray(labels, jnp.int32),
                             jnp.asarray(query, jnp.float32), temperature, k=k,
                             num_classes=num_classes, chunk=chunk)


def knn_classify(train_features, train_labels, query_features, **kwargs) -> np.ndarray:
  """Predicted class of each query: argmax of :func:`knn_class_scores` (ties: lowest class id)."""
  return np.asarray(jnp.argmax(knn_class_scores(train_features, train_labels, query_features,
                                                **kwargs), axis=1))


def top1_accuracy(predictions, labels) -> float:
  """Fraction of ``predictions`` equal to ``labels`` (equal-length 1-D arrays, at least one)."""
  p, y = np.asarray(predictions).reshape(-1), np.asarray(labels)
  if y.ndim != 1 or p.shape != y.shape or y.size == 0:
    raise ValueError(f"`predictions` {p.shape} and `labels` {y.shape} must be equal-length, "
                     "non-empty 1-D arrays.")
  return float(np.mean(p == y))


def topk_accuracy(scores, labels, k: int) -> float:
  """Fraction of rows of ``scores [Q, C]`` whose label is among their ``k`` highest classes (ties:
  the lower class id first, as ``argmax``); ``k`` above ``C`` counts every row (thesis Ch. 5/6 top-5).
  """
  s, y = np.asarray(scores), np.asarray(labels).reshape(-1)
  if s.ndim != 2 or s.shape[0] != y.size or y.size == 0:
    raise ValueError(f"`scores` {s.shape} must be [Q, C] with Q = len(`labels`) = {y.size} > 0.")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`k` must be an integer >= 1; got {k!r}.")
  top = np.argsort(-s, axis=1, kind="stable")[:, :min(int(k), s.shape[1])]
  return float(np.mean(np.any(top == y[:, None], axis=1)))


def knn_topk(train_features, train_labels, query_features, query_labels, ks=(1, 5),
             **kwargs) -> dict:
  """``{k: top-k accuracy}`` of weighted kNN (:func:`knn_class_scores`) on labelled queries."""
  scores = knn_class_scores(train_features, train_labels, query_features, **kwargs)
  return {k: topk_accuracy(scores, query_labels, k) for k in ks}


def knn_top1(train_features, train_labels, query_features, query_labels, **kwargs) -> float:
  """Top-1 accuracy of weighted kNN (k=200, T=0.07 by default) on labelled queries."""
  return top1_accuracy(knn_classify(train_features, train_labels, query_features, **kwargs),
                       query_labels)


def l2_knn_classify(train_features, train_labels, query_features, *, k: int,
                    num_classes: Optional[int] = None, chunk: int = 1024) -> np.ndarray:
  """Unweighted majority vote of the ``k`` training features nearest to each query by l2 distance
  (thesis Ch. 6 long-tailed evaluation, k = 1 and 10, Tables 6.5 / 6.6; the author's code scores it
  with scikit-learn's ``KNeighborsClassifier(n_neighbors=k)``: Euclidean metric, uniform weights).

  Features are L2-normalised first (the thesis' kNN features, Ch. 5 "Evaluation"), so the nearest
  neighbours are those of highest cosine similarity. Distance ties: the lower training index
  first; vote ties: the lowest class id (scikit-learn's ``mode``). float64 NumPy on the host.
  """
  train, query, labels, num_classes = _checked_inputs(train_features, train_labels,
                                                      query_features, k, num_classes)
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  train, query = unit(train), unit(query)
  sq_train = np.sum(train ** 2, axis=1)
  out = []
  for start in range(0, query.shape[0], chunk):
    q = query[start:start + chunk]
    dist = sq_train[None, :] - 2.0 * q @ train.T  # ||q - t||^2 - ||q||^2: the same order
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :int(k)]
    votes = np.zeros((q.shape[0], num_classes), np.int64)
    np.add.at(votes, (np.arange(q.shape[0])[:, None], labels[nearest]), 1)
    out.append(np.argmax(votes, axis=1))
  return np.concatenate(out)


def l2_knn_top1(train_features, train_labels, query_features, query_labels, *, k: int) -> float:
  """Top-1 accuracy of :func:`l2_knn_classify` on labelled queries."""
  return top1_accuracy(l2_knn_classify(train_features, train_labels, query_features, k=k),
                       query_labels)
