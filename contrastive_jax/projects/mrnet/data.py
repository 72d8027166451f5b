"""MRNet exams for the downstream classifiers (thesis Ch. 3 Sec. 3.5.2.2, Ch. 4 Sec. 4.5.2.2).

An exam keeps its real slice count ``N_S`` (MRNet: 30.4 on average, Sec. 3.5.1), so the slices a
classifier sees are drawn per exam, on the host, and only those are read (``np.load(mmap_mode='r')``):

* training: ``k`` slices ``~ U{0..N_S-1}`` without replacement (with replacement when ``N_S < k``),
  sorted along the scan ('uniform': "16 slices ... chosen randomly according to a uniform
  distribution", Sec. 3.5.2.2; "sampled only 16 slices randomly", Sec. 4.5.2.2);
* evaluation: ``S`` Monte-Carlo draws of ``k`` slices (Eq. 3.3), either ``round(Normal(N_S / 2,
  N_S / 4))`` clipped to the scan ('normal', Sec. 3.4.2.3; with replacement, sorted [GUESS], as
  ``projects.jigsaw.data.sample_eval_slices``) or 'uniform' as in training (Ch. 4: "8 different
  samples of 16 slices, sampled randomly").

Splits as ``data.sources.mrnet``: test = MRNet's ``valid`` exams (the reported set, A8), val = a
seeded ``val_fraction`` of the ``train`` exams, stratified on the joint label of ``tasks`` (so the
three planes of one seed share their val exams, and the ensemble weights are fitted on them, B10),
train = the rest. Every draw is a pure function of ``(seed, stream, step or draw, exam)``.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent import futures
from typing import Sequence

import numpy as np

from contrastive_jax.data.sources import base
from contrastive_jax.data.sources import mrnet as source

SAMPLINGS = ('uniform', 'normal')
# Streams of the slice draws (folded into the seed).
TRAIN_STREAM, EVAL_STREAMS = 1, {'val': 2, 'test': 3}


@dataclasses.dataclass(frozen=True)
class Exams:
  """One split: ``paths`` of the plane's volumes, exam ``ids``, ``num_slices`` ``N_S`` and binary
  ``labels`` float32 ``[N, len(tasks)]``."""
  paths: tuple
  ids: np.ndarray
  num_slices: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.paths)

  def take(self, rows) -> 'Exams':
    rows = np.asarray(rows, np.int64)
    return Exams(tuple(self.paths[i] for i in rows), self.ids[rows], self.num_slices[rows],
                 self.labels[rows])


@dataclasses.dataclass(frozen=True)
class ExamSplits:
  plane: str
  tasks: tuple
  size: int
  train: Exams
  val: Exams
  test: Exams


def _check_tasks(tasks) -> tuple:
  tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  if not tasks or any(t not in source.TASKS for t in tasks) or len(set(tasks)) != len(tasks):
    raise ValueError(f'data.tasks must be distinct names of {source.TASKS}, got {tasks!r}.')
  return tasks


def load_exams(root: str, *, plane: str = 'sagittal', tasks: Sequence[str] = source.TASKS,
               seed: int = 0, val_fraction: float = 0.1, size: int = source.SLICE_SIZE) -> ExamSplits:
  """The exams of one ``plane`` with the labels of ``tasks`` (see the module doc).

  Raises:
    FileNotFoundError: a missing directory, label CSV or volume (named).
    ValueError: bad arguments, label CSVs of one part listing different exams, labels not in
      {0, 1}, a damaged volume or one whose slices are not ``size x size`` (named).
  """
  tasks = _check_tasks(tasks)
  if plane not in source.PLANES:
    raise ValueError(f'data.plane must be one of {source.PLANES}, got {plane!r}.')
  if not 0.0 < float(val_fraction) < 1.0:
    raise ValueError(f'data.val_fraction must be in (0, 1), got {val_fraction!r}.')
  root = base.require_dir(root, 'MRNet root')
  check = source.VolumeDecoder(1, int(size)).check
  parts = {}
  for part in ('train', 'valid'):
    ids, columns = None, []
    for task in tasks:
      csv_path = os.path.join(root, f'{part}-{task}.csv')
      task_ids, raw = source.read_labels(csv_path)
      if ids is not None and task_ids != ids:
        raise ValueError(f'{csv_path} lists other exams (or another order) than '
                         f'{part}-{tasks[0]}.csv; the tasks of one exam must share its row.')
      ids = task_ids
      columns.append(source._binary_labels(raw, csv_path, task_ids))  # pylint: disable=protected-access
    folder = base.require_dir(os.path.join(root, part, plane), f'MRNet {part} {plane} directory')
    paths = tuple(os.path.join(folder, f'{i}.npy') for i in ids)
    num_slices = np.array([check(p).shape[0] for p in paths], np.int64)
    parts[part] = Exams(paths, np.array(ids), num_slices, np.stack(columns, 1).astype(np.float32))
  pool = parts['train']
  joint = (pool.labels.astype(np.int64) << np.arange(len(tasks))).sum(1)
  keep, held = source.stratified_holdout(joint, float(val_fraction), seed)
  if held.size == 0:
    raise ValueError(f'data.val_fraction={val_fraction} of {len(pool)} training exams leaves the '
                     'val split empty.')
  return ExamSplits(plane, tasks, int(size), pool.take(keep), pool.take(held), parts['valid'])


def slice_draw(rng: np.random.Generator, num_slices: int, k: int, sampling: str) -> np.ndarray:
  """``k`` sorted slice indices of an exam of ``num_slices`` slices by ``sampling`` (module doc)."""
  if sampling == 'uniform':
    return np.sort(rng.choice(num_slices, k, replace=num_slices < k))
  if sampling == 'normal':  # Sec. 3.4.2.3: mu = N_S / 2, sigma = N_S / 4
    index = np.round(num_slices / 2.0 + (num_slices / 4.0) * rng.standard_normal(k))
    return np.sort(np.clip(index, 0, num_slices - 1).astype(np.int64))
  raise ValueError(f'Unknown slice sampling {sampling!r}; expected one of {SAMPLINGS}.')


def read_slices(path: str, index: np.ndarray) -> np.ndarray:
  """uint8 ``[k, H, W, 1]``: the slices ``index`` of one volume (only those are read)."""
  return np.asarray(np.load(path, mmap_mode='r')[index])[..., None]


def exam_slices(exams: Exams, rows: np.ndarray, k: int, sampling: str, seed: Sequence[int],
                keys: Sequence[int], workers: int = 1) -> np.ndarray:
  """uint8 ``[len(rows), k, H, W, 1]``: ``k`` slices of exam ``rows[i]`` drawn by ``sampling`` with
  ``default_rng([*seed, keys[i]])`` (``keys``: the exam's row for evaluation, its position in the
  global batch for training: the same draw on any process / device layout)."""
  def one(row, key):
    rng = np.random.default_rng([*map(int, seed), int(key)])
    return read_slices(exams.paths[row], slice_draw(rng, int(exams.num_slices[row]), k, sampling))
  if workers > 1 and len(rows) > 1:
    with futures.ThreadPoolExecutor(workers) as pool:
      return np.stack(list(pool.map(one, rows, keys)))
  return np.stack([one(r, key) for r, key in zip(rows, keys)])


def oversample_rows(labels: np.ndarray, seed: int) -> np.ndarray:
  """Row indices of a one-task training split with its minority class drawn again (seeded, without
  replacement while it lasts) until both classes are equally frequent (Sec. 3.5.2.2: ACL tears
  208 -> 922). A multi-task split (``labels [N, J > 1]``) is returned unchanged."""
  rows = np.arange(len(labels))
  if labels.shape[1] != 1:
    return rows
  y = labels[:, 0]
  pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
  small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
  if len(small) == 0 or len(small) == len(big):
    return rows
  rng = np.random.default_rng([int(seed), 0x05A])
  need = len(big) - len(small)
  extra = np.concatenate([rng.permutation(small) for _ in range(-(-need // len(small)))])[:need]
  return np.concatenate([rows, np.sort(extra)])


def class_weights(labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
  """``(w_pos, w_neg)`` float32 ``[J]`` of the weighted BCE: 'none' (ones) or 'minority' ([CODE],
  spec A6: the minority class of each task weighted ``n_major / n_minor``, the majority 1)."""
  ones = np.ones(labels.shape[1], np.float32)
  if kind == 'none':
    return ones, ones
  if kind != 'minority':
    raise ValueError(f"Unknown `loss.class_weights`={kind!r}; expected 'none' or 'minority'.")
  pos = labels.sum(0)
  neg = len(labels) - pos
  if np.any(pos == 0) or np.any(neg == 0):
    raise ValueError('`loss.class_weights`=minority needs both classes of every task in the '
                     f'training split (positives per task: {pos.tolist()}).')
  return (np.maximum(neg / pos, 1.0).astype(np.float32),
          np.maximum(pos / neg, 1.0).astype(np.float32))


__all__ = ['EVAL_STREAMS', 'ExamSplits', 'Exams', 'SAMPLINGS', 'TRAIN_STREAM', 'class_weights',
           'exam_slices', 'load_exams', 'oversample_rows', 'read_slices', 'slice_draw']
