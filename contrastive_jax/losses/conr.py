"""ConR: contrastive regularizer for deep imbalanced regression (Keramati et al., ICLR 2024).

For anchor ``i`` (every one of the ``batch * views`` rows), with ``s`` the cosine similarity, ``y`` the
labels and ``yhat`` the (stop-gradient) predictions, window ``w``:

    P(i) = {p != i : |y_p - y_i| <= w}                                   positives
    N(i) = {n : |y_n - y_i| > w  and  |yhat_n - yhat_i| <= w}             "confusing" negatives only
    S_in = weights_i * exp(e |y_n - y_i|)                                 pushing weight
    L_i  = -(1/|P(i)|) sum_{p in P(i)} log[ exp(s_ip/tau) /
                       (sum_{p' in P(i)} exp(s_ip'/tau) + sum_{n in N(i)} S_in exp(s_in/tau)) ]
    L    = mean_i weights_i L_i,     L_i = 0 when N(i) or P(i) is empty (still counted in the mean).

Reference: BorealisAI/ConR ``agedb-dir/loss.py::ConR`` (called from ``agedb-dir/train.py::train`` on the
two augmented views concatenated, with ``preds`` = the regressor's outputs ``.detach()``-ed and
``weights`` = the per-sample LDS/re-weighting weights, ones by default). Official quirks, reproduced with
``official=True``:
  * the denominator is ``exp(pos).sum(1) + neg_exp_dot`` with ``pos = prod * pos_mask``: every
    NON-positive column (the anchor itself and the negatives included) adds ``exp(0) = 1``, i.e. the
    denominator gains ``M - |P(i)|`` (``M`` = number of rows);
  * ``t = 0.07`` is hard-coded at the top of the function, whatever temperature is passed;
  * an anchor without positive divides ``0 / 0`` (NaN for the whole batch). The official training
    always has two views, so every anchor has at least its other view as a positive there; we return 0
    for such anchors in both modes (the contract: no NaN for finite inputs).

``angle_range=R`` is ACCon's "+ACCon+ConR" (Zhao et al. 2025, Table 2; official Haifengtao/ACCon
``agedb/loss.py::acConR``): the confusing negatives enter the denominator with ACCon's
angle-compensated logit instead of the pushing weight,

    psi_in = cos(theta_in + phi_in) = cos theta cos phi - sin theta |sin phi|,
    phi_in = (1 - |y_n - y_i| / R) pi,   sin theta = sqrt(1 - cos^2 theta + 1e-6),

as ``exp(psi_in / tau)`` (no ``S_in``; ``weights`` still scale the per-anchor losses), R = 100 there.
With ``official=True`` also its quirk: ``cos theta`` is the clamp to [-1, 1] of ``s / 0.07`` (the
similarity already divided by the temperature), not of ``s``. (That repository's train.py lists
"acConR" among its regularisers but calls ``acConR()`` without arguments: the function above is the
definition followed.)

The log-denominator is evaluated with a max-shifted log-sum-exp (``log S_in`` added to the negative
logits, the ``M - |P(i)|`` ones of ``official=True`` as one extra logit ``log(M - |P(i)|)``), so it equals
the official value wherever that is finite.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.pairwise.rows import gather

OFFICIAL_TEMPERATURE = 0.07  # hard-coded in the official ConR function
ANGLE_EPSILON = 1e-6  # inside acConR's sin(theta) = sqrt(1 - cos^2 + eps)


def _check_finite_scalar(value, name: str, minimum: Optional[float] = None):
  host = _checks.concrete(value)
  if host is None:
    return
  if host.ndim != 0 or not np.isfinite(host) or (minimum is not None and host < minimum):
    bound = "" if minimum is None else f" >= {minimum}"
    raise ValueError(f"`{name}` must be a finite number{bound}; got {value!r}.")


def _check_preds(preds, batch: int, views: int):
  if preds is None:
    raise ValueError("`preds` is required (the model's stop-gradient predictions per view).")
  if not hasattr(preds, "shape"):
    preds = np.asarray(preds)
  shape = tuple(preds.shape)
  if shape not in ((batch, views), (batch, views, 1)):
    raise ValueError(f"`preds` must have shape [batch, views] = {(batch, views)} (or [batch, views, 1]); "
                     f"got {shape}.")
  host = _checks.concrete(preds)
  if host is not None:
    if not np.issubdtype(host.dtype, np.number):
      raise ValueError(f"`preds` must be numeric; got dtype {host.dtype}.")
    bad = int(np.sum(~np.isfinite(host)))
    if bad:
      raise ValueError(f"`preds` has {bad} non-finite value(s) (NaN or inf).")
  return jnp.asarray(preds).reshape(batch, views)


def _check_weights(weights, batch: int):
  weights = _checks.check_per_sample(weights, batch, "weights")
  host = _checks.concrete(weights)
  if host is not None and np.any(host < 0):
    raise ValueError("`weights` must be >= 0.")
  return weights


def conr(features: jax.Array, labels: jax.Array, preds: jax.Array, *, window: float = 1.0,
         temperature: float = 0.07, e: float = 0.01, weights: Optional[jax.Array] = None,
         official: bool = False, angle_range: Optional[float] = None,
         axis_name: Optional[str] = None) -> jax.Array:
  """ConR loss (see the module docstring for the equation and the official-code differences).

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here, as the official
      ``F.normalize``; the official code applies ConR to the encoder features).
    labels: ``[batch]`` regression labels, in the units of ``window``.
    preds: ``[batch, views]`` (or ``[batch, views, 1]``) predictions of each view, in the SAME units as
      ``labels`` (de-normalise normalised-target predictions first). Wrapped in ``stop_gradient``.
    window: ``w``: positives ``|dy| <= w``; negatives ``|dy| > w`` and ``|dyhat| <= w``.
    temperature: ``tau`` (ignored when ``official=True``: 0.07 as in the official code).
    e: ``e`` of the pushing weight ``weights_i * exp(e |dy|)``.
    weights: optional ``[batch]`` per-sample weights (>= 0; default 1): scale the pushing weights and
      the per-anchor losses. An anchor with weight 0 contributes exactly 0.
    official: reproduce BorealisAI/ConR ``agedb-dir/loss.py::ConR`` (module docstring).
    angle_range: None (ConR) or the label range ``R`` of ACCon's angle compensation of the
      negatives ("+ACCon+ConR", module docstring; 100 in the official code), in label units.
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).

  Returns:
    The float32 scalar loss (float64 under x64 with float64 features): mean over all global anchors.
  """
  features = _checks.check_features(features, axis_name)
  batch, views, _ = features.shape
  labels = _checks.check_per_sample(labels, batch, "labels")
  preds = _check_preds(preds, batch, views)
  _check_finite_scalar(window, "window", minimum=0.0)
  _check_finite_scalar(e, "e")
  if not official:
    _checks.check_positive(temperature, "temperature")
  if angle_range is not None:
    _checks.check_positive(angle_range, "angle_range")
  if weights is None:
    weights = jnp.ones((batch,), features.dtype)
  else:
    weights = _check_weights(weights, batch)
  dtype = features.dtype
  tau = OFFICIAL_TEMPERATURE if official else temperature

  rows = pairwise.make_rows(pairwise.l2_normalize(features), axis_name)
  logits = (rows.anchors @ rows.columns.T) / tau
  anchor_y, column_y = rows.per_sample(labels.astype(dtype), axis_name)
  preds = jax.lax.stop_gradient(preds.astype(dtype))
  anchor_p = preds.reshape(-1)
  column_p = gather(preds, axis_name).reshape(-1)
  anchor_w = jnp.repeat(jax.lax.stop_gradient(weights.astype(dtype)), views)

  label_dist = jnp.abs(anchor_y[:, None] - column_y[None, :])
  pred_dist = jnp.abs(anchor_p[:, None] - column_p[None, :])
  near = label_dist <= window
  positive = near & ~rows.is_self
  negative = ~near & (pred_dist <= window)

  # log of the pushing weight: log(weights_i) + e |dy|; weights_i = 0 anchors are zeroed below, any
  # finite stand-in keeps their (unused) denominator finite.
  log_w = jnp.log(jnp.where(anchor_w > 0, anchor_w, 1.0))
  if angle_range is None:
    denominator_logits = jnp.where(negative, logits + log_w[:, None] + e * label_dist, logits)
  else:  # +ACCon+ConR: the negatives' angle-compensated logits cos(theta + phi) / tau
    cos_theta = jnp.clip(logits if official else logits * tau, -1.0, 1.0)
    phi = (1.0 - label_dist / angle_range) * jnp.pi
    sin_theta = jnp.sqrt(1.0 - jnp.square(cos_theta) + ANGLE_EPSILON)
    angle_logits = (cos_theta * jnp.cos(phi) - sin_theta * jnp.abs(jnp.sin(phi))) / tau
    denominator_logits = jnp.where(negative, angle_logits, logits)
  in_denominator = positive | negative
  num_positive = jnp.sum(positive, axis=1)
  has_pos = num_positive > 0
  has_neg = jnp.any(negative, axis=1)
  if official:
    # + (M - |P(i)|) * exp(0): one extra logit log(M - |P(i)|) (>= log 1: the anchor itself).
    non_positive = (logits.shape[1] - num_positive).astype(dtype)
    denominator_logits = jnp.concatenate([denominator_logits, jnp.log(non_positive)[:, None]], axis=1)
    in_denominator = jnp.concatenate([in_denominator, jnp.ones_like(has_pos)[:, None]], axis=1)
  else:
    # rows with an empty denominator are zeroed below; give them one valid (self) column.
    in_denominator = in_denominator | (rows.is_self & ~(has_pos | has_neg)[:, None])
  log_denominator = pairwise.masked_logsumexp(denominator_logits, in_denominator)
  summed = jnp.sum(jnp.where(positive, logits - log_denominator[:, None], 0.0), axis=1)
  per_anchor = -summed / jnp.maximum(num_positive, 1).astype(dtype)
  per_anchor = jnp.where(has_pos & has_neg, per_anchor, 0.0) * anchor_w
  return _checks.nan_unless_valid(
      pairwise.global_mean(per_anchor, axis_name), axis_name, finite=(features, labels, preds, e),
      positive=(None if official else temperature, angle_range), nonnegative=(window, weights))
