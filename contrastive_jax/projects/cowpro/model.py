"""CoWPro: correlation-weighted prototype aggregation for one-shot segmentation (thesis Ch. 7).

The network is an encoder of support and query slices into feature maps (Sec. 7.4.1.2); everything
after it is parameter-free and written here as pure functions of one episode:

* :func:`extract_prototypes` (Eqs. 7.2-7.3): the support mask is resized to the feature map, both are
  average-pooled with a ``window x window`` window, and the pooled features whose pooled mask exceeds
  the threshold ``zeta`` are the local prototypes (<= (h/window)(w/window)); the foreground set also
  holds the global masked-average prototype. ``zeta`` is fixed (0.95) or dynamic (0.8 max of the pooled
  foreground mask; the mean of the pooled background mask), Sec. 7.4.1.3 / Table 7.2. The variable
  number of prototypes is a fixed-size padded set with a validity mask (static shapes under jit).
* :func:`aggregate_scores` (Eqs. 7.4-7.10): prototypes and query pixels are mean-centred over
  channels and L2-normalised; the correlation ``M_c`` is their cosine; ``M_prob = softmax_j(M_c / t)``
  over the valid prototypes; ``P_agg = sum_j M_prob^j P^j`` and the score is ``scale <q, P_agg>``.
* :func:`episode_logits` (Eq. 7.11): ``[c_BG, c_FG]`` upsampled bilinearly to the image size.
* ``top_percent`` (Sec. 7.5.4.3, Table 7.4, inference only): each query pixel aggregates only its
  Top-k% most correlated prototypes, of the foreground and of the background set alike
  (:func:`top_percent_mask`).

Implementation choices taken from the author's code (sadimanna/cowpro, ``MultiProtoAsWCos``) where the
thesis is silent ([code]): the aggregate is formed from the *normalised* centred prototypes and the
final score is ``20 <q_hat, P_agg>`` without re-normalising ``P_agg`` (``renormalize=True`` gives the
thesis' literal cosine); norms are floored at 1e-4; the mask is resized bilinearly; a set with no valid
prototype scores 0 (the code's empty softmax), never NaN.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrastive_jax import models

Threshold = Union[float, str]
NORM_EPS = 1e-4  # ``safe_norm`` floor of the author's code.
GLOBAL_EPS = 1e-5  # Denominator guard of the global masked-average prototype.


# ----------------------------------------------------------------------------------------------------
# Encoders.

class ConvEncoder(nn.Module):
  """A small fully convolutional encoder ``[N, H, W, C] -> [N, H/stride, W/stride, features[-1]]``.

  3x3 conv + BatchNorm + ReLU per stage, stride 2 where ``strides`` says so, then a second 3x3 conv
  block; used for tests and the CPU-sized ``synthetic`` config in place of the dilated ResNet-101.
  """
  features: Sequence[int] = (16, 32, 64)
  strides: Sequence[int] = (1, 2, 2)
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.features) != len(self.strides):
      raise ValueError(f'`features` {tuple(self.features)} and `strides` {tuple(self.strides)} must '
                       'have the same length.')
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                axis_name=self.bn_axis_name, dtype=self.dtype)
    x = x.astype(self.dtype)
    for width, stride in zip(self.features, self.strides):
      x = nn.relu(norm()(nn.Conv(width, (3, 3), (stride, stride), use_bias=False,
                                 dtype=self.dtype)(x)))
      x = nn.relu(norm()(nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype)(x)))
    return x


def build_encoder(name: str, bn_axis_name: Optional[str] = None, **kwargs) -> nn.Module:
  """An encoder returning feature maps ``[N, h, w, C]``, by name.

  'conv': :class:`ConvEncoder`. 'resnet101_dilated': the torchvision-style ResNet-101 of
  ``contrastive_jax.models.resnet`` with ``replace_stride_with_dilation=(False, True, True)``
  (output stride 8: 256x256 -> 32x32x2048, Sec. 7.4.1.2), returning its last feature map.
  """
  if name == 'conv':
    return ConvEncoder(bn_axis_name=bn_axis_name, **kwargs)
  if name == 'resnet101_dilated':
    from contrastive_jax.models import resnet  # pylint: disable=g-import-not-at-top
    return resnet.dilated_resnet101_features(bn_axis_name=bn_axis_name, **kwargs)
  raise ValueError(f"Unknown CoWPro encoder {name!r}; expected 'conv' or 'resnet101_dilated'.")


class CoWPro(nn.Module):
  """Encoder + optional 1x1 projection: slices ``[N, H, W]`` or ``[N, H, W, C]`` -> ``[N, h, w, D]``.

  Attributes:
    encoder: any flax module called as ``encoder(x, train=train)`` returning ``[N, h, w, C]``.
    feature_dim: output channels of the 1x1 conv after the encoder (Sec. 7.4.1.2: 2048 -> 256); None
      keeps the encoder's features.
    in_channels: grey slices are tiled to this many channels (3 for ImageNet-style backbones).
  """
  encoder: nn.Module
  feature_dim: Optional[int] = 256
  in_channels: int = 3

  @nn.compact
  def __call__(self, images, train: bool = False):
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4:
      raise ValueError(f'`images` must be [N, H, W] or [N, H, W, C]; got shape {images.shape}.')
    if images.shape[-1] == 1 and self.in_channels > 1:
      images = jnp.tile(images, (1, 1, 1, self.in_channels))
    features = self.encoder(images, train=train)
    if features.ndim != 4:
      raise ValueError(f'The encoder must return a feature map [N, h, w, C]; got {features.shape}.')
    if self.feature_dim is not None:
      features = nn.Conv(self.feature_dim, (1, 1), use_bias=False, name='proj')(features)
    return features.astype(jnp.float32)


def build(model_cfg, axis_name: Optional[str] = None) -> CoWPro:
  """The CoWPro net of ``config.model`` (``models.build_model(..., task='cowpro')``): fields
  ``encoder`` and ``encoder_kwargs`` (:func:`build_encoder`), ``feature_dim``, ``in_channels``;
  ``dtype`` (the encoder's compute dtype, ``models.model_dtype``); ``axis_name``: the mesh axis its
  BatchNorm statistics are synchronised over in training (inside ``shard_map``)."""
  encoder = build_encoder(model_cfg.encoder, bn_axis_name=axis_name,
                          **{'dtype': models.model_dtype(model_cfg),
                             **model_cfg.get('encoder_kwargs', {})})
  return CoWPro(encoder=encoder, feature_dim=model_cfg.get('feature_dim'),
                in_channels=int(model_cfg.get('in_channels', 1)))


# ----------------------------------------------------------------------------------------------------
# Prototypes and correlation-weighted aggregation (pure functions of one episode).

def resize_mask(mask: jax.Array, feature_hw: tuple, method: str = 'bilinear') -> jax.Array:
  """Full-resolution mask ``[H, W]`` -> ``[h, w]``: 'bilinear' (half-pixel, no antialiasing, as
  torch ``F.interpolate``; [code]) or 'area' (block mean; needs H, W divisible by h, w)."""
  mask = jnp.asarray(mask, jnp.float32)
  h, w = feature_hw
  if method == 'bilinear':
    return jax.image.resize(mask, (h, w), 'bilinear', antialias=False)
  if method == 'area':
    big_h, big_w = mask.shape
    if big_h % h or big_w % w:
      raise ValueError(f"mask_resize='area' needs the mask size {mask.shape} to be a multiple of the "
                       f'feature size {(h, w)}.')
    return mask.reshape(h, big_h // h, w, big_w // w).mean(axis=(1, 3))
  raise ValueError(f"Unknown `mask_resize`={method!r}; expected 'bilinear' or 'area'.")


def _avg_pool(x: jax.Array, window: int) -> jax.Array:
  """Non-overlapping ``window x window`` mean of ``[h, w, ...]``."""
  h, w = x.shape[:2]
  return x.reshape(h // window, window, w // window, window, *x.shape[2:]).mean(axis=(1, 3))


def check_threshold(threshold: Threshold, name: str = 'threshold') -> None:
  if isinstance(threshold, str):
    if threshold != 'dynamic':
      raise ValueError(f"`{name}` must be a number in [0, 1) or 'dynamic'; got {threshold!r}.")
  elif not 0.0 <= float(threshold) < 1.0:
    raise ValueError(f"`{name}` must be a number in [0, 1) or 'dynamic'; got {threshold!r}.")


def extract_prototypes(features: jax.Array, mask: jax.Array, *, foreground: bool,
                       threshold: Threshold = 0.95, window: int = 4):
  """The padded prototype set of one support feature map (Eqs. 7.2-7.3).

  Args:
    features: ``[h, w, D]`` support features.
    mask: ``[h, w]`` soft mask at feature resolution (see :func:`resize_mask`), FG or BG.
    foreground: adds the global masked-average prototype (always valid) as the last slot.
    threshold: ``zeta`` of Eq. 7.2, a number (fixed; 0.95 in the thesis) or 'dynamic'
      (0.8 x max of the pooled mask for the foreground, its mean for the background).
    window: average-pooling window (4 in training; 2 or 4 in Table 7.4); must divide h and w.

  Returns:
    ``(prototypes [G + 1, D], valid [G + 1] bool)`` with ``G = (h / window)(w / window)``; the last slot
    is the global prototype (valid only for the foreground).
  """
  check_threshold(threshold)
  h, w, _ = features.shape
  if mask.shape != (h, w):
    raise ValueError(f'`mask` must have the feature map size {(h, w)}; got {mask.shape}.')
  if window < 1 or h % window or w % window:
    raise ValueError(f'`window`={window} must be >= 1 and divide the feature size {(h, w)}.')
  pooled_features = _avg_pool(features, window).reshape(-1, features.shape[-1])
  pooled_mask = _avg_pool(mask, window).reshape(-1)
  if threshold == 'dynamic':
    zeta = 0.8 * jnp.max(pooled_mask) if foreground else jnp.mean(pooled_mask)
  else:
    zeta = float(threshold)
  valid = pooled_mask > zeta
  glob = jnp.sum(features * mask[..., None], axis=(0, 1)) / (jnp.sum(mask) + GLOBAL_EPS)
  prototypes = jnp.concatenate([pooled_features, glob[None]], axis=0)
  valid = jnp.concatenate([valid, jnp.array([foreground])])
  return prototypes, valid


def _centre_normalise(x: jax.Array) -> jax.Array:
  """Eqs. 7.4 / 7.5 (subtract the channel mean), then L2-normalise with the norm floored at 1e-4."""
  x = x - jnp.mean(x, axis=-1, keepdims=True)
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS ** 2))


def masked_softmax(logits: jax.Array, valid: jax.Array) -> jax.Array:
  """Softmax over the last axis restricted to ``valid`` entries (others get probability 0); all zeros
  when no entry is valid."""
  top = jax.lax.stop_gradient(jnp.max(jnp.where(valid, logits, jnp.finfo(logits.dtype).min),
                                      axis=-1, keepdims=True))
  e = jnp.where(valid, jnp.exp(jnp.where(valid, logits - top, 0.0)), 0.0)
  return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(logits.dtype).tiny)


def check_top_percent(top_percent) -> float:
  """``top_percent`` as a float in (0, 100] (Table 7.4: 100, 50, 10, 5, 2)."""
  if isinstance(top_percent, bool) or not isinstance(top_percent, (int, float)) or not (
      0.0 < float(top_percent) <= 100.0):
    raise ValueError(f'`top_percent` must be a number in (0, 100]; got {top_percent!r}.')
  return float(top_percent)


def top_percent_mask(corr: jax.Array, valid: jax.Array, top_percent: float) -> jax.Array:
  """``[..., P]`` bool: for every query pixel, its ``k = max(1, ceil(top_percent / 100 * N))`` most
  correlated valid prototypes (``N``: the number of valid ones), the Top-k% ablation of Sec. 7.5.4.3
  (Table 7.4). The rounding of ``k`` is not given in the thesis [GUESS: ceil, at least one]. A
  prototype tied with the ``k``-th largest correlation is kept too."""
  top_percent = check_top_percent(top_percent)
  valid = jnp.broadcast_to(valid, corr.shape)
  if top_percent == 100.0:
    return valid
  n = jnp.sum(valid, axis=-1, keepdims=True)
  k = jnp.maximum(1, jnp.ceil(top_percent / 100.0 * n).astype(jnp.int32))
  ranked = -jnp.sort(-jnp.where(valid, corr, -jnp.inf), axis=-1)  # descending, invalid last
  kth = jnp.take_along_axis(ranked, k - 1, axis=-1)
  return valid & (corr >= kth)


def aggregate_scores(query: jax.Array, prototypes: jax.Array, valid: jax.Array, *,
                     temperature: float = 0.05, scale: float = 20.0, renormalize: bool = False,
                     top_percent: float = 100.0, return_aux: bool = False):
  """Correlation-weighted prototype aggregation and scores (Eqs. 7.4-7.10).

  Args:
    query: ``[h, w, D]`` query features.
    prototypes: ``[P, D]`` (padded) prototypes; ``valid``: ``[P]`` bool.
    temperature: ``t`` of Eq. 7.7 (0.05 [code]: the code's softmax of ``20 cos``).
    scale: factor of the final score (20 [code]).
    renormalize: score ``scale cos(q, P_agg)`` instead of ``scale <q_hat, P_agg>``.
    top_percent: the Top-k% ablation (Sec. 7.5.4.3, Table 7.4): Eqs. 7.7-7.8 over only the
      ``top_percent`` % most correlated valid prototypes of each query pixel
      (:func:`top_percent_mask`); 100 (default) = all of them, the method as trained.
    return_aux: also return ``{'correlation': M_c, 'probability': M_prob, 'aggregate': P_agg}``.

  Returns:
    Scores ``[h, w]`` (and the aux dict).
  """
  q = _centre_normalise(query.astype(jnp.float32))
  p = _centre_normalise(prototypes.astype(jnp.float32))
  corr = jnp.einsum('hwd,pd->hwp', q, p)  # Eq. 7.6
  if check_top_percent(top_percent) < 100.0:
    valid = top_percent_mask(corr, valid, top_percent)
  prob = masked_softmax(corr / temperature, valid)  # Eq. 7.7
  agg = jnp.einsum('hwp,pd->hwd', prob, p)  # Eq. 7.8
  if renormalize:
    sq = jnp.sum(agg * agg, axis=-1, keepdims=True)
    agg = agg * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS ** 2))
  scores = scale * jnp.sum(q * agg, axis=-1)  # Eqs. 7.9-7.10
  if return_aux:
    return scores, {'correlation': corr, 'probability': prob, 'aggregate': agg}
  return scores


def episode_logits(support_features: jax.Array, support_mask: jax.Array, query_features: jax.Array,
                   image_hw: tuple, *, fg_threshold: Threshold = 0.95,
                   bg_threshold: Threshold = 0.95, window: int = 4, temperature: float = 0.05,
                   scale: float = 20.0, renormalize: bool = False,
                   mask_resize: str = 'bilinear', top_percent: float = 100.0) -> jax.Array:
  """Logits ``[H, W, 2]`` (background, foreground) of the query of one 1-way 1-shot episode.

  Args:
    support_features, query_features: ``[h, w, D]``.
    support_mask: ``[H, W]`` binary (or soft) foreground mask of the support image; the background
      mask is ``1 - M_s`` (Sec. 7.4.1.3).
    image_hw: output size ``(H, W)``; scores are upsampled bilinearly (Sec. 7.4.1.5).
    fg_threshold, bg_threshold: ``zeta`` of Eq. 7.2 (number or 'dynamic').
    window, temperature, scale, renormalize, mask_resize, top_percent: see
      :func:`extract_prototypes`, :func:`aggregate_scores`, :func:`resize_mask`.
  """
  if support_features.ndim != 3 or support_features.shape != query_features.shape:
    raise ValueError(f'Support and query features must both be [h, w, D]; got '
                     f'{support_features.shape} and {query_features.shape}.')
  h, w, _ = support_features.shape
  fg = resize_mask(support_mask, (h, w), mask_resize)
  bg = resize_mask(1.0 - jnp.asarray(support_mask, jnp.float32), (h, w), mask_resize)
  kwargs = dict(temperature=temperature, scale=scale, renormalize=renormalize,
                top_percent=top_percent)
  fg_protos, fg_valid = extract_prototypes(support_features, fg, foreground=True,
                                           threshold=fg_threshold, window=window)
  bg_protos, bg_valid = extract_prototypes(support_features, bg, foreground=False,
                                           threshold=bg_threshold, window=window)
  scores = jnp.stack([aggregate_scores(query_features, bg_protos, bg_valid, **kwargs),
                      aggregate_scores(query_features, fg_protos, fg_valid, **kwargs)], axis=-1)
  return jax.image.resize(scores, (*image_hw, 2), 'bilinear')


def predict_mask(logits: jax.Array) -> jax.Array:
  """Eq. 7.11: ``argmax_{BG, FG} softmax[c_BG, c_FG]`` -> binary mask ``[..., H, W]``."""
  return logits[..., 1] > logits[..., 0]
