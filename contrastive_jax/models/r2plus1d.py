"""R(2+1)D-18 video encoder (Tran et al., CVPR 2018) in torchvision's ``r2plus1d_18`` layout.

EchoNet-Dynamic regresses the ejection fraction from 32-frame echocardiogram clips with a
Kinetics-400-pretrained R(2+1)D-18 (Ouyang et al. 2020); AdaCon adds its contrastive branch after
that backbone's feature layer (Dai et al., TMI 2023, Sec. IV-B.1 "Training Details"). Input is a video
``[N, T, H, W, C]`` (channels last); output the pooled features [N, 512].

Every 3x3x3 conv of a 3D ResNet is factorised into a spatial (1, 3, 3) conv to ``M`` channels,
BatchNorm, ReLU and a temporal (3, 1, 1) conv, with ``M = 27 * Ni * No // (9 * Ni + 3 * No)`` chosen
so that the factorised block has the parameter count of the full 3D conv (Tran et al., Sec. 3.5).
The stem is a (1, 7, 7)/(1, 2, 2) conv to 45 channels followed by a (3, 1, 1) conv to 64; stages 2-4
stride 2 in time and space (the spatial conv strides in space, the temporal one in time) and their
shortcut is a strided 1x1x1 conv. Paddings are torch's symmetric ones; BatchNorm eps 1e-5, Flax
momentum 0.9 (= torch's 0.1).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from contrastive_jax.models.resnet import conv_and_norm
from contrastive_jax.models.resnet import pooled_output

ModuleDef = Any


def midplanes(in_planes: int, out_planes: int) -> int:
  """Width of the (2+1)D factorisation matching a full 3x3x3 conv's parameters (Tran et al. 3.5)."""
  return (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)


class Conv2Plus1D(nn.Module):
  """(1, 3, 3) conv stride (1, s, s) -> BN -> ReLU -> (3, 1, 1) conv stride (s, 1, 1)."""
  out_planes: int
  mid_planes: int
  stride: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    s = self.stride
    x = self.conv(self.mid_planes, (1, 3, 3), (1, s, s), padding=[(0, 0), (1, 1), (1, 1)],
                  name='spatial')(x)
    x = self.act(self.norm(name='bn_mid')(x))
    return self.conv(self.out_planes, (3, 1, 1), (s, 1, 1), padding=[(1, 1), (0, 0), (0, 0)],
                     name='temporal')(x)


class VideoBasicBlock(nn.Module):
  """Two (2+1)D convs with a residual connection (R(2+1)D's BasicBlock).

  Attributes:
    planes: output channels.
    stride: temporal and spatial stride of the first (2+1)D conv and of the shortcut.
    conv: ``nn.Conv`` partial (no bias).
    norm: ``nn.BatchNorm`` partial.
    act: activation.
    zero_init_residual: last BatchNorm starts at zero scale (Goyal et al. 2017).
  """
  planes: int
  stride: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, x):
    # torchvision computes one mid width from the block's input planes and uses it for both convs.
    mid = midplanes(x.shape[-1], self.planes)
    residual = x
    y = Conv2Plus1D(self.planes, mid, self.stride, self.conv, self.norm, self.act,
                    name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = Conv2Plus1D(self.planes, mid, 1, self.conv, self.norm, self.act, name='conv2')(y)
    scale_init = (nn.initializers.zeros_init() if self.zero_init_residual
                  else nn.initializers.ones_init())
    y = self.norm(scale_init=scale_init, name='bn2')(y)
    if residual.shape != y.shape:
      s = self.stride
      residual = self.conv(self.planes, (1, 1, 1), (s, s, s), padding='VALID',
                           name='downsample_conv')(residual)
      residual = self.norm(name='downsample_bn')(residual)
    return self.act(residual + y)


class R2Plus1D(nn.Module):
  """R(2+1)D video ResNet: [N, T, H, W, C] -> pooled features [N, 8 * num_filters] (512).

  Attributes:
    stage_sizes: blocks per stage ((2, 2, 2, 2) for R(2+1)D-18).
    num_filters: channels of the first stage (doubled at every later stage).
    stem_mid: channels of the stem's spatial conv (45 in torchvision).
    num_classes: if set, a Dense classifier ``fc`` on the pooled features (400 for Kinetics).
    global_pool: return pooled features [N, C] (True) or the last feature map [N, T', H', W', C].
    zero_init_residual: last BatchNorm of each block starts at zero scale.
    bn_axis_name: mesh/pmap axis over which BatchNorm statistics are averaged.
    dtype: computation dtype (parameters stay float32).
    bn_momentum: Flax momentum of the running statistics (0.9 = torch's 0.1).
    bn_epsilon: BatchNorm epsilon (torchvision: 1e-5).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
  stem_mid: int = 45
  num_classes: int | None = None
  global_pool: bool = True
  zero_init_residual: bool = True
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps videos [N, T, H, W, C] to pooled features (or logits / a feature map)."""
    if x.ndim != 5:
      raise ValueError(f'R2Plus1D expects videos [N, T, H, W, C]; got x.shape={x.shape}.')
    conv, norm = conv_and_norm(self, train)
    x = x.astype(self.dtype)
    x = conv(self.stem_mid, (1, 7, 7), (1, 2, 2), padding=[(0, 0), (3, 3), (3, 3)],
             name='stem_spatial')(x)
    x = nn.relu(norm(name='stem_bn1')(x))
    x = conv(self.num_filters, (3, 1, 1), padding=[(1, 1), (0, 0), (0, 0)],
             name='stem_temporal')(x)
    x = nn.relu(norm(name='stem_bn2')(x))
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        x = VideoBasicBlock(self.num_filters * 2**i, 2 if i > 0 and j == 0 else 1,
                            conv=conv, norm=norm, zero_init_residual=self.zero_init_residual,
                            name=f'layer{i + 1}_{j}')(x)
    return pooled_output(self, x, axes=(1, 2, 3))


R2Plus1D18 = functools.partial(R2Plus1D, stage_sizes=(2, 2, 2, 2))
