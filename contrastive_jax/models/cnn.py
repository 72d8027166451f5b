"""A small convolutional encoder for 8x8 to 32x32 images (fast on CPU)."""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
  """[3x3 conv -> BatchNorm -> ReLU (-> 2x2 avg-pool)] * len(widths) -> GAP -> Dense -> ReLU.

  Every block except the last is followed by a 2x2 average pool, provided the
  spatial size is still larger than 2 (so 8x8 inputs go 8 -> 4 -> 2).

  Attributes:
    widths: number of channels of each conv block.
    dense_dim: size of the output features.
    bn_axis_name: mesh/pmap axis over which BatchNorm statistics are averaged.
    dtype: computation dtype (parameters stay float32).
  """
  widths: Sequence[int] = (32, 64, 128)
  dense_dim: int = 256
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps NHWC images [N, H, W, C] to features [N, dense_dim]."""
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9,
        epsilon=1e-5, axis_name=self.bn_axis_name, dtype=self.dtype)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), padding='SAME', use_bias=False,
                  dtype=self.dtype, name=f'conv_{i}')(x)
      x = norm(name=f'bn_{i}')(x)
      x = nn.relu(x)
      if i < len(self.widths) - 1 and min(x.shape[1], x.shape[2]) > 2:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.dense_dim, dtype=self.dtype, name='dense')(x)
    return nn.relu(x)
