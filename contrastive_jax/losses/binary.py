"""Binary contrastive learning (thesis Ch. 4, Manna 2025): contrastive learning as pair
classification.

Every ordered pair ``(i, j)``, ``i != j``, of the ``M = batch * views`` embeddings is classified as
positive (two views of the same sample, ``y_ij = 1``) or negative (``y_ij = 0``) by the
non-parametric logistic classifier ``sigma(c_ij / tau)`` on the cosine similarity ``c_ij``
(Eq. 4.13 with ``G_NC = c / tau``). Two views: ``M = 2N``, ``T_p = 2N`` positive pairs,
``T_n = 4N^2 - 4N`` negative pairs, ``2N`` self-pairs excluded.

Binary contrastive loss (Eq. 4.14, ``L_Proposed``; tau = 0.25 in Sec. 4.5.2.1):

    L_BCL = -(1 / M^2) [ sum_{(i,j) in X+} ln sigma(u_ij) + sum_{(k,l) in X-} ln(1 - sigma(u_kl)) ],
    u_ij = c_ij / tau - ln(nu)

``nu`` is the NCE imbalance factor of Eq. 4.11/4.13, ``phi = 1 / (1 + nu exp(-c / tau))``. The loss
the thesis proposes and trains uses ``nu = 1`` (Sec. 5.4.1.1 states the choice); ``nu='nce'`` uses
the prior ratio of Eq. 4.10, ``nu = T_n / T_p = (M - V) / (V - 1)`` (``2N - 2`` for two views).

Combination (Eq. 4.17-4.18, "Combo"): ``L_Combo = L_BCL + contr_weight * L_Contr`` (unit weight in
the thesis), ``L_Contr`` the InfoNCE loss on negative squared Euclidean distances, tau_c = 0.33:

    L_Contr = mean_i -(1/|P(i)|) sum_{p in P(i)}
              log[ exp(-|z_i - z_p|^2 / tau_c) / sum_{a != i} exp(-|z_i - z_a|^2 / tau_c) ].

Interpretations (the thesis is silent or inconsistent):
  * Normaliser of Eq. 4.14: ``1/(4N^2) = 1/M^2`` exactly as printed, i.e. the ``2N`` excluded
    self-pairs still count in it (Eq. 4.12 divides by ``T_p + T_n``; 4.14 is the proposed loss).
  * ``V`` views generalise the pairs: the positives of a row are the other ``V - 1`` views of its
    sample; ``4N^2`` becomes ``M^2``. ``V = 1`` (no positive pair) is refused, as in every
    SimCLR-style loss.
  * Eq. 4.18 expands ``L_Proposed`` as SEPARATE expectations over ``p+`` and ``p-``, contradicting
    Eq. 4.14's single ``1/(4N^2)`` average; its first line ``L_Combo = L_Proposed + L_Contr`` is
    followed. (The separately averaged reading is MIOv1, ``mio(version=1)``, Eq. 5.13.)
  * Eq. 4.17 does not say whether ``z`` is L2-normalised. Default ``normalize_contr=True``: squared
    distances of the L2-normalised embeddings (``|a - b|^2 = 2 - 2 cos``: NT-Xent with cosine at
    temperature ``tau_c / 2``); ``normalize_contr=False``: of the raw embeddings. The denominator
    runs over every ``a != i`` (SimCLR's NT-Xent, Eq. 4.1); several positives (``V > 2``) are
    averaged as in SimCLR/SupCon. The row constant ``-|z_i|^2 / tau_c`` cancels in the softmax, so
    the logits are ``(2 z_i.z_a - |z_a|^2) / tau_c`` (no clamp, no cancellation).
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.losses.supcon import SOFTMAX_KINDS
from contrastive_jax.losses.supcon import mean_log_prob
from contrastive_jax.losses.supcon import softmax_statistics
from contrastive_jax.losses.supcon import unit_rows


require_views = _checks.check_views  # (features, min_views, loss name)


def global_num_rows(features, axis_name: Optional[str]) -> int:
  """``M = global_batch * views``, static (``axis_size`` of the mesh axis inside ``shard_map``)."""
  batch, views, _ = features.shape
  return batch * views * (1 if axis_name is None else jax.lax.axis_size(axis_name))


def require_negatives(total_rows: int, views: int, name: str):
  """The global batch needs >= 2 samples (``M - V > 0`` negatives per row)."""
  if total_rows <= views:
    raise ValueError(f"{name} needs at least 2 samples in the (global) batch to form negative "
                     f"pairs; got {total_rows // views}.")


def sample_masks(a_sample: jax.Array, c_sample: jax.Array, is_self: jax.Array):
  """(positive, negative) tile masks: other views of the same sample / other samples."""
  same = a_sample[:, None] == c_sample[None, :]
  return same & ~is_self, ~same


def resolve_nu(nu: Union[float, str], total_rows: int, views: int):
  """``nu`` as a number; ``'nce'``: the prior ratio ``T_n / T_p = (M - V)/(V - 1)`` (Eq. 4.10)."""
  if isinstance(nu, str):
    if nu != "nce":
      raise ValueError(f"`nu` must be a number > 0 or 'nce'; got {nu!r}.")
    if views < 2:
      raise ValueError("`nu='nce'` needs at least 2 views (T_p = 0 otherwise).")
    require_negatives(total_rows, views, "`nu='nce'`")
    return float(total_rows - views) / float(views - 1)
  _checks.check_positive(nu, "nu")
  return nu


def _bcl_terms(params, cos, positive, negative):
  """Eq. 4.14 pair terms: ``-ln sigma(u)`` (positives), ``-ln(1 - sigma(u))`` (negatives),
  ``u = c / tau - ln nu``; softplus keeps both finite for every finite ``u``."""
  logits = cos / params["temperature"] - jnp.log(params["nu"])
  return (jnp.where(positive, jax.nn.softplus(-logits), 0.0) +
          jnp.where(negative, jax.nn.softplus(logits), 0.0))


def _bcl_pairs(params, cos, a_sample, c_sample, is_self):
  """One statistic: the summed pair negative log-likelihoods of the tile's cosines (the dot
  products of L2-normalised rows)."""
  positive, negative = sample_masks(a_sample, c_sample, is_self)
  return (_bcl_terms(params, cos, positive, negative),)


def _combo_unit_pairs(params, cos, a_aux, c_aux, is_self):
  """Eq. 4.14 pair terms and the SupCon-family statistics of Eq. 4.17's squared-distance logits
  ``(2 cos - |c_j|^2) / tau_c`` of L2-normalised rows (aux: sample ids and squared norms)."""
  (a_sample, _), (c_sample, c_sq) = a_aux, c_aux
  positive, negative = sample_masks(a_sample, c_sample, is_self)
  bcl = _bcl_terms(params, cos, positive, negative)
  contr_logits = (2.0 * cos - c_sq[None, :]) / params["contr_temperature"]
  return (bcl,) + softmax_statistics(contr_logits, positive, is_self)


def _combo_raw_pairs(matmul_dtype, params, a, c, a_sample, c_sample, is_self):
  """``normalize_contr=False``: Eq. 4.14 on the cosines, Eq. 4.17 on the raw embeddings' squared
  distances (two dot products per pair: no DotPairFn, no impl='fused')."""
  cos = pairwise.tile_dot(pairwise.l2_normalize(a), pairwise.l2_normalize(c), matmul_dtype)
  positive, negative = sample_masks(a_sample, c_sample, is_self)
  bcl = _bcl_terms(params, cos, positive, negative)
  contr_logits = squared_distance_logits(a, c, params["contr_temperature"], matmul_dtype)
  return (bcl,) + softmax_statistics(contr_logits, positive, is_self)


def binary_contrastive(features: jax.Array, temperature: float = 0.25, *,
                       nu: Union[float, str] = 1.0, axis_name: Optional[str] = None,
                       impl: str = "auto", tile=None, matmul_dtype=None) -> jax.Array:
  """Binary contrastive loss ``L_Proposed`` (thesis Eq. 4.14), optionally with the NCE ``nu``.

  ``-(1/M^2) [sum_{X+} ln sigma(c/tau - ln nu) + sum_{X-} ln(1 - sigma(c/tau - ln nu))]`` over the
  ordered pairs ``i != j`` of the ``M = batch * views`` embeddings (see the module docstring).

  Args:
    features: ``[batch, views, dim]`` projector outputs (L2-normalised here), ``views >= 2``.
    temperature: ``tau`` (0.25 in the thesis).
    nu: imbalance factor of Eq. 4.13 (``phi = 1/(1 + nu e^{-c/tau})``), a number > 0 (the proposed
      loss: 1) or ``'nce'`` for ``T_n / T_p = (M - V)/(V - 1)`` (``2N - 2`` with two views,
      Eq. 4.10).
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    impl, tile, matmul_dtype: execution mode ('dense' | 'blockwise' | 'ring' | 'fused' |
      'fused_ring' | 'auto'), tile shape and optional bfloat16 similarity matmul (see
      ``pairwise.blockwise``; 'fused': the Pallas kernel of ``pairwise.fused``).

  Returns:
    The scalar loss (float32, or float64 for float64 inputs under x64).
  """
  features = _checks.check_features(features, axis_name)
  _checks.check_views(features, 2, "binary_contrastive")
  _checks.check_positive(temperature, "temperature")
  nu = resolve_nu(nu, global_num_rows(features, axis_name), features.shape[1])
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  (summed,) = pairwise.row_statistics(
      pairwise.DotPairFn(_bcl_pairs, block.matmul_dtype), ("sum",),
      {"temperature": temperature, "nu": nu}, rows.anchors, rows.columns, rows.anchor_sample,
      rows.column_sample, rows.row_offset, block=block,
      axis_name=axis_name)
  # 1/M here, the other 1/M in global_mean
  loss = pairwise.global_mean(summed / rows.columns.shape[0], axis_name)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features,), positive=(temperature, nu))


def squared_distance_logits(anchors: jax.Array, columns: jax.Array, temperature,
                            matmul_dtype=None) -> jax.Array:
  """``-|a_i - b_j|^2 / tau`` up to the row constant ``-|a_i|^2 / tau`` (cancels in a softmax)."""
  dots = pairwise.tile_dot(anchors, columns, matmul_dtype)
  return (2.0 * dots - jnp.sum(columns * columns, axis=1)[None, :]) / temperature


def binary_contrastive_combo(features: jax.Array, temperature: float = 0.25,
                             contr_temperature: float = 0.33, contr_weight: float = 1.0, *,
                             nu: Union[float, str] = 1.0, normalize_contr: bool = True,
                             axis_name: Optional[str] = None, impl: str = "auto", tile=None,
                             matmul_dtype=None) -> jax.Array:
  """``L_Combo = L_BCL + contr_weight * L_Contr`` (thesis Eq. 4.17-4.18; weight 1 there).

  Args:
    features: ``[batch, views, dim]`` projector outputs, ``views >= 2``.
    temperature: ``tau`` of the binary term (Eq. 4.14; 0.25).
    contr_temperature: ``tau_c`` of the squared-distance InfoNCE term (Eq. 4.17; 0.33).
    contr_weight: weight of ``L_Contr`` (the thesis adds the two terms with unit weights).
    nu: the binary term's imbalance factor (see :func:`binary_contrastive`).
    normalize_contr: squared distances of L2-normalised embeddings (default) or of the raw ones.
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    impl, tile, matmul_dtype: as in :func:`binary_contrastive` ('fused' / 'fused_ring' with
      ``normalize_contr=True`` only; see ``pairwise.fused``).

  Returns:
    The scalar loss.
  """
  features = _checks.check_features(features, axis_name)
  _checks.check_views(features, 2, "binary_contrastive_combo")
  _checks.check_positive(temperature, "temperature")
  _checks.check_positive(contr_temperature, "contr_temperature")
  weight = _checks.concrete(contr_weight)
  if weight is not None and (weight.ndim != 0 or not np.isfinite(weight) or weight < 0):
    raise ValueError(f"`contr_weight` must be a finite number >= 0; got {contr_weight!r}.")
  nu = resolve_nu(nu, global_num_rows(features, axis_name), features.shape[1])
  block = pairwise.blocking(impl, tile, matmul_dtype)
  params = {"temperature": temperature, "nu": nu, "contr_temperature": contr_temperature}
  if normalize_contr:
    rows = unit_rows(features, axis_name)
    pair_fn = pairwise.DotPairFn(_combo_unit_pairs, block.matmul_dtype)
    squared = lambda x: jnp.sum(x * x, axis=1)
    anchor_aux = (rows.anchor_sample, squared(rows.anchors))
    column_aux = (rows.column_sample, squared(rows.columns))
  else:
    if block.impl in pairwise.blockwise.FUSED_IMPLS:
      raise ValueError(
          f"binary_contrastive_combo(normalize_contr=False) has no impl={block.impl!r}: its "
          "contrastive term needs the raw embeddings' dot products and its binary term their "
          "cosines, s / (|a_i| |c_j|), i.e. gradients through per-row and per-column norms, and "
          "the fused kernel's per-row / per-column inputs are constants. Use normalize_contr=True "
          "or 'dense', 'blockwise', 'ring' or 'auto'.")
    rows = pairwise.make_rows(features, axis_name)
    pair_fn = functools.partial(_combo_raw_pairs, block.matmul_dtype)
    anchor_aux, column_aux = rows.anchor_sample, rows.column_sample
  bcl_sum, *contr_stats = pairwise.row_statistics(
      pair_fn, ("sum",) + SOFTMAX_KINDS, params, rows.anchors, rows.columns, anchor_aux,
      column_aux, rows.row_offset, block=block, axis_name=axis_name)
  bcl = pairwise.global_mean(bcl_sum / rows.columns.shape[0], axis_name)
  contr = -pairwise.global_mean(mean_log_prob(*contr_stats), axis_name)
  return _checks.nan_unless_valid(bcl + contr_weight * contr, axis_name, finite=(features,),
                                  positive=(temperature, nu, contr_temperature),
                                  nonnegative=(contr_weight,))
