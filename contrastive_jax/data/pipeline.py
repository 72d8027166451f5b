"""Deterministic, resumable host-side batching (numpy).

``train_batch(split, global_batch_size, seed, step)`` is a pure function of ``(seed, step)``: the
permutation of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(N)`` and step ``s``
takes slice ``s % steps_per_epoch`` of the permutation of epoch ``s // steps_per_epoch`` (the
incomplete last batch is dropped). Resuming from a checkpoint therefore needs only the step number:
the batch at step ``s`` never depends on what was drawn before.

In a multi-process run (``jax.process_count() > 1``) every process calls the same function with its
own ``process_index`` and gets its contiguous ``1/process_count`` slice of the global batch;
concatenating the slices in process order gives the single-process global batch.

``eval_batches`` walks a split in order and pads the last batch (``'mask'`` marks real rows), so
every batch has the same shape and a jit-compiled eval step compiles once.

Both index ``split.x`` with the rows of the (local) batch only, so a lazy ``split.x``
(``sources.base.LazyArray``) decodes just those files, on this process only. ``'x'`` is float32:
uint8 inputs (the images / videos / volumes of the file sources) are scaled to [0, 1] by ``1/255``;
float inputs (the bundled datasets) pass unchanged. ``train_batch(..., scale=False)`` keeps uint8
``'x'`` as uint8 (a quarter of the bytes to copy to the device); :data:`UINT8_UNIT` then maps it to
the same float32 values on the device (``train.step.unit_float``), bit for bit: a table lookup, as
XLA compiles ``x / 255`` into a multiplication by ``1/255``, which rounds 126 of the 256 values
differently.

``train_batch(..., crop=HostCrop(...))`` (the trainer's ``data.crop_from='full'``) takes SimCLR's
random-resized crop on the host, from the whole file, once per view: ``'x'`` is then
``[b, views, *size, C]``. The boxes of row ``i`` at ``step`` come from
``np.random.default_rng([seed, CROP_TAG, step, i])`` (``i`` its row of the split), so a batch is still
a pure function of ``(seed, step)`` and a row's crops do not depend on the process layout.

Cost (CPU time per image, one thread, page cache warm; ``benchmarks/input_pipeline.py``, recorded
in docs/benchmarks.md; this project's shared 2-core machine, where repeated runs differ by up to
~30 %): on 390 x 400 JPEGs -> 224 x 224 the full-image crop of two views costs 2.1-2.2 ms against
1.9 ms for the default path (the second crop+resize is mostly paid for by the smaller boxes, 8-100 %
of the area); on 1200 x 1600 photos 7.1 ms against 15.0 ms (12.6 ms without ``Image.draft``, which
decodes at 1/2..1/8 scale when every box allows it). The device then receives ``views`` images per
row instead of one, and skips its own crop.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from contrastive_jax.data.demo import Split
from contrastive_jax.data.sources import base
from contrastive_jax.data.sources import images

CROP_TAG = 0xC20  # folded into the seed of the host crops' generators
CROP_FROM = ('decoded', 'full')  # the trainer's `data.crop_from`


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or int(value) != value or value <= 0:
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  return int(value)


def _local_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch that belong to ``process_index``."""
  process_index, process_count = base.check_process(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be divisible by '
                     f'process_count={process_count}.')
  local = global_batch_size // process_count
  return slice(int(process_index) * local, (int(process_index) + 1) * local)


# ``UINT8_UNIT[v]`` is the float32 that ``take_rows`` makes of the uint8 value ``v`` (v / 255).
UINT8_UNIT = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
UINT8_UNIT.flags.writeable = False


def take_rows(x, idx: np.ndarray, scale: bool = True) -> np.ndarray:
  """float32 rows ``idx`` of ``x`` (numpy or lazy array); uint8 is scaled to [0, 1] by 1/255.

  Only the rows in ``idx`` are read (decoded), in the order given; repeats are allowed. ``scale``
  False: uint8 rows stay uint8 (to be scaled on the device by :data:`UINT8_UNIT`).
  """
  rows = np.asarray(x[np.asarray(idx, np.int64)])
  if rows.dtype == np.uint8 and not scale:
    return rows
  if rows.dtype == np.uint8:
    return rows.astype(np.float32) / np.float32(255.0)
  return rows.astype(np.float32, copy=False)


@dataclasses.dataclass(frozen=True)
class HostCrop:
  """SimCLR's random-resized crop (App. A) taken on the host from the whole file, ``views`` times.

  ``size``: ``(height, width)`` of every crop; ``scale`` / ``ratio``: the area fraction and aspect
  ``w / h`` ranges of ``images.sample_box``; ``draft``: JPEG reduced-scale decoding
  (``images.random_crops``).
  """
  size: tuple
  views: int = 2
  scale: tuple = (0.08, 1.0)
  ratio: tuple = (3 / 4, 4 / 3)
  draft: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'size', images.check_size(self.size))
    _check_positive_int('views', self.views)
    lo, hi = (float(v) for v in self.scale)
    r0, r1 = (float(v) for v in self.ratio)
    if not (0 < lo <= hi <= 1 and 0 < r0 <= r1):
      raise ValueError(f'HostCrop needs 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], '
                       f'got scale={self.scale!r}, ratio={self.ratio!r}.')

  def rows(self, x, idx: np.ndarray, seed: int, step: int) -> np.ndarray:
    """uint8 ``[len(idx), views, *size, C]``: the crops of the rows ``idx`` of the lazy file array
    ``x`` at ``step`` (row ``i``'s boxes from ``default_rng([seed, CROP_TAG, step, i])``)."""
    if not isinstance(x, base.LazyArray):
      raise ValueError('crop_from=\'full\' crops the image files themselves: the training split must be '
                       f'a lazy file array (an image source such as csv_images), got {type(x).__name__}.')
    channels = x.item_shape[-1] if len(x.item_shape) == 3 else None

    def crop(path, row):
      rng = np.random.default_rng([int(seed), CROP_TAG, int(step), int(row)])
      return images.random_crops(path, rng, self.size, self.views, self.scale, self.ratio,
                                 channels, self.draft)

    return np.stack(x.map_files(idx, crop))


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Number of full batches in one epoch (the incomplete last batch is dropped).

  Raises:
    ValueError: non-positive ``global_batch_size``, or ``global_batch_size > num_examples`` (zero
      steps).
  """
  global_batch_size = _check_positive_int('global_batch_size', global_batch_size)
  if int(num_examples) != num_examples or num_examples < 0:
    raise ValueError(f'num_examples must be a non-negative integer, got {num_examples!r}.')
  steps = int(num_examples) // global_batch_size
  if steps == 0:
    raise ValueError(f'global_batch_size={global_batch_size} is larger than the split '
                     f'(num_examples={num_examples}): an epoch would have no full batch.')
  return steps


def train_batch(split: Split, global_batch_size: int, seed: int, step: int, *,
                process_index: int = 0, process_count: int = 1,
                scale: bool = True, crop: HostCrop | None = None) -> dict[str, np.ndarray]:
  """The training batch at ``step``: a pure function of ``(seed, step)``.

  Args:
    split: the training split.
    global_batch_size: examples per step summed over all processes.
    seed: data-order seed.
    step: global step (>= 0); ``epoch = step // steps_per_epoch``.
    process_index: this process (``jax.process_index()``).
    process_count: number of processes (``jax.process_count()``).
    scale: False keeps a uint8 ``'x'`` as uint8 (see :func:`take_rows`).
    crop: None, or :class:`HostCrop`: ``'x'`` holds its random crops of each row's whole file,
      ``[b, views, *crop.size, C]`` (module docstring).

  Returns:
    ``{'x': float32 [b, ...], 'y': float32 [b]}`` with ``b = global_batch_size // process_count``
    (``'x'`` uint8 when ``scale`` is False and the split's ``x`` is uint8).
    (Values computed from the training labels, e.g. AdaCon's ECDF, are applied on device: see
    ``losses.registry``.)
  """
  num = len(split.y)
  spe = steps_per_epoch(num, global_batch_size)
  local = _local_slice(global_batch_size, process_index, process_count)
  if isinstance(step, bool) or int(step) != step or step < 0:
    raise ValueError(f'step must be a non-negative integer, got {step!r}.')
  epoch, within = divmod(int(step), spe)
  perm = np.random.default_rng([int(seed), epoch]).permutation(num)
  idx = perm[within * global_batch_size:(within + 1) * global_batch_size][local]
  if crop is None:
    x = take_rows(split.x, idx, scale)
  else:
    x = crop.rows(split.x, idx, seed, step)
    x = x if not scale else x.astype(np.float32) / np.float32(255.0)
  return {'x': x, 'y': np.asarray(split.y[idx], np.float32)}


def eval_batches(split: Split, global_batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Walks ``split`` in order in batches of ``global_batch_size`` (this process's slice of each).

  The last batch is padded to full size by repeating the split's first example; ``'mask'`` is 1 for
  real rows and 0 for padding, so metrics are ``sum(mask * err) / sum(mask)``. Unlike
  ``train_batch``, a batch larger than the split is allowed here (one padded batch). Arguments are
  checked when ``eval_batches`` is called, not when the iterator is first advanced.

  Yields:
    ``{'x': float32 [b, ...], 'y': float32 [b], 'mask': float32 [b]}`` (uint8 ``x`` scaled by
    1/255; only the batch's rows of ``split.x`` are read),
    ``b = global_batch_size // process_count``.
  """
  global_batch_size = _check_positive_int('global_batch_size', global_batch_size)
  local = _local_slice(global_batch_size, process_index, process_count)
  num = len(split.y)
  if num == 0:
    raise ValueError('split is empty: nothing to evaluate.')
  y = np.asarray(split.y, np.float32)

  def generate() -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, num, global_batch_size):
      idx = np.arange(start, start + global_batch_size)
      real = idx < num
      idx = np.where(real, idx, 0)[local]
      yield {'x': take_rows(split.x, idx), 'y': y[idx], 'mask': real[local].astype(np.float32)}

  return generate()
