"""Per-sample video transforms for clips ``[T, H, W, C]``: clip sampling and clip-consistent ops.

AdaCon Sec. IV-B (EchoNet-Dynamic, following Ouyang et al. 2020): clips of 32 frames taken every 2nd
frame, with "frame jitter", i.e. a uniformly random start during training; at evaluation a fixed clip
(the first or the central one). As in EchoNet's ``Echo`` dataset, a video shorter than the clip span is
padded with black frames at the end. Spatial augmentation is the same for every frame of a clip
(``clip_consistent``: each frame is transformed with the same key, and every transform in
``transforms`` draws its parameters from the key alone).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from contrastive_jax.data import transforms

CLIP_MODES = ('random', 'center', 'first')


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  return int(value)


def check_video(video: jax.Array, name: str = 'video') -> jax.Array:
  """``to_float`` of a rank-4 ``[T, H, W, C]`` clip; ``ValueError`` otherwise."""
  video = transforms.to_float(video, name)
  if video.ndim != 4:
    raise ValueError(f'{name} must have shape [T, H, W, C], got shape {video.shape}.')
  return video


def clip_indices(key: jax.Array, num_frames, length: int, period: int = 1,
                 mode: str = 'random') -> jax.Array:
  """Frame indices ``start + period * arange(length)`` (int32 ``[length]``) of one clip.

  ``start ~ U{0..max(num_frames - (length - 1) * period - 1, 0)}`` for ``mode='random'`` (the
  frame jitter), the middle of that range (floor) for ``'center'`` and 0 for ``'first'``. Indices
  ``>= num_frames`` (a video shorter than the span) are padding. ``num_frames`` may be traced.
  """
  length = _check_positive_int('length', length)
  period = _check_positive_int('period', period)
  if mode not in CLIP_MODES:
    raise ValueError(f'mode must be one of {CLIP_MODES}, got {mode!r}.')
  span = (length - 1) * period + 1
  max_start = jnp.maximum(jnp.asarray(num_frames, jnp.int32) - span, 0)
  if mode == 'random':
    start = jax.random.randint(key, (), 0, max_start + 1)
  elif mode == 'center':
    start = max_start // 2
  else:
    start = jnp.zeros((), jnp.int32)
  return (start + period * jnp.arange(length)).astype(jnp.int32)


def sample_clip(key: jax.Array, video: jax.Array, length: int, period: int = 1,
                mode: str = 'random', num_valid=None) -> jax.Array:
  """The clip ``video[clip_indices(...)]``; frames past the end (or past ``num_valid``, the true
  length of a host-padded video, possibly traced) are black. Returns ``[length, H, W, C]``."""
  video = check_video(video)
  total = video.shape[0]
  valid = total if num_valid is None else jnp.minimum(jnp.asarray(num_valid, jnp.int32), total)
  idx = clip_indices(key, valid, length, period, mode)
  frames = jnp.take(video, jnp.clip(idx, 0, total - 1), axis=0)
  return jnp.where((idx < valid)[:, None, None, None], frames, jnp.zeros_like(frames))


def clip_consistent(fn: Callable[[jax.Array, jax.Array], jax.Array]
                    ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``fn(key, frame)`` -> ``g(key, clip)`` applying ``fn`` with the same key to every frame, so all
  frames get the same crop / flip / rotation / colour change."""

  def on_clip(key: jax.Array, video: jax.Array) -> jax.Array:
    video = check_video(video)
    return jax.vmap(lambda frame: fn(key, frame))(video)

  return on_clip
