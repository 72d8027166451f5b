"""Linear probe on frozen features, trained with optax; best-by-validation selection.

The linear evaluation protocol of the SSL papers (thesis Ch. 5 "Evaluation": frozen backbone
features, one linear layer; SGD with a cosine schedule by default, any optax optimizer, full-batch
or minibatch): softmax regression (``task='classification'``, mean cross-entropy) or least squares
(``task='regression'``, mean squared error), both with an optional L2 penalty
``0.5 * l2 * ||W||^2`` on the weights (not the bias).

Features are standardised with statistics fitted on the TRAINING features only
(:func:`probe.fit_standardizer`); regression targets are standardised the same way during training,
which leaves the minimiser unchanged (the penalty and the squared error scale together), so the
regression probe's optimum is the ridge solution of :func:`probe.ridge_probe` with
``alpha = N * l2 / 2``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrastive_jax.evaluate.knn import _class_ids
from contrastive_jax.evaluate.knn import top1_accuracy
from contrastive_jax.evaluate.knn import topk_accuracy
from contrastive_jax.evaluate.probe import fit_standardizer
from contrastive_jax.evaluate.probe import host_matrix

TASKS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A fitted probe: ``outputs = ((x - mean) / std) @ weights + bias`` (then target de-scaling).

  Attributes:
    weights: ``[D, C]`` (C classes, or C regression targets).
    bias: ``[C]``.
    mean, std: the training features' standardisation.
    target_mean, target_std: regression-target standardisation (0 and 1 for classification).
    task: ``'classification'`` or ``'regression'``.
    vector_target: regression targets were ``[N, C]`` (else ``[N]``; outputs squeezed).
    losses: the training objective at every step (to check convergence).
  """
  weights: np.ndarray
  bias: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  target_mean: np.ndarray
  target_std: np.ndarray
  task: str
  vector_target: bool
  losses: np.ndarray


@functools.lru_cache(maxsize=16)
def _default_optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
  """SGD + momentum 0.9 + cosine decay; cached so repeated fits reuse one compiled ``_train``."""
  return optax.sgd(optax.cosine_decay_schedule(learning_rate, steps), momentum=0.9)


def _objective(params, x, y, l2: float, task: str):
  out = x @ params["w"] + params["b"]
  if task == "classification":
    data = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
  else:
    data = jnp.mean(jnp.sum((out - y) ** 2, axis=1))
  return data + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("optimizer", "steps", "batch_size", "l2", "task"))
def _train(params, x, y, key, *, optimizer, steps: int, batch_size: Optional[int], l2: float,
           task: str):
  n = x.shape[0]
  state = optimizer.init(params)

  def step(carry, i):
    params, state = carry
    if batch_size is None:
      xb, yb = x, y
    else:
      per_epoch = n // batch_size
      perm = jax.random.permutation(jax.random.fold_in(key, i // per_epoch), n)
      idx = jax.lax.dynamic_slice(perm, ((i % per_epoch) * batch_size,), (batch_size,))
      xb, yb = x[idx], y[idx]
    loss, grads = jax.value_and_grad(_objective)(params, xb, yb, l2, task)
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  (params, _), losses = jax.lax.scan(step, (params, state), jnp.arange(steps))
  return params, losses


def fit_linear_probe(train_features, train_targets, *, task: str = "classification",
                     num_classes: Optional[int] = None, steps: int = 1000,
                     learning_rate: float = 0.1, l2: float = 0.0,
                     batch_size: Optional[int] = None, key: Optional[jax.Array] = None,
                     optimizer: Optional[optax.GradientTransformation] = None) -> LinearProbe:
  """Trains a linear probe on frozen ``[N, D]`` features (weights and bias start at 0).

  Args:
    train_features: ``[N, D]`` frozen training features.
    train_targets: classification: ``[N]`` integer class ids; regression: ``[N]`` or ``[N, C]``.
    task: ``'classification'`` (softmax cross-entropy) or ``'regression'`` (squared error).
    num_classes: classification only; default ``max(train_targets) + 1``.
    steps: optimizer steps.
    learning_rate: peak rate of the default optimizer: SGD with momentum 0.9 and a cosine decay to 0
      over ``steps`` (the thesis's linear-evaluation recipe, Ch. 5 "Evaluation").
    l2: weight penalty ``0.5 * l2 * ||W||^2`` (>= 0; bias not penalised).
    batch_size: ``None`` = full batch; else minibatches drawn without replacement from a fresh
      permutation of the training set every epoch (``N // batch_size`` steps per epoch).
    key: PRNG key of the minibatch permutations; required when ``batch_size`` is given.
    optimizer: any optax gradient transformation (overrides ``learning_rate``).
  """
  if task not in TASKS:
    raise ValueError(f"`task` must be one of {TASKS}; got {task!r}.")
  x = host_matrix(train_features, "train_features")
  n = x.shape[0]
  if task == "classification":
    y = _class_ids(train_targets, "train_targets", n)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    if num_classes < 2 or y.max() >= num_classes:
      raise ValueError(f"`num_classes`={num_classes} must be >= 2 and exceed every train target "
                       f"(max {y.max()}).")
    y_mean, y_std, vector_target, out_dim = np.zeros(1), np.ones(1), False, num_classes
    y_dev = jnp.asarray(y, jnp.int32)
  else:
    raw = np.asarray(train_targets)
    vector_target = raw.ndim == 2
    y = host_matrix(raw.reshape(-1, 1) if raw.ndim == 1 else raw, "train_targets")
    if y.shape[0] != n:
      raise ValueError(f"`train_targets` must have {n} rows (the features'); got {y.shape[0]}.")
    y_mean, y_std = fit_standardizer(y)
    out_dim = y.shape[1]
    y_dev = jnp.asarray((y - y_mean) / y_std, jnp.float32)
  if not (isinstance(steps, (int, np.integer)) and steps >= 1):
    raise ValueError(f"`steps` must be an integer >= 1; got {steps!r}.")
  if not (np.isfinite(l2) and l2 >= 0):
    raise ValueError(f"`l2` must be a finite number >= 0; got {l2!r}.")
  if batch_size is not None:
    if not 1 <= batch_size <= n:
      raise ValueError(f"`batch_size`={batch_size} must be in [1, number of examples={n}].")
    if key is None:
      raise ValueError("`key` (a PRNG key) is required for minibatch training (`batch_size` set).")
  if optimizer is None:
    if not (np.isfinite(learning_rate) and learning_rate > 0):
      raise ValueError(f"`learning_rate` must be a finite number > 0; got {learning_rate!r}.")
    optimizer = _default_optimizer(float(learning_rate), int(steps))
  mean, std = fit_standardizer(x)
  params = {"w": jnp.zeros((x.shape[1], out_dim), jnp.float32),
            "b": jnp.zeros((out_dim,), jnp.float32)}
  key = jax.random.key(0) if key is None else key  # unused by full-batch training
  params, losses = _train(params, jnp.asarray((x - mean) / std, jnp.float32), y_dev, key,
                          optimizer=optimizer, steps=int(steps), batch_size=batch_size,
                          l2=float(l2), task=task)
  losses = np.asarray(losses)
  if not np.all(np.isfinite(losses)):
    raise ValueError("Linear-probe training diverged (non-finite loss); lower `learning_rate`.")
  return LinearProbe(weights=np.asarray(params["w"], np.float64),
                     bias=np.asarray(params["b"], np.float64), mean=mean, std=std,
                     target_mean=y_mean, target_std=y_std, task=task,
                     vector_target=vector_target, losses=losses)


def probe_outputs(probe: LinearProbe, features) -> np.ndarray:
  """Class logits ``[Q, C]`` (classification) or predicted targets ``[Q]`` / ``[Q, C]``."""
  x = host_matrix(features, "features")
  if x.shape[1] != probe.weights.shape[0]:
    raise ValueError(f"`features` dim {x.shape[1]} must equal the probe's input dim "
                     f"{probe.weights.shape[0]}.")
  out = ((x - probe.mean) / probe.std) @ probe.weights + probe.bias
  if probe.task == "classification":
    return out
  out = out * probe.target_std + probe.target_mean
  return out if probe.vector_target else out[:, 0]


def probe_predict(probe: LinearProbe, features) -> np.ndarray:
  """Predicted class ids (argmax of the logits) or regression predictions."""
  out = probe_outputs(probe, features)
  return np.argmax(out, axis=1) if probe.task == "classification" else out


def linear_probe(train_features, train_targets, query_features, **kwargs) -> np.ndarray:
  """Fits :func:`fit_linear_probe` (same keyword arguments) and predicts ``query_features``."""
  return probe_predict(fit_linear_probe(train_features, train_targets, **kwargs), query_features)


def linear_probe_accuracy(train_features, train_labels, query_features, query_labels,
                          **kwargs) -> float:
  """Top-1 accuracy of a classification linear probe on labelled queries."""
  return top1_accuracy(linear_probe(train_features, train_labels, query_features,
                                    task="classification", **kwargs), query_labels)


def linear_probe_topk(train_features, train_labels, query_features, query_labels, ks=(1, 5),
                      **kwargs) -> dict:
  """``{k: top-k accuracy}`` of one classification linear probe on labelled queries (thesis Ch. 5
  / 6 linear evaluation: top-1 and top-5)."""
  probe = fit_linear_probe(train_features, train_labels, task="classification", **kwargs)
  logits = probe_outputs(probe, query_features)
  return {k: topk_accuracy(logits, query_labels, k) for k in ks}


def best_index(val_metrics: Sequence[float], *, mode: str = "max") -> int:
  """Index of the best validation metric; ties -> the earliest.

  Non-finite values (a diverged run) are never selected; ValueError if all are non-finite or the
  sequence is empty. ``mode='max'`` for accuracy / AUC, ``'min'`` for MAE / loss.
  """
  if mode not in ("max", "min"):
    raise ValueError(f"`mode` must be 'max' or 'min'; got {mode!r}.")
  values = np.asarray(val_metrics, np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError("`val_metrics` is empty.")
  finite = np.isfinite(values)
  if not finite.any():
    raise ValueError(f"`val_metrics` has no finite value: {values.tolist()}.")
  worst = -np.inf if mode == "max" else np.inf
  values = np.where(finite, values, worst)
  return int(np.argmax(values) if mode == "max" else np.argmin(values))  # first of equal values


def select_best(candidates: Sequence[Any], val_metrics: Sequence[float], *,
                mode: str = "max") -> tuple[Any, int]:
  """``(candidate, index)`` with the best validation metric (checkpoint, epoch, hyperparameter).

  ``candidates[i]`` was scored ``val_metrics[i]``; ties -> the earliest (see :func:`best_index`).
  """
  candidates = list(candidates)
  if len(candidates) != len(val_metrics):
    raise ValueError(f"`candidates` ({len(candidates)}) and `val_metrics` ({len(val_metrics)}) "
                     "must have the same length.")
  index = best_index(val_metrics, mode=mode)
  return candidates[index], index
