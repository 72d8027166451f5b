"""Bundled real demo data for regression: no network, no downloads.

Two datasets ship with scikit-learn and are turned into regression tasks here (and the digits
into a classification set too):

* ``digits_angle`` -- the 1797 real 8x8 handwritten digits of ``sklearn.datasets.load_digits``,
  each upsampled (bilinear ``scipy.ndimage.zoom``) and rotated by a random angle; the target is
  that angle in degrees, so the label is exact. An image regression task in the spirit of the age /
  ejection-fraction tasks of the papers, small enough to train on a CPU in seconds.
* ``digits`` -- the same 1797 digits, unrotated, labelled by their digit (a 10-class set for the
  transfer / fine-tuning task, ``contrastive_jax.train.finetune``).
* ``diabetes`` -- ``sklearn.datasets.load_diabetes(scaled=False)``: 442 patients, 10 clinical
  features, target = disease progression one year after baseline (25..346). Features are
  standardised with the training split's statistics; the target stays in its natural unit.

Splits are a deterministic 70/15/15 train/val/test partition drawn from ``seed``. For
``digits_angle`` the partition is over *source images*: every rotated copy of one digit lands in the
same split, so no digit seen in training (at another angle) leaks into validation or test.

Usage::

    ds = load_dataset('digits_angle', seed=0)      # ds.train.x: float32 [2514, 16, 16, 1] in [0, 1]
    ds = load_dataset('diabetes', seed=0)          # ds.train.x: float32 [310, 10], standardised

Every other name of ``contrastive_jax.data.sources.SOURCES`` (``tfds``, ``csv_images``,
``dir_benchmark``, ``fashion_mnist``, ``echonet``, ``mrnet``, ``chaos``) is loaded by that source;
their ``x`` is typically a lazy uint8 array (``sources.base.LazyArray``) decoded when indexed::

    ds = load_dataset('csv_images', csv_path='bmd.csv', fold=0, image_size=128)  # AdaCon 4-fold CV
    ds = load_dataset('dir_benchmark', root='data', dataset='agedb', split_mode='natural')
    ds = load_dataset('fashion_mnist')             # uint8 [50000, 28, 28, 1], y = rotation angle

Learnability of ``digits_angle`` (defaults): ridge regression (alpha=1) on the flattened pixels
reaches a test MAE of 3.8 / 3.5 / 3.4 degrees for seeds 0 / 1 / 2, against 22.7 / 22.1 / 21.4
degrees for predicting the training mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

DATASETS = ('digits_angle', 'diabetes', 'digits')

# Fractions of the train / val / test partition: val and test get round(0.15 * n) each, train the
# rest.
_VAL_FRACTION = 0.15
_TEST_FRACTION = 0.15


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset.

  Attributes:
    x: inputs, a numpy array or a lazy array-like (``sources.base.LazyArray``: ``.shape``,
      ``.dtype``, ``len()``, indexing by int / slice / int array decodes those rows only). Bundled
      data: float32 images ``[N, H, W, C]`` in [0, 1] or tabular ``[N, F]``; file sources: uint8
      images ``[N, H, W, C]``, videos ``[N, T, H, W, C]``, volumes ``[N, S, H, W, C]``
      (``pipeline`` scales uint8 to [0, 1] float32).
    y: float32 ``[N]``, the regression target in its natural unit (degrees, disease progression).
  """
  x: Any
  y: np.ndarray

  def __len__(self) -> int:
    return int(self.y.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A named dataset with train / val / test splits.

  Attributes:
    name: one of ``DATASETS`` or a name chosen by a file source.
    kind: ``'image'``, ``'tabular'``, ``'video'``, ``'volume'`` or ``'text'`` (selects the
      augmentation, see ``augment.get_augment_fn``).
    train, val, test: the three disjoint splits.
  """
  name: str
  kind: str
  train: Split
  val: Split
  test: Split

  @property
  def label_range(self) -> float:
    """``max(train.y) - min(train.y)``, e.g. the scale of ACCon / AdaCon label distances."""
    return float(np.max(self.train.y) - np.min(self.train.y))


def split_indices(num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Deterministic 70/15/15 partition of ``range(num_examples)`` drawn from ``seed``.

  Returns sorted index arrays ``(train, val, test)``. ``load_dataset`` applies it to source images
  (``digits_angle``) or rows (``diabetes``).
  """
  if num_examples < 3:
    raise ValueError(f'num_examples must be >= 3 to make three splits, got {num_examples}.')
  n_val = max(1, int(round(_VAL_FRACTION * num_examples)))
  n_test = max(1, int(round(_TEST_FRACTION * num_examples)))
  perm = np.random.default_rng([seed, 0]).permutation(num_examples)
  n_train = num_examples - n_val - n_test
  train, val, test = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
  return np.sort(train), np.sort(val), np.sort(test)


def _rotated_digits(images: np.ndarray, angles: np.ndarray, upsample: int) -> np.ndarray:
  """``images [N, 8, 8]`` in [0, 1], ``angles [N, copies]`` -> float32 ``[N, copies, S, S, 1]``."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  if upsample > 1:
    images = np.stack([ndimage.zoom(im, upsample, order=1) for im in images])
  n, copies = angles.shape
  out = np.empty((n, copies) + images.shape[1:], np.float32)
  for i in range(n):
    for c in range(copies):
      out[i, c] = ndimage.rotate(images[i], angles[i, c], reshape=False, order=1, mode='constant')
  # Bilinear interpolation is a convex combination, so only float rounding can leave [0, 1].
  return np.clip(out, 0.0, 1.0)[..., None]


def _load_digits_angle(seed: int, max_angle: float = 45.0, upsample: int = 2,
                       copies: int = 2) -> Dataset:
  """Rotated sklearn digits; y = rotation angle in degrees, uniform in [-max_angle, max_angle]."""
  max_angle = float(max_angle)
  if not np.isfinite(max_angle) or max_angle < 0:
    raise ValueError(f'max_angle must be a finite number >= 0, got {max_angle}.')
  if int(upsample) != upsample or upsample < 1:
    raise ValueError(f'upsample must be an integer >= 1, got {upsample}.')
  if int(copies) != copies or copies < 1:
    raise ValueError(f'copies must be an integer >= 1, got {copies}.')
  upsample, copies = int(upsample), int(copies)

  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  images = load_digits().images.astype(np.float64) / 16.0  # [1797, 8, 8], pixel values 0..16
  train_idx, val_idx, test_idx = split_indices(len(images), seed)
  # The angle stream is separate from the split stream: changing copies does not move the split.
  angles = np.random.default_rng([seed, 1]).uniform(-max_angle, max_angle,
                                                   size=(len(images), copies))
  rotated = _rotated_digits(images, angles, upsample)  # [N, copies, S, S, 1]

  def make(idx: np.ndarray) -> Split:
    x = rotated[idx].reshape((-1,) + rotated.shape[2:])  # copies of one source stay adjacent
    y = angles[idx].reshape(-1).astype(np.float32)
    return Split(x=x, y=y)

  return Dataset(name='digits_angle', kind='image', train=make(train_idx), val=make(val_idx),
                 test=make(test_idx))


def _load_digits(seed: int, upsample: float = 2.0) -> Dataset:
  """sklearn digits as a 10-class classification set (y = the digit, a float class id): each 8x8
  image bilinearly zoomed by ``upsample`` (e.g. 3.5 -> 28x28, Fashion-MNIST's size, for transfer
  from it), float32 ``[N, S, S, 1]`` in [0, 1]; the same 70/15/15 split of ``split_indices``."""
  upsample = float(upsample)
  if not np.isfinite(upsample) or upsample < 1:
    raise ValueError(f'upsample must be a number >= 1, got {upsample}.')
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  raw = load_digits()
  images = raw.images.astype(np.float64) / 16.0
  if upsample != 1:
    images = np.stack([ndimage.zoom(im, upsample, order=1) for im in images])
  x = np.clip(images, 0.0, 1.0).astype(np.float32)[..., None]
  y = np.asarray(raw.target, np.float32)
  train_idx, val_idx, test_idx = split_indices(len(y), seed)
  make = lambda idx: Split(x=x[idx], y=y[idx])
  return Dataset(name='digits', kind='image', train=make(train_idx), val=make(val_idx),
                 test=make(test_idx))


def _load_diabetes(seed: int) -> Dataset:
  """sklearn diabetes, unscaled; features standardised with the train mean / std, y untouched."""
  from sklearn.datasets import load_diabetes  # pylint: disable=g-import-not-at-top
  raw = load_diabetes(scaled=False)
  x = np.asarray(raw.data, np.float64)
  y = np.asarray(raw.target, np.float32)
  train_idx, val_idx, test_idx = split_indices(len(y), seed)
  mean = x[train_idx].mean(axis=0)
  std = x[train_idx].std(axis=0)
  std = np.where(std > 0, std, 1.0)  # a constant feature stays 0 instead of becoming NaN

  def make(idx: np.ndarray) -> Split:
    return Split(x=((x[idx] - mean) / std).astype(np.float32), y=y[idx])

  return Dataset(name='diabetes', kind='tabular', train=make(train_idx), val=make(val_idx),
                 test=make(test_idx))


_LOADERS: dict[str, Callable[..., Dataset]] = {
    'digits_angle': _load_digits_angle,
    'diabetes': _load_diabetes,
    'digits': _load_digits,
}


def _validate(ds: Dataset) -> Dataset:
  for split_name in ('train', 'val', 'test'):
    split = getattr(ds, split_name)
    if len(split.y) == 0:
      raise ValueError(f'Dataset {ds.name!r}: the {split_name} split is empty.')
    if len(split.x) != split.y.shape[0]:
      raise ValueError(f'Dataset {ds.name!r}: {split_name} split has {split.x.shape[0]} inputs but '
                       f'{split.y.shape[0]} labels.')
    bad = int(np.count_nonzero(~np.isfinite(split.y)))
    if bad:
      raise ValueError(f'Dataset {ds.name!r}: {bad} non-finite label(s) in the {split_name} split.')
  return ds


def load_dataset(name: str, seed: int = 0, **kwargs) -> Dataset:
  """Loads a bundled dataset (no network) or a file-based source by name.

  Args:
    name: one of ``DATASETS`` or of ``contrastive_jax.data.sources.SOURCES`` (then ``kwargs`` go
      to that source's loader, e.g. ``csv_path=..., fold=0`` for ``csv_images``).
    seed: selects the train/val/test partition (and, for ``digits_angle``, the rotation angles).
    **kwargs: dataset options. ``digits_angle``: ``max_angle=45.0`` (degrees), ``upsample=2``
      (zoom factor applied to the 8x8 digit before rotating; output images are ``8 * upsample``
      pixels wide), ``copies=2`` (independently rotated copies per source image). ``diabetes``:
      none. ``digits`` (10-class digit labels, for classification / transfer): ``upsample=2.0``.

  Returns:
    A validated ``Dataset``: float32 arrays for the bundled data, a source's arrays (often lazy
    uint8) otherwise.

  Raises:
    ValueError: unknown ``name`` (lists the known ones), bad option values, non-finite labels, an
      empty split, corrupt data files (named).
    FileNotFoundError: a source's data file is missing (named).
    TypeError: an option the dataset does not take.
  """
  from contrastive_jax.data import sources  # pylint: disable=g-import-not-at-top  # Lazy: no cycle.
  if name in _LOADERS:
    return _validate(_LOADERS[name](seed, **kwargs))
  if name in sources.SOURCES:
    return _validate(sources.load_source(name, seed=seed, **kwargs))
  raise ValueError(f'Unknown dataset name {name!r}; available: '
                   f'{", ".join(DATASETS + tuple(sources.SOURCES))}.')
