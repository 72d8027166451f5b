"""Decoding image files (PNG / JPEG / BMP / TIFF, DICOM, NPY) into uint8 ``[H, W, C]`` arrays.

Host-side decoding only: resizing to a fixed size happens here so that a batch stacks; augmentation
happens on device (``contrastive_jax.data.augment``).

* PNG / JPEG / BMP / TIFF are read with Pillow, DICOM with pydicom (``pixel_array`` after the
  modality LUT, RescaleSlope / RescaleIntercept; MONOCHROME1 is inverted so that bone is bright as in
  MONOCHROME2), ``.npy`` with ``np.load(allow_pickle=False)``.
* ``to_uint8``: uint8 stays; bool -> {0, 255}; floats already in [0, 1] -> ``round(255 x)``; any other
  range (uint16 X-rays, CT Hounsfield units) -> per-image min-max scaling to [0, 255] (a constant
  image becomes 0). Radiographs such as AdaCon's hip X-rays (Sec. IV-A) are stored at 12-16 bits;
  min-max keeps their full contrast in 8 bits.
* ``fit_image``: channel conversion (grey -> RGB by repetition, RGB -> grey by the ITU-R BT.601
  luma weights 0.299 / 0.587 / 0.114), then a centre crop to the target aspect ratio
  (``resize='crop'``, default) or none (``'stretch'``), then a bilinear (anti-aliased) resize. AdaCon
  resizes its square femur crops to 128 x 128 (Sec. IV-A); DIR benchmarks use 224 x 224.
* ``ImageDecoder(draft=True)`` (off by default: it changes the pixels): a JPEG much larger than the
  target is decoded by libjpeg at the smallest scale 1/2, 1/4 or 1/8 at which the centre crop still
  spans at least ``size`` (``Image.draft``), then fitted as above. On 1200 x 1600 photos -> 224 x 224
  it took 4.2 ms of CPU per image instead of 15.0 ms (docs/benchmarks.md).
* ``random_crops``: SimCLR's random-resized crop (Chen et al. 2020,
  App. A; torchvision's ``RandomResizedCrop``) taken from the *whole* file, several views from one
  decode, for ImageNet-style sets (``data.crop_from='full'``, see ``data.pipeline.HostCrop``). The
  boxes come from a numpy generator the caller seeds (a pure function of seed, step and row); a
  JPEG is decoded at the smallest libjpeg scale (``Image.draft``: 1/2, 1/4, 1/8) that keeps every
  box at least at the output size, and each box is cropped and resized in one PIL call
  (``Image.resize(box=...)``, bilinear, anti-aliased).

Errors name the file: a missing file raises ``FileNotFoundError``, anything undecodable a
``ValueError``. ``check_image_file`` is the cheaper load-time check of a file's header and
completeness (a truncated file fails it; sources run it over every split before training).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from contrastive_jax.data.sources import base

PIL_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.gif')
DICOM_SUFFIXES = ('.dcm', '.dicom')
NPY_SUFFIXES = ('.npy',)
SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NPY_SUFFIXES
RESIZE_MODES = ('crop', 'stretch')

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def _read_pil(path: str, draft_size: Sequence[int] | None = None,
              resize: str = 'crop') -> np.ndarray:
  """``draft_size``: ``(height, width)`` the decoded image (after ``resize``'s centre crop) must
  still cover; a JPEG is then decoded at the smallest libjpeg scale that does (``Image.draft``)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    if draft_size is not None and image.format == 'JPEG':
      (width, height), (out_h, out_w) = image.size, draft_size
      if resize == 'crop':  # the centre crop with the target's aspect ratio
        crop_h, crop_w = min(height, width * out_h / out_w), min(width, height * out_w / out_h)
      else:
        crop_h, crop_w = height, width
      factor = min(crop_h / out_h, crop_w / out_w)
      if factor >= 2:
        image.draft(image.mode, (int(np.ceil(width / factor)), int(np.ceil(height / factor))))
    image.load()
    if image.mode in ('P', 'PA', 'RGBA', 'LA', 'CMYK', 'YCbCr', 'HSV', '1'):
      image = image.convert('L' if image.mode in ('LA', '1') else 'RGB')
    return np.asarray(image)


def _read_dicom(path: str) -> np.ndarray:
  import pydicom  # pylint: disable=g-import-not-at-top
  from pydicom.pixels import apply_modality_lut  # pylint: disable=g-import-not-at-top
  ds = pydicom.dcmread(path)
  if 'PixelData' not in ds:
    raise ValueError('the DICOM file has no PixelData element')
  pixels = ds.pixel_array
  if int(getattr(ds, 'NumberOfFrames', 1) or 1) > 1:
    raise ValueError(f'multi-frame DICOM ({ds.NumberOfFrames} frames) where one image was expected')
  pixels = apply_modality_lut(pixels, ds)
  if getattr(ds, 'PhotometricInterpretation', '') == 'MONOCHROME1':
    pixels = pixels.max() - pixels  # MONOCHROME1: the minimum is white.
  return np.asarray(pixels)


def _read_npy(path: str) -> np.ndarray:
  return np.load(path, allow_pickle=False)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Decodes one image file into its native dtype, ``[H, W]`` or ``[H, W, C]``.

  Raises:
    FileNotFoundError: ``path`` does not exist (message names it).
    ValueError: unknown suffix, or the file cannot be decoded (message names the file and why).
  """
  path = base.require_file(path, 'image file')
  suffix = os.path.splitext(path)[1].lower()
  if suffix in PIL_SUFFIXES:
    reader = _read_pil
  elif suffix in DICOM_SUFFIXES:
    reader = _read_dicom
  elif suffix in NPY_SUFFIXES:
    reader = _read_npy
  else:
    raise ValueError(f'{path}: unknown image file type {suffix!r}; expected one of {SUFFIXES}.')
  try:
    return reader(path)
  except Exception as exc:  # pylint: disable=broad-except  # Pillow / pydicom raise many types.
    raise base.decode_error(path, exc) from exc


def _check_pil(path: str) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    if image.format == 'PNG':
      image.verify()  # Every chunk's CRC up to IEND, without inflating: fails on a truncated file.
      return
    if image.format == 'JPEG':
      image.draft(None, (1, 1))  # libjpeg's 1/8-scale decode: still reads every entropy-coded byte.
    image.load()


def _check_npy(path: str) -> None:
  np.load(path, mmap_mode='r', allow_pickle=False)  # Header; a short file fails the mapping.


def check_image_file(path: str | os.PathLike) -> None:
  """Checks that an image file exists, is of a known type and is complete, mostly without decoding.

  Cheaper than ``read_image`` where the format allows, while still failing on a truncated file:
  PNG: ``verify()`` (chunk CRCs up to the IEND chunk; no inflate); JPEG: a reduced-size (1/8 scale)
  decode, which still reads every byte; NPY: the header and the file size (memory map); DICOM and
  the other Pillow formats: a full read.

  Raises:
    FileNotFoundError: ``path`` does not exist (message names it).
    ValueError: unknown suffix, or a corrupt or truncated file (message names the file and why).
  """
  path = base.require_file(path, 'image file')
  suffix = os.path.splitext(path)[1].lower()
  if suffix in PIL_SUFFIXES:
    checker = _check_pil
  elif suffix in DICOM_SUFFIXES:
    checker = _read_dicom
  elif suffix in NPY_SUFFIXES:
    checker = _check_npy
  else:
    raise ValueError(f'{path}: unknown image file type {suffix!r}; expected one of {SUFFIXES}.')
  try:
    checker(path)
  except Exception as exc:  # pylint: disable=broad-except  # Pillow / pydicom raise many types.
    raise base.decode_error(path, exc) from exc


def to_uint8(image: np.ndarray, name: str = 'image') -> np.ndarray:
  """Maps an image of any numeric dtype to uint8 (see the module docstring for the rule).

  Raises:
    ValueError: non-numeric data or non-finite values (NaN / inf), naming ``name``.
  """
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  if image.dtype == bool:
    return image.astype(np.uint8) * 255
  if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
    raise ValueError(f'{name}: image data must be numeric, got dtype {image.dtype}.')
  values = image.astype(np.float64)
  if not np.all(np.isfinite(values)):
    bad = int(np.count_nonzero(~np.isfinite(values)))
    raise ValueError(f'{name}: {bad} non-finite pixel value(s) (NaN or inf).')
  if values.size == 0:
    raise ValueError(f'{name}: empty image of shape {image.shape}.')
  low, high = float(values.min()), float(values.max())
  if np.issubdtype(image.dtype, np.floating) and low >= 0.0 and high <= 1.0:
    return np.round(values * 255.0).astype(np.uint8)
  if high == low:
    return np.zeros(image.shape, np.uint8)
  return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def as_hwc(image: np.ndarray, name: str = 'image') -> np.ndarray:
  """``[H, W]`` -> ``[H, W, 1]``; ``[H, W, 4]`` (RGBA) -> ``[H, W, 3]``; others must be HWC, C in 1/3."""
  if image.ndim == 2:
    return image[..., None]
  if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
    return image[..., :3]
  raise ValueError(f'{name}: expected a 2-D image [H, W] or [H, W, C] with C in (1, 3, 4), got '
                   f'shape {image.shape}.')


def fit_image(image: np.ndarray, size: Sequence[int] | None, channels: int | None,
              resize: str = 'crop', name: str = 'image') -> np.ndarray:
  """uint8 ``[H, W, C]`` -> uint8 ``[*size, channels]`` (``None`` keeps that part as it is)."""
  image = as_hwc(image, name)
  if channels is not None and image.shape[-1] != channels:
    if channels == 3:
      image = np.repeat(image, 3, axis=-1)
    elif channels == 1:
      image = np.round(image.astype(np.float64) @ _LUMA)[..., None].astype(np.uint8)
    else:
      raise ValueError(f'channels must be 1 or 3, got {channels}.')
  if size is None:
    return image
  height, width = size
  if resize == 'crop':
    h, w = image.shape[:2]
    # Largest centred window with the target aspect ratio (height / width).
    crop_h, crop_w = min(h, int(round(w * height / width))), min(w, int(round(h * width / height)))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    image = image[top:top + crop_h, left:left + crop_w]
  elif resize != 'stretch':
    raise ValueError(f'resize must be one of {RESIZE_MODES}, got {resize!r}.')
  if image.shape[:2] == (height, width):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # One resize of the whole image ('L' or 'RGB'): Pillow resamples each band with the same fixed-point
  # coefficients, so it equals resizing the channels one by one, in ~3/4 of the time.
  grey = image.shape[-1] == 1
  resized = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., 0] if grey else image))
                       .resize((width, height), Image.BILINEAR))
  return resized[..., None] if grey else resized


def sample_box(rng: np.random.Generator, height: int, width: int, scale=(0.08, 1.0),
               ratio=(3 / 4, 4 / 3), attempts: int = 10) -> tuple[int, int, int, int]:
  """``(top, left, h, w)`` of a random resized crop of a ``height x width`` image, from ``rng``.

  torchvision's ``RandomResizedCrop.get_params`` (as ``transforms.sample_crop_box`` on device): up
  to ``attempts`` draws of an area fraction ``~U(scale)`` and a log-uniform aspect ratio ``w / h``
  in ``ratio``; the first box that fits is placed uniformly; if none fits, the central crop with
  the aspect ratio clamped to ``ratio``. A fixed number of draws per box, so the generator's state
  after a box does not depend on the image size.
  """
  area = height * width * rng.uniform(scale[0], scale[1], attempts)
  aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), attempts))
  place = rng.uniform(size=(attempts, 2))
  ws, hs = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
  for w, h, (u, v) in zip(ws, hs, place):
    if 0 < w <= width and 0 < h <= height:
      h, w = int(h), int(w)
      return (min(int(u * (height - h + 1)), height - h), min(int(v * (width - w + 1)), width - w),
              h, w)
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _open_for_crops(path: str, channels: int | None):
  """A PIL image of ``path`` not yet decoded (a Pillow file) or an already decoded array image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if os.path.splitext(path)[1].lower() in PIL_SUFFIXES:
    return Image.open(path)
  image = fit_image(to_uint8(read_image(path), path), None, channels, name=path)
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def random_crops(path, rng: np.random.Generator, size: Sequence[int], views: int = 2,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), channels: int | None = 3,
                 draft: bool = True) -> np.ndarray:
  """uint8 ``[views, *size, C]``: ``views`` random resized crops of the whole image ``path``.

  The boxes (:func:`sample_box`, in the file's full-resolution pixels, drawn before decoding) depend
  on ``rng`` and the image size only. With ``draft`` a JPEG is decoded by libjpeg at the smallest
  scale 1/s (s in 1, 2, 4, 8) at which every box still spans at least ``size`` pixels; the boxes are
  then mapped to the reduced image (the same region of the photo, to within a source pixel).
  ``channels``: 3 (RGB; grey files repeated), 1 (luma, ITU-R 601) or None (as stored).

  Raises:
    FileNotFoundError: ``path`` does not exist. ValueError: it cannot be decoded (both name it).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = base.require_file(os.fspath(path), 'image file')
  out_h, out_w = check_size(size)
  try:
    image = _open_for_crops(path, channels)
    with image:
      width, height = image.size
      boxes = [sample_box(rng, height, width, scale, ratio) for _ in range(int(views))]
      if draft and image.format == 'JPEG':
        factor = min(min(h / out_h, w / out_w) for _, _, h, w in boxes)
        if factor >= 2:
          image.draft(image.mode, (int(np.ceil(width / factor)), int(np.ceil(height / factor))))
      image.load()
      if image.mode.startswith('I') or image.mode == 'F':  # 16/32-bit grey: to_uint8's scaling
        image = Image.fromarray(to_uint8(np.asarray(image), path))
      elif image.mode not in ('RGB', 'L'):
        image = image.convert('L' if image.mode in ('LA', '1') else 'RGB')
      if channels == 3 and image.mode != 'RGB':
        image = image.convert('RGB')
      elif channels == 1 and image.mode != 'L':
        image = image.convert('L')
      sy, sx = image.size[1] / height, image.size[0] / width
      crops = [np.asarray(image.resize((out_w, out_h), Image.BILINEAR,
                                       box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy)))
               for top, left, h, w in boxes]
  except Exception as exc:  # pylint: disable=broad-except  # Pillow / pydicom raise many types.
    raise base.decode_error(path, exc) from exc
  out = np.stack(crops)
  return out[..., None] if out.ndim == 3 else out


def check_size(size) -> tuple[int, int] | None:
  """``None``, an int ``s`` (-> ``(s, s)``) or ``(height, width)``; ``ValueError`` otherwise."""
  if size is None:
    return None
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    size = (size, size)
  try:
    height, width = (int(s) for s in size)
    ok = (height, width) == tuple(size) and height > 0 and width > 0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f'image_size must be a positive int or a (height, width) pair, got {size!r}.')
  return height, width


class ImageDecoder:
  """``path -> uint8 [H, W, C]``: ``read_image``, ``to_uint8``, ``fit_image`` (picklable);
  ``draft``: JPEGs decoded at a reduced scale when much larger than ``size`` (module docstring)."""

  def __init__(self, size: Sequence[int] | int | None = None, channels: int | None = None,
               resize: str = 'crop', draft: bool = False):
    if channels not in (None, 1, 3):
      raise ValueError(f'channels must be 1, 3 or None (as stored), got {channels!r}.')
    if resize not in RESIZE_MODES:
      raise ValueError(f'resize must be one of {RESIZE_MODES}, got {resize!r}.')
    self.size = check_size(size)
    self.channels = channels
    self.resize = resize
    self.draft = bool(draft)

  def __call__(self, path) -> np.ndarray:
    path = os.fspath(path)
    if self.draft and self.size is not None and os.path.splitext(path)[1].lower() in PIL_SUFFIXES:
      path = base.require_file(path, 'image file')
      try:
        raw = _read_pil(path, self.size, self.resize)
      except Exception as exc:  # pylint: disable=broad-except  # Pillow raises many types.
        raise base.decode_error(path, exc) from exc
    else:
      raw = read_image(path)
    image = to_uint8(raw, path)
    return fit_image(image, self.size, self.channels, self.resize, path)

  def check(self, path) -> None:
    """``check_image_file(path)``: the cheap load-time check of ``base.LazyArray.check_files``."""
    check_image_file(os.fspath(path))
