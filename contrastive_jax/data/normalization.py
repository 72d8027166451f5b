"""Per-channel input normalisation ``(x - mean) / std`` (``config.data.normalize``).

torchvision's ImageNet-pretrained backbones expect inputs in [0, 1] normalised by the ImageNet
channel statistics. The trainer applies the normalisation inside the model's forward pass
(``ContrastiveRegressor.input_mean`` / ``input_std``), on device and after augmentation, so
training, evaluation, probes and initialisation all see the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Tuple

import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = {'imagenet': (IMAGENET_MEAN, IMAGENET_STD)}

Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]


def _values(spec: Any, what: str, channels: int) -> Tuple[float, ...]:
  """A number or one value per channel -> ``channels`` floats (a single value is broadcast)."""
  values = tuple(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else (spec,)
  try:
    values = tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise ValueError(f'`data.normalize`: the {what} must be numbers, got {spec!r}.') from None
  if len(values) == 1:
    values *= channels
  if len(values) != channels:
    raise ValueError(f'`data.normalize`: the {what} has {len(values)} values but the inputs have '
                     f'{channels} channel(s).')
  return values


def is_unset(spec: Any) -> bool:
  """Whether a ``data.normalize`` value means no normalisation (None, '' or blanks)."""
  return spec is None or (isinstance(spec, str) and not spec.strip())


def input_normalization(spec: Any, channels: int) -> Optional[Stats]:
  """``config.data.normalize`` -> ``(mean, std)`` tuples of length ``channels``, or None.

  Args:
    spec: '' or None (no normalisation); 'imagenet' (mean (0.485, 0.456, 0.406), std (0.229, 0.224,
      0.225), torchvision's ImageNet weights; 3-channel inputs only); or explicit ``(mean, std)``,
      each a number or one value per channel.
    channels: the channel count of the inputs (their last axis).

  Raises:
    ValueError: an unknown preset, 'imagenet' on inputs without 3 channels (replicate grey images
      to RGB, e.g. ``data.kwargs.channels=3``, or give explicit statistics), a length that does not
      match ``channels``, or a std that is not positive.
  """
  if is_unset(spec):
    return None
  if isinstance(spec, str):
    name = spec.strip().lower()
    if name not in PRESETS:
      raise ValueError(f'Unknown `data.normalize`={spec!r}; expected \'\' (none), one of '
                       f'{sorted(PRESETS)} or explicit (mean, std).')
    if channels != 3:
      raise ValueError(
          f"`data.normalize`={spec!r} needs 3-channel (RGB) inputs; these have {channels}. "
          "Replicate grey images to RGB (e.g. --config.data.kwargs.channels=3, the input of an "
          "ImageNet backbone) or give explicit statistics, e.g. ((0.449,), (0.226,)).")
    mean, std = PRESETS[name]
  elif isinstance(spec, Sequence) and len(spec) == 2:
    mean, std = spec
  else:
    raise ValueError(f'`data.normalize` must be \'\', a preset name ({sorted(PRESETS)}) or '
                     f'(mean, std); got {spec!r}.')
  mean, std = _values(mean, 'mean', channels), _values(std, 'std', channels)
  if not all(s > 0 for s in std):
    raise ValueError(f'`data.normalize`: every std must be positive, got {std}.')
  return mean, std


def normalize(x: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
  """``(x - mean) / std`` over the last (channel) axis, in float32 (any leading shape)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (jnp.asarray(x, jnp.float32) - mean) / std
