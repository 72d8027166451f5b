"""On-device data augmentation: pure, jit-able functions of an explicit PRNG key.

Every function is built from per-example ops (``vmap`` of ``lax.dynamic_slice``, elementwise noise),
so it runs under ``jax.jit`` (hyperparameters are Python values, i.e. static) and inside
``jax.shard_map`` on a per-device block of the batch. ``augment_images`` and ``augment_tabular`` are
themselves wrapped in ``jax.jit`` with their hyperparameters static, so an eager call compiles once
per shape and setting (inside an outer ``jit`` the inner one is simply inlined). Inside
``shard_map`` the caller should fold the device's ``lax.axis_index`` into the key so that shards
draw different augmentations.

Augmentation never touches labels. For images there are deliberately no flips and no rotations: the
``digits_angle`` target *is* the rotation angle, and a flip negates it, so either would silently
change the label.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp


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


_AUGMENTERS = {'image': augment_images, 'tabular': augment_tabular}


def get_augment_fn(kind: str, **kwargs) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The augmentation for a dataset kind, with its hyperparameters bound.

  ``'image'`` -> ``partial(augment_images, **kwargs)``; ``'tabular'`` ->
  ``partial(augment_tabular, **kwargs)``. ``kind`` is ``Dataset.kind``. Unknown keyword names are
  rejected here rather than at the first call.
  """
  if kind not in _AUGMENTERS:
    raise ValueError(f'Unknown augmentation kind {kind!r}; available: {", ".join(_AUGMENTERS)}.')
  fn = _AUGMENTERS[kind]
  allowed = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'Unknown option(s) {unknown} for kind={kind!r}; allowed: {allowed}.')
  return functools.partial(fn, **kwargs)
