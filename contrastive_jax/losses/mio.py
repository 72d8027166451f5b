"""MIO: self-supervised learning by optimising mutual information (thesis Ch. 5, Manna 2025).

Binary pair classification as in Ch. 4 with ``nu = 1``, but the positive and the negative pairs are
averaged SEPARATELY ("differential averaging", Sec. 5.4.1.2). ``c``: cosine similarity of the
L2-normalised projector outputs; ``X+`` / ``X-``: the ordered positive / negative pairs (``T_p`` /
``T_n`` of them); two views: ``n' = n + N``, ``T_p = 2N``, ``T_n = 2N(2N - 2)``.

  v1 (Eq. 5.12-5.13): L = -(1/T_p) sum_{X+} ln sigma(c/tau) - (1/T_n) sum_{X-} ln(1 - sigma(c/tau))
                        = mean_{X+} softplus(-c/tau) + mean_{X-} softplus(c/tau)
  v2 (Eq. 5.15-5.16): L = -(1/N) sum_n c_nn'/tau
                          + (1/T_n) sum_{n=1..2N} sum_{m != n, n'} ln(1 + e^{c_nm/tau})
                        = -mean_{X+} c/tau + mean_{X-} softplus(c/tau)
  v3 (Eq. 5.21, the proposed loss):
                      L = -(1/N) sum_n c_nn'/tau
                          + (1/T_n) sum_{n=1..2N} sum_{m != n, n'} e^{c_nm/tau}
                        = -mean_{X+} c/tau + mean_{X-} exp(c/tau)

tau = 0.2 for MIO (Sec. 5.5).

Interpretations:
  * ``(1/N) sum_{n=1..N} c_nn'`` is the mean over the ``T_p = 2N`` ordered positive pairs (``c`` is
    symmetric), which is how ``V > 2`` views generalise: ``X+`` = the ordered pairs of different
    views of one sample (``T_p = M (V - 1)``), ``X-`` = the pairs of different samples
    (``T_n = M (M - V)``), ``M = batch * views``. At least 2 views and 2 samples are required.
  * The second line of Eq. 5.20 drops the normalisers (a typo); Eq. 5.21 (means) is implemented.
  * v3's mean of ``e^{c/tau}`` is formed per anchor as ``exp(logsumexp(c/tau) - log(M - V))`` (the
    summands never overflow). Where that per-anchor log-mean ``L`` exceeds
    ``cap = log(dtype max) - 20`` (68.7 in float32; only for ``tau < ~1/69`` with near-duplicate
    negatives) the true value is not representable; ``e^L`` is then continued by its tangent
    ``e^cap (1 + L - cap)`` (value and slope continuous) so that the loss and its gradient stay
    finite. Below the cap it is exact.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.losses.binary import require_negatives
from contrastive_jax.losses.binary import global_num_rows
from contrastive_jax.losses.binary import sample_masks
from contrastive_jax.losses.supcon import unit_rows

MIO_VERSIONS = (1, 2, 3)
_HEADROOM = 20.0  # e^20 ~ 5e8: room below the dtype's max for the gradient's 1/tau, Jacobians


def capped_exp(x: jax.Array) -> jax.Array:
  """``exp(x)`` up to ``cap = log(finfo.max) - 20``, then the tangent ``e^cap (1 + x - cap)``."""
  cap = math.log(float(jnp.finfo(x.dtype).max)) - _HEADROOM
  return jnp.exp(jnp.minimum(x, cap)) * (1.0 + jnp.maximum(x - cap, 0.0))


def _mio_pairs(version, params, cos, a_s, c_s, is_self):
  """MIO tile: (positive-pair term, negative-pair term) of Eq. 5.13 / 5.16 / 5.21 with ``u = c/tau``;
  v3's negative statistic is a log-sum-exp of ``u`` (its mean of ``e^u`` is formed afterwards)."""
  u = cos / params["temperature"]
  positive, negative = sample_masks(a_s, c_s, is_self)
  pos_terms = jax.nn.softplus(-u) if version == 1 else -u  # -ln sigma(u), or -u
  if version == 3:
    neg = jnp.where(negative, u, -jnp.inf)
  else:
    neg = jnp.where(negative, jax.nn.softplus(u), 0.0)
  return jnp.where(positive, pos_terms, 0.0), neg


def mio(features: jax.Array, temperature: float = 0.2, version: int = 1, *,
        axis_name: Optional[str] = None, impl: str = "auto", tile=None,
        matmul_dtype=None) -> jax.Array:
  """MIO loss, version 1, 2 or 3 (thesis Eq. 5.13, 5.16, 5.21; see the module docstring).

  Args:
    features: ``[batch, views, dim]`` projector outputs (L2-normalised here), ``views >= 2``.
    temperature: ``tau`` (0.2 in the thesis).
    version: 1 (MIOv1, BCE with separately averaged positives/negatives), 2 (MIOv2, without the
      positive-pair repulsion ``R_pp``) or 3 (MIOv3, the proposed loss: ``ln(1 + e^x)`` of the
      negatives replaced by its upper bound ``e^x``, Eq. 5.19).
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    impl, tile, matmul_dtype: execution mode ('dense' | 'blockwise' | 'ring' | 'fused' |
      'fused_ring' | 'auto'), tile shape and optional bfloat16 similarity matmul (see
      ``pairwise.blockwise``; 'fused': the Pallas kernel of ``pairwise.fused``).

  Returns:
    The scalar loss.
  """
  if isinstance(version, bool) or version not in MIO_VERSIONS:
    raise ValueError(f"`version` must be one of {MIO_VERSIONS}; got {version!r}.")
  features = _checks.check_features(features, axis_name)
  _checks.check_positive(temperature, "temperature")
  _checks.check_views(features, 2, "mio")
  require_negatives(global_num_rows(features, axis_name), features.shape[1], "mio")
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  views, total = rows.num_views, rows.columns.shape[0]
  pos, neg = pairwise.row_statistics(
      pairwise.DotPairFn(functools.partial(_mio_pairs, version), block.matmul_dtype),
      ("sum", "lse" if version == 3 else "sum"), {"temperature": temperature}, rows.anchors,
      rows.columns, rows.anchor_sample, rows.column_sample, rows.row_offset, block=block,
      axis_name=axis_name)
  pos = pos / (views - 1)
  if version == 3:
    neg = capped_exp(neg - math.log(total - views))
  else:
    neg = neg / (total - views)
  # every anchor has V - 1 positives and M - V negatives: the per-pair means are means over anchors
  return _checks.nan_unless_valid(pairwise.global_mean(pos + neg, axis_name), axis_name,
                                  finite=(features,), positive=(temperature,))
