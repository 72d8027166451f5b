"""Deep-metric-learning comparators of AdaCon (Dai et al., TMI 2023, Tables II and IX).

**N-pair** (Sohn, NeurIPS 2016, multi-class N-pair loss, Eq. 3 / "N-pair-mc"), with each unique label a
class, as AdaCon uses it ("we treat each unique label as an individual class"). For every (anchor,
positive) pair ``(i, p)``, ``p != i`` with ``y_p == y_i`` (other views included), and the negatives
``N(i) = {n : y_n != y_i}`` (every different-label row of the batch):

    l_ip = log(1 + sum_{n in N(i)} exp(f_i.f_n - f_i.f_p)),      L = mean over all (i, p) pairs,

``l_ip = 0`` when ``N(i)`` is empty; no pair in the batch -> 0. Sohn's N-pair-mc batch holds one pair per
class; with repeated labels and several views we use every positive pair and every negative row.
Normalisation: AdaCon swaps its loss for N-pair inside its framework, whose projection head ends in an
L2 normalisation, so ``normalize=True`` (default) uses unit features and no temperature (Sohn's form).
Sohn instead keeps unnormalised embeddings and adds an L2 penalty on their norm: ``normalize=False``
uses raw dot products, and ``l2_reg = lambda`` adds ``lambda * mean_r ||f_r||^2`` over the raw input
rows (default 0: omitted; meant for ``normalize=False``).

**Adaptive triplet** (Zheng et al., arXiv:2103.13482, AdaCon ref. [17]; cf. Zhao et al. ICCVW 2019,
ref. [52]): for an anchor ``i``, a "positive" ``p`` with a closer label and a "negative" ``n`` with a
farther label (``|y_p - y_i| < |y_n - y_i|``, ``i, p, n`` distinct rows):

    l_ipn = max(0, d_ip - d_in + margin_scale * (|y_n - y_i| - |y_p - y_i|)),

the margin growing with the label-distance gap. ``d`` on L2-normalised features (AdaCon's framework):
``distance='squared'`` (default) ``d = ||z_i - z_j||^2 = 2 - 2 cos``, the form of AdaCon's Appendix B
(which reduces its loss to ``||z_i - z_p||^2 - ||z_i - z_n||^2 + 2 d_in``) and of FaceNet's triplet
loss (computed as ``2 - 2 cos``, so a zero feature vector is at distance 2 from everything);
``distance='euclidean'`` ``d = ||z_i - z_j||`` (gradient 0 at distance 0). With
``v_ij = d_ij - margin_scale |y_j - y_i|`` the hinge argument is ``v_ip - v_in``.
  * ``mining='all'``: mean of ``l_ipn`` over ALL valid triplets of the batch (zero-loss ones included).
    O(M^3) time; the ``[M, M]`` (positive, negative) table of each anchor is built for a chunk of
    anchors at a time (``lax.map`` + remat once ``anchors * M^2`` exceeds 4M elements), so memory
    stays O(chunk * M^2).
  * ``mining='batch_hard'``: per anchor the hardest valid triplet, ``max(0, max_{(p,n) valid} v_ip -
    v_in)`` — for a constant margin this is exactly batch-hard mining (Hermans et al. 2017: farthest
    positive, closest negative); here "positive/negative" is relative to each other (``p`` must be
    strictly closer in label than ``n``). Mean over all anchors (0 for anchors without a valid
    triplet). Computed with a sort by label distance and a running maximum: O(M^2 log M) time, O(M^2)
    memory.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks

MININGS = ("all", "batch_hard")
DISTANCES = ("squared", "euclidean")
CHUNK_ELEMENTS = 1 << 22  # [chunk, M, M] elements per step of the all-triplet map (default)


def _global_ratio(total: jax.Array, count: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """``sum(total) / sum(count)`` over the mesh axis; 0 when the count is 0."""
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = jax.lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1.0)


def npair(features: jax.Array, labels: jax.Array, *, normalize: bool = True, l2_reg: float = 0.0,
          axis_name: Optional[str] = None) -> jax.Array:
  """Multi-class N-pair loss with labels as classes (see the module docstring).

  Args:
    features: ``[batch, views, dim]`` embeddings.
    labels: ``[batch]`` labels; exactly equal labels are one class.
    normalize: L2-normalise the features first (AdaCon's framework); False: raw dot products (Sohn).
    l2_reg: weight of Sohn's embedding regulariser ``mean_r ||f_r||^2`` (raw input features), >= 0.
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  host = _checks.concrete(l2_reg)
  if host is not None and (host.ndim != 0 or not np.isfinite(host) or host < 0):
    raise ValueError(f"`l2_reg` must be a finite number >= 0; got {l2_reg!r}.")
  embeddings = pairwise.l2_normalize(features) if normalize else features
  rows = pairwise.make_rows(embeddings, axis_name)
  sims = rows.anchors @ rows.columns.T
  anchor_y, column_y = rows.per_sample(labels, axis_name)
  same = anchor_y[:, None] == column_y[None, :]
  positive = same & ~rows.is_self
  negative = ~same
  has_neg = jnp.any(negative, axis=1)
  # log sum_n exp(s_in); rows without negatives use a stand-in column and are zeroed below.
  lse = pairwise.masked_logsumexp(sims, jnp.where(has_neg[:, None], negative, rows.is_self))
  # log(1 + sum_n exp(s_in - s_ip)) = log(exp(s_ip) + sum_n exp(s_in)) - s_ip
  per_pair = jnp.logaddexp(sims, lse[:, None]) - sims
  per_pair = jnp.where(positive & has_neg[:, None], per_pair, 0.0)
  loss = _global_ratio(jnp.sum(per_pair), jnp.sum(positive).astype(sims.dtype), axis_name)
  if host is None or host != 0:
    squared_norms = jnp.sum(features.reshape(-1, features.shape[-1]) ** 2, axis=1)
    loss = loss + l2_reg * pairwise.global_mean(squared_norms, axis_name)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features, labels),
                                  nonnegative=(l2_reg,))


def _triplet_inputs(features, labels, margin_scale, distance, axis_name):
  """Per local anchor: ``v [n, M]`` (``d - margin_scale |dy|``), ``|dy| [n, M]``, ``is_self [n, M]``."""
  rows = pairwise.make_rows(pairwise.l2_normalize(features), axis_name)
  if distance == "squared":
    dist = 2.0 - 2.0 * (rows.anchors @ rows.columns.T)
  else:
    dist = pairwise.pairwise_euclidean(rows.anchors, rows.columns)
  anchor_y, column_y = rows.per_sample(labels.astype(dist.dtype), axis_name)
  label_dist = jnp.abs(column_y[None, :] - anchor_y[:, None])
  return dist - margin_scale * label_dist, label_dist, rows.is_self


def _all_triplets(v, label_dist, is_self, chunk_elements: int):
  """(sum of hinges, number of valid triplets) per anchor row; O(M^2) memory per anchor, anchors in
  chunks of ``chunk_elements // M^2`` (at least one)."""

  def one_anchor(args):
    v_i, a_i, self_i = args
    other = ~self_i
    valid = (a_i[:, None] < a_i[None, :]) & other[:, None] & other[None, :]  # [p, n]
    hinge = jnp.maximum(v_i[:, None] - v_i[None, :], 0.0)
    return jnp.sum(jnp.where(valid, hinge, 0.0)), jnp.sum(valid).astype(v_i.dtype)

  n, m = v.shape
  chunk = int(max(1, min(n, chunk_elements // (m * m))))
  if chunk == n:  # everything fits in one step: plain vmap
    sums, counts = jax.vmap(one_anchor)((v, label_dist, is_self))
  else:  # chunks of anchors; remat keeps only the [M] inputs of each step for the backward pass
    sums, counts = jax.lax.map(jax.checkpoint(one_anchor), (v, label_dist, is_self),
                               batch_size=chunk)
  return jnp.sum(sums), jnp.sum(counts)


def _hardest_triplets(v, label_dist, is_self):
  """Per anchor row ``max(0, max_{p, n: |dy_p| < |dy_n|, p, n != i} v_p - v_n)`` (0 if none)."""
  # Sort the columns of each row by label distance (the anchor itself last, never p nor n).
  a = jnp.where(is_self, jnp.inf, label_dist)
  order = jnp.argsort(a, axis=1, stable=True)
  a_sorted = jnp.take_along_axis(a, order, axis=1)
  v_fixed = jax.lax.stop_gradient(v)
  v_sorted = jnp.take_along_axis(jnp.where(is_self, -jnp.inf, v_fixed), order, axis=1)
  # Candidates for p of column k: the sorted columns before the first one with a >= a_k, i.e. before
  # the start of k's tie group (a running max of the positions where a new value starts).
  positions = jnp.arange(v.shape[1])[None, :]
  starts = jnp.concatenate([jnp.ones_like(a_sorted[:, :1], bool), a_sorted[:, 1:] != a_sorted[:, :-1]],
                           axis=1)
  before = jax.lax.cummax(jnp.where(starts, positions, 0), axis=1)
  running_max = jax.lax.cummax(v_sorted, axis=1)
  best_p_value = jnp.take_along_axis(running_max, jnp.maximum(before - 1, 0), axis=1)
  is_n = (before > 0) & jnp.isfinite(a_sorted)
  gap = jnp.where(is_n, best_p_value - v_sorted, -jnp.inf)
  n_pos = jnp.argmax(gap, axis=1)
  has_triplet = jnp.any(is_n, axis=1)
  best = jnp.take_along_axis(best_p_value, n_pos[:, None], axis=1)
  limit = jnp.take_along_axis(before, n_pos[:, None], axis=1)
  p_pos = jnp.argmax((positions < limit) & (v_sorted == best), axis=1)
  # Differentiable value of the selected triplet.
  p_col = jnp.take_along_axis(order, p_pos[:, None], axis=1)
  n_col = jnp.take_along_axis(order, n_pos[:, None], axis=1)
  value = (jnp.take_along_axis(v, p_col, axis=1) - jnp.take_along_axis(v, n_col, axis=1))[:, 0]
  return jnp.where(has_triplet, jnp.maximum(value, 0.0), 0.0)


def adaptive_triplet(features: jax.Array, labels: jax.Array, *, margin_scale: float = 1.0,
                     mining: str = "all", distance: str = "squared",
                     axis_name: Optional[str] = None,
                     chunk_elements: int = CHUNK_ELEMENTS) -> jax.Array:
  """Adaptive-margin triplet loss (see the module docstring).

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here).
    labels: ``[batch]`` regression labels.
    margin_scale: ``margin = margin_scale * (|y_n - y_i| - |y_p - y_i|)`` (>= 0, label units^-1 times
      distance units).
    mining: ``'all'`` (mean over all valid triplets) or ``'batch_hard'`` (hardest triplet per anchor,
      mean over anchors).
    distance: ``'squared'`` (``||z_i - z_j||^2``, default) or ``'euclidean'`` (``||z_i - z_j||``).
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    chunk_elements: memory bound of ``mining='all'``: anchors are mapped in chunks of
      ``chunk_elements // M^2`` (at least one), ``M`` the rows; the value does not change.
  """
  if mining not in MININGS:
    raise ValueError(f"`mining` must be one of {MININGS}; got {mining!r}.")
  if distance not in DISTANCES:
    raise ValueError(f"`distance` must be one of {DISTANCES}; got {distance!r}.")
  if (isinstance(chunk_elements, bool) or int(chunk_elements) != chunk_elements
      or chunk_elements < 1):
    raise ValueError(f"`chunk_elements` must be a positive integer; got {chunk_elements!r}.")
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  host = _checks.concrete(margin_scale)
  if host is not None and (host.ndim != 0 or not np.isfinite(host) or host < 0):
    raise ValueError(f"`margin_scale` must be a finite number >= 0; got {margin_scale!r}.")
  v, label_dist, is_self = _triplet_inputs(features, labels, margin_scale, distance, axis_name)
  if mining == "all":
    total, count = _all_triplets(v, label_dist, is_self, int(chunk_elements))
    loss = _global_ratio(total, count, axis_name)
  else:
    loss = pairwise.global_mean(_hardest_triplets(v, label_dist, is_self), axis_name)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features, labels),
                                  nonnegative=(margin_scale,))
