"""Backbones (ResNet-18/34/50/101, EfficientNet-B0/B1, R(2+1)D-18) and torch-weight conversion.

Default suite (no torch): parameter counts against torchvision's published totals, feature shapes
and output strides, the ``build_model`` registry, input validation, stochastic depth, and whole tiny
networks against float64 NumPy references that run *torchvision's* architecture on torch-layout
weights (``[O, I, kh, kw]`` kernels, symmetric padding, BatchNorm eps 1e-5): the random torch-style
state dict goes through ``torch_weights.convert_*`` into the Flax model, so layout, padding and key
names are all checked.

Slow suite (``-m slow``; needs ``pip install torch==2.13.0 torchvision safetensors``): randomly
initialised torchvision models in eval mode, with randomised BatchNorm running statistics, converted
and compared output-for-output (atol 1e-4) for resnet18, resnet50, dilated resnet101,
efficientnet_b0 and r2plus1d_18; ``.pth`` / ``.safetensors`` loading; the BatchNorm momentum
convention. These tests fail (never skip) when torch is missing.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sys
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import models
from contrastive_jax.models import torch_weights

pytestmark = pytest.mark.usefixtures('fast_compile')

EPS = 1e-5  # torchvision's BatchNorm eps (ResNet, EfficientNet-B0..B7, R(2+1)D)
TORCH_INSTALL = 'pip install torch==2.13.0 torchvision safetensors'


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _shapes(model, shape):
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                        jnp.zeros(shape))


def _num_params(model, shape):
  return sum(leaf.size for leaf in jax.tree.leaves(_shapes(model, shape)['params']))


def _out_shape(model, shape):
  variables = _shapes(model, shape)
  return jax.eval_shape(functools.partial(model.apply, train=False), variables,
                        jnp.zeros(shape)).shape


def _apply(model, variables, x):
  return np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))


# ----------------------------------------------------------------------------------------------------
# Parameter counts and shapes
# ----------------------------------------------------------------------------------------------------

# torchvision totals with the classifier (resnet: 1000-class fc; efficientnet: 1000-class
# classifier; r2plus1d_18: 400-class fc), from torchvision's model documentation / sum(p.numel()).
_TORCHVISION_COUNTS = {
    'resnet18': (models.ResNet18, 11_689_512, 512, 1000),
    'resnet34': (models.ResNet34, 21_797_672, 512, 1000),
    'resnet50': (models.ResNet50, 25_557_032, 2048, 1000),
    'resnet101': (models.ResNet101, 44_549_160, 2048, 1000),
    'efficientnet_b0': (models.EfficientNetB0, 5_288_548, 1280, 1000),
    'efficientnet_b1': (models.EfficientNetB1, 7_794_184, 1280, 1000),
    'r2plus1d_18': (models.R2Plus1D18, 31_505_325, 512, 400),
}


def _resnet_count(stage_sizes, bottleneck, num_classes, stem_kernel=7, in_ch=3, width=64):
  """Closed-form torchvision ResNet parameter count (convs + BN affine + fc)."""
  expansion = 4 if bottleneck else 1
  total = stem_kernel**2 * in_ch * width + 2 * width
  cin = width
  for i, n in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(n):
      if bottleneck:
        total += cin * planes + 9 * planes * planes + planes * 4 * planes
        total += 2 * (2 * planes + 4 * planes)
      else:
        total += 9 * cin * planes + 9 * planes * planes + 2 * 2 * planes
      if j == 0 and (i > 0 or cin != planes * expansion):
        total += cin * planes * expansion + 2 * planes * expansion
      cin = planes * expansion
  if num_classes:
    total += cin * num_classes + num_classes
  return total


@pytest.mark.parametrize('name', sorted(_TORCHVISION_COUNTS))
def test_param_counts_match_torchvision(name):
  make, total, feat_dim, classes = _TORCHVISION_COUNTS[name]
  video = name.startswith('r2plus1d')
  shape = (1, 4, 32, 32, 3) if video else (1, 32, 32, 3)
  kwargs = {} if name.startswith(('efficientnet', 'r2plus1d')) else {'stem': 'imagenet'}
  params = _shapes(make(num_classes=classes, **kwargs), shape)['params']
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == total
  # The classifier is exactly torch's Linear(feat_dim, classes); the encoder is the rest.
  head = params.pop('classifier' if name.startswith('efficientnet') else 'fc')
  assert head['kernel'].shape == (feat_dim, classes) and head['bias'].shape == (classes,)
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == total - feat_dim * classes - classes


def test_resnet50_count_closed_form():
  # The acceptance number: 25,557,032 with the 1000-class fc, 23,508,032 without it.
  assert _resnet_count((3, 4, 6, 3), True, 1000) == 25_557_032
  assert _resnet_count((3, 4, 6, 3), True, 0) == 23_508_032
  assert _resnet_count((2, 2, 2, 2), False, 1000) == 11_689_512
  assert _resnet_count((3, 4, 23, 3), True, 1000) == 44_549_160
  assert _resnet_count((3, 4, 6, 3), False, 1000) == 21_797_672


_Bottle4 = functools.partial(models.ResNet, stage_sizes=(1, 1, 1, 1), num_filters=4,
                             block_cls=models.Bottleneck, stem='imagenet', global_pool=False)


# Full-size pooled feature sizes are checked by the classifier shapes above (512, 2048, 1280, 512).
@pytest.mark.parametrize('make,shape,expected', [
    (functools.partial(models.ResNet34, stem='imagenet', num_filters=8), (2, 64, 64, 3), (2, 64)),
    (functools.partial(models.ResNet50, num_filters=8), (2, 32, 32, 3), (2, 256)),
    (_Bottle4, (1, 64, 64, 3), (1, 2, 2, 128)),  # output stride 32
    (functools.partial(_Bottle4, replace_stride_with_dilation=(False, False, True)),
     (1, 64, 64, 3), (1, 4, 4, 128)),  # output stride 16
    (functools.partial(_Bottle4, replace_stride_with_dilation=(False, True, True)),
     (1, 64, 64, 3), (1, 8, 8, 128)),  # output stride 8
    (functools.partial(models.EfficientNet, width_mult=0.25, depth_mult=0.3, global_pool=False),
     (2, 64, 64, 3), (2, 2, 2, 320)),
    (functools.partial(models.R2Plus1D, stage_sizes=(1, 1, 1, 1), num_filters=4,
                       global_pool=False), (2, 8, 32, 32, 3), (2, 1, 2, 2, 32)),
])
def test_output_shapes(make, shape, expected):
  assert _out_shape(make(), shape) == expected


def test_cowpro_dilated_resnet101_factory():
  """Thesis Sec. 7.4.1.2: torchvision's DeepLab-v3 ResNet-101, last two stages dilated (OS 8)."""
  encoder = models.resnet.dilated_resnet101_features(bn_axis_name='b', dtype=jnp.bfloat16)
  assert type(encoder) is models.ResNet  # pylint: disable=unidiomatic-typecheck
  assert (tuple(encoder.stage_sizes), encoder.block_cls, encoder.stem) == (
      (3, 4, 23, 3), models.Bottleneck, 'imagenet')
  assert encoder.replace_stride_with_dilation == (False, True, True)
  assert not encoder.global_pool and encoder.bn_axis_name == 'b'
  assert encoder.dtype == jnp.bfloat16


def test_efficientnet_b1_is_deeper_b0():
  """B1 = B0 with ceil(1.1 n) blocks per stage (23 blocks against 16), same widths."""
  b0 = _shapes(models.EfficientNetB0(), (1, 32, 32, 3))['params']
  b1 = _shapes(models.EfficientNetB1(), (1, 32, 32, 3))['params']
  count = lambda p: sum(k.startswith('stage') for k in p)
  assert (count(b0), count(b1)) == (16, 23)
  assert [math.ceil(1.1 * n) for n in (1, 2, 2, 3, 3, 4, 1)] == [2, 3, 3, 4, 4, 5, 2]


_REGISTRY = {
    'resnet34': (models.ResNet, (3, 4, 6, 3), models.BasicBlock),
    'resnet50': (models.ResNet, (3, 4, 6, 3), models.Bottleneck),
    'resnet101': (models.ResNet, (3, 4, 23, 3), models.Bottleneck),
    'efficientnet_b0': (models.EfficientNet, 1.0, 1.0),
    'efficientnet_b1': (models.EfficientNet, 1.0, 1.1),
    'r2plus1d_18': (models.R2Plus1D, (2, 2, 2, 2)),
}


def _model_config(name, **encoder_kwargs):
  return ml_collections.ConfigDict(dict(
      encoder=name, encoder_kwargs=encoder_kwargs, proj_hidden_dim=None, proj_dim=8,
      regress_from='backbone', head_bias=True))


@pytest.mark.parametrize('name', sorted(_REGISTRY))
def test_build_model_registry(name):
  cls, *arch = _REGISTRY[name]
  encoder = models.build_model(_model_config(name), axis_name='batch').encoder
  assert type(encoder) is cls  # pylint: disable=unidiomatic-typecheck
  assert encoder.bn_axis_name == 'batch' and encoder.dtype == jnp.float32
  if cls is models.ResNet:
    assert (tuple(encoder.stage_sizes), encoder.block_cls) == tuple(arch)
  elif cls is models.EfficientNet:
    assert (encoder.width_mult, encoder.depth_mult) == tuple(arch)
  else:
    assert tuple(encoder.stage_sizes) == arch[0]


def test_build_model_video_encoder_end_to_end():
  model = models.build_model(_model_config('r2plus1d_18', num_filters=2, stem_mid=3,
                                            stage_sizes=[1, 1]))
  shape = (2, 4, 16, 16, 3)
  out = jax.eval_shape(functools.partial(model.apply, train=False), _shapes(model, shape),
                       jnp.zeros(shape))
  chex.assert_shape(out['embedding'], (2, 4))
  chex.assert_shape(out['prediction'], (2,))


def test_build_model_dilation_from_config_list():
  config = dict(encoder='resnet50', proj_dim=4,
                encoder_kwargs={'replace_stride_with_dilation': [False, True, True],
                                'stem': 'imagenet'})
  model = models.build_model(config)
  assert model.encoder.replace_stride_with_dilation == (False, True, True)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='replace_stride_with_dilation'):
    _shapes(models.ResNet50(replace_stride_with_dilation=(True, True)), (1, 32, 32, 3))
  with pytest.raises(ValueError, match='NHWC'):
    _shapes(models.ResNet18(), (1, 4, 32, 32, 3))
  with pytest.raises(ValueError, match='NHWC'):
    _shapes(models.EfficientNetB0(), (32, 32, 3))
  with pytest.raises(ValueError, match=r'videos \[N, T, H, W, C\]'):
    _shapes(models.R2Plus1D18(), (1, 32, 32, 3))
  with pytest.raises(ValueError, match='stochastic_depth_prob'):
    _shapes(models.EfficientNetB0(stochastic_depth_prob=1.0), (1, 32, 32, 3))
  with pytest.raises(ValueError, match='global_pool'):
    _shapes(models.ResNet18(num_classes=3, global_pool=False), (1, 32, 32, 3))


# ----------------------------------------------------------------------------------------------------
# Float64 NumPy references of torchvision's architectures, on torch-layout weights
# ----------------------------------------------------------------------------------------------------


class _TorchStyleWeights:
  """Creates torch-layout random weights on first use; ``.state_dict`` is a torchvision dict."""

  def __init__(self, seed):
    self.rng = np.random.default_rng(seed)
    self.state_dict = {}

  def conv(self, key, shape):
    if key not in self.state_dict:
      fan_in = int(np.prod(shape[1:]))
      self.state_dict[key] = self.rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
    return self.state_dict[key]

  def bias(self, key, n):
    if key not in self.state_dict:
      self.state_dict[key] = self.rng.normal(0.0, 0.1, (n,))
    return self.state_dict[key]

  def bn(self, prefix, n):
    if f'{prefix}.weight' not in self.state_dict:
      self.state_dict[f'{prefix}.weight'] = self.rng.uniform(0.5, 1.5, n)
      self.state_dict[f'{prefix}.bias'] = self.rng.normal(0.0, 0.1, n)
      self.state_dict[f'{prefix}.running_mean'] = self.rng.normal(0.0, 0.2, n)
      self.state_dict[f'{prefix}.running_var'] = self.rng.uniform(0.5, 1.5, n)
      self.state_dict[f'{prefix}.num_batches_tracked'] = np.array(7)
    sd = self.state_dict
    return (sd[f'{prefix}.weight'], sd[f'{prefix}.bias'], sd[f'{prefix}.running_mean'],
            sd[f'{prefix}.running_var'])


def _np_conv(x, w, stride=1, padding=0, dilation=1, groups=1):
  """torch's ConvNd (cross-correlation, symmetric zero padding) on channels-last ``x``.

  ``x`` [N, *S, Cin]; ``w`` torch layout [Cout, Cin / groups, *K]; scalars or per-axis tuples.
  """
  nd = x.ndim - 2
  tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd
  stride, padding, dilation = tup(stride), tup(padding), tup(dilation)
  x = np.pad(x, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
  kernel = w.shape[2:]
  out_sp = [(x.shape[1 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
            for i in range(nd)]
  cout, cin_g = w.shape[0], w.shape[1]
  cout_g = cout // groups
  out = np.zeros((x.shape[0], *out_sp, cout))
  for k in itertools.product(*[range(n) for n in kernel]):
    window = tuple(slice(k[i] * dilation[i], k[i] * dilation[i] + stride[i] * (out_sp[i] - 1) + 1,
                         stride[i]) for i in range(nd))
    patch = x[(slice(None),) + window]
    tap = w[(slice(None), slice(None)) + k]  # [Cout, Cin/groups]
    if groups == 1:
      out += patch @ tap.T
    elif cin_g == 1 and cout == groups:  # depthwise
      out += patch * tap[:, 0]
    else:
      for g in range(groups):
        out[..., g * cout_g:(g + 1) * cout_g] += (
            patch[..., g * cin_g:(g + 1) * cin_g] @ tap[g * cout_g:(g + 1) * cout_g].T)
  return out


def _np_bn(x, params, eps=EPS):
  weight, bias, mean, var = params
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def _relu(x):
  return np.maximum(x, 0.0)


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _np_maxpool_3x3_s2_p1(x):
  xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
  ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  return np.max([xp[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2] for i in range(3) for j in range(3)],
                axis=0)


def _np_resnet(w, x, stage_sizes, bottleneck, stem, dilate, width, num_classes=None):
  """torchvision ResNet (v1.5 Bottleneck, ``replace_stride_with_dilation``) in float64 NumPy."""
  cin = x.shape[-1]
  if stem == 'imagenet':
    x = _np_conv(x, w.conv('conv1.weight', (width, cin, 7, 7)), 2, 3)
  else:
    x = _np_conv(x, w.conv('conv1.weight', (width, cin, 3, 3)), 1, 1)
  x = _relu(_np_bn(x, w.bn('bn1', width)))
  if stem == 'imagenet':
    x = _np_maxpool_3x3_s2_p1(x)
  expansion = 4 if bottleneck else 1
  inplanes, dilation = width, 1
  for i, n in enumerate(stage_sizes):
    planes, stride, previous = width * 2**i, (1 if i == 0 else 2), dilation
    if i > 0 and dilate[i - 1]:
      dilation, stride = dilation * stride, 1
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      s, d = (stride, previous) if j == 0 else (1, dilation)
      identity = x
      if bottleneck:
        y = _relu(_np_bn(_np_conv(x, w.conv(f'{p}.conv1.weight', (planes, inplanes, 1, 1))),
                         w.bn(f'{p}.bn1', planes)))
        y = _relu(_np_bn(_np_conv(y, w.conv(f'{p}.conv2.weight', (planes, planes, 3, 3)), s, d, d),
                         w.bn(f'{p}.bn2', planes)))
        y = _np_bn(_np_conv(y, w.conv(f'{p}.conv3.weight', (planes * 4, planes, 1, 1))),
                   w.bn(f'{p}.bn3', planes * 4))
      else:
        y = _relu(_np_bn(_np_conv(x, w.conv(f'{p}.conv1.weight', (planes, inplanes, 3, 3)), s, 1),
                         w.bn(f'{p}.bn1', planes)))
        y = _np_bn(_np_conv(y, w.conv(f'{p}.conv2.weight', (planes, planes, 3, 3)), 1, 1),
                   w.bn(f'{p}.bn2', planes))
      if j == 0 and (stride != 1 or inplanes != planes * expansion):
        identity = _np_bn(
            _np_conv(x, w.conv(f'{p}.downsample.0.weight', (planes * expansion, inplanes, 1, 1)),
                     stride), w.bn(f'{p}.downsample.1', planes * expansion))
      x = _relu(y + identity)
      inplanes = planes * expansion
  x = x.mean(axis=(1, 2))
  if num_classes:
    x = x @ w.conv('fc.weight', (num_classes, inplanes)).T + w.bias('fc.bias', num_classes)
  return x


def _make_div(v, divisor=8):
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


# EfficientNet-B0 (Tan & Le 2019, Table 1): expand, kernel, stride, in, out, layers.
_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
       (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def _np_efficientnet(w, x, width_mult, depth_mult, num_classes=None):
  """torchvision EfficientNet (MBConv + SE, SiLU, eval mode) in float64 NumPy."""
  stages = [(e, k, s, _make_div(ci * width_mult), _make_div(co * width_mult),
             math.ceil(n * depth_mult)) for e, k, s, ci, co, n in _B0]
  c0 = stages[0][3]
  x = _silu(_np_bn(_np_conv(x, w.conv('features.0.0.weight', (c0, x.shape[-1], 3, 3)), 2, 1),
                   w.bn('features.0.1', c0)))
  for si, (e, k, s, ci, co, n) in enumerate(stages):
    for b in range(n):
      cin, stride = (ci, s) if b == 0 else (co, 1)
      p = f'features.{si + 1}.{b}.block'
      exp = _make_div(cin * e)
      idx, y = 0, x
      if exp != cin:
        y = _silu(_np_bn(_np_conv(y, w.conv(f'{p}.0.0.weight', (exp, cin, 1, 1))),
                         w.bn(f'{p}.0.1', exp)))
        idx = 1
      y = _silu(_np_bn(_np_conv(y, w.conv(f'{p}.{idx}.0.weight', (exp, 1, k, k)), stride,
                                (k - 1) // 2, groups=exp), w.bn(f'{p}.{idx}.1', exp)))
      sq = max(1, cin // 4)
      z = y.mean(axis=(1, 2))
      z = _silu(z @ w.conv(f'{p}.{idx + 1}.fc1.weight', (sq, exp, 1, 1))[:, :, 0, 0].T
                + w.bias(f'{p}.{idx + 1}.fc1.bias', sq))
      z = z @ w.conv(f'{p}.{idx + 1}.fc2.weight', (exp, sq, 1, 1))[:, :, 0, 0].T + w.bias(
          f'{p}.{idx + 1}.fc2.bias', exp)
      y = y * (1.0 / (1.0 + np.exp(-z)))[:, None, None, :]
      y = _np_bn(_np_conv(y, w.conv(f'{p}.{idx + 2}.0.weight', (co, exp, 1, 1))),
                 w.bn(f'{p}.{idx + 2}.1', co))
      x = y + x if stride == 1 and cin == co else y
  last = 4 * stages[-1][4]
  head = len(stages) + 1
  x = _silu(_np_bn(_np_conv(x, w.conv(f'features.{head}.0.weight', (last, stages[-1][4], 1, 1))),
                   w.bn(f'features.{head}.1', last)))
  x = x.mean(axis=(1, 2))
  if num_classes:
    x = x @ w.conv('classifier.1.weight', (num_classes, last)).T + w.bias('classifier.1.bias',
                                                                          num_classes)
  return x


def _np_conv2plus1d(w, x, p, cin, cout, mid, stride):
  x = _np_conv(x, w.conv(f'{p}.0.weight', (mid, cin, 1, 3, 3)), (1, stride, stride), (0, 1, 1))
  x = _relu(_np_bn(x, w.bn(f'{p}.1', mid)))
  return _np_conv(x, w.conv(f'{p}.3.weight', (cout, mid, 3, 1, 1)), (stride, 1, 1), (1, 0, 0))


def _np_r2plus1d(w, x, stage_sizes, width, stem_mid, num_classes=None):
  """torchvision VideoResNet with Conv2Plus1D blocks (``r2plus1d_18``) in float64 NumPy."""
  x = _np_conv(x, w.conv('stem.0.weight', (stem_mid, x.shape[-1], 1, 7, 7)), (1, 2, 2), (0, 3, 3))
  x = _relu(_np_bn(x, w.bn('stem.1', stem_mid)))
  x = _np_conv(x, w.conv('stem.3.weight', (width, stem_mid, 3, 1, 1)), 1, (1, 0, 0))
  x = _relu(_np_bn(x, w.bn('stem.4', width)))
  inplanes = width
  for i, n in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      p = f'layer{i + 1}.{j}'
      mid = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)  # Tran et al. Sec. 3.5
      y = _relu(_np_bn(_np_conv2plus1d(w, x, f'{p}.conv1.0', inplanes, planes, mid, stride),
                       w.bn(f'{p}.conv1.1', planes)))
      y = _np_bn(_np_conv2plus1d(w, y, f'{p}.conv2.0', planes, planes, mid, 1),
                 w.bn(f'{p}.conv2.1', planes))
      identity = x
      if stride != 1 or inplanes != planes:
        identity = _np_bn(_np_conv(x, w.conv(f'{p}.downsample.0.weight',
                                             (planes, inplanes, 1, 1, 1)), stride),
                          w.bn(f'{p}.downsample.1', planes))
      x = _relu(y + identity)
      inplanes = planes
  x = x.mean(axis=(1, 2, 3))
  if num_classes:
    x = x @ w.conv('fc.weight', (num_classes, inplanes)).T + w.bias('fc.bias', num_classes)
  return x


_REF_CASES = {
    # name: (flax model, reference, input shape)
    'resnet_basic_imagenet_odd_input': (
        models.ResNet(stage_sizes=(1, 1), num_filters=4, stem='imagenet', num_classes=5),
        functools.partial(_np_resnet, stage_sizes=(1, 1), bottleneck=False, stem='imagenet',
                          dilate=(False,), width=4, num_classes=5),
        (2, 19, 21, 3)),
    'resnet_bottleneck_dilated_cifar': (
        models.ResNet(stage_sizes=(1, 2, 1), num_filters=2, block_cls=models.Bottleneck,
                      replace_stride_with_dilation=(False, True)),
        functools.partial(_np_resnet, stage_sizes=(1, 2, 1), bottleneck=True, stem='cifar',
                          dilate=(False, True), width=2),
        (2, 12, 12, 2)),
    'efficientnet_tiny': (
        models.EfficientNet(width_mult=0.25, depth_mult=0.3, num_classes=3),
        functools.partial(_np_efficientnet, width_mult=0.25, depth_mult=0.3, num_classes=3),
        (2, 34, 34, 3)),
    'r2plus1d_tiny': (
        models.R2Plus1D(stage_sizes=(1, 2), num_filters=4, stem_mid=3, num_classes=2),
        functools.partial(_np_r2plus1d, stage_sizes=(1, 2), width=4, stem_mid=3, num_classes=2),
        (2, 5, 9, 10, 3)),
}


@pytest.mark.parametrize('name', sorted(_REF_CASES))
def test_matches_numpy_torchvision_reference(name):
  """Convert torch-layout random weights, run Flax, compare with the float64 NumPy torchvision."""
  model, reference, shape = _REF_CASES[name]
  x = np.random.default_rng(1).normal(size=shape)
  weights = _TorchStyleWeights(seed=2)
  expected = reference(weights, x)  # also fills weights.state_dict (torchvision key names)
  variables = torch_weights.convert(weights.state_dict, model)
  out = _apply(model, variables, jnp.asarray(x, jnp.float32))
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  assert np.abs(expected).max() > 0.05  # not a vacuous comparison


def test_converter_layouts_and_extra_keys():
  """Kernel transposes, BN collections, ``module.`` prefix, ignored fc / num_batches_tracked."""
  model = models.ResNet(stage_sizes=(1, 1), num_filters=2, num_classes=3)
  w = _TorchStyleWeights(seed=3)
  _np_resnet(w, np.zeros((1, 8, 8, 3)), (1, 1), False, 'cifar', (False,), 2, num_classes=3)
  sd = w.state_dict
  v = torch_weights.convert_resnet({'module.' + k: v for k, v in sd.items()}, model)
  p, bs = v['params'], v['batch_stats']
  np.testing.assert_allclose(p['conv_init']['kernel'][2, 1, 0, 1], sd['conv1.weight'][1, 0, 2, 1],
                             rtol=1e-6)
  np.testing.assert_allclose(p['BasicBlock_1']['conv_proj']['kernel'][0, 0],
                             sd['layer2.0.downsample.0.weight'][:, :, 0, 0].T, rtol=1e-6)
  np.testing.assert_allclose(p['fc']['kernel'], sd['fc.weight'].T, rtol=1e-6)
  np.testing.assert_allclose(bs['BasicBlock_0']['BatchNorm_1']['var'],
                             sd['layer1.0.bn2.running_var'], rtol=1e-6)
  np.testing.assert_allclose(p['BasicBlock_0']['BatchNorm_1']['scale'],
                             sd['layer1.0.bn2.weight'], rtol=1e-6)
  assert set(v) == {'params', 'batch_stats'}
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v))
  # A classifier-free encoder ignores the checkpoint's fc.
  headless = torch_weights.convert_resnet(sd, model.clone(num_classes=None))
  assert 'fc' not in headless['params']
  # The variables are copies: later in-place changes of the source arrays do not leak in.
  before = np.asarray(headless['batch_stats']['bn_init']['mean']).copy()
  sd['bn1.running_mean'] += 1.0
  np.testing.assert_array_equal(headless['batch_stats']['bn_init']['mean'], before)


def test_converter_lists_missing_unexpected_misshaped():
  model = models.ResNet(stage_sizes=(1, 1), num_filters=2)
  w = _TorchStyleWeights(seed=4)
  _np_resnet(w, np.zeros((1, 8, 8, 3)), (1, 1), False, 'cifar', (False,), 2)
  sd = dict(w.state_dict)
  del sd['layer1.0.bn1.running_var']
  sd['layer3.0.conv1.weight'] = np.zeros((2, 2, 3, 3))
  sd['layer2.0.conv2.weight'] = np.zeros((4, 4, 5, 5))
  with pytest.raises(ValueError) as err:
    torch_weights.convert_resnet(sd, model)
  message = str(err.value)
  assert '1 missing, 1 unexpected, 1 mis-shaped' in message
  for key in ('layer1.0.bn1.running_var', 'layer3.0.conv1.weight', 'layer2.0.conv2.weight'):
    assert key in message
  # An ImageNet checkpoint does not fit a CIFAR stem: the 7x7 conv1 is reported as mis-shaped.
  w7 = _TorchStyleWeights(seed=5)
  _np_resnet(w7, np.zeros((1, 8, 8, 3)), (1, 1), False, 'imagenet', (False,), 2)
  with pytest.raises(ValueError, match=r'conv1\.weight: torch \(2, 3, 7, 7\)'):
    torch_weights.convert_resnet(w7.state_dict, model)
  with pytest.raises(ValueError, match='needs a models.EfficientNet'):
    torch_weights.convert_efficientnet(sd, model)
  with pytest.raises(ValueError, match='No torch converter'):
    torch_weights.convert(sd, models.MLPEncoder())


def test_load_state_dict_bad_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    torch_weights.load_torch_state_dict(tmp_path / 'nope.pth')
  path = tmp_path / 'weights.npz'
  path.write_bytes(b'0')
  with pytest.raises(ValueError, match='suffix'):
    torch_weights.load_torch_state_dict(path)


# ----------------------------------------------------------------------------------------------------
# Train mode: BatchNorm statistics, stochastic depth
# ----------------------------------------------------------------------------------------------------


def test_train_mode_and_stochastic_depth():
  """Row-mode drop-path: each sample's residual branch is dropped (0) or scaled by 1 / (1 - p)."""
  p = 0.5
  make = functools.partial(
      models.efficientnet.MBConv, 6, 3, 1, 8, conv=functools.partial(nn.Conv, use_bias=False),
      norm=functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=EPS))
  block, plain = make(stochastic_depth_prob=p), make(stochastic_depth_prob=0.0)
  x = jax.random.normal(jax.random.key(0), (64, 4, 4, 8))

  @jax.jit
  def run(x):
    variables = plain.init(jax.random.key(1), x, train=True)
    branch, _ = plain.apply(variables, x, train=True, mutable=['batch_stats'])
    dropped, state = block.apply(variables, x, train=True, mutable=['batch_stats'],
                                 rngs={'dropout': jax.random.key(2)})
    return variables, branch - x, dropped - x, state

  variables, branch, dropped, state = run(x)
  branch, dropped = np.asarray(branch), np.asarray(dropped)
  kept = np.abs(dropped).reshape(64, -1).max(axis=1) > 0
  assert 16 <= kept.sum() <= 48
  np.testing.assert_allclose(dropped[kept], branch[kept] / (1 - p), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(dropped[~kept], 0.0)
  assert np.abs(branch).reshape(64, -1).max(axis=1).min() > 0
  # Batch statistics moved in training.
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state['batch_stats']),
                                                   jax.tree.leaves(variables['batch_stats'])))
  # Off (p = 0, the default) the training step needs no 'dropout' PRNG stream (``plain`` above);
  # on, it does.
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(functools.partial(block.apply, train=True, mutable=['batch_stats']),
                   variables, x)


# ----------------------------------------------------------------------------------------------------
# Slow suite: against real torchvision models (needs torch)
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def full_optimisations():
  """Slow tests run big float64 convolutions: XLA's optimisations pay off there (undoes
  ``fast_compile`` for one test)."""
  previous = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def _torch():
  """Imports torch and torchvision, failing (not skipping) with the install command if absent."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.fail(f'The torch-equivalence tests need PyTorch: `{TORCH_INSTALL}` '
                '(add --index-url https://download.pytorch.org/whl/cpu for the CPU build).')
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.fail(f'The torch-equivalence tests need torchvision: `{TORCH_INSTALL}`.')
  except RuntimeError as e:
    # A CUDA build of torchvision next to a CPU build of torch cannot load its C++ ops
    # (nms, roi_align); the model definitions used here do not need them, only the fake-op
    # registrations fail. Import again without those registrations.
    if 'torchvision::' not in str(e):
      raise
    for name in [n for n in sys.modules if n.startswith('torchvision')]:
      del sys.modules[name]
    sys.modules['torchvision._meta_registrations'] = types.ModuleType(
        'torchvision._meta_registrations')
    import torchvision  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return torch, torchvision


def _randomise_batch_norm(torch, model, x, generator):
  """Random BN affine, running stats = the batch's own statistics randomly perturbed.

  Calibrating on the input keeps activations O(1) through 100 layers (pure random running stats
  let them grow to 1e6 in a ResNet-101, where float32 cannot resolve 1e-4).
  """
  bn_types = (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
  bns = [m for m in model.modules() if isinstance(m, bn_types)]
  with torch.no_grad():
    for m in bns:
      m.weight.uniform_(0.5, 1.5, generator=generator)
      m.bias.normal_(0.0, 0.1, generator=generator)
      m.reset_running_stats()
      m.momentum = None  # cumulative average: one pass sets running stats = batch stats
    model.train()
    model(x)
    for m in bns:
      n = m.num_features
      m.running_mean.add_(0.2 * m.running_var.sqrt() * torch.randn(n, generator=generator))
      m.running_var.mul_(torch.empty(n).uniform_(0.7, 1.4, generator=generator))
      m.momentum = 0.1
  model.eval()


def _compare_with_torchvision(torch, tmodel, fmodel, convert, shape):
  generator = torch.Generator().manual_seed(0)
  torch.manual_seed(0)
  x = torch.randn(*shape, generator=generator)
  _randomise_batch_norm(torch, tmodel, x, generator)
  with torch.no_grad():
    ref32 = tmodel(x).numpy()
    ref64 = tmodel.double()(x.double()).numpy()
  tmodel.float()
  variables = convert(tmodel.state_dict(), fmodel)
  x_nhwc = np.moveaxis(x.numpy(), 1, -1)  # NCHW / NCTHW -> channels last
  out32 = _apply(fmodel, variables, jnp.asarray(x_nhwc))
  # Float64 on both sides (first sample: eval mode treats samples independently, and float64
  # grouped convs are slow on CPU): the architectures and the conversion agree to rounding.
  with jax.enable_x64(True):
    f64 = fmodel.clone(dtype=jnp.float64)
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    out64 = _apply(f64, v64, jnp.asarray(x_nhwc[:1], jnp.float64))
  np.testing.assert_allclose(out64, ref64[:1], rtol=0, atol=1e-4)
  np.testing.assert_allclose(out64, ref64[:1], rtol=0,
                             atol=1e-9 * max(1.0, np.abs(ref64).max()))
  # Float32: both frameworks are within float32 rounding of the float64 result (long chains of
  # sums: the error scales with the logits' magnitude, ~1e-5 relative for ResNet-50).
  scale = max(1.0, float(np.abs(ref64).max()))
  np.testing.assert_allclose(out32, ref32, rtol=0, atol=1e-4 * scale)
  np.testing.assert_allclose(ref32, ref64, rtol=0, atol=1e-4 * scale)  # torch's own float32 error
  return ref64


@pytest.mark.slow
@pytest.mark.usefixtures('full_optimisations')
def test_torch_resnet18():
  torch, tv = _torch()
  _compare_with_torchvision(torch, tv.models.resnet18(),
                            models.ResNet18(stem='imagenet', num_classes=1000),
                            torch_weights.convert_resnet, (2, 3, 64, 64))


@pytest.mark.slow
@pytest.mark.usefixtures('full_optimisations')
def test_torch_resnet50_and_param_count():
  torch, tv = _torch()
  tmodel = tv.models.resnet50()
  assert sum(p.numel() for p in tmodel.parameters()) == 25_557_032
  fmodel = models.ResNet50(stem='imagenet', num_classes=1000)
  assert _num_params(fmodel, (1, 32, 32, 3)) == 25_557_032
  _compare_with_torchvision(torch, tmodel, fmodel, torch_weights.convert_resnet, (2, 3, 64, 64))


@pytest.mark.slow
@pytest.mark.usefixtures('full_optimisations')
def test_torch_dilated_resnet101():
  torch, tv = _torch()
  flags = [False, True, True]
  _compare_with_torchvision(
      torch, tv.models.resnet101(replace_stride_with_dilation=flags),
      models.ResNet101(stem='imagenet', num_classes=1000,
                       replace_stride_with_dilation=tuple(flags)),
      torch_weights.convert_resnet, (1, 3, 48, 48))


@pytest.mark.slow
@pytest.mark.usefixtures('full_optimisations')
def test_torch_efficientnet_b0():
  torch, tv = _torch()
  tmodel = tv.models.efficientnet_b0()
  assert sum(p.numel() for p in tmodel.parameters()) == 5_288_548
  _compare_with_torchvision(torch, tmodel, models.EfficientNetB0(num_classes=1000),
                            torch_weights.convert_efficientnet, (2, 3, 64, 64))


@pytest.mark.slow
@pytest.mark.usefixtures('full_optimisations')
def test_torch_r2plus1d_18():
  torch, tv = _torch()
  tmodel = tv.models.video.r2plus1d_18()
  assert sum(p.numel() for p in tmodel.parameters()) == 31_505_325
  _compare_with_torchvision(torch, tmodel, models.R2Plus1D18(num_classes=400),
                            torch_weights.convert_r2plus1d, (2, 3, 4, 32, 32))


@pytest.mark.slow
@pytest.mark.usefixtures('full_optimisations')
def test_torch_headless_encoder_and_files(tmp_path):
  """fc ignored for an encoder; .pth (torch) and .safetensors (NumPy) files load identically."""
  torch, tv = _torch()
  try:
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.fail(f'The .safetensors test needs the safetensors package: `{TORCH_INSTALL}`.')
  tmodel = tv.models.resnet18()
  generator = torch.Generator().manual_seed(3)
  x = torch.randn(2, 3, 64, 64, generator=generator)
  _randomise_batch_norm(torch, tmodel, x, generator)
  state = tmodel.state_dict()
  torch.save({'state_dict': state}, tmp_path / 'r18.pth')
  save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / 'r18.safetensors'))
  from_pth = torch_weights.load_torch_state_dict(tmp_path / 'r18.pth')
  from_st = torch_weights.load_torch_state_dict(str(tmp_path / 'r18.safetensors'))
  assert set(from_pth) == set(from_st) == set(state)
  for key, value in state.items():
    np.testing.assert_array_equal(from_pth[key], value.numpy())
    np.testing.assert_array_equal(from_st[key], value.numpy())
  encoder = models.ResNet18(stem='imagenet')
  variables = torch_weights.convert_resnet(from_st, encoder)
  with torch.no_grad():
    tmodel.fc = torch.nn.Identity()
    expected = tmodel(x).numpy()
  out = _apply(encoder, variables, jnp.asarray(np.moveaxis(x.numpy(), 1, -1)))
  np.testing.assert_allclose(out, expected, rtol=0,
                             atol=1e-4 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.slow
@pytest.mark.usefixtures('full_optimisations')
def test_torch_batch_norm_momentum_convention():
  """One train-mode step updates running stats like torch's momentum=0.1 (mean exactly; var up to
  torch's unbiased n/(n-1) factor)."""
  torch, tv = _torch()
  tmodel = tv.models.resnet18()
  generator = torch.Generator().manual_seed(4)
  x = torch.randn(4, 3, 32, 32, generator=generator)
  _randomise_batch_norm(torch, tmodel, x, generator)
  fmodel = models.ResNet18(stem='imagenet')
  variables = torch_weights.convert_resnet(tmodel.state_dict(), fmodel)
  tmodel.train()
  with torch.no_grad():
    tmodel(x)
  _, state = jax.jit(functools.partial(fmodel.apply, train=True, mutable=['batch_stats']))(
      variables, jnp.asarray(np.moveaxis(x.numpy(), 1, -1)))
  stem_mean = np.asarray(state['batch_stats']['bn_init']['mean'])
  np.testing.assert_allclose(stem_mean, tmodel.bn1.running_mean.numpy(), rtol=1e-4, atol=1e-5)
  old_var = variables['batch_stats']['bn_init']['var']
  n = 4 * 16 * 16  # elements per channel after the stride-2 stem
  torch_batch_var = (tmodel.bn1.running_var.numpy() - 0.9 * np.asarray(old_var)) / 0.1
  flax_batch_var = (np.asarray(state['batch_stats']['bn_init']['var']) - 0.9 * old_var) / 0.1
  np.testing.assert_allclose(flax_batch_var * n / (n - 1), torch_batch_var, rtol=1e-3)


if __name__ == '__main__':
  sys.exit(pytest.main([os.path.abspath(__file__), '-q']))
