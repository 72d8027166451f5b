"""Any TensorFlow-Datasets catalogue dataset as a regression ``Dataset``, without TensorFlow.

Records are read by random access through ``tfds.data_source`` (ArrayRecord files, decoded with
NumPy; TensorFlow is never imported): ``cifar10``, ``imagenet2012``, ``glue/stsb``, ... prepared with
``tfds build <name> --file_format=array_record`` (or ``download=True``, which needs the builder's own
download and preparation to work without TensorFlow). ``x`` is a ``base.LazyArray``: a record is read
and decoded only when its row is indexed; only the labels are read when loading (with the image
decoding skipped where TFDS can do that without TensorFlow). The TFDS data directory is ``data_dir``
or, equivalently, ``root`` (what the trainer passes for ``--config.data.root=``).

Inputs:

* image datasets (``image_key`` present, default ``'image'``): uint8 ``[N, H, W, C]``; datasets of
  varying image size (ImageNet) need ``image_size`` (centre crop + bilinear resize).
* other datasets: ``feature_keys`` names the inputs; numeric features are flattened to float32,
  text features (``glue/stsb``'s ``sentence1`` / ``sentence2``) become hashed bag-of-words vectors
  of ``text_dim`` entries (CRC32 of each lower-cased word token modulo ``text_dim``, counts
  L2-normalised); the features are concatenated into float32 ``[N, F]`` (kind ``'tabular'``).

The target ``label_key`` (default ``'label'``) is cast to float32: a real score for ``glue/stsb``,
the class index for classification sets.

Shuffling and sharding: with ``shuffle=True`` the record order of each split is a permutation drawn
from ``seed`` (the same on every process); with ``process_count > 1`` each split keeps only this
process's contiguous block of it (``base.shard_indices``): the blocks of all processes are disjoint
and cover the split. The default (one process) is what ``contrastive_jax.data.pipeline`` expects:
it slices every global batch per process itself.
"""

from __future__ import annotations

import functools
import glob
import importlib
import os
import re
import zlib
from typing import Any, Sequence

import numpy as np

from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.sources import base
from contrastive_jax.data.sources import images

_WORD = re.compile(r'\w+')


def hashed_bag_of_words(text, dim: int) -> np.ndarray:
  """float32 ``[dim]``: counts of ``crc32(token) % dim`` over lower-cased word tokens, L2-normalised."""
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  out = np.zeros(dim, np.float64)
  for token in _WORD.findall(str(text).lower()):
    out[zlib.crc32(token.encode('utf-8')) % dim] += 1.0
  norm = np.linalg.norm(out)
  return (out / norm if norm > 0 else out).astype(np.float32)


def _import_builder_module(name: str) -> None:
  """Imports the TFDS catalogue module defining ``name`` (``glue`` is only registered once its
  module ``tensorflow_datasets.text.glue`` is imported)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  package = os.path.dirname(tfds.__file__)
  family = name.split('/')[0].split(':')[0]
  candidates = glob.glob(os.path.join(package, '*', f'{family}.py')) + glob.glob(
      os.path.join(package, '*', family, '__init__.py')) + glob.glob(
          os.path.join(package, 'datasets', family, f'{family}_dataset_builder.py'))
  for path in candidates:
    module = os.path.relpath(os.path.splitext(path)[0], os.path.dirname(package))
    module = module.replace(os.sep, '.').removesuffix('.__init__')
    try:
      importlib.import_module(module)
    except ImportError:
      continue


def _data_source(name: str, split: str, data_dir, download: bool, decoders=None):
  """``tfds.data_source`` with clear errors for unknown names and unprepared data."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  kwargs = dict(split=split, data_dir=data_dir, download=download)
  if decoders is not None:
    kwargs['decoders'] = decoders
  try:
    try:
      return tfds.data_source(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
      _import_builder_module(name)
      return tfds.data_source(name, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as exc:
    raise ValueError(f'TFDS has no dataset {name!r} (see tfds.list_builders()).') from exc
  except (NotImplementedError, AssertionError, FileNotFoundError) as exc:
    raise FileNotFoundError(
        f'TFDS dataset {name!r} split {split!r} is not prepared for random access in '
        f'{data_dir or "the default data_dir"}: prepare it with `tfds build {name} '
        f'--file_format=array_record` (or pass download=True). ({type(exc).__name__}: '
        f'{str(exc).splitlines()[0] if str(exc) else ""})') from exc


def _feature_vector(value, dim: int) -> np.ndarray:
  if isinstance(value, (str, bytes)) or (isinstance(value, np.ndarray) and value.dtype.kind in 'OSU'):
    return hashed_bag_of_words(value.item() if isinstance(value, np.ndarray) else value, dim)
  return np.asarray(value, np.float32).reshape(-1)


class _RecordLoader:
  """``i -> x`` of record ``rows[i]`` of a TFDS data source (images or feature vectors)."""

  def __init__(self, source, rows: np.ndarray, image_key: str | None, feature_keys,
               decoder: images.ImageDecoder | None, text_dim: int, label: str):
    self.source, self.rows = source, rows
    self.image_key, self.feature_keys = image_key, feature_keys
    self.decoder, self.text_dim, self.label = decoder, text_dim, label

  def __call__(self, i: int) -> np.ndarray:
    example = self.source[int(self.rows[i])]
    name = self.describe(i)
    if self.image_key is not None:
      image = images.to_uint8(np.asarray(example[self.image_key]), name)
      return images.fit_image(image, self.decoder.size, self.decoder.channels,
                              self.decoder.resize, name)
    return np.concatenate([_feature_vector(example[k], self.text_dim) for k in self.feature_keys])

  def describe(self, i: int) -> str:
    return f'{self.label} record {int(self.rows[i])}'


def _read_labels(name, split, data_dir, download, source, label_key, image_key) -> np.ndarray:
  """The label of every record; skips image decoding where TFDS allows it without TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  reader = source
  if image_key is not None and len(source):
    try:
      skipping = _data_source(name, split, data_dir, download,
                              decoders={image_key: tfds.decode.SkipDecoding()})
      skipping[0]  # pylint: disable=pointless-statement  # Fails here if TF would be needed.
      reader = skipping
    except Exception:  # pylint: disable=broad-except  # Fall back to full decoding.
      reader = source
  values = []
  for i in range(len(reader)):
    example = reader[i]
    if label_key not in example:
      raise ValueError(f'TFDS dataset {name!r} has no feature {label_key!r}; features: '
                       f'{sorted(example)}.')
    values.append(np.asarray(example[label_key], np.float64).reshape(-1))
  sizes = {v.size for v in values}
  if sizes and sizes != {1}:
    raise ValueError(f'TFDS dataset {name!r}: label_key={label_key!r} is not a scalar (sizes '
                     f'{sorted(sizes)}).')
  return np.concatenate(values) if values else np.zeros((0,), np.float64)


def _resolve_data_dir(data_dir, root):
  """The TFDS data directory from ``data_dir`` and its alias ``root`` (the trainer's data.root)."""
  if root is None or (isinstance(root, str) and not root):
    return data_dir
  root = os.fspath(root)
  if data_dir is None or (isinstance(data_dir, str) and not data_dir):
    return root
  data_dir = os.fspath(data_dir)
  if os.path.abspath(os.path.expanduser(data_dir)) != os.path.abspath(os.path.expanduser(root)):
    raise ValueError(f'Both root={root!r} (data.root) and data_dir={data_dir!r} '
                     '(data.kwargs.data_dir) are set and differ: the TFDS data directory is one '
                     'of them; set only one.')
  return data_dir


def load_tfds(tfds_name: str, *, seed: int = 0, train_split: str = 'train[:90%]',
              val_split: str = 'train[90%:]', test_split: str = 'test',
              label_key: str = 'label', image_key: str | None = 'image',
              feature_keys: Sequence[str] | None = None, image_size=None,
              channels: int | None = None, resize: str = 'crop', text_dim: int = 256,
              data_dir: str | None = None, download: bool = False, shuffle: bool = False,
              process_index: int = 0, process_count: int = 1, workers: int = 1,
              root: str | None = None) -> Dataset:
  """Loads a TFDS catalogue dataset by name and split strings (see the module docstring).

  Args:
    tfds_name: TFDS name, optionally with config / version (``'cifar10'``, ``'glue/stsb'``);
      ``load_dataset('tfds', tfds_name='cifar10', ...)``.
    seed: seed of the record permutation when ``shuffle``.
    train_split, val_split, test_split: TFDS split strings (``'train[:90%]'``, ``'validation'``).
    label_key: the regression target feature.
    image_key: the image feature; ``None`` (or absent from the dataset) for non-image data.
    feature_keys: input features of non-image data (required then).
    image_size: resize images to this size (int or ``(height, width)``); needed when sizes vary.
    channels: 1 or 3 to convert images; None keeps the stored channels.
    resize: ``'crop'`` or ``'stretch'`` (``images.fit_image``).
    text_dim: length of the hashed bag-of-words vector of a text feature.
    data_dir: TFDS data directory (default: TFDS's).
    download: let TFDS download and prepare a missing dataset.
    shuffle: permute each split's records with ``seed``.
    process_index, process_count: keep only this process's block of every split.
    workers: decoding threads per batch.
    root: another name for ``data_dir``: the trainer passes ``--config.data.root=`` as ``root=``
      (as to the file sources), so one flag moves a TFDS data directory too. Giving both ``root``
      and ``data_dir`` is an error unless they name the same directory.

  Returns:
    ``Dataset`` named ``tfds_name``, kind ``'image'`` or ``'tabular'``, ``x`` lazy.

  Raises:
    ValueError: unknown dataset or feature, bad options (``root`` and ``data_dir`` naming
      different directories), non-finite labels, an empty split.
    FileNotFoundError: the dataset is not prepared in ``data_dir`` (and ``download`` is False).
  """
  name = tfds_name
  data_dir = _resolve_data_dir(data_dir, root)
  process_index, process_count = base.check_process(process_index, process_count)
  if int(text_dim) != text_dim or text_dim < 1:
    raise ValueError(f'text_dim must be a positive integer, got {text_dim!r}.')
  decoder = images.ImageDecoder(image_size, channels, resize)
  splits = {'train': train_split, 'val': val_split, 'test': test_split}
  sources = {part: _data_source(name, split, data_dir, download) for part, split in splits.items()}
  features = sources['train'].dataset_info.features
  keys = list(features.keys())
  if image_key is not None and image_key not in keys:
    image_key = None
  if image_key is None:
    if not feature_keys:
      raise ValueError(f'TFDS dataset {name!r} has no image feature; pass feature_keys (features: '
                       f'{keys}).')
    unknown = [k for k in feature_keys if k not in keys]
    if unknown:
      raise ValueError(f'feature_keys {unknown} are not features of {name!r} ({keys}).')
  if label_key not in keys:
    raise ValueError(f'label_key={label_key!r} is not a feature of {name!r} ({keys}).')

  xs, ys, parts, offset = [], [], {}, 0
  for part, split in splits.items():
    source = sources[part]
    labels = _read_labels(name, split, data_dir, download, source, label_key, image_key)
    rows = np.arange(len(labels))
    if shuffle:
      rows = np.random.default_rng([int(seed), 3]).permutation(len(labels))
    rows = rows[base.shard_indices(len(rows), process_index, process_count)]
    if len(rows) == 0:
      raise ValueError(f'TFDS dataset {name!r}: the {part} split {split!r} is empty'
                       + (f' on process {process_index} of {process_count}.'
                          if process_count > 1 else '.'))
    loader = _RecordLoader(source, rows, image_key, feature_keys, decoder, int(text_dim),
                           f'{name} {split}')
    item = loader(0)
    xs.append((loader, item.shape, item.dtype))
    ys.append(base.validate_labels(labels[rows], what=f'{label_key!r} of {name} {split}'))
    parts[part] = np.arange(offset, offset + len(rows))
    offset += len(rows)
  shapes = {shape for _, shape, _ in xs}
  if len(shapes) > 1:
    raise ValueError(f'TFDS dataset {name!r}: the splits decode to different shapes {shapes}; '
                     'pass image_size.')
  item_shape, dtype = xs[0][1], xs[0][2]
  x = base.LazyArray(functools.partial(_concat_load, [l for l, _, _ in xs]), offset, item_shape,
                     dtype, describe=functools.partial(_concat_describe, [l for l, _, _ in xs]),
                     workers=workers)
  kind = 'image' if image_key is not None else 'tabular'
  return base.make_dataset(name, kind, x, np.concatenate(ys), parts)


def _locate(loaders: list[Any], i: int) -> tuple[Any, int]:
  for loader in loaders:
    if i < len(loader.rows):
      return loader, i
    i -= len(loader.rows)
  raise IndexError(i)


def _concat_load(loaders: list[Any], i: int) -> np.ndarray:
  loader, j = _locate(loaders, i)
  return loader(j)


def _concat_describe(loaders: list[Any], i: int) -> str:
  loader, j = _locate(loaders, i)
  return loader.describe(j)
