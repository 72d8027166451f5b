"""CoWPro losses (thesis Ch. 7, Sec. 7.4.1.5): weighted pixel cross-entropy + cyclic consistency.

    L = L_ssl + lambda_reg L_reg                                                   (Eq. 7.14, lambda_reg = 1)
    L_ssl = weighted CE of the query logits against T_geo(M_s)                     (Eq. 7.12)
    L_reg = CE of the support logits predicted from the swapped episode
            ((I_q, M_hat_q), I_s) against M_s                                      (Eq. 7.13)

Class weights are 0.05 (background) and 1.0 (foreground) for L_ssl (Sec. 7.4.1.5). The weighted mean
is ``sum_i w_{y_i} nll_i / sum_i w_{y_i}`` as ``torch.nn.CrossEntropyLoss(weight=...)`` in the
author's code ([code]; ``normalize='pixels'`` gives the plain pixel mean ``E_{h,w}[lambda nll]`` of Eq.
7.12 read literally). ``L_reg`` is unweighted (Eq. 7.13 and [code]); the swapped episode builds its
prototypes with the fixed threshold 0.95 (Sec. 7.4.1.5) from the hard predicted mask ``M_hat_q``
(argmax, no gradient through the mask, as in the code; the code's extra Tversky term on argmax masks
has no gradient and is left out).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.projects.cowpro import model as cowpro_model

NORMALIZE = ('weights', 'pixels')


def _check_class_weights(class_weights: Sequence[float], name: str) -> jax.Array:
  w = np.asarray(class_weights, np.float64)
  if w.shape != (2,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
    raise ValueError(f'`{name}` must be two finite weights >= 0 (background, foreground), not both '
                     f'0; got {class_weights!r}.')
  return jnp.asarray(w, jnp.float32)


def weighted_cross_entropy(logits: jax.Array, target: jax.Array,
                           class_weights: Sequence[float] = (0.05, 1.0),
                           normalize: str = 'weights') -> jax.Array:
  """Two-class pixel cross-entropy with class weights (Eq. 7.12).

  Args:
    logits: ``[..., 2]`` (background, foreground) scores.
    target: ``[...]`` binary mask (0/1, bool or float).
    class_weights: ``(lambda_BG, lambda_FG)``.
    normalize: 'weights' (divide by the summed weights of the pixels' classes) or 'pixels' (divide by
      the pixel count).

  Returns:
    The float32 scalar loss.
  """
  if normalize not in NORMALIZE:
    raise ValueError(f'Unknown `normalize`={normalize!r}; expected one of {NORMALIZE}.')
  if logits.shape[-1:] != (2,) or logits.shape[:-1] != jnp.shape(target):
    raise ValueError(f'`logits` must be [..., 2] matching `target` [...]; got {logits.shape} and '
                     f'{jnp.shape(target)}.')
  w = _check_class_weights(class_weights, 'class_weights')
  fg = jnp.asarray(target) > 0.5
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.where(fg, logp[..., 1], logp[..., 0])
  pixel_w = jnp.where(fg, w[1], w[0])
  total = jnp.sum(pixel_w * nll)
  if normalize == 'weights':
    return total / jnp.maximum(jnp.sum(pixel_w), jnp.finfo(jnp.float32).tiny)
  return total / nll.size


def cyclic_consistency_loss(support_features: jax.Array, support_mask: jax.Array,
                            query_features: jax.Array, query_logits: jax.Array, *,
                            threshold=0.95, class_weights: Sequence[float] = (1.0, 1.0),
                            normalize: str = 'weights', **logit_kwargs) -> jax.Array:
  """``L_reg`` of Eq. 7.13 for one episode: predict the support from the query and its predicted mask.

  Args:
    support_features, query_features: ``[h, w, D]``.
    support_mask: ``[H, W]`` the forward episode's support mask (the target here).
    query_logits: ``[H, W, 2]`` forward logits; ``M_hat_q`` is their argmax (stop-gradient).
    threshold: ``zeta`` for both prototype sets of the swapped episode (0.95, Sec. 7.4.1.5).
    class_weights, normalize: as :func:`weighted_cross_entropy`.
    **logit_kwargs: ``window``, ``temperature``, ``scale``, ``renormalize``, ``mask_resize`` of
      :func:`contrastive_jax.projects.cowpro.model.episode_logits`.
  """
  predicted = jax.lax.stop_gradient(cowpro_model.predict_mask(query_logits).astype(jnp.float32))
  support_logits = cowpro_model.episode_logits(
      query_features, predicted, support_features, support_mask.shape, fg_threshold=threshold,
      bg_threshold=threshold, **logit_kwargs)
  return weighted_cross_entropy(support_logits, support_mask, class_weights, normalize)


def cowpro_loss(support_features: jax.Array, support_masks: jax.Array, query_features: jax.Array,
                query_masks: jax.Array, *, class_weights: Sequence[float] = (0.05, 1.0),
                normalize: str = 'weights', reg_weight: float = 1.0, reg_threshold=0.95,
                reg_class_weights: Sequence[float] = (1.0, 1.0), fg_threshold=0.95,
                bg_threshold=0.95, window: int = 4, temperature: float = 0.05, scale: float = 20.0,
                renormalize: bool = False, mask_resize: str = 'bilinear'):
  """Total loss of a batch of episodes, ``mean_b [L_ssl + reg_weight L_reg]`` (Eq. 7.14).

  Args:
    support_features, query_features: ``[B, h, w, D]`` encoder outputs.
    support_masks, query_masks: ``[B, H, W]`` the support pseudo-masks and the query targets
      ``T_geo(M_s)``.
    class_weights, normalize: of ``L_ssl``; ``reg_weight`` (0 switches ``L_reg`` off),
      ``reg_threshold``, ``reg_class_weights``: of ``L_reg``.
    fg_threshold, bg_threshold, window, temperature, scale, renormalize, mask_resize: the prototype
      pipeline (:func:`contrastive_jax.projects.cowpro.model.episode_logits`).

  Returns:
    ``(loss, aux)`` with ``aux = {'loss_ssl', 'loss_reg', 'logits' [B, H, W, 2]}``.
  """
  if support_features.ndim != 4 or support_masks.ndim != 3:
    raise ValueError(f'Expected features [B, h, w, D] and masks [B, H, W]; got '
                     f'{support_features.shape} and {support_masks.shape}.')
  if support_masks.shape != query_masks.shape or support_features.shape != query_features.shape:
    raise ValueError('Support and query features / masks must have the same shapes; got '
                     f'{support_features.shape}, {query_features.shape}, {support_masks.shape}, '
                     f'{query_masks.shape}.')
  if not np.isfinite(reg_weight) or reg_weight < 0:
    raise ValueError(f'`reg_weight` must be a finite number >= 0; got {reg_weight!r}.')
  common = dict(window=window, temperature=temperature, scale=scale, renormalize=renormalize,
                mask_resize=mask_resize)

  def one(s_feat, s_mask, q_feat, q_mask):
    logits = cowpro_model.episode_logits(s_feat, s_mask, q_feat, s_mask.shape,
                                         fg_threshold=fg_threshold, bg_threshold=bg_threshold,
                                         **common)
    ssl = weighted_cross_entropy(logits, q_mask, class_weights, normalize)
    if reg_weight:
      reg = cyclic_consistency_loss(s_feat, s_mask, q_feat, logits, threshold=reg_threshold,
                                    class_weights=reg_class_weights, normalize=normalize, **common)
    else:
      reg = jnp.zeros((), jnp.float32)
    return ssl, reg, logits

  ssl, reg, logits = jax.vmap(one)(support_features, support_masks, query_features, query_masks)
  loss_ssl, loss_reg = jnp.mean(ssl), jnp.mean(reg)
  return loss_ssl + reg_weight * loss_reg, {'loss_ssl': loss_ssl, 'loss_reg': loss_reg,
                                            'logits': logits}
