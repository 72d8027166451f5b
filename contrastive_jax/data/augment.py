"""On-device data augmentation: pure, jit-able functions of an explicit PRNG key.

Every function is built from per-example ops (``vmap`` of ``lax.dynamic_slice``, elementwise noise),
so it runs under ``jax.jit`` (hyperparameters are Python values, i.e. static) and inside
``jax.shard_map`` on a per-device block of the batch. ``augment_images`` and ``augment_tabular`` are
themselves wrapped in ``jax.jit`` with their hyperparameters static, so an eager call compiles once
per shape and setting (inside an outer ``jit`` the inner one is simply inlined). Inside
``shard_map`` the caller should fold the device's ``lax.axis_index`` into the key so that shards
draw different augmentations.

Named pipelines (``get_augment_fn(kind)``) compose the per-sample ops of ``transforms`` and
``video``: one key per sample (``jax.random.split(key, B)``), ``vmap`` over the batch, uint8 input
converted to float32 in [0, 1] first:

* ``'image'`` / ``'tabular'``: ``augment_images`` / ``augment_tabular`` (unchanged).
* ``'identity'``: no augmentation (``augment_identity``): the sentence pairs of STS-B, which the papers
  do not augment (ACCon: "constraints on data augmentation techniques for the semantic textual
  similarity task").
* ``'simclr'``: SimCLR App. A (Chen et al. 2020), the recipe of thesis Ch. 4-6 (BCL, MIO, DySTreSS).
* ``'regression'``: label-preserving ops only (the 'image' recipe per sample, plus optional contrast,
  gamma, blur and cutout); no flip or rotation.
* ``'bmd'``: AdaCon Sec. IV-A (flips, rotations, frame jitter).
* ``'echonet'``: AdaCon Sec. IV-B (32-frame clips every 2nd frame with a random start, one spatial
  shift per clip).

``batch_augment`` is AdaCon's batch augmentation (Hoffer et al. 2019; b samples x k augmentations).

Augmentation never touches labels: every function takes and returns inputs only. For images the
'image' and 'regression' recipes have deliberately no flips and no rotations: the ``digits_angle``
target *is* the rotation angle, and a flip negates it, so either would silently change the label.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from contrastive_jax.data import transforms
from contrastive_jax.data import video as video_lib


def _check_nonneg(name: str, value, upper: float | None = None,
                  upper_inclusive: bool = True) -> None:
  ok = value >= 0 and (upper is None or (value <= upper if upper_inclusive else value < upper))
  if not ok:
    bound = '' if upper is None else f' and {"<=" if upper_inclusive else "<"} {upper}'
    raise ValueError(f'{name} must be >= 0{bound}, got {value!r}.')


@functools.partial(jax.jit, static_argnames=('max_shift', 'noise_std', 'brightness'))
def augment_images(key: jax.Array, images: jax.Array, *, max_shift: int = 2,
                   noise_std: float = 0.05, brightness: float = 0.1) -> jax.Array:
  """Random translation, brightness scaling and Gaussian noise, clipped to [0, 1].

  Per example: a translation by integer offsets in ``[-max_shift, max_shift]`` along height and
  width (zero-pad by ``max_shift``, then a random ``max_shift``-bounded crop back to ``H x W``), a
  brightness scale drawn from ``[1 - brightness, 1 + brightness]``, and additive noise
  ``N(0, noise_std^2)``.

  No flips and no rotations: for ``digits_angle`` the label is the rotation angle, so they would
  change the label. Labels are never touched.

  Args:
    key: PRNG key.
    images: floating ``[B, H, W, C]`` with values in [0, 1].
    max_shift: largest translation in pixels (static).
    noise_std: standard deviation of the additive noise (static).
    brightness: half-width of the multiplicative brightness range, in [0, 1] (static).

  Returns:
    Augmented images, same shape and dtype, values in [0, 1].
  """
  if isinstance(max_shift, bool) or int(max_shift) != max_shift or max_shift < 0:
    raise ValueError(f'max_shift must be a non-negative integer, got {max_shift!r}.')
  _check_nonneg('noise_std', noise_std)
  _check_nonneg('brightness', brightness, upper=1.0)
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must have shape [B, H, W, C], got shape {images.shape}.')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'images must be floating point in [0, 1], got dtype {images.dtype}.')
  b, h, w, c = images.shape
  max_shift = int(max_shift)
  shift_key, bright_key, noise_key = jax.random.split(key, 3)

  out = images
  if max_shift > 0:
    m = max_shift
    padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
    # Crop origin o in [0, 2m] in padded coordinates = a translation of the content by m - o.
    origins = jax.random.randint(shift_key, (b, 2), 0, 2 * m + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    out = jax.vmap(crop)(padded, origins)
  if brightness > 0:
    scale = jax.random.uniform(bright_key, (b, 1, 1, 1), dtype=out.dtype,
                               minval=1.0 - brightness, maxval=1.0 + brightness)
    out = out * scale
  if noise_std > 0:
    out = out + noise_std * jax.random.normal(noise_key, out.shape, dtype=out.dtype)
  return jnp.clip(out, 0.0, 1.0).astype(images.dtype)


@functools.partial(jax.jit, static_argnames=('noise_std', 'drop_prob'))
def augment_tabular(key: jax.Array, x: jax.Array, *, noise_std: float = 0.1,
                    drop_prob: float = 0.1) -> jax.Array:
  """Gaussian noise on standardised features plus random feature dropout.

  Each feature of each example gets ``N(0, noise_std^2)`` added and is then set to 0 with
  probability ``drop_prob``. Features are assumed standardised, so 0 is the training mean: dropped
  features are replaced by the mean and the survivors are not rescaled. Labels are never touched.

  Args:
    key: PRNG key.
    x: floating ``[B, F]`` (any shape works; every element is one feature value).
    noise_std: standard deviation of the additive noise (static).
    drop_prob: probability of zeroing each feature, in [0, 1) (static).

  Returns:
    Augmented features, same shape and dtype.
  """
  _check_nonneg('noise_std', noise_std)
  _check_nonneg('drop_prob', drop_prob, upper=1.0, upper_inclusive=False)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'x must be floating point, got dtype {x.dtype}.')
  noise_key, drop_key = jax.random.split(key)
  out = x
  if noise_std > 0:
    out = out + noise_std * jax.random.normal(noise_key, x.shape, dtype=x.dtype)
  if drop_prob > 0:
    keep = jax.random.bernoulli(drop_key, 1.0 - drop_prob, x.shape)
    out = jnp.where(keep, out, jnp.zeros_like(out))
  return out.astype(x.dtype)


def make_views(key: jax.Array, x: jax.Array, num_views: int,
               augment_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
  """``num_views`` independently augmented views of a batch: ``[B, ...] -> [B, num_views, ...]``.

  View ``v`` uses ``jax.random.split(key, num_views)[v]``; ``augment_fn(key, x)`` is e.g. the result
  of ``get_augment_fn``.
  """
  if isinstance(num_views, bool) or int(num_views) != num_views or num_views < 1:
    raise ValueError(f'num_views must be a positive integer, got {num_views!r}.')
  keys = jax.random.split(key, int(num_views))
  views = jax.vmap(lambda k: augment_fn(k, x))(keys)  # [V, B, ...]
  return jnp.moveaxis(views, 0, 1)


# --------------------------------------------------------------------------------------------------
# named per-sample pipelines
# --------------------------------------------------------------------------------------------------

def simclr_sample(key: jax.Array, image: jax.Array, *, size=None, scale=(0.08, 1.0),
                  ratio=(3 / 4, 4 / 3), flip_prob: float = 0.5, jitter=(0.4, 0.4, 0.4, 0.1),
                  jitter_prob: float = 0.8, gray_prob: float = 0.2, blur_prob: float = 0.5,
                  blur_sigma=(0.1, 2.0), blur_kernel: int | None = None) -> jax.Array:
  """SimCLR's augmentation (Chen et al. 2020, App. A; thesis Ch. 5 Sec. 5.5.2, Ch. 6) of one image.

  Random resized crop (area ``~U(scale)``, aspect ``~logU(ratio)``) to ``size`` (default: the input
  size), horizontal flip (p = 0.5), colour jitter (brightness, contrast, saturation, hue) =
  ``jitter`` with p = ``jitter_prob``, grayscale with p = ``gray_prob``, Gaussian blur with
  p = ``blur_prob``, ``sigma ~ U(blur_sigma)`` and a kernel of 10 % of the output side (odd, >= 3)
  unless ``blur_kernel`` is given. The defaults are SimCLR's ImageNet recipe; its CIFAR recipe (and
  thesis Ch. 5's) has no blur: ``blur_prob=0``.
  """
  image = transforms.check_image(image)
  if len(tuple(jitter)) != 4:
    raise ValueError(f'jitter must be (brightness, contrast, saturation, hue), got {jitter!r}.')
  out_h, out_w = transforms.check_size('size', size, image.shape)
  kernel = blur_kernel
  if kernel is None:
    kernel = int(0.1 * min(out_h, out_w))
    kernel = max(3, kernel + 1 - kernel % 2)
  k = jax.random.split(key, 7)
  x = transforms.random_resized_crop(k[0], image, (out_h, out_w), scale, ratio)
  x = transforms.random_flip(k[1], x, flip_prob)
  x = transforms.random_apply(k[2], jitter_prob,
                              lambda im: transforms.color_jitter(k[3], im, *jitter), x)
  x = transforms.random_apply(k[4], gray_prob, transforms.grayscale, x)
  blur = lambda im: transforms.random_gaussian_blur(k[6], im, kernel, blur_sigma)
  return transforms.random_apply(k[5], blur_prob, blur, x)


def regression_sample(key: jax.Array, image: jax.Array, *, max_shift: int = 2,
                      brightness: float = 0.1, noise_std: float = 0.05, contrast: float = 0.0,
                      gamma=(1.0, 1.0), blur_prob: float = 0.0, blur_kernel: int = 3,
                      blur_sigma=(0.1, 2.0), cutout_prob: float = 0.0, cutout_holes=(1, 1),
                      cutout_size: int | None = None) -> jax.Array:
  """Label-preserving augmentation of one image: no flip, rotation or crop-and-resize.

  With the defaults this is the ``augment_images`` ('image') recipe per sample (same distribution,
  per-sample keys): an integer shift of at most
  ``max_shift`` pixels, a brightness scale ``~U[1 - brightness, 1 + brightness]`` and
  ``N(0, noise_std^2)`` noise, clipped to [0, 1] once at the end. Optional (off by default) and
  applied in this order between brightness and noise: contrast ``~U[1 - c, 1 + c]`` (clips), gamma
  ``~U(gamma)`` (clips), Gaussian blur with p = ``blur_prob``; cutout with p = ``cutout_prob``
  comes last.
  """
  image = transforms.check_image(image)
  _check_nonneg('brightness', brightness, upper=1.0)
  _check_nonneg('contrast', contrast)
  _check_nonneg('noise_std', noise_std)
  k = jax.random.split(key, 9)
  x = transforms.integer_shift(k[0], image, max_shift)
  if brightness > 0:
    x = x * jax.random.uniform(k[1], minval=1.0 - brightness, maxval=1.0 + brightness)
  if contrast > 0:
    factor = jax.random.uniform(k[2], minval=max(0.0, 1.0 - contrast), maxval=1.0 + contrast)
    x = transforms.adjust_contrast(x, factor)
  x = transforms.random_gamma(k[3], x, gamma)
  blur = lambda im: transforms.random_gaussian_blur(k[4], im, blur_kernel, blur_sigma)
  x = transforms.random_apply(k[5], blur_prob, blur, x)
  if noise_std > 0:
    x = x + noise_std * jax.random.normal(k[6], x.shape, x.dtype)
  hole = lambda im: transforms.cutout(k[7], im, cutout_holes, cutout_size)
  x = transforms.random_apply(k[8], cutout_prob, hole, x)
  return jnp.clip(x, 0.0, 1.0).astype(image.dtype)


def bmd_sample(key: jax.Array, image: jax.Array, *, size=None, flip_prob: float = 0.5,
               degrees: float = 15.0, translate: float = 0.05, scale=(1.0, 1.0),
               noise_std: float = 0.0) -> jax.Array:
  """AdaCon's BMD augmentation (Sec. IV-A): "horizontal flips, rotations, and frame jitters".

  Horizontal flip (p = ``flip_prob``), then one affine warp: rotation ``~U(-degrees, degrees)`` and
  a shift of the crop frame ``~U(-translate, translate)`` of the side (the frame jitter), zero fill;
  optionally a resize to ``size`` (the paper's 128 x 128; best done on the host) and noise. The
  paper gives no magnitudes: ``degrees=15`` and ``translate=0.05`` are our choices. BMD is invariant
  to all of these, so the regression target stays valid.
  """
  image = transforms.check_image(image)
  k = jax.random.split(key, 3)
  x = transforms.random_flip(k[0], image, flip_prob)
  x = transforms.random_affine(k[1], x, degrees, translate, scale)
  out = transforms.check_size('size', size, image.shape)
  if out != tuple(image.shape[:2]):
    x = transforms.resized_crop(x, 0.0, 0.0, image.shape[0], image.shape[1], out)
  return transforms.gaussian_noise(k[2], x, noise_std)


def echonet_sample(key: jax.Array, clip: jax.Array, *, length: int = 32, period: int = 2,
                   mode: str = 'random', pad: int = 12, flip_prob: float = 0.0) -> jax.Array:
  """AdaCon's EchoNet-Dynamic input (Sec. IV-B, after Ouyang et al. 2020) from one video.

  ``[T, H, W, C] -> [length, H, W, C]``: ``length`` frames every ``period``-th frame from a random
  start (``mode='random'``, the frame jitter; ``'first'`` / ``'center'`` for evaluation, with
  ``pad=0``), then one spatial transform for the whole clip: zero-pad by ``pad`` pixels and a random
  crop back (an integer shift of at most ``pad``; EchoNet's training ``pad=12``) and an optional
  horizontal flip. LVEF does not depend on any of these.
  """
  k_clip, k_space = jax.random.split(key)
  frames = video_lib.sample_clip(k_clip, clip, length, period, mode)

  def spatial(k, frame):
    k_shift, k_flip = jax.random.split(k)
    return transforms.random_flip(k_flip, transforms.integer_shift(k_shift, frame, pad), flip_prob)

  return video_lib.clip_consistent(spatial)(k_space, frames)


# kind -> (per-sample function, rank of one sample)
PIPELINES = {'simclr': (simclr_sample, 3), 'regression': (regression_sample, 3),
             'bmd': (bmd_sample, 3), 'echonet': (echonet_sample, 4)}


def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


@functools.partial(jax.jit, static_argnames=('kind', 'options'))
def _run_pipeline(key, inputs, *, kind, options):
  sample_fn = PIPELINES[kind][0]
  keys = jax.random.split(key, inputs.shape[0])
  return jax.vmap(lambda k, x: sample_fn(k, x, **dict(options)))(keys, inputs)


def apply_pipeline(key: jax.Array, inputs: jax.Array, kind: str, **options) -> jax.Array:
  """A named pipeline on a batch with one key per sample: ``split(key, B)[i]`` augments sample i.

  Args:
    key: PRNG key.
    inputs: ``[B, H, W, C]`` images (``[B, T, H, W, C]`` videos for 'echonet'), uint8 or float in
      [0, 1].
    kind: a key of ``PIPELINES``.
    **options: keyword arguments of the per-sample function (static).

  Returns:
    float ``[B, ...]`` in [0, 1] (the output size may differ: crops, clips).
  """
  if kind not in PIPELINES:
    raise ValueError(f'Unknown pipeline kind {kind!r}; available: {", ".join(PIPELINES)}.')
  rank = PIPELINES[kind][1]
  inputs = transforms.to_float(inputs, 'inputs')
  if inputs.ndim != rank + 1:
    layout = '[B, H, W, C]' if rank == 3 else '[B, T, H, W, C]'
    raise ValueError(f'inputs for kind={kind!r} must have shape {layout}, got {inputs.shape}.')
  options = tuple(sorted((name, _hashable(v)) for name, v in options.items()))
  return _run_pipeline(key, inputs, kind=kind, options=options)


# --------------------------------------------------------------------------------------------------
# views and AdaCon's batch augmentation
# --------------------------------------------------------------------------------------------------

def batch_augment(key: jax.Array, x: jax.Array, y: jax.Array, num_augments: int,
                  augment_fn: Callable[[jax.Array, jax.Array], jax.Array], *,
                  first_index=0) -> tuple[jax.Array, jax.Array]:
  """AdaCon's batch augmentation (Sec. IV-A; Hoffer et al. 2019): ``b`` samples x ``k`` views.

  Sample ``i`` is augmented with the key ``fold_in(key, first_index + i)`` (its global index, as the
  trainer's ``sample_keys``) through ``make_views``, so the views of a sample do not depend on the
  rest of the batch. The labels are returned unchanged: ``views[i, j]`` is a view of ``x[i]`` and
  its label is ``y[i]`` (``flatten_views`` gives the matching flat rows).

  Returns:
    ``(views [b, k, ...], y [b])``.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  if y.ndim < 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f'y must have one label per sample (leading dim {x.shape[0]}), got shape '
                     f'{y.shape}.')
  index = first_index + jnp.arange(x.shape[0])
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
  one = lambda k, xi: make_views(k, xi[None], num_augments, augment_fn)[0]
  return jax.vmap(one)(keys, x), y


def flatten_views(views: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``([b, k, ...], [b, ...]) -> ([b * k, ...], [b * k, ...])``: row ``i * k + j`` is view j of
  sample i, with label ``y[i]``."""
  b, k = views.shape[:2]
  if y.shape[0] != b:
    raise ValueError(f'y must have {b} rows (one per sample of views), got shape {y.shape}.')
  return views.reshape((b * k,) + views.shape[2:]), jnp.repeat(y, k, axis=0)


def augment_identity(key: jax.Array, x: jax.Array) -> jax.Array:
  """No augmentation: ``x`` unchanged (the views of a sample are then identical; ``key`` unused)."""
  del key
  return x


_AUGMENTERS = {'image': augment_images, 'tabular': augment_tabular, 'identity': augment_identity}


def get_augment_fn(kind: str, **kwargs) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The augmentation ``fn(key, x) -> x'`` selected by name, with its hyperparameters bound.

  ``'image'`` -> ``partial(augment_images, **kwargs)``; ``'tabular'`` ->
  ``partial(augment_tabular, **kwargs)`` (``kind`` is ``Dataset.kind``); a pipeline name
  (``'simclr'``, ``'regression'``, ``'bmd'``, ``'echonet'``) -> ``partial(apply_pipeline,
  kind=kind, **kwargs)``. Unknown keyword names are rejected here rather than at the first call.
  """
  if kind in _AUGMENTERS:
    fn = _AUGMENTERS[kind]
  elif kind in PIPELINES:
    fn = PIPELINES[kind][0]
  else:
    available = ', '.join(list(_AUGMENTERS) + list(PIPELINES))
    raise ValueError(f'Unknown augmentation kind {kind!r}; available: {available}.')
  allowed = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'Unknown option(s) {unknown} for kind={kind!r}; allowed: {allowed}.')
  if kind in _AUGMENTERS:
    return functools.partial(fn, **kwargs)
  return functools.partial(apply_pipeline, kind=kind, **kwargs)
