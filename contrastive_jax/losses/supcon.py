"""NT-Xent / SimCLR (Chen et al. 2020) and SupCon (Khosla et al. 2020, Eq. 2 ``L^sup_out``).

    L = mean_i  -(tau / tau_base) (1/|P(i)|) sum_{p in P(i)} log[ exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau) ]

with ``s`` the cosine similarity and every one of the ``batch * views`` rows an anchor
(``contrast_mode='all'`` of HobbitLong/SupContrast). Anchors without a positive contribute 0 and still
count in the mean (SupContrast since PR #142).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks


def supcon_from_logits(rows: pairwise.Rows, logits: jax.Array, positive: jax.Array,
                       scale: float, axis_name: Optional[str]) -> jax.Array:
  """``-scale * mean_i mean_{p in P(i)} log softmax_{a != i}(logits_i)_p`` over the global batch."""
  per_anchor = pairwise.mean_log_prob_over_positives(logits, positive & ~rows.is_self, ~rows.is_self)
  return -scale * pairwise.global_mean(per_anchor, axis_name)


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


def cosine_rows(features: jax.Array, axis_name: Optional[str]):
  """Rows of L2-normalised features and their cosine similarities ``[n, N]``."""
  rows = pairwise.make_rows(pairwise.l2_normalize(features), axis_name)
  return rows, rows.anchors @ rows.columns.T


def supcon(features: jax.Array, labels: jax.Array, temperature=0.07,
           base_temperature: Optional[float] = 0.07, *, axis_name: Optional[str] = None) -> jax.Array:
  """Supervised contrastive loss; positives are the rows with the same label (other views included).

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here; a no-op on unit vectors).
    labels: ``[batch]`` class ids or exactly-equal regression labels.
    temperature: ``tau``, or a callable giving each pair's temperature from its (stop-gradient)
      cosine similarity (see :func:`pair_temperature`; then ``base_temperature=None``).
    base_temperature: ``tau_base``; the loss is scaled by ``tau / tau_base``.
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).

  Returns:
    The float32 scalar loss, the mean over all anchors of the global batch.
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  scale = check_temperature(temperature, base_temperature)
  rows, cos = cosine_rows(features, axis_name)
  anchor_y, column_y = rows.per_sample(labels, axis_name)
  positive = anchor_y[:, None] == column_y[None, :]
  return supcon_from_logits(rows, cos / pair_temperature(temperature, cos), positive, scale,
                            axis_name)


def simclr(features: jax.Array, temperature: float = 0.5, base_temperature: Optional[float] = None,
           *, axis_name: Optional[str] = None) -> jax.Array:
  """NT-Xent (SimCLR): positives of an anchor are the other views of the same sample.

  ``base_temperature`` defaults to ``temperature`` (no rescaling, the SimCLR paper's form).
  """
  features = _checks.check_features(features, axis_name)
  _checks.check_positive(temperature, "temperature")
  base_temperature = temperature if base_temperature is None else base_temperature
  _checks.check_positive(base_temperature, "base_temperature")
  rows, cos = cosine_rows(features, axis_name)
  positive = rows.anchor_sample[:, None] == rows.column_sample[None, :]
  return supcon_from_logits(rows, cos / temperature, positive, temperature / base_temperature,
                            axis_name)
