"""CHAOS MR (Kavur et al. 2021), T2-SPIR: the evaluation data of the thesis' Ch. 7 (CoWPro).

Thesis Sec. 7 (specs/THESIS_CH5_7.md): "CHAOS T2-SPIR MR, 20 scans", organ labels liver, right
kidney, left kidney, spleen. Layout of the release (``root`` may be the CHAOS root holding
``Train_Sets/MR``, or ``Train_Sets``, or the ``MR`` directory itself)::

    Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm   one slice per file
    Train_Sets/MR/<patient>/T2SPIR/Ground/*.png       8-bit masks, one per slice

A slice's mask is the PNG with the DICOM's file stem (when no stem matches but the counts agree,
files are paired in sorted order). Slices are in sorted file-name order. Mask grey values follow the
CHAOS convention: liver 63 (55-70), right kidney 126 (110-135), left kidney 189 (175-200), spleen
252 (240-255), background 0; they are mapped to the organ ids 1..4 of
``contrastive_jax.projects.cowpro.data.ORGAN_IDS``; any other value is an error naming the file.

What a ``Split`` holds (a segmentation source, so ``y`` is not a scalar target):

* ``x``: uint8 ``[N, size, size, 1]`` slices. Intensities are normalised **per scan**: clipped to
  ``[min, 99.5th percentile]`` of the scan's voxels (after RescaleSlope / Intercept), scaled to
  ``[0, 255]`` and rounded (the intensity clipping of SSL-ALPNet, Ouyang et al. 2020, whose
  protocol CoWPro follows). The scan's range is computed on first use and cached.
* ``y``: float32 ``[N, size, size]`` organ label maps (0 background, 1 liver, 2 right kidney,
  3 left kidney, 4 spleen).

Slices are resized to ``size x size`` when needed (bilinear for images, nearest for masks). Both are
``base.LazyArray``s. The split is by **patient** (every slice of a scan lands in the same split):
``contrastive_jax.data.demo.split_indices`` (70/15/15) over the sorted patient ids, drawn from
``seed``, or with ``num_folds=K`` fold ``fold`` of a seeded K-fold cross-validation by patient as
``val`` and ``test`` (the thesis' 5-fold protocol, Sec. 7.5.1); ``patient_split`` returns the
patient ids of each split and ``find_scans`` the scans, so
that slices can be grouped back into scans (a split's slices are its scans' slices, scan after
scan, in ``patient_split`` order).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from contrastive_jax.data import demo
from contrastive_jax.data.sources import base

SEQUENCE = 'T2SPIR'
# (low, high, organ id): the CHAOS grey-value ranges of liver, right kidney, left kidney, spleen.
MASK_RANGES = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))
_CLIP_PERCENTILE = 99.5


@dataclasses.dataclass(frozen=True)
class Scan:
  """One CHAOS MR scan: its patient id and its slices' DICOM and mask files, in slice order."""
  patient: str
  images: tuple[str, ...]
  masks: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.images)


def _patient_dir(root: str) -> str:
  for candidate in (os.path.join(root, 'Train_Sets', 'MR'), os.path.join(root, 'MR'), root):
    if os.path.isdir(candidate) and any(
        os.path.isdir(os.path.join(candidate, d, SEQUENCE)) for d in os.listdir(candidate)):
      return candidate
  raise FileNotFoundError(f'No CHAOS MR scans under {root}: expected '
                          f'{os.path.join(root, "Train_Sets", "MR", "<patient>", SEQUENCE)}.')


def _sort_key(patient: str):
  return (0, int(patient), patient) if patient.isdigit() else (1, 0, patient)


def _pair_files(image_dir: str, mask_dir: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  images = sorted(f for f in os.listdir(image_dir) if f.lower().endswith('.dcm'))
  masks = sorted(f for f in os.listdir(mask_dir) if f.lower().endswith('.png'))
  if not images:
    raise FileNotFoundError(f'No DICOM (.dcm) slices in {image_dir}.')
  mask_by_stem = {os.path.splitext(m)[0]: m for m in masks}
  stems = [os.path.splitext(i)[0] for i in images]
  if any(s in mask_by_stem for s in stems):
    missing = [s for s in stems if s not in mask_by_stem]
    if missing:
      first = os.path.join(mask_dir, missing[0] + '.png')
      raise FileNotFoundError(f'CHAOS mask not found: {first} ({len(missing)} slice(s) of '
                              f'{image_dir} have no mask).')
    paired = [mask_by_stem[s] for s in stems]
  elif len(masks) == len(images):
    paired = masks  # no common names: pair in sorted order
  else:
    raise ValueError(f'{image_dir} has {len(images)} slices but {mask_dir} has {len(masks)} masks '
                     'and no file names in common.')
  return (tuple(os.path.join(image_dir, i) for i in images),
          tuple(os.path.join(mask_dir, m) for m in paired))


def find_scans(root: str | os.PathLike) -> list[Scan]:
  """All T2-SPIR scans under ``root`` (sorted by patient id, numerically).

  Raises:
    FileNotFoundError: no scans, a scan without ``DICOM_anon`` / ``Ground`` or without slices, a
      slice without its mask (all named).
    ValueError: slices and masks that cannot be paired.
  """
  root = base.require_dir(root, 'CHAOS root')
  mr_dir = _patient_dir(root)
  scans = []
  for patient in sorted(os.listdir(mr_dir), key=_sort_key):
    seq_dir = os.path.join(mr_dir, patient, SEQUENCE)
    if not os.path.isdir(seq_dir):
      continue
    image_dir = base.require_dir(os.path.join(seq_dir, 'DICOM_anon'), 'CHAOS DICOM directory')
    mask_dir = base.require_dir(os.path.join(seq_dir, 'Ground'), 'CHAOS mask directory')
    images, masks = _pair_files(image_dir, mask_dir)
    scans.append(Scan(patient=patient, images=images, masks=masks))
  return scans


def patient_split(patients: Sequence[str], seed: int, num_folds: int = 0,
                  fold: int = 0) -> tuple[list[str], list[str], list[str]]:
  """``(train, val, test)`` patient ids.

  ``num_folds = 0``: ``demo.split_indices`` (70/15/15) over ``patients``. ``num_folds = K >= 2``:
  K-fold cross-validation by patient (thesis Sec. 7.5.1: "one-fifth of the dataset (a fold) is used
  as a validation set while the rest is treated as a training set"): the patients are permuted by
  ``seed`` and cut into K folds whose sizes differ by at most one
  (``contrastive_jax.evaluate.crossval.kfold_indices``); fold ``fold`` is both ``val`` and
  ``test`` (the thesis reports its Dice on the validation fold), the other folds ``train``. Each
  list keeps the order of ``patients``.
  """
  patients = list(patients)
  if isinstance(num_folds, bool) or int(num_folds) != num_folds or num_folds < 0 or num_folds == 1:
    raise ValueError(f'`num_folds` must be 0 (a 70/15/15 split) or an integer >= 2; got '
                     f'{num_folds!r}.')
  if not num_folds:
    train, val, test = demo.split_indices(len(patients), seed)
    return ([patients[i] for i in train], [patients[i] for i in val], [patients[i] for i in test])
  if isinstance(fold, bool) or int(fold) != fold or not 0 <= fold < num_folds:
    raise ValueError(f'`fold` must be an integer in [0, {int(num_folds)}); got {fold!r}.')
  from contrastive_jax.evaluate import crossval  # pylint: disable=g-import-not-at-top
  held_out = crossval.kfold_indices(len(patients), int(num_folds), seed=seed)[int(fold)]
  chosen = set(held_out.tolist())
  rest = [p for i, p in enumerate(patients) if i not in chosen]
  held = [patients[i] for i in held_out]
  return rest, held, list(held)


def _read(path: str) -> np.ndarray:
  from contrastive_jax.data.sources import images  # pylint: disable=g-import-not-at-top
  return np.asarray(images.read_image(path))


def _resize(plane: np.ndarray, size: int, nearest: bool) -> np.ndarray:
  if plane.shape == (size, size):
    return plane
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mode = Image.NEAREST if nearest else Image.BILINEAR
  return np.asarray(Image.fromarray(plane).resize((size, size), mode))


def _as_plane(pixels: np.ndarray, path: str) -> np.ndarray:
  if pixels.ndim == 3 and pixels.shape[-1] in (1, 3, 4):
    if pixels.shape[-1] > 1 and np.any(pixels[..., :3] != pixels[..., :1]):
      raise ValueError(f'{path}: expected a grey-level image, got colour channels that differ.')
    pixels = pixels[..., 0]
  if pixels.ndim != 2:
    raise ValueError(f'{path}: expected a 2-D slice, got shape {pixels.shape}.')
  return pixels


def mask_to_labels(mask: np.ndarray, name: str = 'mask') -> np.ndarray:
  """CHAOS grey values -> uint8 organ ids (``MASK_RANGES``); other non-zero values are an error."""
  labels = np.zeros(mask.shape, np.uint8)
  known = mask == 0
  for low, high, organ in MASK_RANGES:
    inside = (mask >= low) & (mask <= high)
    labels[inside] = organ
    known |= inside
  if not np.all(known):
    bad = np.unique(mask[~known])
    raise ValueError(f'{name}: grey value(s) {bad[:5].tolist()} are neither background (0) nor an '
                     f'organ range of CHAOS {[(lo, hi) for lo, hi, _ in MASK_RANGES]}.')
  return labels


class _SliceTable:
  """Maps a flat slice index to ``(scan, slice)`` for the scans given (picklable)."""

  def __init__(self, scans: Sequence[Scan], size: int):
    self.scans = list(scans)
    self.size = size
    self.scan_of = np.repeat(np.arange(len(self.scans)), [len(s) for s in self.scans])
    self.slice_of = np.concatenate([np.arange(len(s)) for s in self.scans]).astype(np.int64)

  def __len__(self) -> int:
    return int(self.scan_of.shape[0])

  def locate(self, i: int) -> tuple[Scan, int, int]:
    return self.scans[self.scan_of[i]], int(self.scan_of[i]), int(self.slice_of[i])


class SliceLoader(_SliceTable):
  """``i -> uint8 [size, size, 1]``: slice ``i`` normalised with its scan's intensity range."""

  def __init__(self, scans: Sequence[Scan], size: int):
    super().__init__(scans, size)
    self._ranges: dict[int, tuple[float, float]] = {}

  def scan_range(self, scan_index: int) -> tuple[float, float]:
    """``(min, 99.5th percentile)`` of the scan's voxels (read once, then cached)."""
    if scan_index not in self._ranges:
      scan = self.scans[scan_index]
      voxels = [np.asarray(_as_plane(_read(p), p), np.float64).ravel() for p in scan.images]
      voxels = np.concatenate(voxels)
      self._ranges[scan_index] = (float(voxels.min()), float(np.percentile(voxels,
                                                                           _CLIP_PERCENTILE)))
    return self._ranges[scan_index]

  def __call__(self, i: int) -> np.ndarray:
    scan, scan_index, k = self.locate(i)
    path = scan.images[k]
    pixels = _as_plane(_read(path), path).astype(np.float64)
    low, high = self.scan_range(scan_index)
    if high > low:
      scaled = (np.clip(pixels, low, high) - low) * (255.0 / (high - low))
    else:
      scaled = np.zeros_like(pixels)
    scaled = _resize(scaled.astype(np.float32), self.size, nearest=False)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)[..., None]

  def describe(self, i: int) -> str:
    scan, _, k = self.locate(i)
    return scan.images[k]


class MaskLoader(_SliceTable):
  """``i -> float32 [size, size]`` organ ids of slice ``i`` (shape checked against its DICOM)."""

  def __call__(self, i: int) -> np.ndarray:
    import pydicom  # pylint: disable=g-import-not-at-top
    scan, _, k = self.locate(i)
    path = scan.masks[k]
    mask = _as_plane(_read(path), path)
    if not np.issubdtype(mask.dtype, np.integer):
      raise ValueError(f'{path}: mask pixels must be integers, got dtype {mask.dtype}.')
    try:
      header = pydicom.dcmread(scan.images[k], stop_before_pixels=True)
      rows, columns = int(header.Rows), int(header.Columns)
    except Exception as exc:  # pylint: disable=broad-except  # pydicom raises several types.
      raise base.decode_error(scan.images[k], exc) from exc
    if mask.shape != (rows, columns):
      raise ValueError(f'{path}: mask shape {mask.shape} differs from the shape {(rows, columns)} '
                       f'of its slice {scan.images[k]}.')
    labels = mask_to_labels(mask, path)
    return _resize(labels, self.size, nearest=True).astype(np.float32)

  def describe(self, i: int) -> str:
    scan, _, k = self.locate(i)
    return scan.masks[k]


def load_chaos(root: str | os.PathLike, *, seed: int = 0, size: int = 256, workers: int = 1,
               num_folds: int = 0, fold: int = 0) -> demo.Dataset:
  """CHAOS MR T2-SPIR slices with organ label maps, split by patient.

  Args:
    root: the CHAOS root (or its ``Train_Sets`` or ``Train_Sets/MR`` directory).
    seed: selects the patient-level split (``patient_split``).
    num_folds, fold: 0 -> the 70/15/15 split; ``K >= 2`` -> fold ``fold`` of the K-fold
      cross-validation by patient is ``val`` and ``test``, the other folds ``train``
      (``patient_split``; thesis Sec. 7.5.1: K = 5).
    size: slices and masks are ``size x size`` (CoWPro's input is 256 x 256, thesis Ch. 7 step 3).
    workers: threads decoding the slices of one batch.

  Returns:
    ``Dataset(name='chaos', kind='image')``: ``x`` uint8 ``[N, size, size, 1]``, ``y`` float32
    ``[N, size, size]`` organ ids (see the module docstring), both ``base.LazyArray``s.

  Raises:
    FileNotFoundError: no scans, missing directories or masks (named).
    ValueError: bad ``size``, fewer than 3 patients; when decoded: unreadable files, masks with
      unknown grey values or of another shape than their slice (named).
  """
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f'size must be a positive integer, got {size!r}.')
  scans = find_scans(root)
  if len(scans) < max(3, int(num_folds)):
    raise ValueError(f'CHAOS under {os.fspath(root)}: {len(scans)} {SEQUENCE} scan(s) found; a '
                     'patient-level train / val / test split needs at least 3 (and a K-fold one '
                     f'K; num_folds={num_folds}).')
  by_patient = {s.patient: s for s in scans}
  splits = {}
  for name, patients in zip(('train', 'val', 'test'),
                            patient_split([s.patient for s in scans], seed, num_folds, fold)):
    chosen = [by_patient[p] for p in patients]
    slices = SliceLoader(chosen, int(size))
    masks = MaskLoader(chosen, int(size))
    x = base.LazyArray(slices, len(slices), (size, size, 1), np.uint8, describe=slices.describe,
                       workers=workers)
    y = base.LazyArray(masks, len(masks), (size, size), np.float32, describe=masks.describe,
                       workers=workers)
    splits[name] = demo.Split(x=x, y=y)
  return demo.Dataset(name='chaos', kind='image', **splits)
