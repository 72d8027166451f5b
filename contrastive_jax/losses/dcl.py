"""Decoupled contrastive loss, DCL (Yeh et al., ECCV 2022, Eq. 6): NT-Xent without the positive pair
in the denominator; the thesis' comparator in Tables 5.2-5.3, 5.6, 5.9-5.11, 6.1, 6.7-6.8, 6.11.

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
"SimCLR/DCL 0.1"). The DCLW weighting (negative von Mises-Fisher weights of the positive term) is not
implemented.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.losses.supcon import SOFTMAX_KINDS
from contrastive_jax.losses.supcon import mean_log_prob
from contrastive_jax.losses.supcon import unit_rows


def decoupled_statistics(logits: jax.Array, positive: jax.Array, is_self: jax.Array):
  """:data:`SOFTMAX_KINDS` of one tile with the positives left out of the denominator: (negative
  logits, positive logits, positives)."""
  positive = positive & ~is_self
  negative = ~(positive | is_self)
  return (jnp.where(negative, logits, -jnp.inf), jnp.where(positive, logits, 0.0),
          positive.astype(logits.dtype))


def _from_dot(params, cos, a_sample, c_sample, is_self):
  return decoupled_statistics(cos / params["temperature"], a_sample[:, None] == c_sample[None, :],
                              is_self)


def dcl(features: jax.Array, temperature: float = 0.1, *, axis_name: Optional[str] = None,
        impl: str = "auto", tile=None, matmul_dtype=None) -> jax.Array:
  """Decoupled contrastive loss (module docstring; Yeh et al. 2022 Eq. 6).

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here), at least 2 views and 2
      samples (an anchor needs a positive and a negative).
    temperature: ``tau`` (> 0; may be traced).
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
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  stats = pairwise.row_statistics(pairwise.DotPairFn(_from_dot, block.matmul_dtype), SOFTMAX_KINDS,
                                  {"temperature": temperature}, rows.anchors, rows.columns,
                                  rows.anchor_sample, rows.column_sample, rows.row_offset,
                                  block=block, axis_name=axis_name)
  loss = -pairwise.global_mean(mean_log_prob(*stats), axis_name)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features,), positive=(temperature,))
