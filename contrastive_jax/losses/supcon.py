"""NT-Xent / SimCLR (Chen et al. 2020) and SupCon (Khosla et al. 2020, Eq. 2 ``L^sup_out``).

    L = mean_i  -(tau / tau_base) (1/|P(i)|) sum_{p in P(i)} log[ exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau) ]

with ``s`` the cosine similarity and every one of the ``batch * views`` rows an anchor
(``contrast_mode='all'`` of HobbitLong/SupContrast). Anchors without a positive contribute 0 and still
count in the mean (SupContrast since PR #142).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks


# Per-anchor statistics of the SupCon family (SupCon Eq. 2, AdaCon Eq. 6, ACCon Eq. 4, DySTreSS
# Eq. 6.1): log sum_{a != i} exp(l_ia), sum_{p in P(i)} l_ip and |P(i)|, so that
#   (1/|P(i)|) sum_p log softmax_{a != i}(l_i)_p = sum_p l_ip / |P(i)| - logsumexp_{a != i} l_ia.
SOFTMAX_KINDS = ("lse", "sum", "sum")


def softmax_statistics(logits: jax.Array, positive: jax.Array, is_self: jax.Array,
                       decoupled: bool = False):
  """The :data:`SOFTMAX_KINDS` entries of one tile: (denominator logits, positive logits, positives).
  The denominator holds every other column, or with ``decoupled`` only the non-positive ones (DCL,
  :mod:`contrastive_jax.losses.dcl`)."""
  valid = ~is_self
  positive = positive & valid
  in_denominator = valid & ~positive if decoupled else valid
  return (jnp.where(in_denominator, logits, -jnp.inf), jnp.where(positive, logits, 0.0),
          positive.astype(logits.dtype))


def mean_log_prob(log_denominator, positive_sum, count):
  """``sum_p l_ip / |P(i)| - log_denominator_i``; 0 for an anchor without positives."""
  return positive_sum / jnp.maximum(count, 1.0) - jnp.where(count > 0, log_denominator, 0.0)


def softmax_pair_fn(logits_fn, matmul_dtype=None, decoupled: bool = False) -> pairwise.DotPairFn:
  """Pair function of the SupCon family from ``logits_fn(params, cos, a_aux, c_aux)`` returning the
  tile's ``(logits, positive)`` from its dot products ``cos`` (every mode, ``'fused'`` included:
  the Pallas kernel applies the same ``logits_fn`` to the block it forms on chip); ``decoupled``:
  see :func:`softmax_statistics`."""
  def from_dot(params, cos, a_aux, c_aux, is_self):
    logits, positive = logits_fn(params, cos, a_aux, c_aux)
    return softmax_statistics(logits, positive, is_self, decoupled)
  return pairwise.DotPairFn(from_dot, matmul_dtype)


def softmax_loss(logits_fn, params, rows: pairwise.Rows, anchor_aux, column_aux, scale,
                 axis_name: Optional[str], block: pairwise.Blocking) -> jax.Array:
  """``-scale * mean_i mean_{p in P(i)} log softmax_{a != i}(logits_i)_p`` over the global batch,
  in any mode of ``block``; ``logits_fn`` as in :func:`softmax_pair_fn`."""
  stats = pairwise.row_statistics(softmax_pair_fn(logits_fn, block.matmul_dtype), SOFTMAX_KINDS,
                                  params, rows.anchors, rows.columns, anchor_aux, column_aux,
                                  rows.row_offset, block=block, axis_name=axis_name)
  return -scale * pairwise.global_mean(mean_log_prob(*stats), axis_name)


def pair_temperature(temperature, cos: jax.Array):
  """``tau`` as a scalar, or per pair ``temperature(stop_gradient(cos))`` when it is a callable.

  A callable lets a dynamic temperature profile (DySTreSS, ``dystress_temperature``; thesis Eq. 6.16)
  drive the supervised losses: ``supcon(f, y, temperature=functools.partial(dystress_temperature,
  tau_min=0.07, tau_max=0.2))``.
  """
  if callable(temperature):
    return temperature(jax.lax.stop_gradient(cos))
  return temperature


def check_temperature(temperature, base_temperature=None):
  """Validates a scalar (> 0) or callable temperature; returns the ``tau / tau_base`` loss scale.

  With a per-pair (callable) temperature there is no single ``tau`` to rescale by, so
  ``base_temperature`` must then be None and the scale is 1.
  """
  if callable(temperature):
    if base_temperature is not None:
      raise ValueError("`base_temperature` must be None when `temperature` is a callable "
                       "(per-pair temperature): the tau / tau_base rescaling needs a single tau.")
    return 1.0
  _checks.check_positive(temperature, "temperature")
  if base_temperature is None:
    return 1.0
  _checks.check_positive(base_temperature, "base_temperature")
  return temperature / base_temperature


def unit_rows(features: jax.Array, axis_name: Optional[str]) -> pairwise.Rows:
  """Rows of L2-normalised features (normalised per row, before the all-gather)."""
  return pairwise.make_rows(pairwise.l2_normalize(features), axis_name)


def split_temperature(temperature):
  """``(profile, params)``: a callable temperature is static (closed over by the pair function),
  a scalar one travels in the pair function's ``params`` (it may be a tracer)."""
  if callable(temperature):
    return temperature, {}
  return None, {"temperature": temperature}


def tile_temperature(profile, params, cos: jax.Array):
  """``tau`` of a tile: the ``profile`` of :func:`split_temperature` or ``params['temperature']``."""
  return pair_temperature(params["temperature"] if profile is None else profile, cos)


def _label_logits(profile, params, cos, a_y, c_y):
  """SupCon tile: ``cos / tau``, positives where the labels (or sample ids) are equal."""
  return cos / tile_temperature(profile, params, cos), a_y[:, None] == c_y[None, :]


def supcon(features: jax.Array, labels: jax.Array, temperature=0.07,
           base_temperature: Optional[float] = 0.07, *, axis_name: Optional[str] = None,
           impl: str = "auto", tile=None, matmul_dtype=None) -> jax.Array:
  """Supervised contrastive loss; positives are the rows with the same label (other views included).

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here; a no-op on unit vectors).
      One view is fine: the positives are then the other samples with the same label.
    labels: ``[batch]`` class ids or exactly-equal regression labels (bool: two classes).
    temperature: ``tau``, or a callable giving each pair's temperature from its (stop-gradient)
      cosine similarity (see :func:`pair_temperature`; then ``base_temperature=None``).
    base_temperature: ``tau_base``; the loss is scaled by ``tau / tau_base``.
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    impl, tile, matmul_dtype: execution mode ('dense' | 'blockwise' | 'ring' | 'fused' |
      'fused_ring' | 'auto'), tile shape and optional bfloat16 similarity matmul (see
      ``pairwise.blockwise``; 'fused': the Pallas kernel of ``pairwise.fused``).

  Returns:
    The float32 scalar loss, the mean over all anchors of the global batch.
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  scale = check_temperature(temperature, base_temperature)
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  anchor_y, column_y = rows.per_sample(labels, axis_name)
  profile, params = split_temperature(temperature)
  logits_fn = functools.partial(_label_logits, profile)
  loss = softmax_loss(logits_fn, params, rows, anchor_y, column_y, scale, axis_name, block)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features, labels),
                                  positive=(temperature, base_temperature))


def simclr(features: jax.Array, temperature: float = 0.5, base_temperature: Optional[float] = None,
           *, axis_name: Optional[str] = None, impl: str = "auto", tile=None,
           matmul_dtype=None) -> jax.Array:
  """NT-Xent (SimCLR): positives of an anchor are the other views of the same sample.

  ``features`` need at least 2 views (one view has no positive pair: ValueError).
  ``base_temperature`` defaults to ``temperature`` (no rescaling, the SimCLR paper's form);
  ``impl``, ``tile``, ``matmul_dtype`` as in :func:`supcon`.
  """
  features = _checks.check_features(features, axis_name)
  _checks.check_views(features, 2, "simclr")
  _checks.check_positive(temperature, "temperature")
  base_temperature = temperature if base_temperature is None else base_temperature
  _checks.check_positive(base_temperature, "base_temperature")
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  scale = temperature / base_temperature
  logits_fn = functools.partial(_label_logits, None)
  loss = softmax_loss(logits_fn, {"temperature": temperature}, rows, rows.anchor_sample,
                      rows.column_sample, scale, axis_name, block)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features,),
                                  positive=(temperature, base_temperature))
