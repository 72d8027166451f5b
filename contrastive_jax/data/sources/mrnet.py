"""MRNet knee MRI (Bien et al. 2018), the data of the thesis' Ch. 3 (SKID / SSLACL) and Ch. 4 (BCL).

Layout of the release (``root``)::

    train/{axial,coronal,sagittal}/NNNN.npy    uint8 [slices, 256, 256], one file per exam
    valid/{axial,coronal,sagittal}/NNNN.npy
    train-{abnormal,acl,meniscus}.csv          rows "0000,0" (exam id, binary label), no header
    valid-{abnormal,acl,meniscus}.csv

Thesis Sec. A8 (specs/THESIS_CH3_4.md): 1130 training and 120 validation exams, "120 validation =
the reported set"; ensemble weights must be fitted on held-out *training* data (B10). Hence:

* test  = MRNet's ``valid`` exams (the set the thesis reports);
* val   = a seeded, label-stratified ``val_fraction`` of MRNet's ``train`` exams;
* train = the other ``train`` exams.

Fixed slice count by **resampling**, not padding: an exam of ``S`` slices is reduced (or, when
``S < slices``, stretched) to ``slices`` slices by nearest-neighbour resampling along the slice
axis, slice ``j`` being original slice ``floor(j * (S - 1) / (slices - 1) + 1/2)`` (``S // 2``
when ``slices == 1``). Every output slice is a real slice (no blending); the thesis feeds 16 slices
per scan to its downstream models (Sec. A6, C5-C8), hence ``slices=16``. Only the chosen slices are
read (``np.load(mmap_mode='r')``).

``x``: uint8 ``[N, slices, 256, 256, channels]`` (lazy; ``channels=3`` repeats the grey slice, as
ImageNet-initialised encoders need: thesis Ch. 4, [CODE] B1); ``y``: float32 ``[N]`` in {0, 1}.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.sources import base

TASKS = ('abnormal', 'acl', 'meniscus')
PLANES = ('axial', 'coronal', 'sagittal')
SLICE_SIZE = 256  # MRNet slices are 256 x 256 (thesis Sec. A2).


def slice_indices(num_slices: int, slices: int) -> np.ndarray:
  """The ``slices`` original slice indices (int64) kept from an exam of ``num_slices`` slices."""
  if slices == 1:
    return np.array([num_slices // 2], np.int64)
  return np.floor(np.arange(slices) * (num_slices - 1) / (slices - 1) + 0.5).astype(np.int64)


class VolumeDecoder:
  """``path -> uint8 [slices, size, size, channels]``: an MRNet ``.npy`` exam, resampled along z,
  the grey value repeated ``channels`` times."""

  def __init__(self, slices: int, size: int = SLICE_SIZE, channels: int = 1):
    self.slices = slices
    self.size = size
    self.channels = channels

  def __call__(self, path: str) -> np.ndarray:
    volume = self.check(path)
    picked = np.asarray(volume[slice_indices(volume.shape[0], self.slices)])[..., None]
    return np.repeat(picked, self.channels, axis=-1) if self.channels > 1 else picked

  def check(self, path: str) -> np.ndarray:
    """The volume memory-mapped (nothing read): header, shape and dtype checked; a truncated file
    fails the mapping. ``base.LazyArray.check_files`` runs this over every split when loading."""
    base.require_file(path, 'MRNet volume')
    try:
      volume = np.load(path, mmap_mode='r', allow_pickle=False)
    except Exception as exc:  # pylint: disable=broad-except  # numpy raises several types.
      raise base.decode_error(path, exc) from exc
    if volume.ndim != 3 or volume.shape[0] < 1:
      raise ValueError(f'{path}: an MRNet volume must be [slices, H, W] with >= 1 slice, got shape '
                       f'{volume.shape}.')
    if volume.shape[1:] != (self.size, self.size):
      raise ValueError(f'{path}: slices are {volume.shape[1]}x{volume.shape[2]}, expected '
                       f'{self.size}x{self.size} like the other MRNet volumes.')
    if volume.dtype != np.uint8:
      raise ValueError(f'{path}: dtype {volume.dtype}, expected uint8 as in the MRNet release.')
    return volume


def read_labels(path: str | os.PathLike) -> tuple[list[str], list[str]]:
  """``(exam ids as 4-digit strings, label strings)`` from an MRNet label CSV.

  Rows are ``id,label`` without a header (a first row whose id is not a number is taken as one).

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: a malformed row or duplicate id (line named), or no rows.
  """
  path = base.require_file(path, 'MRNet label CSV')
  ids, labels = [], []
  with open(path, newline='', encoding='utf-8-sig') as f:
    for line, row in enumerate(csv.reader(f), start=1):
      row = [c.strip() for c in row]
      if not row or not any(row):
        continue
      if len(row) < 2:
        raise ValueError(f'{path} line {line}: expected "id,label", got {",".join(row)!r}.')
      if not row[0].isdigit():
        if line == 1:
          continue  # a header
        raise ValueError(f'{path} line {line}: exam id {row[0]!r} is not a number.')
      ids.append(f'{int(row[0]):04d}')
      labels.append(row[1])
  if not ids:
    raise ValueError(f'{path}: no rows.')
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})
    raise ValueError(f'{path}: duplicate exam id(s) {dup[:5]}.')
  return ids, labels


def _binary_labels(labels, csv_path: str, names) -> np.ndarray:
  y = base.validate_labels(labels, what=f'labels of {csv_path}', names=names)
  bad = np.flatnonzero((y != 0) & (y != 1))
  if bad.size:
    raise ValueError(f'labels of {csv_path}: MRNet labels are 0 or 1, got {y[bad[:3]].tolist()} '
                     f'for {[names[i] for i in bad[:3]]}.')
  return y


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted ``(keep, held_out)`` indices: ``round(fraction * n_c)`` rows of label ``c`` held out.

  Every label with at least two rows gives at least one held-out and keeps at least one row.
  """
  rng = np.random.default_rng([int(seed), 0])
  held = []
  for value in np.unique(y):
    rows = np.flatnonzero(y == value)
    take = int(round(fraction * len(rows)))
    if len(rows) >= 2:
      take = min(max(take, 1), len(rows) - 1)
    held.append(rng.permutation(rows)[:take])
  held = np.sort(np.concatenate(held))
  keep = np.setdiff1d(np.arange(len(y)), held)
  return keep, held


def load_mrnet(root: str | os.PathLike, *, seed: int = 0, task: str = 'acl',
               plane: str = 'sagittal', slices: int = 16, val_fraction: float = 0.1,
               size: int = SLICE_SIZE, channels: int = 1, workers: int = 1,
               check_files: bool = True) -> Dataset:
  """MRNet as a ``Dataset`` of lazy uint8 volumes and binary float32 labels.

  Args:
    root: the directory holding ``train/``, ``valid/`` and the label CSVs.
    seed: selects the validation exams carved from ``train``.
    task: ``'abnormal'``, ``'acl'`` (default; SSLACL's task) or ``'meniscus'``.
    plane: ``'sagittal'`` (default), ``'coronal'`` or ``'axial'``.
    slices: slices per exam after resampling (see the module docstring); thesis: 16.
    val_fraction: fraction of each label's ``train`` exams held out as the val split, in (0, 1).
    size: the slice size every volume must have (MRNet: 256; a volume of another size is an error
      naming it, nothing is resized).
    channels: 1 (the grey slice) or 3 (repeated: the input of ImageNet-initialised encoders).
    workers: threads decoding the volumes of one batch.
    check_files: check every volume of every split when loading (header, shape, dtype, size:
      ``VolumeDecoder.check``, nothing decoded), so a damaged file fails before training.

  Returns:
    ``Dataset(name='mrnet', kind='volume')``: ``x`` uint8 ``[N, slices, size, size, channels]``
    (``base.LazyArray``), ``y`` float32 ``[N]`` in {0, 1}; test = MRNet's ``valid`` exams.

  Raises:
    FileNotFoundError: missing directory, label CSV or volume (named).
    ValueError: bad arguments, malformed CSV rows, labels not in {0, 1} or non-finite, an empty
      split.
  """
  if task not in TASKS:
    raise ValueError(f'task must be one of {TASKS}, got {task!r}.')
  if plane not in PLANES:
    raise ValueError(f'plane must be one of {PLANES}, got {plane!r}.')
  if isinstance(slices, bool) or not isinstance(slices, (int, np.integer)) or slices < 1:
    raise ValueError(f'slices must be a positive integer, got {slices!r}.')
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f'size must be a positive integer, got {size!r}.')
  if channels not in (1, 3) or isinstance(channels, bool):
    raise ValueError(f'channels must be 1 or 3, got {channels!r}.')
  if not 0.0 < float(val_fraction) < 1.0:
    raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction!r}.')
  root = base.require_dir(root, 'MRNet root')

  paths, labels, source = [], [], []
  for part in ('train', 'valid'):
    csv_path = os.path.join(root, f'{part}-{task}.csv')
    ids, raw = read_labels(csv_path)
    folder = base.require_dir(os.path.join(root, part, plane), f'MRNet {part} {plane} directory')
    part_paths = [os.path.join(folder, f'{i}.npy') for i in ids]
    for p in part_paths:
      base.require_file(p, f'MRNet volume (listed in {csv_path})')
    labels.append(_binary_labels(raw, csv_path, part_paths))
    paths += part_paths
    source.append(np.full(len(ids), part == 'valid'))
  y = np.concatenate(labels)
  is_test = np.concatenate(source)

  train_pool = np.flatnonzero(~is_test)
  keep, held = stratified_holdout(y[train_pool], float(val_fraction), seed)
  if held.size == 0:
    raise ValueError(f'val_fraction={val_fraction} of {len(train_pool)} training exams leaves the '
                     'val split empty.')
  x = base.LazyArray.from_files(paths, VolumeDecoder(int(slices), int(size), int(channels)),
                                (int(slices), int(size), int(size), int(channels)), np.uint8,
                                workers=workers)
  parts = {'train': train_pool[keep], 'val': train_pool[held], 'test': np.flatnonzero(is_test)}
  return base.make_dataset('mrnet', 'volume', x, y, parts, check_files=check_files)
