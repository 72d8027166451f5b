"""RankSim: ranking similarity regularizer for deep imbalanced regression (Gong et al., ICML 2022).

One representative row per unique label is drawn at random (official: only when the batch has repeated
labels; with all labels unique every row is its own representative). Over the representatives ``R``
(``n = |R|``), with ``c_ij`` the cosine similarity of their features:

    L = sum_{i in R}  (1/n) sum_{j in R} ( rank(c_i)_j - rank(-|y_i - y|)_j )^2

``rank(v)_j = (1 + #{k in R : v_k > v_j} + #ties ranked before j) / n`` (the largest value has rank
``1/n``), i.e. the official ``rank_normalised``. The feature ranks are differentiated by blackbox
combinatorial differentiation (Vlastelica et al. 2020; ``TrueRanker``): the backward pass re-ranks the
perturbed input ``c + lambda * g`` (``g`` = incoming cotangent) and returns ``-(rank(c) - rank(c +
lambda g)) / lambda``. The loss is summed over anchors and NOT weighted: the config's loss weight
(``gamma = 100`` in the paper) multiplies it outside.

Reference: BorealisAI/ranksim-imbalanced-regression ``agedb-dir/ranksim.py::batchwise_ranking_regularizer``
and ``agedb-dir/ranking.py`` (``rank``, ``rank_normalised``, ``TrueRanker``). Decisions:

* Rows. The official code gets one embedding per image (no views). Here every one of the
  ``batch * views`` rows is a candidate, each view carrying its sample's label; since all views of a
  sample share its label, at most one of them is drawn. With ``views = 1`` this is the official setting.
* Random choice. Each row gets ``u ~ U(0, 1)`` from ``key``; the representative of a label is its row
  with the smallest ``u`` (a uniform choice, like the official ``random.choice``). The draw is
  BATCH-GLOBAL: with ``axis_name`` the labels and features are all-gathered and every device draws the
  same ``u`` for the whole global batch from the replicated ``key``, so sharded == dense. Use a fresh
  key per step. :func:`ranksim_representatives` exposes the choice.
* Order and ties. The representatives are always taken in ascending label order (the official
  ``torch.unique`` order when labels repeat). With all labels unique the official code skips
  ``torch.unique`` and keeps the BATCH order, so the two agree only where no ties occur: ties are
  broken by position (as a stable ``argsort`` breaks them in the official
  ``rank = argsort(argsort(v).flip(1))``: of two equal values the LATER one gets the smaller rank),
  and the positions differ. Ties occur in the label ranks when two representatives are equally far
  from the anchor on both sides: labels ``[1, 2, 0]`` with features ``[[1, 0], [0, 1], [0.6, -0.8]]``
  give 0.0741 here and 0.0 in the official code (anchor 1 is equally far from 0 and 2). Torch's default
  argsort does not promise stability, so the official tie order is unspecified there anyway.
* The official backward divides by ``lambda + 1e-8``; we divide by ``lambda`` (a 5e-9 relative change).
* Blackbox gradients are NOT linear in the cotangent: the loss weight (and anything else that scales
  the gradient reaching the ranks, e.g. dividing by the device count) changes the perturbation
  ``lambda * g``. Multiply the loss by ``gamma`` inside the differentiated function, as the official
  ``loss += args.regularization_weight * batchwise_ranking_regularizer(...)``.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks


def normalised_rank(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Official ``rank_normalised`` along the last axis, over the ``valid`` entries only.

  ``(1 + position in descending order) / #valid``; ties: the later entry comes first (a stable
  ascending argsort, reversed). Invalid entries get 0.
  """
  masked = jnp.where(valid, values, -jnp.inf)  # invalid entries sort last in descending order
  order = jnp.flip(jnp.argsort(masked, axis=-1, stable=True), axis=-1)
  position = jnp.argsort(order, axis=-1, stable=True)
  count = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(values.dtype)
  return jnp.where(valid, (position + 1).astype(values.dtype) / count, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def blackbox_rank(values: jax.Array, valid: jax.Array, lambda_: float) -> jax.Array:
  """:func:`normalised_rank` with the blackbox-differentiation backward pass of ``TrueRanker``.

  Backward: ``-(rank(values) - rank(values + lambda_ * g)) / lambda_`` (0 on invalid entries).
  """
  return normalised_rank(values, valid)


def _blackbox_rank_fwd(values, valid, lambda_):
  ranks = normalised_rank(values, valid)
  return ranks, (values, valid, ranks)


def _blackbox_rank_bwd(lambda_, residuals, g):
  values, valid, ranks = residuals
  perturbed = normalised_rank(values + lambda_ * g, valid)
  grad = jnp.where(valid, -(ranks - perturbed) / lambda_, 0.0).astype(values.dtype)
  return grad, None


blackbox_rank.defvjp(_blackbox_rank_fwd, _blackbox_rank_bwd)


def _check_key(key):
  if key is None or not hasattr(key, "dtype"):
    raise ValueError(f"`key` must be a JAX PRNG key (jax.random.key / PRNGKey); got {key!r}.")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"`key` must be a single PRNG key; got shape {key.shape}.")
  elif key.dtype != jnp.uint32 or len(key.shape) != 1:
    raise ValueError(f"`key` must be a JAX PRNG key (jax.random.key / PRNGKey); got dtype {key.dtype} "
                     f"shape {key.shape}.")
  return key


def _label_sorted_representatives(row_labels: jax.Array, key: jax.Array):
  """(order, first): rows sorted by (label, u); ``first[k]``: sorted row k represents its label."""
  u = jax.random.uniform(key, row_labels.shape)
  order = jnp.lexsort((u, row_labels))
  sorted_labels = row_labels[order]
  first = jnp.concatenate([jnp.ones((1,), bool), sorted_labels[1:] != sorted_labels[:-1]])
  return order, first


def ranksim_representatives(labels: jax.Array, key: jax.Array, views: int = 1) -> jax.Array:
  """``[batch * views]`` bool: the rows (sample-major, ``r = sample * views + view``) that
  :func:`ranksim` uses as the representatives of their labels for this ``key``."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"`labels` must have shape [batch]; got {labels.shape}.")
  row_labels = jnp.repeat(labels.astype(_checks.compute_dtype(labels)), views)
  order, first = _label_sorted_representatives(row_labels, _check_key(key))
  return jnp.zeros(row_labels.shape, bool).at[order].set(first)


def ranksim(features: jax.Array, labels: jax.Array, key: jax.Array, *, lambda_: float = 2.0,
            axis_name: Optional[str] = None) -> jax.Array:
  """RankSim regularizer (un-weighted; see the module docstring).

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here, as the official ``F.normalize``;
      the official code applies RankSim to the encoder features).
    labels: ``[batch]`` regression labels (representatives: one per exactly-equal label).
    key: PRNG key for the choice of representatives; replicated (the same on every device).
    lambda_: interpolation strength ``lambda`` of the blackbox backward pass (a Python number).
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).

  Returns:
    The scalar sum over representative anchors of the rank MSE.
  """
  features = _checks.check_features(features, axis_name)
  batch, _, _ = features.shape
  labels = _checks.check_per_sample(labels, batch, "labels")
  key = _check_key(key)
  _checks.check_positive(lambda_, "lambda_")
  host_lambda = _checks.concrete(lambda_)
  if host_lambda is None:
    raise ValueError("`lambda_` must be a Python number (it is static in the custom backward pass).")
  lambda_ = float(host_lambda)
  dtype = features.dtype

  rows = pairwise.make_rows(pairwise.l2_normalize(features), axis_name)
  anchor_y, column_y = rows.per_sample(labels.astype(dtype), axis_name)
  order, first = _label_sorted_representatives(column_y, key)  # global: same on every device
  selected = jnp.zeros(column_y.shape, bool).at[order].set(first)
  anchor_selected = jnp.any(rows.is_self & selected[None, :], axis=1)

  columns = rows.columns[order]  # ascending label order (fixes the tie order)
  sims = rows.anchors @ columns.T
  label_sims = -jnp.abs(anchor_y[:, None] - column_y[order][None, :])
  valid = jnp.broadcast_to(first[None, :], sims.shape)
  feature_ranks = blackbox_rank(sims, valid, lambda_)
  label_ranks = normalised_rank(label_sims, valid)
  count = jnp.sum(first).astype(dtype)
  per_anchor = jnp.sum(jnp.where(valid, (feature_ranks - label_ranks) ** 2, 0.0), axis=1) / count
  total = jnp.sum(jnp.where(anchor_selected, per_anchor, 0.0))
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  # ranks swallow NaN (a finite, wrong value): the guard makes such a loss NaN
  return _checks.nan_unless_valid(total, axis_name, finite=(features, labels))
