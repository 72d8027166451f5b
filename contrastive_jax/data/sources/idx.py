"""IDX files (the MNIST / Fashion-MNIST format) and Fashion-MNIST as a local regression example.

IDX (LeCun et al.'s MNIST format): 4 magic bytes ``0, 0, type, ndim``; ``ndim`` big-endian uint32
dimensions; then the values, big-endian, row-major. Types: 0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64. Files may be gzipped (``.gz``).

Fashion-MNIST (Xiao et al. 2017; Debian package ``dataset-fashion-mnist`` installs the four IDX files in
``/usr/share/datasets/fashion-mnist/``): 60,000 training and 10,000 test 28 x 28 grey images of 10
clothing classes. Its classes are nominal, so two regression targets are offered:

* ``target='angle'`` (default): like the bundled ``digits_angle``, every image is rotated by a seeded
  angle uniform in ``[-max_angle, max_angle]`` degrees (bilinear, on the host when indexed) and the
  target is that angle -- an exact continuous label.
* ``target='class'``: the class index 0..9 as a float (a pipeline check more than a regression task).

Splits: the test file is the test split; ``val_size`` images of the training file (seeded) are the
validation split, the rest train.
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.sources import base

# Where Debian's dataset-fashion-mnist package puts the files; the environment variable
# CONTRASTIVE_JAX_FASHION_MNIST names another folder (read at each call, see `default_root`).
DEBIAN_ROOT = '/usr/share/datasets/fashion-mnist'
ROOT_ENV = 'CONTRASTIVE_JAX_FASHION_MNIST'
TARGETS = ('angle', 'class')


def default_root() -> str:
  """The Fashion-MNIST folder used when none is given: ``$CONTRASTIVE_JAX_FASHION_MNIST`` if set,
  else :data:`DEBIAN_ROOT`."""
  return os.environ.get(ROOT_ENV) or DEBIAN_ROOT

_IDX_TYPES = {0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
              0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}
_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
          'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


def parse_idx(raw: bytes, name: str = 'IDX data') -> np.ndarray:
  """Decodes the bytes of one IDX file; ``ValueError`` naming ``name`` if they are not valid IDX."""
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f'{name}: not an IDX file (the first two bytes must be 0).')
  type_code, ndim = raw[2], raw[3]
  if type_code not in _IDX_TYPES:
    raise ValueError(f'{name}: unknown IDX type code 0x{type_code:02X}; known: '
                     f'{[hex(t) for t in _IDX_TYPES]}.')
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{name}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions).')
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', count=ndim, offset=4))
  dtype = _IDX_TYPES[type_code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f'{name}: {len(raw) - header} data bytes, but the header shape {shape} of '
                     f'{dtype.name} needs {expected} (truncated or corrupt file).')
  values = np.frombuffer(raw, dtype, offset=header).reshape(shape)
  return values.astype(dtype.newbyteorder('='))


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (gzipped when its name ends in ``.gz``).

  Raises:
    FileNotFoundError: no such file (named).
    ValueError: a corrupt gzip stream or IDX content (the file is named).
  """
  path = base.require_file(path, 'IDX file')
  try:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError.
    raise base.decode_error(path, exc) from exc
  return parse_idx(raw, path)


def _find(root: str, stem: str) -> str:
  for candidate in (stem + '.gz', stem):
    path = os.path.join(root, candidate)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f'Fashion-MNIST file not found: {os.path.join(root, stem)}[.gz] '
                          '(Debian: apt-get install dataset-fashion-mnist).')


def _read_pair(root: str, part: str) -> tuple[np.ndarray, np.ndarray]:
  image_path, label_path = (_find(root, stem) for stem in _FILES[part])
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3:
    raise ValueError(f'{image_path}: expected images [N, H, W], got shape {images.shape}.')
  if labels.ndim != 1:
    raise ValueError(f'{label_path}: expected labels [N], got shape {labels.shape}.')
  if len(images) != len(labels):
    raise ValueError(f'{image_path} holds {len(images)} images but {label_path} holds '
                     f'{len(labels)} labels.')
  return images, base.validate_labels(labels, what=f'labels of {label_path}')


def _describe(root: str, i: int) -> str:
  return f'Fashion-MNIST image {i} in {root}'


class _RotatedImages:
  """``i -> uint8 [H, W, 1]``: ``images[i]`` rotated by ``angles[i]`` degrees (bilinear)."""

  def __init__(self, images: np.ndarray, angles: np.ndarray):
    self.images, self.angles = images, angles

  def __call__(self, i: int) -> np.ndarray:
    from scipy import ndimage  # pylint: disable=g-import-not-at-top
    rotated = ndimage.rotate(self.images[i].astype(np.float32), float(self.angles[i]),
                             reshape=False, order=1, mode='constant')
    return np.clip(np.round(rotated), 0, 255).astype(np.uint8)[..., None]


def load_fashion_mnist(root: str | os.PathLike | None = None, *, seed: int = 0,
                       target: str = 'angle', max_angle: float = 45.0,
                       val_size: int = 10000) -> Dataset:
  """Fashion-MNIST from its IDX files as a regression dataset (see the module docstring).

  Args:
    root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; default (None)
      :func:`default_root` (``$CONTRASTIVE_JAX_FASHION_MNIST`` or Debian's folder).
    seed: selects the validation images and (``target='angle'``) the rotation angles.
    target: ``'angle'`` (rotation angle in degrees) or ``'class'`` (class index).
    max_angle: angles are uniform in ``[-max_angle, max_angle]``.
    val_size: training-file images moved to the validation split (``0 < val_size < 60000``).

  Returns:
    ``Dataset('fashion_mnist', 'image', ...)``; ``x`` uint8 ``[N, 28, 28, 1]`` (lazy, rotated when
    indexed, for ``'angle'``; an in-memory array for ``'class'``).

  Raises:
    FileNotFoundError: a missing IDX file (named). ValueError: corrupt files, bad options.
  """
  if target not in TARGETS:
    raise ValueError(f'target must be one of {TARGETS}, got {target!r}.')
  max_angle = float(max_angle)
  if not np.isfinite(max_angle) or max_angle < 0:
    raise ValueError(f'max_angle must be a finite number >= 0, got {max_angle}.')
  root = base.require_dir(default_root() if root is None else root,
                          'Fashion-MNIST folder (Debian: apt-get install dataset-fashion-mnist)')
  train_x, train_y = _read_pair(root, 'train')
  test_x, test_y = _read_pair(root, 'test')
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(f'{root}: training images are {train_x.shape[1:]} but test images are '
                     f'{test_x.shape[1:]}.')
  if isinstance(val_size, bool) or int(val_size) != val_size or not 0 < val_size < len(train_y):
    raise ValueError(f'val_size must be an integer in (0, {len(train_y)}), got {val_size!r}.')
  images = np.concatenate([train_x, test_x]).astype(np.uint8)
  classes = np.concatenate([train_y, test_y])
  perm = np.random.default_rng([int(seed), 0]).permutation(len(train_y))
  parts = {'train': np.sort(perm[int(val_size):]), 'val': np.sort(perm[:int(val_size)]),
           'test': np.arange(len(train_y), len(images))}
  if target == 'class':
    return base.make_dataset('fashion_mnist', 'image', images[..., None], classes, parts)
  angles = np.random.default_rng([int(seed), 1]).uniform(-max_angle, max_angle, len(images))
  x = base.LazyArray(_RotatedImages(images, angles), len(images), images.shape[1:] + (1,),
                     np.uint8, describe=functools.partial(_describe, root))
  return base.make_dataset('fashion_mnist', 'image', x, angles.astype(np.float32), parts)
