"""Jigsaw pretext networks of thesis Ch. 3 (SSLACL, SKID v1/v2/v3) and their downstream heads.

* 9 parallel branches with UNSHARED weights (Sec. 3.4.1.4; spec A3/A4), vectorised with ``nn.vmap``
  over a stacked parameter axis: every kernel of :class:`JigsawBranches` has a leading axis of size 9
  and branch ``k`` reads jumbled patch ``k``. Branch outputs are concatenated along channels
  (channel-wise aggregation, Sec. 3.4.1.5), branch 0 first.
* :class:`SSLACLNet` (Fig. 3.4): branches of 2 blocks [conv3x3, conv3x3, maxpool] with 256 / 512
  filters -> concat (16x16x4608) -> conv3x3 2048 -> bottleneck {conv3x3 1024, conv3x3 1024 stride 2}
  || {conv3x3 1024, maxpool} -> concat (8x8x2048) -> GAP -> FC 1024 -> FC 1024 -> C logits.
* :class:`SKIDNet` (Fig. 3.5, Table 3.1): branches of 4 conv3x3 256 (maxpool after 2nd and 4th) ->
  concat (16x16x2304) -> conv1x1 1024 -> Skip1 -> DimRed1 -> Skip2 -> DimRed2 (4x4x4096) -> GAP ->
  FC 1024 -> C logits. ``SKID_VARIANTS`` holds the widths of Table 3.1.
* Downstream: :class:`DivideAndTeachClassifier` (SSLACL, Alg. 3.3, Fig. 3.6) and
  :class:`SKIDDownstream` (Fig. 3.7: the frozen trunk up to DimRed2 + 2 ConvLSTM layers of 512
  channels, :class:`ConvLSTMCell`, + GAP + 3 sigmoid outputs -- logits here).

Every conv is followed by BatchNorm + ReLU ([CODE] for SKID, [GUESS] for SSLACL; ``use_bn=False``
removes the BN) and initialised He-normal [CODE]. Parameter counts follow Keras' convention
(BatchNorm moving statistics included), see :func:`count_parameters`; they match Tables 3.9 / 3.12
within 0.5% for grayscale slices repeated to 3 channels ([CODE] B1), see tests/test_jigsaw.py.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrastive_jax import models
from contrastive_jax.projects.jigsaw.data import divide_slices_index
from contrastive_jax.projects.jigsaw.data import NUM_PATCHES

ARCHITECTURES = ('sslacl', 'skid')

# Table 3.1: widths of the SKID variants. skip = (filters of the 1st conv, output channels).
SKID_VARIANTS = {
    'v1': dict(branch_features=(256, 256), reduce_features=1024, skip1=(512, 1024), dimred1=1024,
               skip2=(512, 1024), dimred2=4096),
    'v2': dict(branch_features=(256, 256), reduce_features=1024, skip1=(512, 1024), dimred1=2048,
               skip2=(1024, 2048), dimred2=4096),
    'v3': dict(branch_features=(256, 256), reduce_features=1024, skip1=(1024, 1024), dimred1=2048,
               skip2=(2048, 2048), dimred2=4096),
}
# Fig. 3.4 / Sec. 3.4.1.4-5.
SSLACL_WIDTHS = dict(branch_features=(256, 512), fusion_features=2048, bottleneck_features=1024,
                     fc_features=(1024, 1024))

_INITS = {'he_normal': nn.initializers.he_normal(), 'lecun_normal': nn.initializers.lecun_normal()}


def _kernel_init(name: str):
  if name not in _INITS:
    raise ValueError(f'Unknown kernel_init {name!r}; expected one of {tuple(_INITS)}.')
  return _INITS[name]


def scale_widths(widths: dict, factor: float) -> dict:
  """Multiplies every channel count in ``widths`` by ``factor`` (rounded to an even number >= 2, so
  DimRed outputs split in two and residual widths stay equal), to build small CPU versions of the
  thesis nets with the same topology."""
  if not factor > 0:
    raise ValueError(f'width factor must be > 0, got {factor}.')

  def scale(v):
    if isinstance(v, (tuple, list)):
      return tuple(scale(u) for u in v)
    return max(2, 2 * int(round(v * factor / 2)))
  return {k: scale(v) for k, v in widths.items()}


def count_parameters(variables: Any, include_batch_stats: bool = True) -> int:
  """Number of scalars in ``variables['params']`` (+ ``['batch_stats']``, as Keras' "Total params"
  counts BatchNorm moving statistics). Works on arrays or ``jax.ShapeDtypeStruct``s."""
  cols = ['params'] + (['batch_stats'] if include_batch_stats else [])
  return int(sum(math.prod(x.shape) for c in cols for x in jax.tree.leaves(variables.get(c, {}))))


CONV_IMPLS = ('shifted_matmul', 'xla')


class ShiftedMatmulConv(nn.Module):
  """A 2-D convolution (SAME padding, bias) as a sum over the ``k x k`` kernel taps of shifted-input
  matmuls, ``y = sum_ij shift_ij(x) @ K[i, j] + b``; same parameters as ``nn.Conv``.

  Under ``nn.vmap`` over the kernel (the unshared branches) these become batched matmuls, which XLA
  runs efficiently everywhere, whereas a vmapped ``lax.conv`` becomes a grouped convolution that XLA
  on CPU runs ~100x slower. Uses no extra memory beyond one shifted view at a time.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel_size, self.strides
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    h, w = x.shape[1], x.shape[2]
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    y = 0.0
    for i in range(k):
      for j in range(k):
        view = xp[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]
        y = y + jnp.einsum('nhwc,co->nhwo', view, kernel[i, j])
    return y + bias.astype(self.dtype)


class ConvBN(nn.Module):
  """Conv (SAME padding, bias) -> BatchNorm (optional) -> ReLU.

  ``impl``: 'xla' (``nn.Conv``) or 'shifted_matmul' (:class:`ShiftedMatmulConv`, for vmapped
  branches); both have the same parameters (``conv/kernel [k, k, in, out]``, ``conv/bias``).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  use_bn: bool = True
  train: bool = False
  kernel_init: str = 'he_normal'
  dtype: Any = jnp.float32
  impl: str = 'xla'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    k = (self.kernel_size, self.kernel_size)
    if self.impl == 'xla':
      x = nn.Conv(self.features, k, strides=(self.strides, self.strides), padding='SAME',
                  kernel_init=_kernel_init(self.kernel_init), dtype=self.dtype, name='conv')(x)
    elif self.impl == 'shifted_matmul':
      x = ShiftedMatmulConv(self.features, self.kernel_size, self.strides,
                            kernel_init=_kernel_init(self.kernel_init), dtype=self.dtype,
                            name='conv')(x)
    else:
      raise ValueError(f'Unknown conv impl {self.impl!r}; expected one of {CONV_IMPLS}.')
    if self.use_bn:
      x = nn.BatchNorm(use_running_average=not self.train, momentum=0.99, epsilon=1e-3,
                       dtype=self.dtype, axis_name=self.axis_name, name='bn')(x)
    return nn.relu(x)


def _pool(x, kind: str):
  """2x2 / stride 2 pooling; SAME padding so odd sizes of small configs round up like stride-2 convs."""
  if kind == 'max':
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding='SAME', count_include_pad=False)


class Branch(nn.Module):
  """One convolutional branch: per block, ``convs_per_block`` x ConvBN then a 2x2 max-pool."""
  block_features: Sequence[int]
  convs_per_block: int = 2
  use_bn: bool = True
  train: bool = False
  kernel_init: str = 'he_normal'
  dtype: Any = jnp.float32
  conv_impl: str = 'shifted_matmul'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    for b, features in enumerate(self.block_features):
      for j in range(self.convs_per_block):
        x = ConvBN(features, use_bn=self.use_bn, train=self.train, kernel_init=self.kernel_init,
                   dtype=self.dtype, impl=self.conv_impl, axis_name=self.axis_name,
                   name=f'block{b}_conv{j}')(x)
      x = _pool(x, 'max')
    return x


class JigsawBranches(nn.Module):
  """``num_branches`` unshared :class:`Branch` es, vectorised: ``[N, 9, h, w, c] -> [N, 9, h', w', C]``.

  ``nn.vmap`` over a stacked parameter axis (``variable_axes={'params': 0, 'batch_stats': 0}``,
  ``split_rngs={'params': True}``): every branch has its own weights, initialised independently, and
  its own BatchNorm statistics; branch ``k`` reads ``x[:, k]``. ``conv_impl``: see :class:`ConvBN`
  ('xla' is a grouped convolution once vmapped: fine on GPU/TPU, very slow on CPU).
  """
  block_features: Sequence[int]
  num_branches: int = NUM_PATCHES
  use_bn: bool = True
  kernel_init: str = 'he_normal'
  dtype: Any = jnp.float32
  conv_impl: str = 'shifted_matmul'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    if x.ndim != 5 or x.shape[1] != self.num_branches:
      raise ValueError(f'JigsawBranches expects [N, {self.num_branches}, h, w, c] inputs, got shape '
                       f'{x.shape}.')
    stacked = nn.vmap(Branch, variable_axes={'params': 0, 'batch_stats': 0},
                      split_rngs={'params': True}, in_axes=1, out_axes=1,
                      axis_size=self.num_branches)
    return stacked(self.block_features, use_bn=self.use_bn, train=train,
                   kernel_init=self.kernel_init, dtype=self.dtype, conv_impl=self.conv_impl,
                   axis_name=self.axis_name, name='branch')(x.astype(self.dtype))


def concat_branches(features: jax.Array) -> jax.Array:
  """``[N, 9, h, w, C] -> [N, h, w, 9 C]``, branch 0's channels first (channel-wise aggregation)."""
  n, k, h, w, c = features.shape
  return features.transpose(0, 2, 3, 1, 4).reshape(n, h, w, k * c)


def _check_patches(patches: jax.Array) -> None:
  if patches.ndim != 5 or patches.shape[1] != NUM_PATCHES:
    raise ValueError(f'patches must have shape [batch, {NUM_PATCHES}, h, w, c], got {patches.shape}.')


def _aggregated_branches(net: nn.Module, patches: jax.Array, train: bool) -> jax.Array:
  """``net``'s :class:`JigsawBranches` (submodule ``branches``, built from ``net``'s
  ``branch_features``, ``use_bn``, ``kernel_init``, ``dtype`` and ``branch_conv_impl``) on ``patches``,
  concatenated along channels (:func:`concat_branches`). Call it inside ``net``'s compact method."""
  return concat_branches(JigsawBranches(net.branch_features, use_bn=net.use_bn,
                                        kernel_init=net.kernel_init, dtype=net.dtype,
                                        conv_impl=net.branch_conv_impl,
                                        axis_name=net.axis_name,
                                        name='branches')(patches, train))


class SSLACLNet(nn.Module):
  """SSLACL pretext network (Fig. 3.4): ``patches [B, 9, h, w, c] -> logits [B, num_classes]``."""
  num_classes: int
  branch_features: Sequence[int] = SSLACL_WIDTHS['branch_features']
  fusion_features: int = SSLACL_WIDTHS['fusion_features']
  bottleneck_features: int = SSLACL_WIDTHS['bottleneck_features']
  fc_features: Sequence[int] = SSLACL_WIDTHS['fc_features']
  use_bn: bool = True
  kernel_init: str = 'he_normal'
  dtype: Any = jnp.float32
  branch_conv_impl: str = 'shifted_matmul'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, patches, train: bool = False):
    _check_patches(patches)
    conv = lambda f, s=1, name=None: ConvBN(f, 3, s, self.use_bn, train, self.kernel_init, self.dtype,
                                            axis_name=self.axis_name, name=name)
    x = _aggregated_branches(self, patches, train)
    x = conv(self.fusion_features, name='fusion')(x)
    a = conv(self.bottleneck_features, name='bottleneck_a0')(x)
    a = conv(self.bottleneck_features, 2, name='bottleneck_a1')(a)
    b = _pool(conv(self.bottleneck_features, name='bottleneck_b0')(x), 'max')
    x = jnp.mean(jnp.concatenate([a, b], axis=-1), axis=(1, 2))
    for i, f in enumerate(self.fc_features):
      x = nn.relu(nn.Dense(f, dtype=self.dtype, name=f'fc{i}')(x))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='logits')(x).astype(jnp.float32)


class SkipBlock(nn.Module):
  """``x + scale * F(x)``, ``F`` = two ConvBN 3x3 (``features`` then ``x``'s channels); no activation
  after the sum (Sec. 3.4.1.6, Fig. 3.5c; scale 0.25 in Table 3.12)."""
  features: int
  scale: float = 0.25
  use_bn: bool = True
  train: bool = False
  kernel_init: str = 'he_normal'
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bn=self.use_bn, train=self.train, kernel_init=self.kernel_init, dtype=self.dtype,
              axis_name=self.axis_name)
    y = ConvBN(self.features, name='conv0', **kw)(x)
    y = ConvBN(x.shape[-1], name='conv1', **kw)(y)
    return x + self.scale * y


class DimensionReduction(nn.Module):
  """Upper {conv3x3 s1, conv3x3 s2} || lower {avgpool 2x2/2, conv1x1}, concatenated (Fig. 3.5b).

  Each path has ``out_features / 2`` filters: for v2/v3 that is the block's input width, as the text
  says ("as many filters as the number of channels in the input"); Table 3.1's v1 widths (1024 -> 1024,
  1024 -> 4096) are only consistent with the output-halving reading, which is used throughout.
  """
  out_features: int
  use_bn: bool = True
  train: bool = False
  kernel_init: str = 'he_normal'
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    if self.out_features % 2:
      raise ValueError(f'DimensionReduction.out_features must be even, got {self.out_features}.')
    f = self.out_features // 2
    kw = dict(use_bn=self.use_bn, train=self.train, kernel_init=self.kernel_init, dtype=self.dtype,
              axis_name=self.axis_name)
    upper = ConvBN(f, 3, 1, name='upper0', **kw)(x)
    upper = ConvBN(f, 3, 2, name='upper1', **kw)(upper)
    lower = ConvBN(f, 1, 1, name='lower', **kw)(_pool(x, 'avg'))
    return jnp.concatenate([upper, lower], axis=-1)


class SKIDTrunk(nn.Module):
  """SKID feature extractor: branches -> concat -> conv1x1 -> Skip1 -> DimRed1 -> Skip2 -> DimRed2.

  ``no_blocks=True`` is the SKIDv3-NoBlocks ablation (Sec. 3.4.1.6): Skip -> identity, DimRed ->
  2x2 average pooling. Input ``[N, 9, h, w, c]``, output ``[N, h/16, w/16, dimred2]``.
  """
  branch_features: Sequence[int] = SKID_VARIANTS['v3']['branch_features']
  reduce_features: int = SKID_VARIANTS['v3']['reduce_features']
  skip1: Sequence[int] = SKID_VARIANTS['v3']['skip1']
  dimred1: int = SKID_VARIANTS['v3']['dimred1']
  skip2: Sequence[int] = SKID_VARIANTS['v3']['skip2']
  dimred2: int = SKID_VARIANTS['v3']['dimred2']
  skip_scale: float = 0.25
  no_blocks: bool = False
  use_bn: bool = True
  kernel_init: str = 'he_normal'
  dtype: Any = jnp.float32
  branch_conv_impl: str = 'shifted_matmul'
  axis_name: Optional[str] = None

  def _check_widths(self):
    for name, (first, out), width in (('skip1', self.skip1, self.reduce_features),
                                      ('skip2', self.skip2, self.dimred1)):
      if out != width:
        raise ValueError(f'{name} output width {out} must equal its input width {width} (residual sum).')

  @nn.compact
  def __call__(self, patches, train: bool = False):
    _check_patches(patches)
    self._check_widths()
    kw = dict(use_bn=self.use_bn, train=train, kernel_init=self.kernel_init, dtype=self.dtype,
              axis_name=self.axis_name)
    x = _aggregated_branches(self, patches, train)
    x = ConvBN(self.reduce_features, 1, name='reduce', **kw)(x)
    for i, (skip, dimred) in enumerate(((self.skip1, self.dimred1), (self.skip2, self.dimred2))):
      if self.no_blocks:
        x = _pool(x, 'avg')
      else:
        x = SkipBlock(skip[0], self.skip_scale, name=f'skip{i + 1}', **kw)(x)
        x = DimensionReduction(dimred, name=f'dimred{i + 1}', **kw)(x)
    return x


class SKIDNet(nn.Module):
  """SKID pretext network (Fig. 3.5d): :class:`SKIDTrunk` -> GAP -> FC 1024 (ReLU) -> C logits."""
  num_classes: int
  trunk: dict = None  # SKIDTrunk fields; None: SKID-v3 (Table 3.1).
  fc_features: int = 1024

  @nn.compact
  def __call__(self, patches, train: bool = False):
    x = SKIDTrunk(**(self.trunk or {}), name='trunk')(patches, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.relu(nn.Dense(self.fc_features, name='fc0')(x))
    return nn.Dense(self.num_classes, name='logits')(x).astype(jnp.float32)


# ----------------------------------------------------------------------------- downstream heads


class DivideAndTeachClassifier(nn.Module):
  """SSLACL downstream model (Alg. 3.3, Fig. 3.6): ``slices [B, N_S, H, W, c] -> logits [B, outputs]``.

  The ``N_S`` slices are split into 9 contiguous groups (:func:`divide_slices`); group ``i`` goes
  through pretrained branch ``i``; every slice's ``H/4 x W/4 x 512`` map goes through 3 blocks
  [conv3x3, conv3x3 stride 2] (512, 1024, 1024 filters), GAP, max over slices, FC 1024, FC 1024 and one
  output per task (sigmoid in the loss). ``freeze_branches`` [GUESS]: branch outputs are
  ``stop_gradient`` and their BatchNorm uses the pretext statistics. A ``conv_features`` entry
  ``'max'`` is a 2x2 max-pool in place of a block (Table 3.10's Model-1 / Model-2).
  """
  branch_features: Sequence[int] = SSLACL_WIDTHS['branch_features']
  conv_features: Sequence[int] = (512, 1024, 1024)
  fc_features: Sequence[int] = (1024, 1024)
  num_outputs: int = 1
  freeze_branches: bool = True
  use_bn: bool = True
  classifier_bn: bool = False
  kernel_init: str = 'he_normal'
  branch_conv_impl: str = 'shifted_matmul'
  dtype: Any = jnp.float32  # compute dtype of the convolutions; the FC head runs in float32

  @nn.compact
  def __call__(self, slices, train: bool = False):
    if slices.ndim != 5:
      raise ValueError(f'slices must have shape [batch, num_slices, H, W, c], got {slices.shape}.')
    b, n_s = slices.shape[:2]
    index, mask = divide_slices_index(n_s)          # static [9, n_max]
    n_max = index.shape[1]
    grouped = slices[:, index]                       # [B, 9, n_max, H, W, c]
    grouped = jnp.swapaxes(grouped, 1, 2).reshape((b * n_max, NUM_PATCHES) + slices.shape[2:])
    feats = JigsawBranches(self.branch_features, use_bn=self.use_bn, kernel_init=self.kernel_init,
                           conv_impl=self.branch_conv_impl, dtype=self.dtype,
                           name='branches')(grouped, train and not self.freeze_branches)
    if self.freeze_branches:
      feats = jax.lax.stop_gradient(feats)
    h, w, c = feats.shape[2:]
    feats = jnp.swapaxes(feats.reshape(b, n_max, NUM_PATCHES, h, w, c), 1, 2)
    x = feats.reshape(b * NUM_PATCHES * n_max, h, w, c)
    kw = dict(use_bn=self.classifier_bn, train=train, kernel_init=self.kernel_init, dtype=self.dtype)
    for i, f in enumerate(self.conv_features):
      if f == 'max':
        x = _pool(x, 'max')
        continue
      x = ConvBN(f, 3, 1, name=f'cls{i}_conv0', **kw)(x)
      x = ConvBN(f, 3, 2, name=f'cls{i}_conv1', **kw)(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).reshape(b, NUM_PATCHES * n_max, -1)
    valid = jnp.asarray(mask.reshape(-1))[None, :, None]
    x = jnp.max(jnp.where(valid, x, -jnp.inf), axis=1)  # max over the real slices (MRNet)
    for i, f in enumerate(self.fc_features):
      x = nn.relu(nn.Dense(f, name=f'fc{i}')(x))
    return nn.Dense(self.num_outputs, name='logits')(x)


def _lstm_bias_init(features: int):
  """Zero gate biases except the forget gate's, which start at 1 (Keras ``unit_forget_bias``)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype).at[features:2 * features].set(1.0)
  return init


class ConvLSTMCell(nn.Module):
  """A convolutional LSTM cell (Shi et al. 2015, without peepholes; Keras ``ConvLSTM2D`` gates).

  ``[i, f, g, o] = conv_k([x_t, h_{t-1}]) + b``; ``c_t = s(f) c_{t-1} + s(i) tanh(g)``;
  ``h_t = s(o) tanh(c_t)`` with ``s`` the logistic sigmoid and SAME padding. One kernel over the
  concatenated input and hidden state has exactly the parameters of Keras' kernel + recurrent kernel.
  """
  features: int
  kernel_size: int = 3
  kernel_init: str = 'lecun_normal'

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    z = nn.Conv(4 * self.features, (self.kernel_size, self.kernel_size), padding='SAME',
                kernel_init=_kernel_init(self.kernel_init), bias_init=_lstm_bias_init(self.features),
                name='gates')(jnp.concatenate([x, h], axis=-1))
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  @staticmethod
  def initial_carry(batch_shape: Sequence[int], features: int, dtype=jnp.float32):
    zeros = jnp.zeros(tuple(batch_shape) + (features,), dtype)
    return zeros, zeros


class ConvLSTM(nn.Module):
  """A ConvLSTM layer over ``[N, T, H, W, C]``; returns the hidden states ``[N, T, H, W, features]``."""
  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x):
    if x.ndim != 5:
      raise ValueError(f'ConvLSTM expects [N, T, H, W, C] inputs, got shape {x.shape}.')
    scan = nn.scan(ConvLSTMCell, variable_broadcast='params', split_rngs={'params': False},
                   in_axes=1, out_axes=1)
    # Zeros derived from x, so that inside shard_map the carry varies over the batch axis as x does.
    base = jnp.zeros_like(x[:, 0, :, :, :1])
    zeros = jnp.broadcast_to(base, base.shape[:-1] + (self.features,))
    carry = (zeros, zeros)
    _, hs = scan(self.features, self.kernel_size, name='cell')(carry, x)
    return hs


TEMPORAL_HEADS = ('convlstm', 'conv3d')


class SKIDDownstream(nn.Module):
  """SKID downstream model (Fig. 3.7): ``slices [B, T, H, W, c] -> logits [B, num_outputs]``.

  Every slice goes, whole, to all 9 branches of the pretext trunk (spec B8, [CODE]) truncated after
  DimRed2, then the classifier over the slice sequence and one logit per task (Abnormality, ACL,
  Meniscus; sigmoid in the loss). ``freeze_trunk`` (Sec. 3.5.2.2: only the classifier is trained).

  ``temporal='convlstm'`` (the thesis' choice): 2 ConvLSTM layers (3x3, ``lstm_features`` channels;
  the first returns its sequence, the second its last state, as Keras' ``return_sequences``), then
  GAP. ``temporal='conv3d'``: the 3-D CNN of Sec. 3.5.4.5 / Tables 3.13-3.14 ("the same experimental
  configuration", after Ji et al. 2013; the thesis gives no layers): [GUESS] one 3x3x3 convolution
  (same padding, ReLU) per entry of ``lstm_features`` in place of each ConvLSTM, then GAP over
  slices and space.
  """
  trunk: dict = None
  lstm_features: Sequence[int] = (512, 512)
  num_outputs: int = 3
  freeze_trunk: bool = True
  temporal: str = 'convlstm'

  @nn.compact
  def __call__(self, slices, train: bool = False):
    if slices.ndim != 5:
      raise ValueError(f'slices must have shape [batch, num_slices, H, W, c], got {slices.shape}.')
    if self.temporal not in TEMPORAL_HEADS:
      raise ValueError(f'Unknown temporal={self.temporal!r}; expected one of {TEMPORAL_HEADS}.')
    b, t = slices.shape[:2]
    x = jnp.broadcast_to(slices.reshape((b * t, 1) + slices.shape[2:]),
                         (b * t, NUM_PATCHES) + slices.shape[2:])
    x = SKIDTrunk(**(self.trunk or {}), name='trunk')(x, train and not self.freeze_trunk)
    if self.freeze_trunk:
      x = jax.lax.stop_gradient(x)
    x = x.reshape((b, t) + x.shape[1:])
    if self.temporal == 'conv3d':
      for i, f in enumerate(self.lstm_features):
        x = nn.relu(nn.Conv(f, (3, 3, 3), padding='SAME', name=f'conv3d{i}')(x))
      x = jnp.mean(x, axis=(1, 2, 3))
    else:
      for i, f in enumerate(self.lstm_features):
        x = ConvLSTM(f, name=f'convlstm{i}')(x)
      x = jnp.mean(x[:, -1], axis=(1, 2))
    return nn.Dense(self.num_outputs, name='logits')(x)


# ----------------------------------------------------------------------------- factory


def make_pretext_model(arch: str, num_classes: int, *, variant: str = 'v3', width_factor: float = 1.0,
                       use_bn: bool = True, skip_scale: float = 0.25, no_blocks: bool = False,
                       kernel_init: str = 'he_normal', dtype: Any = jnp.float32,
                       branch_conv_impl: str = 'shifted_matmul',
                       axis_name: Optional[str] = None) -> nn.Module:
  """The pretext net ``arch`` ('sslacl' | 'skid' with ``variant`` in ``SKID_VARIANTS``), its widths
  multiplied by ``width_factor`` (1: the thesis nets); ``branch_conv_impl`` see :class:`ConvBN`.

  ``axis_name``: the ``shard_map`` / ``pmap`` axis a data-parallel train step splits the batch over;
  every BatchNorm then normalises with the statistics of the global batch (synchronised, ``pmean``
  over the axis), so the step equals the one-device step on the whole batch. None: local batch."""
  if branch_conv_impl not in CONV_IMPLS:
    raise ValueError(f'Unknown branch_conv_impl {branch_conv_impl!r}; expected one of {CONV_IMPLS}.')
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f'num_classes must be an integer >= 2, got {num_classes!r}.')
  if arch == 'sslacl':
    widths = scale_widths(SSLACL_WIDTHS, width_factor)
    return SSLACLNet(int(num_classes), use_bn=use_bn, kernel_init=kernel_init, dtype=dtype,
                     branch_conv_impl=branch_conv_impl, axis_name=axis_name, **widths)
  if arch == 'skid':
    if variant not in SKID_VARIANTS:
      raise ValueError(f'Unknown SKID variant {variant!r}; expected one of {tuple(SKID_VARIANTS)}.')
    widths = scale_widths(SKID_VARIANTS[variant], width_factor)
    fc = scale_widths({'fc': 1024}, width_factor)['fc']
    trunk = dict(widths, skip_scale=skip_scale, no_blocks=no_blocks, use_bn=use_bn,
                 kernel_init=kernel_init, dtype=dtype, branch_conv_impl=branch_conv_impl,
                 axis_name=axis_name)
    return SKIDNet(int(num_classes), trunk=trunk, fc_features=fc)
  raise ValueError(f'Unknown jigsaw architecture {arch!r}; expected one of {ARCHITECTURES}.')


def build(model_cfg, axis_name: Optional[str] = None, *, num_classes: int) -> nn.Module:
  """The pretext net of ``config.model`` (``models.build_model(..., task='jigsaw')``): fields
  ``arch``, ``variant``, ``width_factor``, ``use_bn``, ``skip_scale``, ``no_blocks``,
  ``kernel_init``, ``branch_conv_impl`` of :func:`make_pretext_model`, ``dtype`` (compute dtype,
  ``models.model_dtype``); ``num_classes``: the ``C``
  permutation classes (``config.jigsaw.num_classes``); ``axis_name`` see :func:`make_pretext_model`."""
  return make_pretext_model(
      model_cfg.arch, num_classes, variant=model_cfg.get('variant', 'v3'),
      width_factor=float(model_cfg.get('width_factor', 1.0)),
      use_bn=bool(model_cfg.get('use_bn', True)),
      skip_scale=float(model_cfg.get('skip_scale', 0.25)),
      no_blocks=bool(model_cfg.get('no_blocks', False)),
      kernel_init=model_cfg.get('kernel_init', 'he_normal'),
      branch_conv_impl=model_cfg.get('branch_conv_impl', 'shifted_matmul'), axis_name=axis_name,
      dtype=models.model_dtype(model_cfg))


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
  """Shapes of ``model``'s variables for an input of ``input_shape`` (no FLOPs, no memory)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.PRNGKey(0), x)


def pretext_parameter_count(model: nn.Module, crop_size: int = 64, channels: int = 3,
                            include_batch_stats: bool = True) -> int:
  """:func:`count_parameters` of a pretext net for ``[1, 9, crop, crop, channels]`` patches."""
  variables = abstract_variables(model, (1, NUM_PATCHES, crop_size, crop_size, channels))
  return count_parameters(variables, include_batch_stats)


def expected_counts() -> dict:
  """Pretext parameter counts printed in the thesis, ``(arch, variant, C) -> count`` (Table 3.9 for
  SSLACL, Table 3.12 for SKID; Table 3.12 prints 108.8 M for SKID-v1 at both C = 500 and 1000, though
  the C-way layer alone differs by 512,500: the 1000-class count matches, the 500-class one is 0.41%
  lower)."""
  return {('sslacl', None, 500): 173.0e6, ('sslacl', None, 1000): 173.5e6,
          ('skid', 'v1', 500): 108.8e6, ('skid', 'v1', 1000): 108.8e6,
          ('skid', 'v2', 500): 169.9e6, ('skid', 'v2', 1000): 170.4e6,
          ('skid', 'v3', 500): 217.17e6, ('skid', 'v3', 1000): 217.68e6}


__all__ = [
    'ARCHITECTURES', 'CONV_IMPLS', 'SKID_VARIANTS', 'SSLACL_WIDTHS', 'Branch', 'ConvBN', 'ConvLSTM',
    'ConvLSTMCell', 'ShiftedMatmulConv',
    'DimensionReduction', 'DivideAndTeachClassifier', 'JigsawBranches', 'SKIDDownstream', 'SKIDNet',
    'SKIDTrunk', 'SSLACLNet', 'SkipBlock', 'abstract_variables', 'build', 'concat_branches',
    'count_parameters',
    'expected_counts', 'make_pretext_model', 'pretext_parameter_count', 'scale_widths',
]
