"""Building blocks of the file-based data sources: lazy arrays, sharding, label and file checks.

Every source returns a ``contrastive_jax.data.demo.Dataset`` of ``Split(x, y)``. ``x`` is either a
numpy array (small data) or a ``LazyArray``: an array-like over ``N`` items that decodes an item only
when it is indexed, so ImageNet-sized image folders or EchoNet videos never sit in memory. The batching
code (``contrastive_jax.data.pipeline``) indexes only the rows of the batch it builds.

* ``LazyArray(load, length, item_shape, dtype, describe=...)`` and ``LazyArray.from_files(paths,
  decode, item_shape, dtype)``: ``.shape``, ``.dtype``, ``len()``, ``x[i]``, ``x[a:b]``,
  ``x[int_array]``; ``x.subset(idx)`` is a view (nothing decoded). Every decoded item is checked:
  a missing file raises ``FileNotFoundError`` naming it, an undecodable one a ``ValueError`` naming
  it, an item of another shape a ``ValueError`` naming the file and both shapes, non-finite values in
  a float item a ``ValueError`` naming the file.
* ``LazyArray.check_files`` / ``check_split_files``: read every file of every split when loading
  (header and completeness where the decoder has a cheap check, e.g. PNG chunk CRCs; else a full
  decode), so a truncated test image fails before training, named with its split.
* ``check_process`` / ``shard_indices``: the per-process slice of a source in a multi-host run
  (contiguous blocks whose sizes differ by at most one; their union is every index exactly once).
* ``validate_labels``: float32 labels that are 1-D, non-empty, finite (and optionally not constant),
  with an error that names the offending rows (or files).
* ``require_file`` / ``require_dir`` / ``decode_error`` / ``check_item_shape``: file-error helpers
  for loaders that read files eagerly (label CSVs, IDX files).
* ``fold_indices`` (k-fold cross-validation as in AdaCon Sec. IV-A: "four-fold cross-validation ...
  averaged performance across folds") and ``make_dataset`` (subsets + validation -> ``Dataset``).

Example (a source over PNG files)::

    x = LazyArray.from_files(paths, decode=read_png, item_shape=(128, 128, 1), dtype=np.uint8)
    y = validate_labels(labels, what='labels of data.csv', names=paths)
    ds = make_dataset('bmd', 'image', x, y, {'train': tr, 'val': va, 'test': te})
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.demo import Split

KINDS = ('image', 'tabular', 'video', 'volume', 'text')


# --------------------------------------------------------------------------------------------------
# file errors
# --------------------------------------------------------------------------------------------------

def require_file(path: str | os.PathLike, what: str = 'data file') -> str:
  """Returns ``path`` as a string; ``FileNotFoundError`` naming it (and ``what``) if it is no file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    hint = ' (it is a directory)' if os.path.isdir(path) else ''
    raise FileNotFoundError(f'{what} not found: {path}{hint}')
  return path


def require_dir(path: str | os.PathLike, what: str = 'data directory') -> str:
  """Returns ``path`` as a string; ``FileNotFoundError`` naming it if it is not a directory."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{what} not found: {path}')
  return path


def decode_error(path: str | os.PathLike, exc: BaseException | str) -> ValueError:
  """A ``ValueError`` saying that ``path`` could not be decoded and why (raise it ``from exc``)."""
  reason = exc if isinstance(exc, str) else f'{type(exc).__name__}: {exc}'
  return ValueError(f'Cannot decode {os.fspath(path)}: {reason}')


def check_item_shape(item: np.ndarray, expected: Sequence[int], name: str) -> np.ndarray:
  """``ValueError`` naming ``name`` (a file) and both shapes unless ``item.shape == expected``."""
  if tuple(item.shape) != tuple(expected):
    raise ValueError(f'{name}: decoded shape {tuple(item.shape)} differs from the expected shape '
                     f'{tuple(expected)} (the shape of the other items; pass a fixed size to the '
                     'source to resize every item, or fix the file).')
  return item


# --------------------------------------------------------------------------------------------------
# lazy arrays
# --------------------------------------------------------------------------------------------------

class _FileLoader:
  """``i -> decode(paths[i])`` (a class, not a lambda, so that a ``LazyArray`` pickles)."""

  def __init__(self, paths: Sequence[Any], decode: Callable[[Any], np.ndarray]):
    self.paths = list(paths)
    self.decode = decode

  def __call__(self, i: int) -> np.ndarray:
    return self.decode(self.paths[i])

  def check(self, i: int) -> None:
    """``decode.check(paths[i])`` when the decoder has a cheaper check, else a full decode."""
    check = getattr(self.decode, 'check', None)
    if check is None:
      self(i)
    else:
      check(self.paths[i])

  def describe(self, i: int) -> str:
    path = self.paths[i]
    if isinstance(path, (tuple, list)):
      return ', '.join(os.fspath(p) for p in path)
    return os.fspath(path)


def _as_index_array(key, length: int) -> np.ndarray:
  """Integer positions for a slice, a list / array of ints, or a boolean mask."""
  if isinstance(key, slice):
    return np.arange(length)[key]
  idx = np.asarray(key)
  if idx.dtype == bool:
    if idx.shape != (length,):
      raise IndexError(f'boolean index of shape {idx.shape} does not match length {length}.')
    return np.flatnonzero(idx)
  if idx.size == 0:
    return np.zeros((0,), np.int64)
  if not np.issubdtype(idx.dtype, np.integer):
    raise IndexError(f'LazyArray indices must be integers, a slice or a boolean mask; got dtype '
                     f'{idx.dtype}.')
  if idx.ndim != 1:
    raise IndexError(f'LazyArray takes a 1-D integer index array, got shape {idx.shape}.')
  if np.any(idx >= length) or np.any(idx < -length):
    raise IndexError(f'index out of range for a LazyArray of length {length}: '
                     f'{idx[(idx >= length) | (idx < -length)][:5].tolist()}')
  return np.where(idx < 0, idx + length, idx)


class _DecodePool:
  """A thread pool of ``workers`` threads, started on first use and kept for later batches (shared by
  a lazy array and its views; not pickled: a copy starts its own)."""

  def __init__(self, workers: int):
    self.workers = int(workers)
    self._pool = None
    self._lock = threading.Lock()

  def map(self, fn: Callable, items: Sequence) -> Any:
    with self._lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                           thread_name_prefix='contrastive_jax-decode')
    return self._pool.map(fn, items)

  def __getstate__(self):
    return {'workers': self.workers}

  def __setstate__(self, state):
    self.__init__(state['workers'])


class LazyArray:
  """An ``[N, *item_shape]`` array whose items are decoded from files when indexed.

  Attributes:
    shape: ``(N,) + item_shape``.
    dtype: the numpy dtype of every item (``uint8`` for images / videos / volumes).

  Indexing: ``x[i]`` (int) -> ``[*item_shape]``; ``x[a:b]``, ``x[int_array]``, ``x[bool_mask]`` ->
  ``[k, *item_shape]`` (items decoded in the order asked for; repeats allowed); a tuple key indexes
  the decoded result further (``x[:4, 0]``). ``np.asarray(x)`` decodes everything (small data
  only). ``x.subset(idx)`` is a lazy view of the rows ``idx``.
  """

  def __init__(self, load: Callable[[int], np.ndarray], length: int, item_shape: Sequence[int],
               dtype, *, describe: Callable[[int], str] | None = None,
               indices: np.ndarray | None = None, workers: int = 1):
    """Creates a lazy array.

    Args:
      load: ``i -> np.ndarray`` decoding item ``i`` of the underlying source (``0 <= i < length``).
        It may raise ``FileNotFoundError`` (passed on) or any other exception (re-raised as a
        ``ValueError`` naming ``describe(i)``).
      length: number of items of the underlying source.
      item_shape: the shape every decoded item must have.
      dtype: the dtype of the items; a decoded item of another dtype is cast when numpy can do it
        safely, otherwise it is an error naming the file.
      describe: ``i -> str`` naming item ``i`` in error messages (its file path); default ``item i``.
      indices: rows of the underlying source that this array exposes (a view); default all.
      workers: threads used to decode the items of one ``__getitem__`` (PIL, OpenCV and pydicom
        release the GIL while decoding); 1 decodes in the calling thread. The threads are started
        on first use and kept (one pool for the array and its :meth:`subset` views).
    """
    if int(length) != length or length < 0:
      raise ValueError(f'length must be a non-negative integer, got {length!r}.')
    if int(workers) != workers or workers < 1:
      raise ValueError(f'workers must be an integer >= 1, got {workers!r}.')
    self._load = load
    self._length = int(length)
    self._item_shape = tuple(int(d) for d in item_shape)
    self._dtype = np.dtype(dtype)
    self._describe = describe
    self._workers = int(workers)
    self._pool = _DecodePool(self._workers)
    if indices is None:
      self._indices = None
    else:
      self._indices = np.asarray(indices, np.int64)
      if self._indices.ndim != 1 or (self._indices.size and (
          self._indices.min() < 0 or self._indices.max() >= self._length)):
        raise ValueError(f'indices must be 1-D positions in [0, {self._length}).')

  @classmethod
  def from_files(cls, paths: Sequence[Any], decode: Callable[[Any], np.ndarray],
                 item_shape: Sequence[int], dtype, *, workers: int = 1) -> 'LazyArray':
    """A lazy array whose item ``i`` is ``decode(paths[i])``; errors name ``paths[i]``.

    ``paths[i]`` may be a path or a tuple of paths (e.g. the three planes of one MRNet exam); a
    tuple is named by all its paths.
    """
    loader = _FileLoader(paths, decode)
    return cls(loader, len(loader.paths), item_shape, dtype, describe=loader.describe,
               workers=workers)

  # -- array protocol ------------------------------------------------------------------------------

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self),) + self._item_shape

  @property
  def dtype(self) -> np.dtype:
    return self._dtype

  @property
  def ndim(self) -> int:
    return 1 + len(self._item_shape)

  @property
  def item_shape(self) -> tuple[int, ...]:
    return self._item_shape

  def __len__(self) -> int:
    return self._length if self._indices is None else int(self._indices.shape[0])

  def __repr__(self) -> str:
    return f'LazyArray(shape={self.shape}, dtype={self._dtype})'

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a fresh array.
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)

  def __iter__(self):
    for i in range(len(self)):
      yield self[i]

  def __getitem__(self, key):
    if isinstance(key, tuple):
      if not key:
        return np.asarray(self)
      first = self[key[0]]
      rest = key[1:]
      if isinstance(key[0], (int, np.integer)):
        return first[rest]
      return first[(slice(None),) + rest]
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
      n = len(self)
      if not -n <= key < n:
        raise IndexError(f'index {int(key)} out of range for a LazyArray of length {n}.')
      return self._decode(self._base_index(int(key) % n))
    positions = _as_index_array(key, len(self))
    out = np.empty((len(positions),) + self._item_shape, self._dtype)
    base = [self._base_index(int(p)) for p in positions]
    if self._workers > 1 and len(base) > 1:
      for row, item in enumerate(self._pool.map(self._decode, base)):
        out[row] = item
    else:
      for row, i in enumerate(base):
        out[row] = self._decode(i)
    return out

  def map_files(self, positions, fn: Callable[[Any, int], Any]) -> list:
    """``[fn(path of row p, p) for p in positions]`` for an array made by :meth:`from_files`.

    Runs in this array's decode threads (as indexing does); errors name the file. For decodings that
    need more than the path, e.g. ``pipeline.HostCrop``'s random crops keyed by the row.

    Raises:
      TypeError: the array was not made by :meth:`from_files`.
    """
    if not isinstance(self._load, _FileLoader):
      raise TypeError('map_files needs a LazyArray made by LazyArray.from_files (one file per row).')
    rows = [(self._base_index(int(p)), int(p)) for p in _as_index_array(positions, len(self))]
    paths = self._load.paths
    one = lambda row: self._call(lambda i: fn(paths[i], row[1]), row[0])
    if self._workers > 1 and len(rows) > 1:
      return list(self._pool.map(one, rows))
    return [one(row) for row in rows]

  # -- views ---------------------------------------------------------------------------------------

  def subset(self, idx) -> 'LazyArray':
    """The rows ``idx`` (ints, slice or boolean mask) as a new lazy array; nothing is decoded."""
    positions = _as_index_array(idx, len(self))
    base = positions if self._indices is None else self._indices[positions]
    view = LazyArray(self._load, self._length, self._item_shape, self._dtype,
                     describe=self._describe, indices=base, workers=self._workers)
    view._pool = self._pool  # pylint: disable=protected-access
    return view

  def name(self, i: int) -> str:
    """How row ``i`` of this array is named in error messages (its file path)."""
    return self._name(self._base_index(int(i)))

  def check_files(self, decode: bool = False) -> None:
    """Reads every row's file now, so that a damaged file fails before training, not when reached.

    Args:
      decode: decode every row in full (the errors of indexing, shape checks included). False: the
        loader's ``check(i)`` where it has one (a cheaper read that still fails on a missing, corrupt
        or truncated file, e.g. PNG chunk CRCs without inflating; see ``images.check_image_file``),
        else a full decode.

    Raises:
      FileNotFoundError: a missing file (named).
      ValueError: a file that cannot be read or decoded (named); with ``decode``, also a wrong shape,
        dtype or non-finite values.
    """
    check = None if decode else getattr(self._load, 'check', None)
    one = self._decode if check is None else functools.partial(self._call, check)
    rows = [self._base_index(p) for p in range(len(self))]
    if self._workers > 1 and len(rows) > 1:
      with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
        for _ in pool.map(one, rows):
          pass
    else:
      for i in rows:
        one(i)

  # -- internals -----------------------------------------------------------------------------------

  def _base_index(self, position: int) -> int:
    return position if self._indices is None else int(self._indices[position])

  def _name(self, i: int) -> str:
    return self._describe(i) if self._describe is not None else f'item {i}'

  def _call(self, load: Callable[[int], Any], i: int) -> Any:
    """``load(i)``, its errors re-raised naming item ``i`` (``FileNotFoundError`` or ``ValueError``)."""
    try:
      return load(i)
    except FileNotFoundError as exc:
      name = self._name(i)
      if name in str(exc):
        raise
      raise FileNotFoundError(f'data file not found: {name} ({exc})') from exc
    except ValueError as exc:
      name = self._name(i)
      if name in str(exc):
        raise
      raise decode_error(name, exc) from exc
    except Exception as exc:  # pylint: disable=broad-except  # Decoder libraries raise anything.
      raise decode_error(self._name(i), exc) from exc

  def _decode(self, i: int) -> np.ndarray:
    item = np.asarray(self._call(self._load, i))
    check_item_shape(item, self._item_shape, self._name(i))
    if item.dtype != self._dtype:
      if not np.can_cast(item.dtype, self._dtype, 'safe'):
        raise ValueError(f'{self._name(i)}: decoded dtype {item.dtype} cannot be cast safely to '
                         f'the dtype {self._dtype} of the other items.')
      item = item.astype(self._dtype)
    if np.issubdtype(item.dtype, np.floating) and not np.all(np.isfinite(item)):
      bad = int(np.count_nonzero(~np.isfinite(item)))
      raise ValueError(f'{self._name(i)}: {bad} non-finite value(s) (NaN or inf) in the decoded '
                       'data.')
    return item


def subset(x, idx) -> Any:
  """Rows ``idx`` of a numpy array (a copy) or of a ``LazyArray`` (a lazy view)."""
  if isinstance(x, LazyArray):
    return x.subset(idx)
  return np.asarray(x)[np.asarray(idx, np.int64)]


# --------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------

def check_process(process_index: int, process_count: int) -> tuple[int, int]:
  """Validates ``(process_index, process_count)`` (``jax.process_index() / process_count()``).

  Raises:
    ValueError: ``process_count`` not a positive integer, or ``process_index`` outside
      ``[0, process_count)``; the message names the argument.
  """
  if isinstance(process_count, bool) or int(process_count) != process_count or process_count <= 0:
    raise ValueError(f'process_count must be a positive integer, got {process_count!r}.')
  if isinstance(process_index, bool) or int(process_index) != process_index or not (
      0 <= process_index < process_count):
    raise ValueError(f'process_index must be an integer in [0, process_count={process_count}), '
                     f'got {process_index!r}.')
  return int(process_index), int(process_count)


def shard_indices(num: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Positions ``[0, num)`` owned by one process: contiguous blocks, sizes differing by <= 1.

  Concatenating the shards of processes ``0 .. process_count - 1`` gives ``arange(num)``: no sample
  is lost or duplicated (the block sizes of ``np.array_split``; ``tfds.even_splits`` splits the same
  way).
  """
  process_index, process_count = check_process(process_index, process_count)
  if int(num) != num or num < 0:
    raise ValueError(f'num must be a non-negative integer, got {num!r}.')
  bounds = (np.arange(process_count + 1) * int(num)) // process_count
  return np.arange(bounds[process_index], bounds[process_index + 1])


# --------------------------------------------------------------------------------------------------
# labels and splits
# --------------------------------------------------------------------------------------------------

def validate_labels(y, *, what: str = 'labels', names: Sequence[str] | None = None,
                    require_varying: bool = False) -> np.ndarray:
  """Checks regression targets and returns them as float32 ``[N]``.

  Args:
    y: the labels (anything ``np.asarray`` turns into numbers; strings that parse as floats work).
    what: how the labels are named in error messages (e.g. ``"column 'bmd' of /data/bmd.csv"``).
    names: optional ``[N]`` names of the rows (file paths); errors list the first offending ones.
    require_varying: also refuse labels that are all equal (a regression target with no spread
      makes label-distance losses and ``label_range`` degenerate).

  Raises:
    ValueError: not 1-D, empty, not numeric, non-finite (NaN / inf, also after the float32 cast),
      or constant when ``require_varying``.
  """
  try:
    y64 = np.asarray(y, np.float64)
  except (TypeError, ValueError) as exc:
    raise ValueError(f'{what}: labels must be numbers ({exc}).') from exc
  if y64.ndim != 1:
    raise ValueError(f'{what}: labels must be 1-D, got shape {y64.shape}.')
  if y64.shape[0] == 0:
    raise ValueError(f'{what}: no labels (empty).')
  with np.errstate(over='ignore'):
    y32 = y64.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(y32))
  if bad.size:
    shown = [names[i] for i in bad[:3]] if names is not None else bad[:3].tolist()
    raise ValueError(f'{what}: {bad.size} non-finite label(s) (NaN or inf, or beyond float32), '
                     f'e.g. at {shown}: {y64[bad[:3]].tolist()}.')
  if require_varying and np.all(y32 == y32[0]):
    raise ValueError(f'{what}: all {y32.shape[0]} labels equal {float(y32[0])}; a regression '
                     'target needs more than one value.')
  return y32


def fold_indices(folds, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """k-fold cross-validation: fold ``fold`` is the test set, the next fold the validation set.

  AdaCon Sec. IV-A trains with four-fold cross-validation and reports the mean over folds; here the
  fold ids are those found in ``folds`` (sorted), ``test = folds == ids[k]``, ``val = folds ==
  ids[(k + 1) % K]`` and the other folds train.

  Args:
    folds: ``[N]`` fold id of every row (ints, or strings that parse as ints).
    fold: which fold id is the test set (must occur in ``folds``).

  Returns:
    Sorted index arrays ``(train, val, test)``.

  Raises:
    ValueError: fewer than 3 distinct folds, or ``fold`` not among them.
  """
  try:
    as_float = np.asarray(folds).astype(np.float64)
  except (TypeError, ValueError) as exc:
    raise ValueError(f'fold ids must be integers ({exc}).') from exc
  if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
    raise ValueError(f'fold ids must be integers, got {np.unique(as_float)[:5].tolist()}.')
  folds = as_float.astype(np.int64)
  ids = np.unique(folds)
  if len(ids) < 3:
    raise ValueError(f'cross-validation needs at least 3 folds (test, val, train); the fold column '
                     f'holds {ids.tolist()}.')
  if isinstance(fold, bool) or int(fold) != fold or int(fold) not in ids:
    raise ValueError(f'fold must be one of the fold ids {ids.tolist()}, got {fold!r}.')
  k = int(np.flatnonzero(ids == int(fold))[0])
  test = np.flatnonzero(folds == ids[k])
  val = np.flatnonzero(folds == ids[(k + 1) % len(ids)])
  train = np.flatnonzero((folds != ids[k]) & (folds != ids[(k + 1) % len(ids)]))
  return train, val, test


def check_split_files(name: str, splits: Mapping[str, Split], decode: Sequence[str] = ()) -> None:
  """Reads the files of every split before training (``LazyArray.check_files``), so that a damaged
  file in the val or test split does not surface only at the first evaluation, or after training.

  Args:
    name: the dataset's name, for the error message.
    splits: ``{'train': Split, 'val': Split, 'test': Split}``; numpy inputs / labels are skipped.
    decode: the splits decoded in full (the others get the loader's cheaper check, if it has one).

  Raises:
    FileNotFoundError / ValueError: the first bad file, named together with its split, e.g.
      ``Dataset 'bmd', test split: Cannot decode /data/7.png: OSError: image file is truncated``.
  """
  for part, split in splits.items():
    for array in (split.x, split.y):
      if not isinstance(array, LazyArray):
        continue
      try:
        array.check_files(decode=part in decode)
      except FileNotFoundError as exc:
        raise FileNotFoundError(f'Dataset {name!r}, {part} split: {exc}') from exc
      except ValueError as exc:
        raise ValueError(f'Dataset {name!r}, {part} split: {exc}') from exc


def make_dataset(name: str, kind: str, x, y: np.ndarray,
                 parts: Mapping[str, np.ndarray], *, check_files: bool = False) -> Dataset:
  """Cuts ``x`` / ``y`` into the ``train`` / ``val`` / ``test`` splits of a ``Dataset``.

  Args:
    name: dataset name (used in error messages).
    kind: one of ``KINDS``.
    x: ``[N, ...]`` numpy array or ``LazyArray``.
    y: ``[N]`` labels (validated with ``validate_labels``).
    parts: ``{'train': idx, 'val': idx, 'test': idx}`` row indices into ``x`` / ``y``.
    check_files: read the files of every split now (``check_split_files``; lazy ``x`` only).

  Raises:
    ValueError: unknown ``kind``, missing part, an empty split, ``x`` and ``y`` of different
      lengths, non-finite labels; with ``check_files`` a damaged file (named, with its split).
    FileNotFoundError: with ``check_files``, a missing file (named, with its split).
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}.')
  if len(x) != len(y):
    raise ValueError(f'Dataset {name!r}: {len(x)} inputs but {len(y)} labels.')
  y = validate_labels(y, what=f'Dataset {name!r}: labels')
  splits = {}
  for part in ('train', 'val', 'test'):
    if part not in parts:
      raise ValueError(f'Dataset {name!r}: no {part!r} split given.')
    idx = np.asarray(parts[part], np.int64)
    if idx.size == 0:
      raise ValueError(f'Dataset {name!r}: the {part} split is empty.')
    splits[part] = Split(x=subset(x, idx), y=y[idx])
  if check_files:
    check_split_files(name, splits)
  return Dataset(name=name, kind=kind, **splits)
