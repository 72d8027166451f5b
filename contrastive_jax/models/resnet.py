"""ResNet-18/34/50/101 encoders (He et al., CVPR 2016) in torchvision's layout.

The layout is torchvision's ``resnet*`` ("v1.5": a Bottleneck strides on its 3x3 conv, not on the
first 1x1), so that torchvision / timm checkpoints convert one-to-one (``models.torch_weights``):

* stems: 'imagenet' (7x7/2 conv, 3x3/2 max-pool) or 'cifar' (3x3/1 conv, no max-pool);
* every padding is torch's explicit, symmetric one (``k // 2 * dilation`` on each side): Flax's
  'SAME' pads (0, 1) instead of (1, 1) for a stride-2 conv on an even input and would shift every
  feature map;
* BatchNorm eps 1e-5; momentum 0.9 here is torch's ``momentum=0.1`` (Flax keeps
  ``0.9 * running + 0.1 * batch``);
* ``replace_stride_with_dilation`` as in torchvision: the dilated ResNet-101 of CoWPro (thesis
  Sec. 7.4.1.2, torchvision's DeepLab-v3 backbone, output stride 8: 256x256 -> 32x32) is
  ``ResNet101(replace_stride_with_dilation=(False, True, True), global_pool=False)``.

The classifier is left out unless ``num_classes`` is set, so the model returns the globally
average-pooled features [N, C] (or the last feature map with ``global_pool=False``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any

STEMS = ('cifar', 'imagenet')


def _pad(kernel: int, dilation: int = 1) -> list[tuple[int, int]]:
  """torch's symmetric ``padding = dilation * (kernel - 1) // 2`` on both spatial axes."""
  p = dilation * (kernel - 1) // 2
  return [(p, p), (p, p)]


class _ResidualBlock(nn.Module):
  """Attributes and projection shortcut shared by ``BasicBlock`` and ``Bottleneck`` (attributes
  documented on ``BasicBlock``)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: tuple[int, int] = (1, 1)
  dilation: int = 1
  first_dilation: int | None = None
  zero_init_residual: bool = True

  @nn.nowrap
  def _add_shortcut(self, residual, y):
    """``act(shortcut(residual) + y)``; the shortcut is a strided 1x1 conv + BatchNorm projection
    (``conv_proj``, ``norm_proj``) when the residual branch changes the shape, else the identity."""
    if residual.shape != y.shape:
      residual = self.conv(y.shape[-1], (1, 1), self.strides, padding='VALID',
                           name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class BasicBlock(_ResidualBlock):
  """Two 3x3 convs with a residual connection (ResNet-18/34 block).

  Attributes:
    filters: output channels.
    conv: ``nn.Conv`` partial (no bias).
    norm: ``nn.BatchNorm`` partial.
    act: activation.
    strides: stride of the first 3x3 conv and of the projection shortcut.
    dilation: dilation of the second 3x3 conv (``first_dilation`` of the first one).
    first_dilation: dilation of the first 3x3 conv (torchvision's ``previous_dilation`` for the
      first block of a dilated stage); ``None`` means ``dilation``.
    zero_init_residual: start the last BatchNorm at zero scale (Goyal et al. 2017).
  """
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x):
    d1 = self.first_dilation or self.dilation
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3, d1),
                  kernel_dilation=(d1, d1))(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3), padding=_pad(3, self.dilation),
                  kernel_dilation=(self.dilation, self.dilation))(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init_residual))(y)
    return self._add_shortcut(residual, y)


class Bottleneck(_ResidualBlock):
  """1x1 reduce -> 3x3 (strided, dilated) -> 1x1 expand (x4), residual (ResNet-50/101 block).

  Attributes: as ``BasicBlock``; ``filters`` is the width of the 3x3 conv, the block outputs
  ``4 * filters`` channels.
  """
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x):
    d = self.first_dilation or self.dilation
    residual = x
    y = self.conv(self.filters, (1, 1), padding='VALID')(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3, d),
                  kernel_dilation=(d, d))(y)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1), padding='VALID')(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init_residual))(y)
    return self._add_shortcut(residual, y)


def _last_scale_init(zero: bool):
  return nn.initializers.zeros_init() if zero else nn.initializers.ones_init()


def conv_and_norm(encoder: nn.Module, train: bool) -> tuple[ModuleDef, ModuleDef]:
  """The ``nn.Conv`` (no bias) and ``nn.BatchNorm`` partials of the torchvision-layout encoders
  (``ResNet``, ``EfficientNet``, ``R2Plus1D``), set from ``encoder``'s ``dtype``, ``bn_momentum``,
  ``bn_epsilon`` and ``bn_axis_name``; BatchNorm uses its running statistics unless ``train``."""
  conv = functools.partial(nn.Conv, use_bias=False, dtype=encoder.dtype)
  norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=encoder.bn_momentum,
      epsilon=encoder.bn_epsilon, axis_name=encoder.bn_axis_name, dtype=encoder.dtype)
  return conv, norm


def pooled_output(encoder: nn.Module, x, axes: tuple[int, ...],
                  classifier: Callable | None = None):
  """The output of a torchvision-layout encoder from its last feature map ``x``.

  With ``encoder.global_pool`` the mean of ``x`` over ``axes``, mapped to logits when
  ``encoder.num_classes`` is set by ``classifier`` (default: a Dense ``fc`` of ``num_classes`` units
  in ``encoder.dtype``, torchvision's ``fc``); without it ``x`` itself (no classifier allowed). Call
  it inside the encoder's compact ``__call__``: the classifier's parameters belong to ``encoder``.
  """
  if not encoder.global_pool:
    if encoder.num_classes is not None:
      raise ValueError('num_classes needs global_pool=True (the classifier acts on pooled '
                       'features).')
    return x
  x = jnp.mean(x, axis=axes)
  if encoder.num_classes is None:
    return x
  if classifier is None:
    return nn.Dense(encoder.num_classes, dtype=encoder.dtype, name='fc')(x)
  return classifier(x)


class ResNet(nn.Module):
  """ResNet backbone: pooled features [N, num_filters * 2**(len(stage_sizes)-1) * expansion].

  Attributes:
    stage_sizes: number of blocks in each stage, e.g. (2, 2, 2, 2) for ResNet-18.
    num_filters: channels of the first stage (doubled at every later stage).
    stem: 'cifar' (3x3 conv, stride 1, no max-pool) or 'imagenet'
      (7x7 conv stride 2, then 3x3 max-pool stride 2).
    bn_axis_name: mesh/pmap axis over which BatchNorm statistics are averaged.
    dtype: computation dtype (parameters stay float32).
    block_cls: ``BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50/101).
    act: activation.
    replace_stride_with_dilation: one flag per stage after the first (torchvision's argument): the
      stage keeps stride 1 and dilates its 3x3 convs instead, so the output stride drops from 32
      to 16 or 8.
    global_pool: return the global average pool [N, C] (True) or the last feature map
      [N, H', W', C] (False; dense tasks such as CoWPro).
    num_classes: if set, a Dense classifier ``fc`` on the pooled features (torchvision's ``fc``);
      the model then returns logits.
    zero_init_residual: last BatchNorm of each block starts at zero scale (torchvision's
      ``zero_init_residual``; on by default here).
    bn_momentum: Flax momentum of the running statistics (0.9 = torch's 0.1).
    bn_epsilon: BatchNorm epsilon (torchvision: 1e-5).
  """
  stage_sizes: Sequence[int]
  num_filters: int = 64
  stem: str = 'cifar'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  block_cls: ModuleDef = BasicBlock
  act: Callable = nn.relu
  replace_stride_with_dilation: Sequence[bool] | None = None
  global_pool: bool = True
  num_classes: int | None = None
  zero_init_residual: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def _dilation_flags(self) -> tuple[bool, ...]:
    n_later = len(self.stage_sizes) - 1
    flags = self.replace_stride_with_dilation
    if flags is None:
      return (False,) * n_later
    flags = tuple(flags)
    if len(flags) != n_later or not all(isinstance(f, bool) for f in flags):
      raise ValueError(
          f'replace_stride_with_dilation={self.replace_stride_with_dilation!r}: expected None or '
          f'{n_later} booleans (one per stage after the first).')
    return flags

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps NHWC images [N, H, W, C] to pooled features (or logits / a feature map)."""
    if self.stem not in STEMS:
      raise ValueError(f'Unknown ResNet stem={self.stem!r}; expected one of {STEMS}.')
    if x.ndim != 4:
      raise ValueError(f'ResNet expects NHWC images [N, H, W, C]; got x.shape={x.shape}.')
    flags = self._dilation_flags()
    conv, norm = conv_and_norm(self, train)

    x = x.astype(self.dtype)
    if self.stem == 'cifar':
      x = conv(self.num_filters, (3, 3), padding=_pad(3), name='conv_init')(x)
    else:
      x = conv(self.num_filters, (7, 7), (2, 2), padding=_pad(7), name='conv_init')(x)
    x = norm(name='bn_init')(x)
    x = self.act(x)
    if self.stem == 'imagenet':
      # torch MaxPool2d(3, 2, padding=1): the padding never wins the max (-inf in reduce_window).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    dilation = 1
    for i, block_size in enumerate(self.stage_sizes):
      stride = 1 if i == 0 else 2
      previous_dilation = dilation
      if i > 0 and flags[i - 1]:
        dilation *= stride
        stride = 1
      for j in range(block_size):
        x = self.block_cls(
            self.num_filters * 2**i, strides=(stride, stride) if j == 0 else (1, 1),
            dilation=dilation, first_dilation=previous_dilation if j == 0 else dilation,
            conv=conv, norm=norm, act=self.act,
            zero_init_residual=self.zero_init_residual)(x)
    return pooled_output(self, x, axes=(1, 2))


# ResNet-9 of the thesis' parameter ablation (Table 5.11): one basic block per stage, 64 base channels,
# ~5 M parameters against ResNet-18's ~11 M.
ResNet9 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)


def dilated_resnet101_features(**kwargs: Any) -> ResNet:
  """CoWPro's encoder (thesis Sec. 7.4.1.2): torchvision's DeepLab-v3 ResNet-101 backbone.

  ImageNet stem, last two stages dilated instead of strided (output stride 8: 256x256 ->
  32x32x2048), returning the last feature map. ``kwargs`` override any ``ResNet`` attribute
  (``bn_axis_name``, ``dtype``, ...).
  """
  config = dict(stem='imagenet', replace_stride_with_dilation=(False, True, True),
                global_pool=False)
  config.update(kwargs)
  return ResNet101(**config)
