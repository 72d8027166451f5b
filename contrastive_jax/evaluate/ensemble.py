"""Weighted soft-voting ensemble of per-plane binary classifiers (thesis Sec. 3.4.2.3, Eq. 3.1-3.4).

For class ``j`` and classifiers ``i = 1..T`` (one per MR plane):

* (3.3) ``f_i^j(x) = (1/S) sum_s f_i^{j,s}(x)``: the mean of ``S = 8`` Monte-Carlo predictions, each
  from a draw of 16 slices (:func:`contrastive_jax.projects.jigsaw.data.sample_eval_slices`);
* (3.2) ``w_i^j ∝ ln(acc_i^j / (1 - acc_i^j))``, the log-odds of classifier ``i``'s accuracy on
  class ``j``, normalised so that ``w >= 0`` and ``sum_i w_i^j = 1``;
* (3.1) ``H_j(x) = sum_i w_i^j f_i^j(x)``; (3.4) ``y_j = [H_j(x) > 0.5]``.

The weights are FITTED ON HELD-OUT DATA (:func:`fit_vote_weights`), never on the set that is reported
(spec B10: the thesis' printed weights come from the reported validation set). Reading choices: a
classifier with accuracy ``<= 0.5`` gets weight 0 (a negative log-odds would break ``w >= 0``); an
accuracy is clipped to ``[eps, 1 - eps]`` so a perfect held-out score gives a large finite weight; a
class on which no classifier beats chance gets uniform weights (with a warning).
"""

from __future__ import annotations

import warnings

import numpy as np


def _check_probs(probs, name: str, ndim: int) -> np.ndarray:
  probs = np.asarray(probs, np.float64)
  if probs.ndim != ndim:
    raise ValueError(f'{name} must have {ndim} dimensions, got shape {probs.shape}.')
  if probs.size == 0:
    raise ValueError(f'{name} is empty (shape {probs.shape}).')
  if not np.all(np.isfinite(probs)) or np.any(probs < 0) or np.any(probs > 1):
    raise ValueError(f'{name} must be probabilities in [0, 1] (apply the sigmoid to logits first).')
  return probs


def monte_carlo_mean(probs) -> np.ndarray:
  """Eq. 3.3: mean over the leading axis of ``S`` Monte-Carlo predictions ``[S, ...] -> [...]``."""
  probs = np.asarray(probs, np.float64)
  if probs.ndim < 1 or probs.shape[0] == 0:
    raise ValueError(f'probs must have a non-empty leading Monte-Carlo axis, got shape {probs.shape}.')
  return _check_probs(probs, 'probs', probs.ndim).mean(axis=0)


def classifier_accuracy(probs, labels, threshold: float = 0.5) -> np.ndarray:
  """``acc_i^j``: accuracy of ``[probs > threshold]`` per classifier and class.

  Args:
    probs: ``[T, N, J]`` held-out probabilities of ``T`` classifiers, ``N`` examples, ``J`` classes.
    labels: ``[N, J]`` binary held-out labels.

  Returns:
    ``float64 [T, J]``.
  """
  probs = _check_probs(probs, 'probs', 3)
  labels = np.asarray(labels)
  if labels.shape != probs.shape[1:]:
    raise ValueError(f'labels must have shape {probs.shape[1:]} (examples, classes) to match probs '
                     f'{probs.shape}, got {labels.shape}.')
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError('labels must be binary (0 or 1).')
  return np.mean((probs > threshold) == (labels[None] == 1), axis=1)


def vote_weights(accuracy, eps: float = 1e-3) -> np.ndarray:
  """Eq. 3.2 with the constraints of Eq. 3.1: ``w_i^j ∝ max(0, ln(acc/(1-acc)))``, ``sum_i w_i^j = 1``.

  Args:
    accuracy: ``[T, J]`` accuracies in ``[0, 1]``.
    eps: accuracies are clipped to ``[eps, 1 - eps]`` (finite log-odds for a perfect classifier).

  Returns:
    ``float64 [T, J]`` non-negative weights whose columns sum to 1.
  """
  accuracy = np.asarray(accuracy, np.float64)
  if accuracy.ndim != 2 or accuracy.size == 0:
    raise ValueError(f'accuracy must have shape [classifiers, classes], got {accuracy.shape}.')
  if not np.all(np.isfinite(accuracy)) or np.any(accuracy < 0) or np.any(accuracy > 1):
    raise ValueError('accuracy must lie in [0, 1].')
  if not 0 < eps < 0.5:
    raise ValueError(f'eps must be in (0, 0.5), got {eps}.')
  acc = np.clip(accuracy, eps, 1 - eps)
  logit = np.maximum(np.log(acc / (1 - acc)), 0.0)
  total = logit.sum(axis=0, keepdims=True)
  chance = total[0] == 0
  if np.any(chance):
    warnings.warn(f'No classifier beats chance on class(es) {np.flatnonzero(chance).tolist()}: '
                  'using uniform weights there.', RuntimeWarning, stacklevel=2)
  uniform = np.full_like(logit, 1.0 / logit.shape[0])
  return np.where(chance[None], uniform, logit / np.where(total == 0, 1.0, total))


def fit_vote_weights(heldout_probs, heldout_labels, threshold: float = 0.5,
                     eps: float = 1e-3) -> np.ndarray:
  """Weights ``[T, J]`` of Eq. 3.1-3.2 from held-out predictions ``[T, N, J]`` and labels ``[N, J]``."""
  return vote_weights(classifier_accuracy(heldout_probs, heldout_labels, threshold), eps)


def soft_vote(probs, weights) -> np.ndarray:
  """Eq. 3.1: ``H_j(x) = sum_i w_i^j f_i^j(x)``; ``probs [T, N, J]``, ``weights [T, J]`` -> ``[N, J]``."""
  probs = _check_probs(probs, 'probs', 3)
  weights = np.asarray(weights, np.float64)
  if weights.shape != (probs.shape[0], probs.shape[2]):
    raise ValueError(f'weights must have shape {(probs.shape[0], probs.shape[2])} (classifiers, '
                     f'classes), got {weights.shape}.')
  if np.any(weights < 0) or not np.allclose(weights.sum(axis=0), 1.0):
    raise ValueError('weights must be non-negative with each class column summing to 1 (Eq. 3.1).')
  return np.einsum('tnj,tj->nj', probs, weights)


def vote_labels(scores, threshold: float = 0.5) -> np.ndarray:
  """Eq. 3.4: ``y_j = [H_j(x) > threshold]`` as int ``{0, 1}``."""
  return (np.asarray(scores) > threshold).astype(np.int64)


def ensemble_predict(probs, weights, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """Eq. 3.1 + 3.4: ``(scores H [N, J], labels [N, J])``. Average Monte-Carlo draws first (3.3)."""
  scores = soft_vote(probs, weights)
  return scores, vote_labels(scores, threshold)
