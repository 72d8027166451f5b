"""k-fold cross-validation: deterministic splits, the fold models' ensemble, and a driver.

AdaCon (Dai et al., TMI 2023, Sec. IV-A) reports four-fold cross-validation averaged over folds and
predicts out-of-sample sets (the Fujifilm X-rays, Sec. IV-A4) with "the average output of the four
models" -- :func:`fold_ensemble`. The thesis (Ch. 7, CHAOS) uses five folds. Medical sets have
several images per patient, so ``groups`` keeps every group (patient) inside one fold.

Splits are host NumPy, a pure function of ``(num_examples, num_folds, seed, stratify, groups)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

Seed = Union[int, Sequence[int]]


def _per_example(values, num_examples: int, name: str) -> np.ndarray:
  arr = np.asarray(values)
  if arr.ndim != 1 or arr.shape[0] != num_examples:
    raise ValueError(f"`{name}` must be a 1-D array with one entry per example ({num_examples}); "
                     f"got shape {arr.shape}.")
  if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
    raise ValueError(f"`{name}` has non-finite value(s) (NaN or inf).")
  return arr


def kfold_indices(num_examples: int, num_folds: int, *, seed: Seed = 0, shuffle: bool = True,
                  stratify=None, groups=None) -> list[np.ndarray]:
  """Partitions ``range(num_examples)`` into ``num_folds`` test folds (sorted index arrays).

  * Plain: a permutation drawn from ``seed`` (identity when ``shuffle=False``) cut into
    ``num_folds`` contiguous parts whose sizes differ by at most one, the larger first (the split of
    ``sklearn.model_selection.KFold``).
  * ``stratify`` (class of each example) and/or ``groups`` (patient id of each example): units
    (an example, or all examples of one group) are visited largest first (random order among equal
    sizes) and each goes to the fold where its classes are least represented so far
    (``argmin_f sum_c n_unit[c] * n_fold[f, c]``; ties -> the smaller fold, then the lower index).
    Without groups every class count differs by at most one between folds; with groups no group is
    ever split between folds.

  Raises:
    ValueError: ``num_folds < 2``, or more folds than examples (or groups).
  """
  if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(f"`num_examples` must be a positive integer; got {num_examples!r}.")
  if not isinstance(num_folds, (int, np.integer)) or num_folds < 2:
    raise ValueError(f"`num_folds` must be an integer >= 2; got {num_folds!r}.")
  rng = np.random.default_rng(seed)
  if stratify is None and groups is None:
    if num_folds > num_examples:
      raise ValueError(f"`num_folds`={num_folds} exceeds `num_examples`={num_examples}.")
    order = rng.permutation(num_examples) if shuffle else np.arange(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_folds)]
  classes = (np.zeros(num_examples, np.int64) if stratify is None else
             np.unique(_per_example(stratify, num_examples, "stratify"), return_inverse=True)[1])
  units = (np.arange(num_examples) if groups is None else
           np.unique(_per_example(groups, num_examples, "groups"), return_inverse=True)[1])
  num_units = int(units.max()) + 1
  if num_folds > num_units:
    what = "groups" if groups is not None else "examples"
    raise ValueError(f"`num_folds`={num_folds} exceeds the number of {what} ({num_units}).")
  unit_counts = np.zeros((num_units, int(classes.max()) + 1), np.int64)
  np.add.at(unit_counts, (units, classes), 1)
  visit = rng.permutation(num_units) if shuffle else np.arange(num_units)
  visit = visit[np.argsort(-unit_counts[visit].sum(1), kind="stable")]
  fold_counts = np.zeros((num_folds, unit_counts.shape[1]), np.int64)
  fold_of_unit = np.empty(num_units, np.int64)
  for u in visit:
    cost = fold_counts @ unit_counts[u]
    fold = np.lexsort((np.arange(num_folds), fold_counts.sum(1), cost))[0]
    fold_of_unit[u] = fold
    fold_counts[fold] += unit_counts[u]
  fold_of_example = fold_of_unit[units]
  return [np.flatnonzero(fold_of_example == f) for f in range(num_folds)]


def fold_ensemble(predictions: Sequence[Any], weights: Optional[Sequence[float]] = None
                  ) -> np.ndarray:
  """Mean of the fold models' predictions on the same examples (AdaCon Sec. IV-A4).

  Args:
    predictions: one array per fold model, all of one shape (``[N]`` values or probabilities,
      ``[N, C]`` class probabilities, ...).
    weights: optional non-negative per-model weights (normalised to sum 1; e.g. the thesis's
      soft-voting weights, Eq. 3.1); default equal weights.
  """
  preds = [np.asarray(p, np.float64) for p in predictions]
  if not preds:
    raise ValueError("`predictions` is empty: pass one prediction array per fold model.")
  if any(p.shape != preds[0].shape for p in preds):
    raise ValueError(f"All fold predictions must have one shape; got {[p.shape for p in preds]}.")
  stacked = np.stack(preds)
  if not np.all(np.isfinite(stacked)):
    raise ValueError("`predictions` has non-finite value(s) (NaN or inf).")
  if weights is None:
    return stacked.mean(0)
  w = np.asarray(weights, np.float64)
  if w.shape != (len(preds),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"`weights` must be {len(preds)} finite non-negative numbers with a positive "
                     f"sum; got {weights!r}.")
  return np.tensordot(w / w.sum(), stacked, axes=1)


@dataclasses.dataclass(frozen=True)
class CrossValResult:
  """Outcome of :func:`cross_validate`.

  Attributes:
    splits: per fold ``{'train', 'val', 'test'}`` index arrays.
    oof: out-of-fold predictions ``[num_examples, ...]``: each example predicted by the one model
      that did not train on it.
    fold_outputs: what ``fit_predict`` returned for each fold.
    ensemble: for every extra key ``fit_predict`` returned (external sets), the mean of the fold
      models' predictions (:func:`fold_ensemble`).
  """
  splits: list
  oof: np.ndarray
  fold_outputs: list
  ensemble: dict


def cross_validate(fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], Any],
                   num_examples: int, num_folds: int, *, seed: int = 0, stratify=None,
                   groups=None, inner_folds: Optional[int] = None) -> CrossValResult:
  """Runs ``fit_predict(train_idx, val_idx, test_idx)`` for each fold of :func:`kfold_indices`.

  ``fit_predict`` trains one model (e.g. keeping its best checkpoint on ``val_idx``, see
  ``linear_probe.select_best``) and returns either the predictions for ``test_idx`` (first axis
  ``len(test_idx)``) or a mapping with key ``'test'`` for those plus one key per external set (its
  predictions, same shape from every fold), which are ensembled by the fold models' mean.

  Args:
    fit_predict: the per-fold train-and-predict callable.
    num_examples, num_folds, seed, stratify, groups: the outer split (:func:`kfold_indices`).
    inner_folds: ``None``: ``val_idx`` is empty. Else the training part of each outer fold is split
      the same way (same stratification / groups, seed ``(seed, fold)``) into ``inner_folds`` folds
      and the first is the validation set (a fraction ``~1 / inner_folds`` of it).
  """
  folds = kfold_indices(num_examples, num_folds, seed=seed, stratify=stratify, groups=groups)
  strat = None if stratify is None else _per_example(stratify, num_examples, "stratify")
  grp = None if groups is None else _per_example(groups, num_examples, "groups")
  splits, outputs, oof_parts, extras = [], [], [], {}
  for k, test in enumerate(folds):
    train = np.setdiff1d(np.arange(num_examples), test)
    val = np.zeros(0, np.int64)
    if inner_folds is not None:
      inner = kfold_indices(train.size, inner_folds, seed=(seed, k),
                            stratify=None if strat is None else strat[train],
                            groups=None if grp is None else grp[train])
      val, train = train[inner[0]], np.setdiff1d(train, train[inner[0]])
    out = fit_predict(train, val, test)
    outputs.append(out)
    if isinstance(out, Mapping):
      if "test" not in out:
        raise ValueError(f"`fit_predict` returned a mapping without a 'test' key (keys: "
                         f"{sorted(out)}).")
      for name, value in out.items():
        if name != "test":
          extras.setdefault(name, []).append(value)
      out = out["test"]
    pred = np.asarray(out)
    if pred.ndim < 1 or pred.shape[0] != test.size:
      raise ValueError(f"`fit_predict` must return {test.size} test predictions for fold {k}; got "
                       f"shape {pred.shape}.")
    oof_parts.append(pred)
    splits.append({"train": train, "val": val, "test": test})
  oof = np.zeros((num_examples,) + oof_parts[0].shape[1:], np.result_type(*oof_parts))
  for split, pred in zip(splits, oof_parts):
    oof[split["test"]] = pred
  partial = sorted(name for name, values in extras.items() if len(values) != len(folds))
  if partial:
    raise ValueError(f"`fit_predict` returned the external set(s) {partial} for only some folds; "
                     "every fold model must predict every external set.")
  ensemble = {name: fold_ensemble(values) for name, values in extras.items()}
  return CrossValResult(splits=splits, oof=oof, fold_outputs=outputs, ensemble=ensemble)
