"""ResNet encoders with a CIFAR (3x3, no max-pool) or ImageNet (7x7 + max-pool) stem.

Follows google/flax ``examples/imagenet/models.py``; the classifier is left out,
so the model returns the globally average-pooled features.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any

STEMS = ('cifar', 'imagenet')


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection (ResNet-18/34 block)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3))(y)
    # Zero-initialised scale: each block starts as the identity (Goyal et al. 2017).
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides,
                           name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """ResNet backbone returning [N, num_filters * 2**(len(stage_sizes) - 1)] features.

  Attributes:
    stage_sizes: number of blocks in each stage, e.g. (2, 2, 2, 2) for ResNet-18.
    num_filters: channels of the first stage (doubled at every later stage).
    stem: 'cifar' (3x3 conv, stride 1, no max-pool) or 'imagenet'
      (7x7 conv stride 2, then 3x3 max-pool stride 2).
    bn_axis_name: mesh/pmap axis over which BatchNorm statistics are averaged.
    dtype: computation dtype (parameters stay float32).
  """
  stage_sizes: Sequence[int]
  num_filters: int = 64
  stem: str = 'cifar'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  block_cls: ModuleDef = BasicBlock
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps NHWC images [N, H, W, C] to pooled features."""
    if self.stem not in STEMS:
      raise ValueError(f'Unknown ResNet stem={self.stem!r}; expected one of {STEMS}.')
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9,
        epsilon=1e-5, axis_name=self.bn_axis_name, dtype=self.dtype)

    x = x.astype(self.dtype)
    if self.stem == 'cifar':
      x = conv(self.num_filters, (3, 3), name='conv_init')(x)
    else:
      x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
               name='conv_init')(x)
    x = norm(name='bn_init')(x)
    x = self.act(x)
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(self.num_filters * 2**i, strides=strides,
                           conv=conv, norm=norm, act=self.act)(x)
    return jnp.mean(x, axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
