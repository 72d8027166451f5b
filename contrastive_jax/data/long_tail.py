"""Long-tailed training splits (thesis Ch. 6, Tables 6.2-6.6: CIFAR10-LT / CIFAR100-LT).

The exponential profile of Cao et al. (2019), used by Kukleva et al. (2023) and the thesis' code
(sadimanna/DySTreSS ``smallscale/dataset_cifarLT.py``, ``imb_factor = 1 / ratio``, default 0.01):
class ``c`` of ``C`` keeps

    n_c = floor(n_max * ratio ** (-c / (C - 1))),   n_max = floor(N / C),

of its training examples (class 0 the head, class C - 1 the tail: ``n_max / ratio``), never more
than it has. Which examples are kept is drawn from ``seed``. Validation and test splits stay
balanced (the thesis scores on the balanced test sets).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from contrastive_jax.data.demo import Split
from contrastive_jax.data.pipeline import take_rows


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> np.ndarray:
  """``[C]`` examples kept per class: ``floor(n_max * ratio ** (-c / (C - 1)))`` (module doc)."""
  if isinstance(ratio, bool) or not np.isfinite(ratio) or ratio < 1:
    raise ValueError(f"`data.long_tail_ratio` must be a number >= 1 (n_max / n_min); got {ratio!r}.")
  if num_classes < 2:
    raise ValueError(f"A long-tailed split needs at least 2 classes; got {num_classes}.")
  c = np.arange(num_classes, dtype=np.float64)
  # float64 as torch's Python floats: int(img_max * imb_factor ** (c / (C - 1))).
  return np.floor(n_max * (1.0 / float(ratio)) ** (c / (num_classes - 1)) + 1e-9).astype(np.int64)


def long_tail_rows(labels, ratio: float, seed: int) -> np.ndarray:
  """Sorted rows of a long-tailed subset of the class-labelled ``labels`` (ids ``0..C-1``)."""
  y = np.asarray(labels)
  if y.ndim != 1 or y.size == 0 or np.any(y != np.round(y)) or y.min() < 0:
    raise ValueError("`data.long_tail_ratio` needs integer class ids >= 0 as training labels.")
  y = y.astype(np.int64)
  num_classes = int(y.max()) + 1
  counts = long_tail_counts(len(y) // num_classes, num_classes, ratio)
  rng = np.random.default_rng([int(seed), 0x17])
  rows = []
  for cls, keep in enumerate(counts):
    members = np.flatnonzero(y == cls)
    rows.append(rng.permutation(members)[:min(int(keep), len(members))])
  rows = np.sort(np.concatenate(rows))
  if rows.size == 0:
    raise ValueError(f"`data.long_tail_ratio`={ratio} keeps no training example.")
  return rows


def long_tail(dataset, ratio: float, seed: int):
  """``dataset`` with a long-tailed training split (``ratio`` 1: ``dataset`` itself)."""
  if ratio == 1:
    return dataset
  rows = long_tail_rows(dataset.train.y, ratio, seed)
  train = Split(x=take_rows(dataset.train.x, rows, scale=False),
                y=np.asarray(dataset.train.y)[rows])
  return dataclasses.replace(dataset, train=train)
