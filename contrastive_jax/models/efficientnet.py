"""EfficientNet-B0/B1 encoders (Tan & Le, ICML 2019) in torchvision's ``efficientnet_b0/b1`` layout.

AdaCon estimates bone mineral density with an ImageNet-pretrained EfficientNet-B1 backbone
(Dai et al., TMI 2023, Sec. IV-A.1 "Training Details"); this module reproduces torchvision's
architecture so its checkpoints convert one-to-one (``models.torch_weights.convert_efficientnet``):

* stem 3x3/2 conv -> 7 stages of MBConv blocks (Table 1 of the paper, ``_B0_STAGES`` below) ->
  1x1 conv to 4x the last stage's channels (1280) -> global average pool;
* MBConv: 1x1 expansion (absent when the expand ratio is 1) -> depthwise kxk (stride s) ->
  squeeze-and-excitation (squeeze width ``max(1, in_channels // 4)``, SiLU, sigmoid gate) ->
  1x1 projection without activation -> stochastic depth + identity shortcut when
  ``stride == 1`` and the channel count is kept; SiLU everywhere else;
* B1 scales depth by 1.1 (``ceil(n * 1.1)`` blocks per stage); widths are rounded with
  ``_make_divisible(c * width_mult, 8)``;
* torch's symmetric padding ``k // 2`` (never Flax 'SAME', which pads (0, 1) on stride 2);
* BatchNorm eps: torchvision's EfficientNet-B0..B7 use ``nn.BatchNorm2d``'s default 1e-5 (the TF
  reference uses 1e-3; set ``bn_epsilon=1e-3`` for weights ported from TF); momentum 0.9 here is
  torch's 0.1.

Stochastic depth (drop-path, "row" mode) is a train-time option: block ``k`` of ``K`` drops its
residual branch per sample with probability ``stochastic_depth_prob * k / K`` (torchvision trains
with 0.2). It is off by default so that a training step needs no ``'dropout'`` PRNG stream; when on,
call ``apply(..., train=True, rngs={'dropout': key})``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from contrastive_jax.models.resnet import conv_and_norm
from contrastive_jax.models.resnet import pooled_output

ModuleDef = Any

# (expand_ratio, kernel, stride, in_channels, out_channels, num_blocks) of EfficientNet-B0
# (Tan & Le 2019, Table 1; torchvision ``_efficientnet_conf``).
_B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a channel count to the nearest multiple of ``divisor``, never below 90% of it."""
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


def stage_config(width_mult: float, depth_mult: float) -> tuple[tuple[int, ...], ...]:
  """Per-stage (expand, kernel, stride, in_ch, out_ch, blocks) after width/depth scaling."""
  return tuple(
      (e, k, s, _make_divisible(cin * width_mult), _make_divisible(cout * width_mult),
       int(math.ceil(n * depth_mult)))
      for e, k, s, cin, cout, n in _B0_STAGES)


class SqueezeExcitation(nn.Module):
  """x * sigmoid(W2 silu(W1 mean_hw(x) + b1) + b2) with 1x1 convs (``fc1``, ``fc2``)."""
  squeeze_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.Conv(self.squeeze_channels, (1, 1), dtype=self.dtype, name='fc1')(s)
    s = nn.silu(s)
    s = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name='fc2')(s)
    return x * nn.sigmoid(s)


class MBConv(nn.Module):
  """Inverted residual block with squeeze-and-excitation (EfficientNet's MBConv).

  Attributes:
    expand_ratio: width of the depthwise stage relative to the input channels.
    kernel: depthwise kernel size.
    stride: depthwise stride.
    out_channels: output channels.
    stochastic_depth_prob: per-sample drop probability of the residual branch in training.
    conv: ``nn.Conv`` partial (no bias).
    norm: ``nn.BatchNorm`` partial.
    dtype: computation dtype of the squeeze-and-excitation convs.
  """
  expand_ratio: int
  kernel: int
  stride: int
  out_channels: int
  stochastic_depth_prob: float
  conv: ModuleDef
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    in_channels = x.shape[-1]
    expanded = _make_divisible(in_channels * self.expand_ratio)
    h = x
    if expanded != in_channels:
      h = self.conv(expanded, (1, 1), padding='VALID', name='expand_conv')(h)
      h = nn.silu(self.norm(name='expand_bn')(h))
    pad = (self.kernel - 1) // 2
    h = self.conv(expanded, (self.kernel, self.kernel), (self.stride, self.stride),
                  padding=[(pad, pad), (pad, pad)], feature_group_count=expanded,
                  name='depthwise_conv')(h)
    h = nn.silu(self.norm(name='depthwise_bn')(h))
    h = SqueezeExcitation(max(1, in_channels // 4), dtype=self.dtype, name='se')(h)
    h = self.conv(self.out_channels, (1, 1), padding='VALID', name='project_conv')(h)
    h = self.norm(name='project_bn')(h)
    if self.stride == 1 and in_channels == self.out_channels:
      if self.stochastic_depth_prob > 0.0:
        # Row-mode stochastic depth: one Bernoulli(1 - p) per sample, survivors scaled by 1/(1-p).
        h = nn.Dropout(self.stochastic_depth_prob, broadcast_dims=(1, 2, 3),
                       deterministic=not train, name='stochastic_depth')(h)
      h = h + x
    return h


class EfficientNet(nn.Module):
  """EfficientNet backbone returning pooled features [N, 4 * last_stage_channels] (1280 for B0/B1).

  Attributes:
    width_mult: channel multiplier (1.0 for B0 and B1).
    depth_mult: block-count multiplier (1.0 for B0, 1.1 for B1).
    stochastic_depth_prob: drop-path probability of the last block (linearly increasing from 0);
      0 (default) disables it; torchvision trains with 0.2.
    num_classes: if set, dropout(``dropout_rate``) + Dense ``classifier`` on the pooled features.
    dropout_rate: dropout before the classifier in training (torchvision: 0.2).
    global_pool: return pooled features [N, C] (True) or the last feature map [N, H', W', C].
    bn_axis_name: mesh/pmap axis over which BatchNorm statistics are averaged.
    dtype: computation dtype (parameters stay float32).
    bn_momentum: Flax momentum of the running statistics (0.9 = torch's 0.1).
    bn_epsilon: BatchNorm epsilon (torchvision B0-B7: 1e-5; TF reference: 1e-3).
  """
  width_mult: float = 1.0
  depth_mult: float = 1.0
  stochastic_depth_prob: float = 0.0
  num_classes: int | None = None
  dropout_rate: float = 0.0
  global_pool: bool = True
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps NHWC images [N, H, W, C] to pooled features (or logits / a feature map)."""
    if x.ndim != 4:
      raise ValueError(f'EfficientNet expects NHWC images [N, H, W, C]; got x.shape={x.shape}.')
    if not 0.0 <= self.stochastic_depth_prob < 1.0:
      raise ValueError(f'stochastic_depth_prob={self.stochastic_depth_prob}: expected [0, 1).')
    if self.width_mult <= 0 or self.depth_mult <= 0:
      raise ValueError(f'width_mult={self.width_mult}, depth_mult={self.depth_mult}: both must '
                       'be > 0.')
    conv, norm = conv_and_norm(self, train)
    stages = stage_config(self.width_mult, self.depth_mult)
    total_blocks = sum(stage[-1] for stage in stages)

    x = x.astype(self.dtype)
    x = conv(stages[0][3], (3, 3), (2, 2), padding=[(1, 1), (1, 1)], name='stem_conv')(x)
    x = nn.silu(norm(name='stem_bn')(x))
    block_id = 0
    for s, (expand, kernel, stride, _, out_channels, num_blocks) in enumerate(stages):
      for b in range(num_blocks):
        x = MBConv(expand, kernel, stride if b == 0 else 1, out_channels,
                   self.stochastic_depth_prob * block_id / total_blocks, conv=conv, norm=norm,
                   dtype=self.dtype, name=f'stage{s}_block{b}')(x, train=train)
        block_id += 1
    x = conv(4 * stages[-1][4], (1, 1), padding='VALID', name='head_conv')(x)
    x = nn.silu(norm(name='head_bn')(x))

    def classifier(h):
      h = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0.0)(h)
      return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(h)

    return pooled_output(self, x, axes=(1, 2), classifier=classifier)


EfficientNetB0 = functools.partial(EfficientNet, width_mult=1.0, depth_mult=1.0)
EfficientNetB1 = functools.partial(EfficientNet, width_mult=1.0, depth_mult=1.1)
