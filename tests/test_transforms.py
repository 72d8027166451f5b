"""Tests for contrastive_jax.data.transforms / video and the named pipelines of data.augment.

References are float64 NumPy (or the standard library's ``colorsys``) written from the definitions
(torchvision's conventions, SimCLR App. A, AdaCon Sec. IV), not from the JAX code.
"""

import colorsys
import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import data
from contrastive_jax.data import augment
from contrastive_jax.data import transforms as T
from contrastive_jax.data import video as V

pytestmark = pytest.mark.usefixtures('fast_compile')

ATOL = 1e-5


def _img(h=6, w=6, c=3, seed=0):
  return np.random.default_rng(seed).uniform(size=(h, w, c))


def _j(x):
  return jnp.asarray(x, jnp.float32)


def _over_keys(fn, n):
  """``fn(key)`` for keys 0..n-1, stacked (one jitted vmap instead of n eager calls)."""
  keys = jax.vmap(jax.random.key)(jnp.arange(n))
  return np.asarray(jax.jit(jax.vmap(fn))(keys))


def _np_bilinear(img, rows, cols, mode):
  """Bilinear sample of ``img [H, W, C]`` at float64 ``rows, cols``; 'constant' treats neighbours
  outside the image as 0, 'nearest' clamps them to the edge."""
  h, w = img.shape[:2]
  r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
  fr, fc = rows - r0, cols - c0
  out = np.zeros(rows.shape + img.shape[2:])
  for dr, wr in ((0, 1 - fr), (1, fr)):
    for dc, wc in ((0, 1 - fc), (1, fc)):
      rr, cc = r0 + dr, c0 + dc
      if mode == 'nearest':
        val = img[np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)]
      else:
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        val = np.where(inside[..., None], img[np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)], 0.0)
      out += (wr * wc)[..., None] * val
  return out


def _np_affine(img, angle, translate, scale):
  """Output pixel p shows input c + R(-angle) (p - c - t) / scale (content turned CCW on screen)."""
  h, w = img.shape[:2]
  th = np.deg2rad(angle)
  rows, cols = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing='ij')
  cy, cx = (h - 1) / 2, (w - 1) / 2
  dy, dx = rows - cy - translate[0], cols - cx - translate[1]
  # Screen coordinates x = col, y = row (down): a CCW turn by th maps (x, y) to
  # (x cos + y sin, -x sin + y cos); invert it.
  x_in = (np.cos(th) * dx - np.sin(th) * dy) / scale
  y_in = (np.sin(th) * dx + np.cos(th) * dy) / scale
  return _np_bilinear(img, cy + y_in, cx + x_in, 'constant')


# --------------------------------------------------------------------------------------------------
# geometry: closed forms
# --------------------------------------------------------------------------------------------------

def test_flips_closed_form():
  img = _img(5, 7)
  np.testing.assert_array_equal(T.hflip(_j(img)), _j(img[:, ::-1]))
  np.testing.assert_array_equal(T.vflip(_j(img)), _j(img[::-1]))
  key = jax.random.key(0)
  np.testing.assert_array_equal(T.random_flip(key, _j(img), p=1.0), _j(img[:, ::-1]))
  np.testing.assert_array_equal(T.random_flip(key, _j(img), p=0.0), _j(img))
  outs = _over_keys(lambda k: T.random_flip(k, _j(img)), 40)
  flipped = np.all(outs == np.asarray(_j(img[:, ::-1])), axis=(1, 2, 3))
  kept = np.all(outs == np.asarray(_j(img)), axis=(1, 2, 3))
  assert np.all(flipped ^ kept) and 5 < flipped.sum() < 35


@pytest.mark.parametrize('angle,k', [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_multiples_of_90_are_rot90(angle, k):
  img = _img(5, 5)
  np.testing.assert_allclose(T.affine(_j(img), angle), np.rot90(img, k), atol=ATOL)


def test_integer_translation_and_identity():
  img = _img(6, 7)
  out = np.asarray(T.affine(_j(img), 0.0, (1.0, -2.0)))
  ref = np.zeros_like(img)
  ref[1:, :-2] = img[:-1, 2:]  # content moves down 1 and left 2, zero fill
  np.testing.assert_allclose(out, ref, atol=ATOL)
  np.testing.assert_allclose(T.affine(_j(img), 0.0, (0.0, 0.0), 1.0), img, atol=ATOL)
  key = jax.random.key(1)
  np.testing.assert_array_equal(T.random_affine(key, _j(img)), _j(img))
  np.testing.assert_array_equal(T.integer_shift(key, _j(img), 0), _j(img))


def test_general_affine_matches_numpy_bilinear():
  img = _img(7, 8)
  out = T.affine(_j(img), 30.0, (0.6, -1.3), 1.2)
  np.testing.assert_allclose(out, _np_affine(img, 30.0, (0.6, -1.3), 1.2), atol=1e-5)


def test_integer_shift_is_exact_and_bounded():
  size, m = 7, 2
  img = np.zeros((size, size, 1))
  img[3, 3] = 1.0
  outs = _over_keys(lambda k: T.integer_shift(k, _j(img), m), 60)
  np.testing.assert_array_equal(outs.sum(axis=(1, 2, 3)), 1.0)   # moved, not blurred
  _, r, c, _ = np.nonzero(outs)
  assert np.all(np.abs(r - 3) <= m) and np.all(np.abs(c - 3) <= m)
  assert len(set(zip(r.tolist(), c.tolist()))) > 10


def test_resized_crop_known_regions():
  img = _img(8, 10)
  # An integer box at its own size is an exact slice; the full box is the identity.
  np.testing.assert_allclose(T.resized_crop(_j(img), 2, 3, 4, 5, (4, 5)), img[2:6, 3:8], atol=ATOL)
  np.testing.assert_allclose(T.resized_crop(_j(img), 0, 0, 8, 10), img, atol=ATOL)
  # Halving a 4x6 box samples the centres of its 2x2 blocks: their means.
  blocks = img[2:6, 4:10].reshape(2, 2, 3, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(T.resized_crop(_j(img), 2, 4, 4, 6, (2, 3)), blocks, atol=ATOL)
  # A fractional upscale: output row i samples top + (i + 0.5) h / h_out - 0.5, edges clamped.
  top, left, h, w, oh, ow = 1.0, 2.0, 3.0, 5.0, 5, 7
  rows = top + (np.arange(oh) + 0.5) * h / oh - 0.5
  cols = left + (np.arange(ow) + 0.5) * w / ow - 0.5
  ref = _np_bilinear(img, *np.meshgrid(rows, cols, indexing='ij'), mode='nearest')
  np.testing.assert_allclose(T.resized_crop(_j(img), top, left, h, w, (oh, ow)), ref, atol=ATOL)


def test_sample_crop_box_bounds_and_fallback():
  h, w = 20, 16
  boxes = _over_keys(lambda k: T.sample_crop_box(k, (h, w, 3), (0.2, 0.6), (0.5, 2.0)), 50)
  top, left, bh, bw = boxes.T
  np.testing.assert_array_equal(boxes, np.round(boxes))
  assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + bh <= h) and np.all(left + bw <= w)
  frac = bh * bw / (h * w)
  assert np.all(frac > 0.15) and np.all(frac < 0.7)       # U(0.2, 0.6) up to pixel rounding
  assert np.all(bw / bh > 0.4) and np.all(bw / bh < 2.5)
  assert len(np.unique(top)) > 3
  # No box fits (full area, aspect 2 on a square): the central crop with the ratio clamped.
  box = np.asarray(T.sample_crop_box(jax.random.key(0), (10, 10, 1), (1.0, 1.0), (2.0, 2.0)))
  np.testing.assert_array_equal(box, [2.0, 0.0, 5.0, 10.0])


def test_random_resized_crop_identity_and_size():
  img = _img(6, 9)
  key = jax.random.key(3)
  out = T.random_resized_crop(key, _j(img), None, (1.0, 1.0), (9 / 6, 9 / 6))
  np.testing.assert_allclose(out, img, atol=ATOL)
  chex.assert_shape(T.random_resized_crop(key, _j(img), (4, 5)), (4, 5, 3))
  chex.assert_shape(T.random_resized_crop(key, _j(img), 7), (7, 7, 3))


# --------------------------------------------------------------------------------------------------
# photometric: closed forms
# --------------------------------------------------------------------------------------------------

def test_grayscale_weights():
  img = _img(4, 5)
  luma = 0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
  np.testing.assert_allclose(T.grayscale(_j(img)), np.repeat(luma[..., None], 3, -1), atol=ATOL)
  grey = _img(4, 5, 1)
  np.testing.assert_array_equal(T.grayscale(_j(grey)), _j(grey))


def test_brightness_contrast_saturation_blends():
  img = _img(4, 5)
  luma = (0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])[..., None]
  np.testing.assert_allclose(T.adjust_brightness(_j(img), 1.3), np.clip(1.3 * img, 0, 1), atol=ATOL)
  np.testing.assert_allclose(T.adjust_contrast(_j(img), 0.6),
                             np.clip(0.6 * img + 0.4 * luma.mean(), 0, 1), atol=ATOL)
  np.testing.assert_allclose(T.adjust_saturation(_j(img), 1.5),
                             np.clip(1.5 * img - 0.5 * luma, 0, 1), atol=ATOL)


def test_hue_shift_matches_colorsys():
  img = _img(4, 5)
  img[0, 0] = [0.3, 0.3, 0.3]   # grey: hue undefined, unchanged
  img[0, 1] = [0.0, 0.0, 0.0]
  for shift in (0.1, -0.25, 0.5):
    ref = np.zeros_like(img)
    for i, j in np.ndindex(img.shape[:2]):
      hh, ss, vv = colorsys.rgb_to_hsv(*img[i, j])
      ref[i, j] = colorsys.hsv_to_rgb((hh + shift) % 1.0, ss, vv)
    np.testing.assert_allclose(T.adjust_hue(_j(img), shift), ref, atol=1e-5)


def test_gamma_closed_form():
  img = _img(4, 5)
  np.testing.assert_allclose(T.adjust_gamma(_j(img), 0.7), img ** 0.7, atol=ATOL)
  np.testing.assert_array_equal(T.random_gamma(jax.random.key(0), _j(img), (1.0, 1.0)), _j(img))
  # Each output is img ** g for a single g in [0.5, 2].
  for out in _over_keys(lambda k: T.random_gamma(k, _j(img), (0.5, 2.0)), 3):
    g = np.log(out[1, 1, 0]) / np.log(img[1, 1, 0])
    assert 0.5 - 1e-4 <= g <= 2.0 + 1e-4
    np.testing.assert_allclose(out, img ** g, atol=1e-4)


def test_blur_kernel_normalised_and_separable_reference():
  for size, sigma in ((3, 0.5), (5, 1.3), (7, 2.0)):
    x = np.arange(size) - (size - 1) / 2
    ref = np.exp(-x ** 2 / (2 * sigma ** 2))
    ref /= ref.sum()
    kernel = np.asarray(T.gaussian_kernel1d(sigma, size))
    np.testing.assert_allclose(kernel, ref, atol=1e-6)
    assert abs(kernel.sum() - 1.0) < 1e-6
  img = _img(6, 7)
  kernel = T.gaussian_kernel1d(1.1, 5)
  padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode='reflect')
  k = np.asarray(kernel, np.float64)
  rows = sum(k[t] * padded[t:t + 6] for t in range(5))
  ref = sum(k[t] * rows[:, t:t + 7] for t in range(5))
  np.testing.assert_allclose(T.gaussian_blur(_j(img), 1.1, 5), ref, atol=ATOL)
  const = np.full((6, 6, 1), 0.4)
  np.testing.assert_allclose(T.gaussian_blur(_j(const), 1.7, 5), const, atol=ATOL)


def test_cutout_holes():
  ones = np.ones((12, 12, 1))
  out = np.asarray(T.cutout(jax.random.key(0), _j(ones), (0, 0)))
  np.testing.assert_array_equal(out, ones)
  full_squares = 0
  for out in _over_keys(lambda k: T.cutout(k, _j(ones), (1, 1)), 30)[..., 0]:
    rows, cols = np.nonzero(out == 0)
    assert set(np.unique(out)) <= {0.0, 1.0} and rows.size > 0
    hr, hc = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert hr <= 3 and hc <= 3 and rows.size == hr * hc      # one clipped 3x3 (= 12 // 4) square
    full_squares += rows.size == 9
  assert full_squares > 10
  many = _over_keys(lambda k: T.cutout(k, _j(ones), (1, 4), size=1), 40)
  many = (many == 0).sum(axis=(1, 2, 3))
  assert min(many) >= 1 and max(many) <= 4 and len(set(many)) > 1


def test_noise_statistics_and_clipping():
  half = np.full((64, 64, 1), 0.5)
  out = np.asarray(T.gaussian_noise(jax.random.key(0), _j(half), 0.1))
  assert abs((out - 0.5).std() - 0.1) < 0.01 and abs((out - 0.5).mean()) < 0.01
  out = np.asarray(T.gaussian_noise(jax.random.key(0), _j(half), 2.0))
  assert out.min() == 0.0 and out.max() == 1.0
  np.testing.assert_array_equal(T.gaussian_noise(jax.random.key(0), _j(half), 0.0), _j(half))


def test_color_jitter_identity_and_grey():
  img = _img(5, 5)
  key = jax.random.key(2)
  np.testing.assert_array_equal(T.color_jitter(key, _j(img), 0, 0, 0, 0), _j(img))
  grey = _img(5, 5, 1)
  np.testing.assert_array_equal(T.color_jitter(key, _j(grey), 0, 0, 0.8, 0.3), _j(grey))
  out = np.asarray(T.color_jitter(key, _j(img)))
  assert out.min() >= 0.0 and out.max() <= 1.0 and not np.allclose(out, img)


def test_uint8_input_is_scaled():
  img = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
  np.testing.assert_allclose(T.hflip(img), img[:, ::-1] / 255.0, atol=1e-7)
  chex.assert_type(T.to_float(img), jnp.float32)


# --------------------------------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------------------------------

def test_clip_indices_modes():
  key = jax.random.key(0)
  length, period, frames = 4, 2, 20       # span 7: starts 0..13
  idx = _over_keys(lambda k: V.clip_indices(k, frames, length, period), 60)
  np.testing.assert_array_equal(np.diff(idx, axis=1), period)
  assert np.all(idx[:, 0] >= 0) and np.all(idx[:, 0] <= 13)
  assert len(set(idx[:, 0].tolist())) > 8
  np.testing.assert_array_equal(V.clip_indices(key, frames, length, period, 'first'), [0, 2, 4, 6])
  np.testing.assert_array_equal(V.clip_indices(key, frames, length, period, 'center'),
                                [6, 8, 10, 12])
  # AdaCon Sec. IV-B: 32 frames every 2nd frame.
  idx = np.asarray(V.clip_indices(key, 175, 32, 2))
  assert idx[-1] - idx[0] == 62 and idx[-1] < 175


def test_sample_clip_pads_short_videos():
  vid = np.random.default_rng(0).uniform(size=(5, 3, 4, 1))
  out = np.asarray(V.sample_clip(jax.random.key(0), _j(vid), 4, 2))
  np.testing.assert_allclose(out[:3], vid[[0, 2, 4]], atol=0)
  np.testing.assert_array_equal(out[3], 0.0)
  valid = jax.jit(lambda v, n: V.sample_clip(jax.random.key(0), v, 3, 1, 'first', num_valid=n))
  out = np.asarray(valid(_j(vid), 2))
  np.testing.assert_allclose(out[:2], vid[:2], atol=0)
  np.testing.assert_array_equal(out[2], 0.0)


def test_clip_consistent_same_crop_every_frame():
  base = _img(8, 8)
  scales = np.linspace(0.2, 1.0, 4)
  vid = scales[:, None, None, None] * base[None]
  crop = functools.partial(T.random_resized_crop, size=(5, 5), scale=(0.2, 0.7))
  out = np.asarray(V.clip_consistent(crop)(jax.random.key(5), _j(vid)))
  ref = np.asarray(crop(jax.random.key(5), _j(base)))
  np.testing.assert_allclose(out, scales[:, None, None, None] * ref[None], atol=ATOL)


# --------------------------------------------------------------------------------------------------
# named pipelines
# --------------------------------------------------------------------------------------------------

PIPELINE_CASES = [
    ('simclr', (4, 9, 9, 3), dict(size=7, blur_prob=0.5), (4, 7, 7, 3)),
    ('regression', (4, 8, 8, 1), dict(contrast=0.3, gamma=(0.8, 1.2), blur_prob=0.5,
                                      cutout_prob=0.5), (4, 8, 8, 1)),
    ('bmd', (4, 8, 8, 1), dict(size=6), (4, 6, 6, 1)),
    ('echonet', (3, 12, 8, 8, 1), dict(length=4, period=2, pad=2, flip_prob=0.5), (3, 4, 8, 8, 1)),
]


@pytest.mark.parametrize('kind,shape,options,out_shape', PIPELINE_CASES)
def test_pipeline_determinism_shapes_and_per_sample_keys(kind, shape, options, out_shape):
  x = _j(np.random.default_rng(1).uniform(size=shape))
  fn = data.get_augment_fn(kind, **options)
  key = jax.random.key(7)
  out = fn(key, x)
  chex.assert_shape(out, out_shape)
  chex.assert_type(out, jnp.float32)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  chex.assert_trees_all_equal(out, fn(key, x))                      # same key, same output
  assert not np.allclose(out, fn(jax.random.key(8), x))             # another key differs
  # The vmapped batch equals a loop of per-sample calls with the keys split(key, B)[i].
  sample_fn = jax.jit(functools.partial(augment.PIPELINES[kind][0], **options))
  keys = jax.random.split(key, shape[0])
  loop = np.stack([sample_fn(keys[i], x[i]) for i in range(shape[0])])
  np.testing.assert_allclose(out, loop, atol=ATOL)
  assert not np.allclose(loop[0], loop[1])                          # samples differ
  # uint8 input: converted to [0, 1] first.
  x8 = np.asarray(x * 255).astype(np.uint8)
  np.testing.assert_allclose(fn(key, x8), fn(key, _j(x8 / 255.0)), atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize('kind,shape,options,out_shape', PIPELINE_CASES)
def test_pipeline_jit_equals_eager(kind, shape, options, out_shape):
  """Eager (op-by-op, not jitted) per-sample calls give the jitted batch (slow: many tiny ops)."""
  x = _j(np.random.default_rng(1).uniform(size=shape))
  key = jax.random.key(7)
  out = data.get_augment_fn(kind, **options)(key, x)
  keys = jax.random.split(key, shape[0])
  sample_fn = augment.PIPELINES[kind][0]
  eager = np.stack([sample_fn(keys[i], x[i], **options) for i in range(2)])
  chex.assert_shape(eager, (2,) + out_shape[1:])
  np.testing.assert_allclose(out[:2], eager, atol=ATOL)


@pytest.mark.parametrize('fn', [
    lambda k, x: T.affine(x, 30.0, (0.5, -1.0), 1.1),
    lambda k, x: T.random_resized_crop(k, x, (5, 4)),
    lambda k, x: T.color_jitter(k, x),
    lambda k, x: T.random_gaussian_blur(k, x, 3),
    lambda k, x: T.cutout(k, x, (1, 3), 2),
])
def test_transforms_jit_equals_eager(fn):
  x = _j(_img(6, 6))
  key = jax.random.key(4)
  np.testing.assert_allclose(jax.jit(fn)(key, x), fn(key, x), atol=ATOL)


def test_regression_pipeline_preserves_geometry():
  """No flip or rotation: a one-hot pixel moves by an exact integer shift <= max_shift."""
  b, m = 64, 2
  x = np.zeros((b, 9, 9, 1))
  x[:, 4, 6] = 1.0
  fn = data.get_augment_fn('regression', max_shift=m, brightness=0.0, noise_std=0.0)
  out = np.asarray(fn(jax.random.key(0), _j(x)))
  np.testing.assert_array_equal(out.reshape(b, -1).sum(1), 1.0)
  _, rows, cols, _ = np.nonzero(out)
  assert np.all(np.abs(rows - 4) <= m) and np.all(np.abs(cols - 6) <= m)
  off = data.get_augment_fn('regression', max_shift=0, brightness=0.0, noise_std=0.0)
  np.testing.assert_array_equal(off(jax.random.key(0), _j(x)), _j(x))


def test_pipeline_identity_parameters():
  x = _j(_img(8, 8)[None])
  key = jax.random.key(0)
  simclr = data.get_augment_fn('simclr', scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0,
                               jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)
  np.testing.assert_allclose(simclr(key, x), x, atol=ATOL)
  bmd = data.get_augment_fn('bmd', flip_prob=0.0, degrees=0.0, translate=0.0)
  np.testing.assert_allclose(bmd(key, x), x, atol=ATOL)
  vid = _j(np.random.default_rng(0).uniform(size=(1, 7, 4, 4, 1)))
  echo = data.get_augment_fn('echonet', length=3, period=3, mode='first', pad=0)
  np.testing.assert_allclose(echo(key, vid), vid[:, ::3], atol=0)
  # A full-flip BMD view is the mirror image.
  flip = data.get_augment_fn('bmd', flip_prob=1.0, degrees=0.0, translate=0.0)
  np.testing.assert_allclose(flip(key, x), x[:, :, ::-1], atol=ATOL)


def test_simclr_recipe_defaults_and_grayscale_rate():
  defaults = {name: p.default for name, p in
              inspect.signature(augment.simclr_sample).parameters.items()}
  assert defaults['scale'] == (0.08, 1.0) and defaults['jitter'] == (0.4, 0.4, 0.4, 0.1)
  assert defaults['jitter_prob'] == 0.8 and defaults['gray_prob'] == 0.2
  assert defaults['flip_prob'] == 0.5 and defaults['blur_sigma'] == (0.1, 2.0)
  img = _j(_img(4, 4))
  only_gray = functools.partial(augment.simclr_sample, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                flip_prob=0.0, jitter_prob=0.0, blur_prob=0.0)
  outs = _over_keys(lambda k: only_gray(k, img), 400)
  grey = np.all(np.abs(outs - outs[..., :1]) < 1e-6, axis=(1, 2, 3))
  assert abs(grey.mean() - 0.2) < 0.06
  np.testing.assert_allclose(outs[~grey], np.broadcast_to(img, outs[~grey].shape), atol=ATOL)


def test_echonet_spatial_shift_is_one_per_clip():
  rng = np.random.default_rng(0)
  frame = rng.uniform(size=(8, 8, 1))
  vid = np.repeat(frame[None], 10, axis=0)[None]        # every frame identical
  out = np.asarray(data.get_augment_fn('echonet', length=5, period=2, pad=3)(jax.random.key(1),
                                                                            _j(vid)))
  for t in range(1, 5):
    np.testing.assert_array_equal(out[0, t], out[0, 0])


def test_get_augment_fn_registry():
  fn = data.get_augment_fn('simclr', size=4)
  assert isinstance(fn, functools.partial) and fn.func is augment.apply_pipeline
  assert fn.keywords == {'kind': 'simclr', 'size': 4}
  assert data.get_augment_fn('image').func is data.augment_images
  with pytest.raises(ValueError, match=r"kind.*'video'"):
    data.get_augment_fn('video')
  with pytest.raises(ValueError, match='max_shift'):
    data.get_augment_fn('simclr', max_shift=1)
  # Augment functions see inputs only: no label argument anywhere.
  for kind, (sample_fn, _) in augment.PIPELINES.items():
    params = list(inspect.signature(sample_fn).parameters)
    assert params[:2] == ['key', 'image' if kind != 'echonet' else 'clip'], kind
    assert not {'y', 'label', 'labels', 'target'} & set(params)


# --------------------------------------------------------------------------------------------------
# batch augmentation
# --------------------------------------------------------------------------------------------------

def test_batch_augment_keeps_labels_aligned():
  b, k = 4, 3
  levels = np.array([0.2, 0.4, 0.6, 0.8])            # sample i is the constant image levels[i]
  x = _j(np.broadcast_to(levels[:, None, None, None], (b, 6, 6, 1)))
  y = jnp.asarray([3.0, -1.0, 7.5, 0.25])
  fn = data.get_augment_fn('regression', max_shift=0)
  key = jax.random.key(11)
  views, y_out = jax.jit(lambda key, x, y: augment.batch_augment(key, x, y, k, fn,
                                                                 first_index=8))(key, x, y)
  chex.assert_shape(views, (b, k, 6, 6, 1))
  np.testing.assert_array_equal(y_out, y)
  for i in range(b):   # views[i] are sample i's own views, from its global index 8 + i
    ref = data.make_views(jax.random.fold_in(key, 8 + i), x[i:i + 1], k, fn)[0]
    np.testing.assert_allclose(views[i], ref, atol=ATOL)
    # Brightness +-10 % and noise keep each view closest to its own source level.
    for j in range(k):
      assert np.argmin(np.abs(float(views[i, j].mean()) - levels)) == i
  flat_x, flat_y = augment.flatten_views(views, y_out)
  chex.assert_shape(flat_x, (b * k, 6, 6, 1))
  for i in range(b):
    for j in range(k):
      np.testing.assert_array_equal(flat_x[i * k + j], views[i, j])
      assert flat_y[i * k + j] == y[i]
  assert not np.allclose(views[:, 0], views[:, 1])
  with pytest.raises(ValueError, match='y'):
    augment.batch_augment(key, x, y[:2], k, fn)


def test_batch_augment_matches_the_train_step_keys():
  """Same per-sample keys as ``train.step.augment_views`` inside its shard_map."""
  from contrastive_jax.train import step  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.array(jax.devices()), (step.AXIS,))
  spec = jax.sharding.PartitionSpec
  x = _j(np.random.default_rng(0).uniform(size=(2 * len(jax.devices()), 6, 6, 1)))
  fn = data.get_augment_fn('regression', max_shift=1)
  train_views = jax.jit(jax.shard_map(lambda key, x: step.augment_views(key, x, 2, fn), mesh=mesh,
                                      in_specs=(spec(), spec(step.AXIS)),
                                      out_specs=spec(step.AXIS)))
  key = jax.random.key(3)
  views, _ = augment.batch_augment(key, x, jnp.zeros(x.shape[0]), 2, fn)
  np.testing.assert_allclose(views, train_views(key, x), atol=ATOL)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('call,match', [
    (lambda: T.hflip(jnp.zeros((4, 4))), 'image'),
    (lambda: T.hflip(jnp.zeros((4, 4, 1), jnp.int32)), 'image'),
    (lambda: T.random_flip(jax.random.key(0), jnp.zeros((4, 4, 1)), p=1.5), 'p'),
    (lambda: T.sample_crop_box(jax.random.key(0), (4, 4, 1), (0.0, 1.0)), 'scale'),
    (lambda: T.sample_crop_box(jax.random.key(0), (4, 4, 1), (0.5, 0.2)), 'scale'),
    (lambda: T.gaussian_kernel1d(1.0, 4), 'kernel_size'),
    (lambda: T.gaussian_kernel1d(0.0, 3), 'sigma'),
    (lambda: T.affine(jnp.zeros((4, 4, 1)), 10.0, mode='edge'), 'mode'),
    (lambda: T.random_resized_crop(jax.random.key(0), jnp.zeros((4, 4, 1)), (2, 2.5)), 'size'),
    (lambda: T.gaussian_blur(jnp.zeros((2, 2, 1)), 1.0, 5), 'kernel_size'),
    (lambda: T.grayscale(jnp.zeros((4, 4, 2))), 'channels'),
    (lambda: T.color_jitter(jax.random.key(0), jnp.zeros((4, 4, 3)), hue=0.7), 'hue'),
    (lambda: T.random_gamma(jax.random.key(0), jnp.zeros((4, 4, 1)), (0.0, 1.0)), 'gamma'),
    (lambda: T.cutout(jax.random.key(0), jnp.zeros((4, 4, 1)), (2, 1)), 'num_holes'),
    (lambda: T.resized_crop(jnp.zeros((4, 4, 1)), 0, 0, 4, 4, (0, 3)), 'size'),
    (lambda: V.clip_indices(jax.random.key(0), 10, 0), 'length'),
    (lambda: V.clip_indices(jax.random.key(0), 10, 3, mode='middle'), 'mode'),
    (lambda: V.sample_clip(jax.random.key(0), jnp.zeros((4, 4, 1)), 2), 'video'),
    (lambda: augment.apply_pipeline(jax.random.key(0), jnp.zeros((4, 4, 1)), 'simclr'), 'inputs'),
    (lambda: augment.apply_pipeline(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), 'nope'), 'kind'),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
