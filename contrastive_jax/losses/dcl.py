"""Decoupled contrastive loss, DCL (Yeh et al., ECCV 2022, Eq. 6): NT-Xent without the positive pair
in the denominator, and its weighted form DCLW (Eq. 9); the thesis' comparators in Tables 5.2-5.3,
5.6, 5.9-5.11, 6.1, 6.7-6.8, 6.11.

    L = mean_i  (1/|P(i)|) sum_{p in P(i)} [ -s_ip / tau ] + log sum_{k not in {i} u P(i)} exp(s_ik / tau)

with ``s`` the cosine similarity, every one of the ``batch * views`` rows an anchor and ``P(i)`` the
other views of its sample. Removing the positive from the denominator removes the
"negative-positive coupling" factor of the NT-Xent gradient (the paper's Prop. 1), which is why it
trains well at small batch sizes (thesis Table 5.10).

Two views: the mean over the ``2N`` anchors equals ``(l(z1, z2) + l(z2, z1)) / 2`` of lightly's
``DCLLoss`` (which the thesis' benchmark numbers come from) and half the sum that
raminnakhli/Decoupled-Contrastive-Learning's README computes (the two one-way losses added); with
more views, the other views are all positives (out of the denominator) and their terms are averaged,
as in :func:`contrastive_jax.losses.supcon.simclr`. Temperature 0.1 (the paper's and the thesis'
"SimCLR/DCL 0.1").

DCLW (``sigma`` given; the paper's Eq. 9, sigma = 0.5): anchor ``i``'s positive term is weighted by
the negative von Mises-Fisher weight

    w_i = 2 - M exp(c_i / sigma) / sum_{j=1..M} exp(c_j / sigma),

``c_i`` its mean positive cosine (two views: ``s_ii'``) and ``M`` the anchors of the global batch,
as a constant (stop-gradient), so the weights average 1. This is lightly's
``negative_mises_fisher_weights`` (weights of the detached similarities, the softmax over one
direction's ``N`` pairs: with two views ``N softmax_N = M softmax_M``, the values repeat); the
raminnakhli code keeps their gradient.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.losses.supcon import SOFTMAX_KINDS
from contrastive_jax.losses.supcon import _label_logits
from contrastive_jax.losses.supcon import mean_log_prob
from contrastive_jax.losses.supcon import softmax_pair_fn
from contrastive_jax.losses.supcon import unit_rows


def _global_logsumexp(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """``log sum exp(x)`` over the anchors of every shard."""
  top = jnp.max(x) if axis_name is None else jax.lax.pmax(jnp.max(x), axis_name)
  total = jnp.sum(jnp.exp(x - top))
  return top + jnp.log(total if axis_name is None else jax.lax.psum(total, axis_name))


def dcl(features: jax.Array, temperature: float = 0.1, sigma: Optional[float] = None, *,
        axis_name: Optional[str] = None, impl: str = "auto", tile=None,
        matmul_dtype=None) -> jax.Array:
  """Decoupled contrastive loss (module docstring; Yeh et al. 2022 Eq. 6), DCLW with ``sigma``.

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here), at least 2 views and 2
      samples (an anchor needs a positive and a negative).
    temperature: ``tau`` (> 0; may be traced).
    sigma: None (DCL) or the von Mises-Fisher scale of DCLW's positive weights (> 0; 0.5 in the
      paper; may be traced).
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    impl, tile, matmul_dtype: execution mode ('dense' | 'blockwise' | 'ring' | 'fused' |
      'fused_ring' | 'auto'), tile shape and optional bfloat16 similarity matmul, as for
      :func:`contrastive_jax.losses.supcon.supcon`.

  Returns:
    The float32 scalar loss, the mean over all anchors of the global batch.
  """
  features = _checks.check_features(features, axis_name)
  _checks.check_views(features, 2, "dcl")
  if axis_name is None and features.shape[0] < 2:
    raise ValueError(f"dcl needs at least 2 samples (an anchor's negatives are the other samples' "
                     f"views); got features of shape {tuple(features.shape)}.")
  _checks.check_positive(temperature, "temperature")
  if sigma is not None:
    _checks.check_positive(sigma, "sigma")
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  # SimCLR's pair logits (cos / tau, positives: the same sample), the positives out of the denominator
  pair_fn = softmax_pair_fn(functools.partial(_label_logits, None), block.matmul_dtype,
                            decoupled=True)
  stats = pairwise.row_statistics(pair_fn, SOFTMAX_KINDS, {"temperature": temperature},
                                  rows.anchors, rows.columns, rows.anchor_sample,
                                  rows.column_sample, rows.row_offset, block=block,
                                  axis_name=axis_name)
  if sigma is None:
    per_anchor = mean_log_prob(*stats)
  else:  # DCLW: -w_i c_i / tau + log sum_neg, w_i of the stop-gradient positive cosines c_i
    log_denominator, positive_sum, count = stats
    positive = positive_sum / count  # c_i / tau (every anchor has a positive: >= 2 views)
    x = jax.lax.stop_gradient(positive * temperature / sigma)
    num = x.shape[0] if axis_name is None else x.shape[0] * jax.lax.psum(1, axis_name)
    weight = 2.0 - num * jnp.exp(x - _global_logsumexp(x, axis_name))
    per_anchor = weight * positive - log_denominator
  loss = -pairwise.global_mean(per_anchor, axis_name)
  positive_args = (temperature,) if sigma is None else (temperature, sigma)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features,), positive=positive_args)
