"""Per-sample image transforms: pure, jit-able functions of one image ``[H, W, C]`` and one PRNG key.

Every random transform draws its parameters from its key alone (never from the pixels), so a batch is
augmented with ``jax.vmap(fn)(keys, images)`` and one key per sample, and a video clip gets the same
spatial transform on every frame by sharing the key (``video.clip_consistent``). Hyperparameters
(sizes, probabilities, ranges) are Python values, i.e. static under ``jax.jit``. Images are float in
[0, 1]; uint8 input is converted first (``to_float``: ``x / 255``). The functions take and return
images only: a regression target is never an argument.

Geometric ops resample with one affine map and bilinear interpolation
(``jax.scipy.ndimage.map_coordinates``, pixel centres at integer coordinates): random resized crop,
flip, rotation, translation and scale (torchvision's ``RandomResizedCrop`` / ``RandomAffine``
conventions; angles in degrees, counter-clockwise). Photometric ops follow torchvision's
``ColorJitter`` (brightness, contrast, saturation, hue in a random order), ``Grayscale`` (ITU-R 601
weights), ``GaussianBlur`` (separable, reflect padding), plus cutout (DeVries & Taylor 2017),
Gaussian noise and gamma. SimCLR App. A (Chen et al. 2020) and thesis Table 4.3 compose them.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
WARP_MODES = ('constant', 'nearest', 'reflect', 'mirror', 'wrap')


# --------------------------------------------------------------------------------------------------
# checks and helpers
# --------------------------------------------------------------------------------------------------

def to_float(image: jax.Array, name: str = 'image') -> jax.Array:
  """uint8 in [0, 255] -> float32 in [0, 1]; floating input is returned unchanged."""
  image = jnp.asarray(image)
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(f'{name} must be uint8 or floating point in [0, 1], got dtype {image.dtype}.')
  return image


def check_image(image: jax.Array, name: str = 'image') -> jax.Array:
  """``to_float`` of a rank-3 ``[H, W, C]`` image; ``ValueError`` otherwise."""
  image = to_float(image, name)
  if image.ndim != 3:
    raise ValueError(f'{name} must have shape [H, W, C], got shape {image.shape}.')
  return image


def check_range(name: str, value, low: float | None = None, high: float | None = None) -> tuple:
  """A ``(lo, hi)`` pair with ``low <= lo <= hi <= high``; ``ValueError`` naming ``name`` otherwise."""
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a pair (lo, hi) of numbers, got {value!r}.') from None
  ok = lo <= hi and (low is None or lo >= low) and (high is None or hi <= high)
  if not ok or not (math.isfinite(lo) and math.isfinite(hi)):
    raise ValueError(f'{name} must be a finite pair lo <= hi within [{low}, {high}], got {value!r}.')
  return lo, hi


def check_prob(name: str, p) -> float:
  if not 0.0 <= float(p) <= 1.0:
    raise ValueError(f'{name} must be a probability in [0, 1], got {p!r}.')
  return float(p)


def check_size(name: str, size, image_shape: Sequence[int]) -> tuple[int, int]:
  """``None`` -> the image's ``(H, W)``; an int -> square; a pair -> ``(h, w)``; all positive ints."""
  if size is None:
    return int(image_shape[0]), int(image_shape[1])
  if isinstance(size, numbers.Integral) and not isinstance(size, bool):
    pair = (size, size)
  else:
    try:
      pair = tuple(size)
    except TypeError:
      pair = ()
  if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Real) or int(s) != s
                           or s <= 0 for s in pair):
    raise ValueError(f'{name} must be a positive int or a pair of positive ints, got {size!r}.')
  return int(pair[0]), int(pair[1])


def random_apply(key: jax.Array, p: float, fn: Callable[[jax.Array], jax.Array],
                 image: jax.Array) -> jax.Array:
  """``fn(image)`` with probability ``p`` (one Bernoulli draw), else ``image``; static skips at 0/1."""
  p = check_prob('p', p)
  if p == 0.0:
    return image
  if p == 1.0:
    return fn(image)
  return jnp.where(jax.random.bernoulli(key, p), fn(image), image)


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------

def affine_warp(image: jax.Array, matrix, offset, out_shape: tuple[int, int] | None = None, *,
                mode: str = 'constant', cval: float = 0.0) -> jax.Array:
  """Bilinear resampling ``out[p] = image[matrix @ p + offset]`` with ``p = (row, col)``.

  Args:
    image: ``[H, W, C]`` float.
    matrix: ``[2, 2]`` map from output to input coordinates.
    offset: ``[2]`` input coordinate of output pixel ``(0, 0)``.
    out_shape: ``(h, w)`` of the output (static); default ``(H, W)``.
    mode: ``map_coordinates`` boundary mode ('constant', 'nearest', 'reflect', 'mirror', 'wrap').
    cval: fill value for ``mode='constant'``.
  """
  image = check_image(image)
  if mode not in WARP_MODES:
    raise ValueError(f'mode must be one of {WARP_MODES}, got {mode!r}.')
  oh, ow = check_size('out_shape', out_shape, image.shape)
  matrix = jnp.asarray(matrix, image.dtype)
  offset = jnp.asarray(offset, image.dtype)
  rows, cols = jnp.meshgrid(jnp.arange(oh, dtype=image.dtype), jnp.arange(ow, dtype=image.dtype),
                            indexing='ij')
  src_r = matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0]
  src_c = matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1]
  sample = lambda ch: ndimage.map_coordinates(ch, [src_r, src_c], order=1, mode=mode, cval=cval)
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def resized_crop(image: jax.Array, top, left, height, width, size=None) -> jax.Array:
  """The box ``[top, top + height) x [left, left + width)`` bilinearly resized to ``size``.

  Pixel-centre aligned (``align_corners=False``): output row ``i`` samples input row
  ``top + (i + 0.5) * height / h_out - 0.5``; edges are clamped. The full box at the input size is
  the identity; an integer box at its own size is an exact slice. No antialiasing when shrinking.
  """
  image = check_image(image)
  oh, ow = check_size('size', size, image.shape)
  dt = image.dtype
  sy, sx = jnp.asarray(height, dt) / oh, jnp.asarray(width, dt) / ow
  matrix = jnp.array([[sy, 0.0], [0.0, sx]], dt)
  offset = jnp.stack([top + 0.5 * sy - 0.5, left + 0.5 * sx - 0.5]).astype(dt)
  return affine_warp(image, matrix, offset, (oh, ow), mode='nearest')


def sample_crop_box(key: jax.Array, image_shape: Sequence[int], scale=(0.08, 1.0),
                    ratio=(3 / 4, 4 / 3), attempts: int = 10) -> jax.Array:
  """``[top, left, height, width]`` (integer-valued floats) of a random resized crop.

  torchvision's ``RandomResizedCrop.get_params``: up to ``attempts`` draws of an area fraction
  ``~U(scale)`` and a log-uniform aspect ratio; the first box that fits is placed uniformly; if none
  fits, the central crop with the aspect ratio clamped to ``ratio``. All draws are vectorised.
  """
  h, w = int(image_shape[0]), int(image_shape[1])
  lo, hi = check_range('scale', scale, 0.0, 1.0)
  if lo <= 0.0:
    raise ValueError(f'scale must be a pair 0 < lo <= hi <= 1, got {scale!r}.')
  r0, r1 = check_range('ratio', ratio, 0.0)
  if r0 <= 0.0:
    raise ValueError(f'ratio must be a pair 0 < lo <= hi, got {ratio!r}.')
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = h * w * jax.random.uniform(k_area, (attempts,), minval=lo, maxval=hi)
  aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=math.log(r0),
                                      maxval=math.log(r1)))
  cw = jnp.round(jnp.sqrt(area * aspect))
  ch = jnp.round(jnp.sqrt(area / aspect))
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(fits)
  in_ratio = w / h
  if in_ratio < r0:
    fb_w, fb_h = w, round(w / r0)
  elif in_ratio > r1:
    fb_w, fb_h = round(h * r1), h
  else:
    fb_w, fb_h = w, h
  ok = jnp.any(fits)
  ch = jnp.where(ok, ch[first], float(fb_h))
  cw = jnp.where(ok, cw[first], float(fb_w))
  top_u, left_u = jax.random.uniform(k_top), jax.random.uniform(k_left)
  top = jnp.where(ok, jnp.minimum(jnp.floor(top_u * (h - ch + 1)), h - ch), (h - fb_h) // 2)
  left = jnp.where(ok, jnp.minimum(jnp.floor(left_u * (w - cw + 1)), w - cw), (w - fb_w) // 2)
  return jnp.stack([top, left, ch, cw]).astype(jnp.float32)


def random_resized_crop(key: jax.Array, image: jax.Array, size=None, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> jax.Array:
  """SimCLR App. A's crop: a ``sample_crop_box`` box resized to ``size`` (default the input's)."""
  image = check_image(image)
  top, left, h, w = sample_crop_box(key, image.shape, scale, ratio)
  return resized_crop(image, top, left, h, w, size)


def hflip(image: jax.Array) -> jax.Array:
  """Mirror left-right (the width axis)."""
  return check_image(image)[:, ::-1]


def vflip(image: jax.Array) -> jax.Array:
  """Mirror top-bottom (the height axis)."""
  return check_image(image)[::-1]


def random_flip(key: jax.Array, image: jax.Array, p: float = 0.5,
                horizontal: bool = True) -> jax.Array:
  """A horizontal (or vertical) flip with probability ``p``."""
  image = check_image(image)
  return random_apply(key, p, hflip if horizontal else vflip, image)


def affine(image: jax.Array, angle=0.0, translate=(0.0, 0.0), scale=1.0, *,
           mode: str = 'constant', cval: float = 0.0) -> jax.Array:
  """Rotate by ``angle`` degrees counter-clockwise and scale about the centre, then translate.

  Content at ``p`` moves to ``c + t + scale * R(angle) (p - c)`` with ``c = ((H-1)/2, (W-1)/2)`` and
  ``t = translate = (dy, dx)`` in pixels (down, right); in (row, col) coordinates a counter-clockwise
  turn on screen is ``R = [[cos, -sin], [sin, cos]]``. 90 degrees on a square image is
  ``np.rot90``; an integer ``translate`` is an exact shift with ``cval`` fill.
  """
  image = check_image(image)
  dt = image.dtype
  theta = jnp.deg2rad(jnp.asarray(angle, dt))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  scale = jnp.asarray(scale, dt)
  inv = jnp.array([[cos, sin], [-sin, cos]], dt) / scale   # (s R)^-1 = R^T / s
  centre = jnp.array([(image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2], dt)
  offset = centre - inv @ (centre + jnp.asarray(translate, dt))
  return affine_warp(image, inv, offset, mode=mode, cval=cval)


def random_affine(key: jax.Array, image: jax.Array, degrees: float = 0.0, translate: float = 0.0,
                  scale=(1.0, 1.0), *, mode: str = 'constant', cval: float = 0.0) -> jax.Array:
  """torchvision ``RandomAffine``: angle ``~U(-degrees, degrees)``, shift ``~U(-t, t) * (H, W)``
  (sub-pixel, not rounded), scale ``~U(scale)``; zero-cost identity when all are off."""
  image = check_image(image)
  if float(degrees) < 0:
    raise ValueError(f'degrees must be >= 0, got {degrees!r}.')
  if not 0.0 <= float(translate) <= 1.0:
    raise ValueError(f'translate must be a fraction of the size in [0, 1], got {translate!r}.')
  s0, s1 = check_range('scale', scale, 0.0)
  if s0 <= 0.0:
    raise ValueError(f'scale must be a pair 0 < lo <= hi, got {scale!r}.')
  if float(degrees) == 0 and float(translate) == 0 and s0 == s1 == 1.0:
    return image
  k_angle, k_shift, k_scale = jax.random.split(key, 3)
  angle = jax.random.uniform(k_angle, minval=-float(degrees), maxval=float(degrees))
  size = jnp.array(image.shape[:2], jnp.float32)
  shift = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * float(translate) * size
  factor = jax.random.uniform(k_scale, minval=s0, maxval=s1)
  return affine(image, angle, shift, factor, mode=mode, cval=cval)


def integer_shift(key: jax.Array, image: jax.Array, max_shift: int, cval: float = 0.0) -> jax.Array:
  """Exact translation by integer offsets ``~U{-max_shift..max_shift}`` per axis, ``cval`` fill.

  Pad by ``max_shift`` then a random crop back to ``H x W`` (EchoNet's ``pad``; the 'image' recipe).
  """
  image = check_image(image)
  if isinstance(max_shift, bool) or int(max_shift) != max_shift or max_shift < 0:
    raise ValueError(f'max_shift must be a non-negative integer, got {max_shift!r}.')
  m = int(max_shift)
  if m == 0:
    return image
  h, w, c = image.shape
  padded = jnp.pad(image, ((m, m), (m, m), (0, 0)), constant_values=cval)
  origin = jax.random.randint(key, (2,), 0, 2 * m + 1)
  return jax.lax.dynamic_slice(padded, (origin[0], origin[1], 0), (h, w, c))


# --------------------------------------------------------------------------------------------------
# photometric
# --------------------------------------------------------------------------------------------------

def _check_colour(image: jax.Array) -> jax.Array:
  image = check_image(image)
  if image.shape[-1] not in (1, 3):
    raise ValueError(f'image must have 1 (grey) or 3 (RGB) channels, got shape {image.shape}.')
  return image


def grayscale(image: jax.Array) -> jax.Array:
  """Luma ``0.2989 R + 0.587 G + 0.114 B`` repeated over the 3 channels; grey input unchanged."""
  image = _check_colour(image)
  if image.shape[-1] == 1:
    return image
  luma = image @ jnp.asarray(GRAY_WEIGHTS, image.dtype)
  return jnp.repeat(luma[..., None], 3, axis=-1)


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
  """``clip(factor * image)`` (blend with black)."""
  return jnp.clip(check_image(image) * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  """``clip(factor * image + (1 - factor) * mean(grayscale(image)))``."""
  image = _check_colour(image)
  mean = jnp.mean(grayscale(image)[..., 0])
  return jnp.clip(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
  """``clip(factor * image + (1 - factor) * grayscale(image))``; grey input unchanged."""
  image = _check_colour(image)
  if image.shape[-1] == 1:
    return image
  return jnp.clip(factor * image + (1.0 - factor) * grayscale(image), 0.0, 1.0)


def adjust_hue(image: jax.Array, shift) -> jax.Array:
  """Rotate the HSV hue by ``shift`` turns (in [-0.5, 0.5]); grey input unchanged."""
  image = _check_colour(image)
  if image.shape[-1] == 1:
    return image
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  v = jnp.max(image, axis=-1)
  delta = v - jnp.min(image, axis=-1)
  safe = jnp.where(delta > 0, delta, 1.0)
  s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
  h = jnp.where(v == r, (g - b) / safe, jnp.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  h = jnp.where(delta > 0, h / 6.0, 0.0)
  h = jnp.mod(h + shift, 1.0)
  # HSV -> RGB without branches: channel n in (5, 3, 1) is v - v s clip(min(k, 4 - k), 0, 1).
  k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0], image.dtype) + 6.0 * h[..., None], 6.0)
  return v[..., None] - (v * s)[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(key: jax.Array, image: jax.Array, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1) -> jax.Array:
  """torchvision ``ColorJitter``: factors ``~U[max(0, 1 - s), 1 + s]`` (hue ``~U[-h, h]``), the
  enabled adjustments applied in a uniformly random order (one ``lax.switch`` per slot)."""
  image = _check_colour(image)
  for name, value in (('brightness', brightness), ('contrast', contrast),
                      ('saturation', saturation)):
    if float(value) < 0:
      raise ValueError(f'{name} must be >= 0, got {value!r}.')
  if not 0.0 <= float(hue) <= 0.5:
    raise ValueError(f'hue must be in [0, 0.5], got {hue!r}.')
  k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  factor = lambda k, s: jax.random.uniform(k, minval=max(0.0, 1.0 - s), maxval=1.0 + s)
  ops = []
  if brightness > 0:
    ops.append(lambda x: adjust_brightness(x, factor(k_b, brightness)))
  if contrast > 0:
    ops.append(lambda x: adjust_contrast(x, factor(k_c, contrast)))
  if saturation > 0:
    ops.append(lambda x: adjust_saturation(x, factor(k_s, saturation)))
  if hue > 0:
    ops.append(lambda x: adjust_hue(x, jax.random.uniform(k_h, minval=-hue, maxval=hue)))
  if not ops:
    return image
  order = jax.random.permutation(k_perm, len(ops))
  # One loop body with a switch: each op is traced once, not once per slot.
  step = lambda slot, x: jax.lax.switch(order[slot], ops, x)
  return jax.lax.fori_loop(0, len(ops), step, image)


def gaussian_kernel1d(sigma, size: int) -> jax.Array:
  """Normalised ``exp(-x^2 / (2 sigma^2))`` on ``x = -(size-1)/2 .. (size-1)/2`` (sums to 1)."""
  if isinstance(size, bool) or int(size) != size or size < 1 or size % 2 == 0:
    raise ValueError(f'kernel_size must be a positive odd integer, got {size!r}.')
  if isinstance(sigma, numbers.Real) and not sigma > 0:
    raise ValueError(f'sigma must be > 0, got {sigma!r}.')
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  weights = jnp.exp(-0.5 * (x / sigma) ** 2)
  return weights / jnp.sum(weights)


def gaussian_blur(image: jax.Array, sigma, kernel_size: int) -> jax.Array:
  """Separable Gaussian blur (rows then columns) with reflect padding, as torchvision."""
  image = check_image(image)
  kernel = gaussian_kernel1d(sigma, kernel_size).astype(image.dtype)
  r = int(kernel_size) // 2
  if r >= min(image.shape[:2]):
    raise ValueError(f'kernel_size={kernel_size} needs an image larger than {r} pixels per side '
                     f'(reflect padding), got shape {image.shape}.')
  h, w = image.shape[:2]
  padded = jnp.pad(image, ((r, r), (0, 0), (0, 0)), mode='reflect')
  image = sum(kernel[t] * padded[t:t + h] for t in range(kernel_size))
  padded = jnp.pad(image, ((0, 0), (r, r), (0, 0)), mode='reflect')
  return sum(kernel[t] * padded[:, t:t + w] for t in range(kernel_size))


def random_gaussian_blur(key: jax.Array, image: jax.Array, kernel_size: int,
                         sigma=(0.1, 2.0)) -> jax.Array:
  """``gaussian_blur`` with ``sigma ~ U(sigma)`` (SimCLR App. A; thesis Table 4.3: 5x5, (0.1, 2))."""
  lo, hi = check_range('sigma', sigma, 0.0)
  if lo <= 0.0:
    raise ValueError(f'sigma must be a pair 0 < lo <= hi, got {sigma!r}.')
  return gaussian_blur(image, jax.random.uniform(key, minval=lo, maxval=hi), kernel_size)


def cutout(key: jax.Array, image: jax.Array, num_holes=(1, 4), size: int | None = None,
           fill: float = 0.0) -> jax.Array:
  """``n ~ U{num_holes[0]..num_holes[1]}`` (inclusive) square holes of side ``size`` (default
  ``floor(min(H, W) / 4)``, thesis Table 4.3) set to ``fill``; centres uniform over the image, holes
  clipped at the border (DeVries & Taylor 2017)."""
  image = check_image(image)
  h, w = image.shape[:2]
  try:
    lo, hi = num_holes
  except (TypeError, ValueError):
    raise ValueError(f'num_holes must be a pair (lo, hi), got {num_holes!r}.') from None
  if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (lo, hi)) or not (
      0 <= lo <= hi):
    raise ValueError(f'num_holes must be a pair of integers 0 <= lo <= hi, got {num_holes!r}.')
  side = max(1, min(h, w) // 4) if size is None else size
  if isinstance(side, bool) or int(side) != side or side < 1:
    raise ValueError(f'size must be a positive integer, got {size!r}.')
  if hi == 0:
    return image
  k_n, k_r, k_c = jax.random.split(key, 3)
  n = jax.random.randint(k_n, (), int(lo), int(hi) + 1)
  top = jax.random.randint(k_r, (int(hi),), 0, h) - int(side) // 2
  left = jax.random.randint(k_c, (int(hi),), 0, w) - int(side) // 2
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
            & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side))
  active = (jnp.arange(int(hi)) < n)[:, None, None]
  hole = jnp.any(inside & active, axis=0)
  return jnp.where(hole[..., None], jnp.asarray(fill, image.dtype), image)


def gaussian_noise(key: jax.Array, image: jax.Array, std: float) -> jax.Array:
  """``clip(image + N(0, std^2))`` per pixel."""
  image = check_image(image)
  if float(std) < 0:
    raise ValueError(f'noise_std must be >= 0, got {std!r}.')
  if float(std) == 0:
    return image
  return jnp.clip(image + std * jax.random.normal(key, image.shape, image.dtype), 0.0, 1.0)


def adjust_gamma(image: jax.Array, gamma) -> jax.Array:
  """``clip(image, 0, 1) ** gamma``."""
  return jnp.clip(check_image(image), 0.0, 1.0) ** gamma


def random_gamma(key: jax.Array, image: jax.Array, gamma=(0.8, 1.25)) -> jax.Array:
  """``adjust_gamma`` with ``gamma ~ U(gamma)`` (both > 0); identity for ``(1, 1)``."""
  lo, hi = check_range('gamma', gamma, 0.0)
  if lo <= 0.0:
    raise ValueError(f'gamma must be a pair 0 < lo <= hi, got {gamma!r}.')
  if lo == hi == 1.0:
    return check_image(image)
  return adjust_gamma(image, jax.random.uniform(key, minval=lo, maxval=hi))
