"""Segmentation metrics and the 1-shot evaluation protocol of CoWPro (thesis Sec. 7.4.2).

Dice (Sec. 7.4.2.4): ``2 |P n G| / (|P| + |G|)`` of binary masks. Empty-mask convention: when both the
prediction and the ground truth are empty the Dice is ``empty_value`` (default 1.0: the absence was
predicted correctly); when only one of them is empty it is 0.

Protocol (Secs. 7.4.2.1-7.4.2.2, following Ouyang et al. 2020 and Guha Roy et al. 2020), for each class
``l``: the support scan is the last scan of the evaluation split; in the support and in every other
(query) scan only the slices ``[u_min, u_max]`` containing ``l`` are used; both ranges are split into
``npart = 3`` chunks; the support slice of chunk ``u`` is the slice at fraction ``(u + 1/2) / npart`` of
the support range (the middle of the chunk; the author's code takes ``zlist[int(pct * len(zlist))]``
with ``pct`` = 1/6, 1/2, 5/6), and query slice ``i`` belongs to chunk ``floor(npart (i - u_min) / n)``.
Each query slice is predicted from its chunk's support slice and mask; slices outside ``[u_min,
u_max]`` are predicted empty. The Dice is computed in 3-D per query scan and averaged over the query
scans [GUESS, as the author's ``Metric``]; the class mean is the mean over classes.

Quadrant masking (Sec. 7.4.2.3, optional): predictions are kept only in the image quadrants the class
occupies; the thesis takes these from prior anatomical knowledge, here [GUESS] they are the quadrants
touched by the class in the support scan's ground truth.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np


def dice(pred, target, empty_value: float = 1.0) -> float:
  """Binary Dice ``2 |P n G| / (|P| + |G|)`` in float64; ``empty_value`` when both are empty."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f'`pred` and `target` must have the same shape; got {pred.shape} and '
                     f'{target.shape}.')
  p, g = pred.astype(bool), target.astype(bool)
  denom = float(p.sum()) + float(g.sum())
  if denom == 0:
    return float(empty_value)
  return 2.0 * float(np.logical_and(p, g).sum()) / denom


def dice_per_class(pred_labels, target_labels, class_ids: Sequence[int],
                   empty_value: float = 1.0) -> dict:
  """``{class_id: dice(pred_labels == c, target_labels == c)}`` for integer label maps."""
  pred_labels, target_labels = np.asarray(pred_labels), np.asarray(target_labels)
  if pred_labels.shape != target_labels.shape:
    raise ValueError(f'`pred_labels` and `target_labels` must have the same shape; got '
                     f'{pred_labels.shape} and {target_labels.shape}.')
  return {int(c): dice(pred_labels == c, target_labels == c, empty_value) for c in class_ids}


def label_slice_range(labels, class_id: int) -> Optional[tuple]:
  """``(u_min, u_max)`` (inclusive) of the slices of ``labels [S, H, W]`` containing ``class_id``, or
  None when no slice does."""
  labels = np.asarray(labels)
  if labels.ndim != 3:
    raise ValueError(f'`labels` must be a volume [S, H, W]; got shape {labels.shape}.')
  present = np.flatnonzero(np.any(labels == class_id, axis=(1, 2)))
  if present.size == 0:
    return None
  return int(present[0]), int(present[-1])


def support_slice_indices(u_min: int, u_max: int, npart: int = 3) -> np.ndarray:
  """The support slice of each of the ``npart`` chunks of ``[u_min, u_max]``."""
  if npart < 1 or u_max < u_min:
    raise ValueError(f'Need npart >= 1 and u_min <= u_max; got npart={npart}, range '
                     f'[{u_min}, {u_max}].')
  n = u_max - u_min + 1
  return np.array([u_min + int((u + 0.5) / npart * n) for u in range(npart)])


def query_chunks(u_min: int, u_max: int, npart: int = 3) -> np.ndarray:
  """Chunk index ``floor(npart (i - u_min) / n)`` of every slice ``i`` in ``[u_min, u_max]``."""
  if npart < 1 or u_max < u_min:
    raise ValueError(f'Need npart >= 1 and u_min <= u_max; got npart={npart}, range '
                     f'[{u_min}, {u_max}].')
  n = u_max - u_min + 1
  return (npart * np.arange(n)) // n


def quadrant_mask(labels, class_id: int) -> np.ndarray:
  """``[H, W]`` bool: the union of the image quadrants where ``labels [S, H, W]`` contains the class."""
  labels = np.asarray(labels)
  _, h, w = labels.shape
  present = np.any(labels == class_id, axis=0)
  out = np.zeros((h, w), bool)
  for ys in (slice(0, h // 2), slice(h // 2, h)):
    for xs in (slice(0, w // 2), slice(w // 2, w)):
      if present[ys, xs].any():
        out[ys, xs] = True
  return out


PredictFn = Callable[[np.ndarray, np.ndarray, np.ndarray, str], np.ndarray]


def one_shot_evaluate(predict: PredictFn, images, labels, classes: Mapping[str, int], *,
                      support_index: int = -1, npart: int = 3, quadrant_masking: bool = False,
                      empty_value: float = 1.0, scan_ids: Optional[Sequence[str]] = None) -> dict:
  """The 1-shot protocol above on one evaluation split.

  Args:
    predict: ``predict(support_image [H, W], support_mask [H, W], query_images [k, H, W], class_name)
      -> [k, H, W]`` binary predictions.
    images: ``[V, S, H, W]`` scans; ``labels``: ``[V, S, H, W]`` integer organ labels.
    classes: ``{class name: label id}`` to evaluate.
    support_index: which scan is the support (the last one by default); the others are queries.
    npart: number of chunks (3).
    quadrant_masking: apply :func:`quadrant_mask` of the support scan to the predictions.
    empty_value: Dice when a query scan has neither the class nor a prediction.
    scan_ids: names of the scans (for the per-scan report).

  Returns:
    ``{'dice': {class: mean over query scans}, 'mean_dice': mean over classes,
    'dice_per_scan': {class: {scan: dice}}}``.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or images.shape != labels.shape:
    raise ValueError(f'`images` and `labels` must be [V, S, H, W] of the same shape; got '
                     f'{images.shape} and {labels.shape}.')
  num_scans = images.shape[0]
  if num_scans < 2:
    raise ValueError(f'The evaluation split needs >= 2 scans (1 support + queries); got {num_scans}.')
  if not classes:
    raise ValueError('`classes` is empty.')
  support = support_index % num_scans
  scan_ids = list(scan_ids) if scan_ids is not None else [str(i) for i in range(num_scans)]
  per_class, per_scan = {}, {}
  for name, class_id in classes.items():
    s_range = label_slice_range(labels[support], class_id)
    if s_range is None:
      raise ValueError(f'The support scan {scan_ids[support]!r} has no slice with class {name!r} '
                       f'(label {class_id}).')
    s_idx = support_slice_indices(*s_range, npart)
    s_images = images[support, s_idx]
    s_masks = (labels[support, s_idx] == class_id).astype(np.float32)
    allowed = quadrant_mask(labels[support], class_id) if quadrant_masking else None
    scores = {}
    for q in range(num_scans):
      if q == support:
        continue
      truth = labels[q] == class_id
      pred = np.zeros(truth.shape, bool)
      q_range = label_slice_range(labels[q], class_id)
      if q_range is not None:
        chunk = query_chunks(*q_range, npart)
        slices = np.arange(q_range[0], q_range[1] + 1)
        for u in range(npart):
          idx = slices[chunk == u]
          if idx.size:
            out = np.asarray(predict(s_images[u], s_masks[u], images[q, idx], name)).astype(bool)
            if out.shape != (idx.size,) + truth.shape[1:]:
              raise ValueError(f'`predict` returned shape {out.shape}; expected '
                               f'{(idx.size,) + truth.shape[1:]}.')
            pred[idx] = out
      if allowed is not None:
        pred &= allowed[None]
      scores[scan_ids[q]] = dice(pred, truth, empty_value)
    per_scan[name] = scores
    per_class[name] = float(np.mean(list(scores.values())))
  return {'dice': per_class, 'mean_dice': float(np.mean(list(per_class.values()))),
          'dice_per_scan': per_scan}
