"""EchoNet-Dynamic (Ouyang et al. 2020): apical-4-chamber echo videos, target = ejection fraction.

AdaCon Sec. IV-B: "Clips of 32 frames, sampled from the video at a rate of 1 in every 2 frames, were
used as the model input", the videos are "re-scaled to 112x112 pixels", "Training, validation, and
test splits have already been prepared" and "Frame jitter is applied as part of the augmentation
process".

Layout of the release (``root``)::

    FileList.csv   FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split
    Videos/<FileName>.avi

``FileName`` comes without the ``.avi`` suffix in the release (it is appended when missing);
``Split`` is ``TRAIN`` / ``VAL`` / ``TEST`` (any case). Only ``FileName``, the target column and
``Split`` are required; when ``FrameHeight`` / ``FrameWidth`` / ``NumberOfFrames`` are present the
decoded video is checked against them.

Clips (read with OpenCV, ``cv2.VideoCapture``; BGR is converted to RGB):

* val / test: the *first clip*, raw frames ``0, period, ..., (frames - 1) * period``:
  uint8 ``[N, frames, size, size, 3]``, a deterministic function of the index.
* train: a fixed-length decoded *window* of ``train_window`` frames taken every ``period`` raw
  frames from frame 0: uint8 ``[N, train_window, size, size, 3]``. The frame jitter is drawn on
  device: a clip is ``window[s : s + frames]`` with ``s ~ U{0 .. train_window - frames}``, i.e.
  ``contrastive_jax.data.video.sample_clip(key, window, length=frames, period=1)``; its start thus
  moves in steps of ``period`` raw frames. ``train_window = frames`` gives the first clip (no
  jitter).

As in EchoNet's reference ``Echo`` dataset, a video shorter than the span is padded at the end with
black frames. Frames whose size differs from ``size`` are resized (``cv2.INTER_AREA``).
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.demo import Split
from contrastive_jax.data.sources import base

SPLITS = {'train': 'TRAIN', 'val': 'VAL', 'test': 'TEST'}
TARGETS = ('EF', 'ESV', 'EDV')
_SHAPE_COLUMNS = ('FrameHeight', 'FrameWidth', 'NumberOfFrames')


def _positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  return int(value)


class VideoDecoder:
  """``(path, expected) -> uint8 [count, size, size, 3]``: every ``period``-th frame from frame 0.

  Picklable (a class, not a closure). ``expected`` is ``(height, width, num_frames)`` from
  ``FileList.csv``, entries ``None`` when unknown.
  """

  def __init__(self, count: int, period: int, size: int):
    self.count = _positive_int('frames', count)
    self.period = _positive_int('period', period)
    self.size = _positive_int('size', size)

  def __call__(self, path: str, expected: Sequence[int | None] = (None, None, None)) -> np.ndarray:
    import cv2  # pylint: disable=g-import-not-at-top
    base.require_file(path, 'EchoNet video')
    height, width, num_frames = expected
    capture = cv2.VideoCapture(path)
    try:
      if not capture.isOpened():
        raise base.decode_error(path, 'OpenCV cannot open it as a video (corrupt or not an AVI)')
      last = (self.count - 1) * self.period  # the last raw frame the clip needs
      frames, position = [], 0
      while position <= last and capture.grab():
        if position % self.period == 0:
          ok, frame = capture.retrieve()
          if not ok or frame is None:
            raise base.decode_error(path, f'frame {position} cannot be decoded')
          frames.append(self._fit(frame, path, height, width))
        position += 1
    finally:
      capture.release()
    if not frames:
      raise base.decode_error(path, 'no frame could be decoded')
    if num_frames is not None and position < min(num_frames, last + 1):
      raise base.decode_error(path, f'the video ends after {position} frames, but FileList.csv '
                              f'gives NumberOfFrames = {num_frames}')
    clip = np.zeros((self.count, self.size, self.size, 3), np.uint8)  # black padding at the end
    clip[:len(frames)] = np.stack(frames)
    return clip

  def _fit(self, frame: np.ndarray, path: str, height, width) -> np.ndarray:
    import cv2  # pylint: disable=g-import-not-at-top
    if frame.ndim == 2:
      frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] != 3:
      raise ValueError(f'{path}: expected colour frames [H, W, 3], got shape {frame.shape}.')
    if (height is not None and frame.shape[0] != height) or (
        width is not None and frame.shape[1] != width):
      raise ValueError(f'{path}: decoded frames are {frame.shape[0]}x{frame.shape[1]} (HxW) but '
                       f'FileList.csv gives FrameHeight x FrameWidth = {height}x{width}.')
    if frame.shape[:2] != (self.size, self.size):
      frame = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB


class _VideoLoader:
  """``i -> decoder(paths[i], expected[i])`` with ``describe(i) = paths[i]`` (picklable)."""

  def __init__(self, paths: Sequence[str], expected: Sequence[tuple], decoder: VideoDecoder):
    self.paths = list(paths)
    self.expected = list(expected)
    self.decoder = decoder

  def __call__(self, i: int) -> np.ndarray:
    return self.decoder(self.paths[i], self.expected[i])

  def check(self, i: int) -> None:
    """The cheap load-time check of a training video: it opens and its first frame decodes."""
    import cv2  # pylint: disable=g-import-not-at-top
    path = base.require_file(self.paths[i], 'EchoNet video')
    capture = cv2.VideoCapture(path)
    try:
      if not capture.isOpened():
        raise base.decode_error(path, 'OpenCV cannot open it as a video (corrupt or not an AVI)')
      ok, frame = capture.read()
      if not ok or frame is None:
        raise base.decode_error(path, 'no frame could be decoded')
    finally:
      capture.release()

  def describe(self, i: int) -> str:
    return self.paths[i]


def read_file_list(path: str | os.PathLike, target: str = 'EF') -> list[dict[str, str]]:
  """The rows of ``FileList.csv`` as dicts; checks the required columns.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: missing ``FileName`` / ``Split`` / ``target`` column, or no rows.
  """
  path = base.require_file(path, 'EchoNet FileList.csv')
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    rows = [{k.strip(): (v or '').strip() for k, v in row.items() if k is not None}
            for row in reader]
  missing = [c for c in ('FileName', target, 'Split') if c not in columns]
  if missing:
    raise ValueError(f'{path}: missing column(s) {missing}; found {columns}.')
  if not rows:
    raise ValueError(f'{path}: no rows.')
  return rows


def _optional_int(row: dict[str, str], column: str, csv_path: str, line: int) -> int | None:
  text = row.get(column, '')
  if not text:
    return None
  try:
    value = float(text)
  except ValueError as exc:
    raise ValueError(f'{csv_path} line {line}: {column} = {text!r} is not a number.') from exc
  if not np.isfinite(value) or value != int(value) or value < 1:
    raise ValueError(f'{csv_path} line {line}: {column} = {text!r} must be a positive integer.')
  return int(value)


def load_echonet(root: str | os.PathLike, *, seed: int = 0, frames: int = 32, period: int = 2,
                 size: int = 112, train_window: int | None = None, target: str = 'EF',
                 workers: int = 1, check_files: bool = True) -> Dataset:
  """EchoNet-Dynamic as a ``Dataset`` of lazy uint8 clips and float32 targets.

  Args:
    root: the directory holding ``FileList.csv`` and ``Videos/``.
    seed: unused (the splits are the release's ``Split`` column); kept for the common source
      signature.
    frames: frames per clip (AdaCon Sec. IV-B: 32).
    period: take every ``period``-th raw frame (AdaCon Sec. IV-B: 2).
    size: frames are ``size x size`` (AdaCon Sec. IV-B: 112; other sizes are resized).
    train_window: frames (every ``period``-th) exposed per training video, ``>= frames``; the
      on-device frame jitter picks ``frames`` consecutive ones. Default ``2 * frames``.
    target: ``'EF'`` (default, AdaCon's LVEF in %), ``'ESV'`` or ``'EDV'``.
    workers: threads decoding the videos of one batch.
    check_files: read the videos when loading, so that a damaged one fails before training (named
      with its split): the val and test clips are decoded in full (what every evaluation decodes
      anyway; a truncated video is caught by its frame count), training videos must open and
      decode their first frame (a full decode of the training windows would cost an epoch).

  Returns:
    ``Dataset(name='echonet', kind='video')``; ``x`` are ``base.LazyArray``s of uint8 ``[N, T, size,
    size, 3]`` (``T = train_window`` for train, ``frames`` for val / test, see the module
    docstring), ``y`` float32 ``[N]``.

  Raises:
    FileNotFoundError: no ``FileList.csv`` or a listed video missing (named).
    ValueError: bad arguments, unknown ``Split`` values, non-finite targets, an empty split; with
      ``check_files`` a corrupt or truncated video (named with its split).
  """
  if target not in TARGETS:
    raise ValueError(f'target must be one of {TARGETS}, got {target!r}.')
  frames = _positive_int('frames', frames)
  period = _positive_int('period', period)
  size = _positive_int('size', size)
  train_window = 2 * frames if train_window is None else _positive_int('train_window', train_window)
  if train_window < frames:
    raise ValueError(f'train_window must be >= frames = {frames}, got {train_window}.')
  del seed  # The release fixes the splits.
  root = base.require_dir(root, 'EchoNet-Dynamic root')
  csv_path = os.path.join(root, 'FileList.csv')
  rows = read_file_list(csv_path, target)

  by_split = {name: ([], [], []) for name in SPLITS}  # paths, expected shapes, raw labels
  wanted = {v: k for k, v in SPLITS.items()}
  missing = []
  for line, row in enumerate(rows, start=2):
    split = row['Split'].upper()
    if split not in wanted:
      raise ValueError(f'{csv_path} line {line}: Split = {row["Split"]!r}; expected one of '
                       f'{sorted(wanted)}.')
    name = row['FileName']
    if not name:
      raise ValueError(f'{csv_path} line {line}: empty FileName.')
    if not os.path.splitext(name)[1]:
      name += '.avi'
    path = os.path.join(root, 'Videos', name)
    if not os.path.isfile(path):
      missing.append(path)
    paths, expected, labels = by_split[wanted[split]]
    paths.append(path)
    expected.append(tuple(_optional_int(row, c, csv_path, line) for c in _SHAPE_COLUMNS))
    labels.append(row[target] if row[target] else 'nan')
  if missing:
    raise FileNotFoundError(f'EchoNet video not found: {missing[0]} ({len(missing)} of the videos '
                            f'listed in {csv_path} are missing).')

  splits = {}
  for name, (paths, expected, labels) in by_split.items():
    if not paths:
      raise ValueError(f'{csv_path}: the {name} split is empty (no row with Split = '
                       f'{SPLITS[name]}).')
    y = base.validate_labels(labels, what=f'column {target!r} of {csv_path} ({name} split)',
                             names=paths)
    count = train_window if name == 'train' else frames
    loader = _VideoLoader(paths, expected, VideoDecoder(count, period, size))
    x = base.LazyArray(loader, len(paths), (count, size, size, 3), np.uint8,
                       describe=loader.describe, workers=workers)
    splits[name] = Split(x=x, y=y)
  if check_files:
    base.check_split_files('echonet', splits, decode=('val', 'test'))
  return Dataset(name='echonet', kind='video', **splits)
