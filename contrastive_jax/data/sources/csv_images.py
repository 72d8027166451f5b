"""Local image regression from a CSV file: ``path,label[,split|fold]`` (PNG / JPEG / DICOM / NPY).

The layout of private clinical sets such as AdaCon's BMD hip X-rays (Dai et al., TMI 2023,
Sec. IV-A: 667 square femur crops, "resized to 128x128 pixels", "four-fold cross-validation ...
averaged performance across folds")::

    path,label,fold                       path,label,split
    crops/p001_left.dcm,0.712,0          img/0001.png,31.0,train
    crops/p001_right.dcm,0.698,0         img/0002.png,54.0,val
    crops/p002_left.dcm,0.655,1          img/0003.png,47.0,test

Splits, in order of precedence:

* ``fold=k`` with a fold column: fold ``k`` is the test set, the next fold id the validation set, the
  rest train (``base.fold_indices``); run ``k = 0 .. K-1`` and average for AdaCon's 4-fold CV.
* a split column (``train`` / ``val`` / ``test``; also ``valid``, ``validation``, ``dev``, any case).
* neither: a seeded 70/15/15 partition (``demo.split_indices``), by ``group_column`` when given
  (e.g. ``patient``: AdaCon's 475 images come from 317 patients, and all images of a patient should
  land in one split).

A fold column without ``fold=`` is an error (which fold is the test set must be chosen).

Images are decoded lazily (``base.LazyArray``): ``x`` is uint8 ``[N, H, W, C]``; pass
``image_size`` (e.g. 128) to resize every image (centre crop to the aspect ratio, then bilinear);
without it every image must already have the shape of the first one (a mismatch is an error naming
the file and both shapes).
"""

from __future__ import annotations

import csv
import os
from typing import Mapping, Sequence

import numpy as np

from contrastive_jax.data import demo
from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.sources import base
from contrastive_jax.data.sources import images

SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'val': 'val', 'valid': 'val',
                 'validation': 'val', 'dev': 'val', 'test': 'test', 'testing': 'test'}


def read_table(csv_path: str | os.PathLike, required: Sequence[str]) -> dict[str, list[str]]:
  """Reads a headed CSV into ``{column: [values]}``.

  Raises:
    FileNotFoundError: no such file (names it).
    ValueError: unreadable, no header, a missing required column (lists those present) or no rows.
  """
  csv_path = base.require_file(csv_path, 'CSV file')
  try:
    with open(csv_path, newline='', encoding='utf-8-sig') as f:
      reader = csv.reader(f)
      rows = [row for row in reader if any(cell.strip() for cell in row)]
  except (OSError, UnicodeDecodeError, csv.Error) as exc:
    raise base.decode_error(csv_path, exc) from exc
  if not rows:
    raise ValueError(f'{csv_path}: empty CSV file (expected a header with columns '
                     f'{list(required)}).')
  header = [h.strip() for h in rows[0]]
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f'{csv_path}: missing column(s) {missing}; the header has {header}.')
  body = rows[1:]
  if not body:
    raise ValueError(f'{csv_path}: no data rows after the header.')
  for line, row in enumerate(body, start=2):
    if len(row) != len(header):
      raise ValueError(f'{csv_path}, line {line}: {len(row)} fields, the header has '
                       f'{len(header)}.')
  return {name: [row[j].strip() for row in body] for j, name in enumerate(header)}


def parse_labels(values: Sequence[str], *, csv_path: str, column: str,
                 names: Sequence[str] | None = None) -> np.ndarray:
  """Labels of one CSV column as validated float32; errors give the line and the file."""
  out = np.empty(len(values), np.float64)
  for i, value in enumerate(values):
    try:
      out[i] = float(value)
    except ValueError:
      raise ValueError(f'{csv_path}, line {i + 2}: label {value!r} in column {column!r} is not a '
                       'number.') from None
  return base.validate_labels(out, what=f'column {column!r} of {csv_path}', names=names)


def parse_splits(values: Sequence[str], *, csv_path: str, column: str) -> dict[str, np.ndarray]:
  """``{'train': idx, 'val': idx, 'test': idx}`` from a split column."""
  canonical = []
  for i, value in enumerate(values):
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
      raise ValueError(f'{csv_path}, line {i + 2}: unknown split {value!r} in column {column!r}; '
                       f'expected one of {sorted(SPLIT_ALIASES)}.')
    canonical.append(split)
  canonical = np.asarray(canonical)
  return {part: np.flatnonzero(canonical == part) for part in ('train', 'val', 'test')}


def group_split(groups: Sequence[str] | None, num: int, seed: int) -> dict[str, np.ndarray]:
  """Seeded 70/15/15 partition of rows, or of groups of rows (e.g. patients) when given."""
  if groups is None:
    train, val, test = demo.split_indices(num, seed)
    return {'train': train, 'val': val, 'test': test}
  unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
  if len(unique) < 3:
    raise ValueError(f'a seeded split by group needs at least 3 groups, got {len(unique)}.')
  parts = demo.split_indices(len(unique), seed)
  return {name: np.flatnonzero(np.isin(inverse, idx))
          for name, idx in zip(('train', 'val', 'test'), parts)}


def resolve_paths(values: Sequence[str], root: str, *, check_files: bool = True) -> list[str]:
  """Joins relative paths to ``root``; ``FileNotFoundError`` naming missing files when checked."""
  paths = [v if os.path.isabs(v) else os.path.join(root, v) for v in values]
  if check_files:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f'{len(missing)} of {len(paths)} image file(s) not found, e.g. '
                              f'{missing[:3]}.')
  return paths


def image_dataset(name: str, paths: Sequence[str], labels: np.ndarray,
                  parts: Mapping[str, np.ndarray], *, image_size=None, channels=None,
                  resize: str = 'crop', workers: int = 1, check_files: bool = True,
                  draft: bool = False) -> Dataset:
  """A lazy uint8 image ``Dataset`` over ``paths``; the item shape comes from the size or file 0.

  With ``image_size`` and ``channels`` both given nothing is decoded here; otherwise the first
  training image is decoded once to learn the missing part of the shape. ``check_files``: every
  file of every split is checked now (``images.check_image_file``: header and completeness, e.g.
  PNG chunk CRCs, a 1/8-scale JPEG decode), so that a truncated val or test image fails before
  training, named with its split.
  """
  decoder = images.ImageDecoder(image_size, channels, resize, draft)
  if decoder.size is not None and channels is not None:
    item_shape = decoder.size + (channels,)
  else:
    first = paths[int(np.asarray(parts['train'])[0])] if len(parts['train']) else paths[0]
    item_shape = decoder(first).shape
  x = base.LazyArray.from_files(paths, decoder, item_shape, np.uint8, workers=workers)
  return base.make_dataset(name, 'image', x, labels, parts, check_files=check_files)


def load_csv_images(csv_path: str | os.PathLike, *, seed: int = 0, root: str | None = None,
                    fold: int | None = None, path_column: str = 'path',
                    label_column: str = 'label', split_column: str = 'split',
                    fold_column: str = 'fold', group_column: str | None = None,
                    image_size=None, channels: int | None = None, resize: str = 'crop',
                    check_files: bool = True, workers: int = 1, draft: bool = False,
                    name: str | None = None) -> Dataset:
  """Loads an image regression dataset listed in a CSV file.

  Args:
    csv_path: the CSV (header required; columns ``path_column``, ``label_column`` and optionally
      ``split_column`` or ``fold_column``).
    seed: seed of the 70/15/15 partition when the CSV has neither a split nor a fold column.
    root: directory that relative paths are relative to; default the CSV's directory.
    fold: the test fold for cross-validation (needs ``fold_column``); the next fold id is val.
    path_column, label_column, split_column, fold_column: column names.
    group_column: optional column (e.g. patient id) keeping groups together in the seeded split.
    image_size: None (keep the stored size; all images must match), an int or ``(height, width)``.
    channels: 1 (grey), 3 (RGB) or None (as stored, taken from the first image).
    resize: ``'crop'`` (centre crop to the aspect ratio, then resize) or ``'stretch'``.
    check_files: check every listed file when loading: that it exists (errors list the missing
      ones) and that it is a complete image (``images.check_image_file``; the first damaged file is
      named with its split). False skips both (the files are then only read when first used).
    workers: decoding threads per batch (``base.LazyArray``).
    draft: decode JPEGs much larger than ``image_size`` at a reduced scale (``Image.draft``; off by
      default, as it changes the pixels slightly; ``images.ImageDecoder``).
    name: dataset name; default the CSV's file name without suffix.

  Returns:
    A ``Dataset`` of kind ``'image'``; ``x`` is a lazy uint8 ``[N, H, W, C]``, ``y`` float32.

  Raises:
    FileNotFoundError: the CSV or an image file is missing (named).
    ValueError: bad columns / labels (NaN, inf, not a number) / split names / folds, an empty
      split, a corrupt or truncated image (named with its split, with ``check_files``), images of
      inconsistent shape (named when decoded).
  """
  csv_path = os.fspath(csv_path)
  table = read_table(csv_path, [path_column, label_column])
  root = os.path.dirname(os.path.abspath(csv_path)) if root is None else os.fspath(root)
  paths = resolve_paths(table[path_column], root, check_files=check_files)
  labels = parse_labels(table[label_column], csv_path=csv_path, column=label_column, names=paths)
  if fold is not None:
    if fold_column not in table:
      raise ValueError(f'fold={fold!r} was given but {csv_path} has no {fold_column!r} column '
                       f'(columns: {list(table)}).')
    train, val, test = base.fold_indices(table[fold_column], fold)
    parts = {'train': train, 'val': val, 'test': test}
  elif split_column in table:
    parts = parse_splits(table[split_column], csv_path=csv_path, column=split_column)
  elif fold_column in table:
    raise ValueError(f'{csv_path} has a {fold_column!r} column: pass fold=k to choose the test '
                     f'fold (fold ids: {sorted(set(table[fold_column]))}).')
  else:
    if group_column is not None and group_column not in table:
      raise ValueError(f'group_column={group_column!r} is not a column of {csv_path} (columns: '
                       f'{list(table)}).')
    groups = table[group_column] if group_column is not None else None
    parts = group_split(groups, len(paths), seed)
  for part, idx in parts.items():
    if len(idx) == 0:
      raise ValueError(f'{csv_path}: the {part} split is empty.')
  name = name or os.path.splitext(os.path.basename(csv_path))[0]
  return image_dataset(name, paths, labels, parts, image_size=image_size, channels=channels,
                       resize=resize, workers=workers, check_files=check_files, draft=draft)
