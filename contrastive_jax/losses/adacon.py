"""AdaCon: adaptive-margin contrastive loss (Dai et al., IEEE TMI 2023; adacon_dai2022_tmi, Eq. 4-6).

    d_ia = 2 |phi(y_i) - phi(y_a)|                                  (Eq. 4; 0 for positives)
    phi(y) = (1/N) sum_j 1[y_j <= y]   over the TRAINING labels      (Eq. 5)
    L = mean_i -(1/|P(i)|) sum_p log[ exp(s cos_ip) / sum_{a != i} exp(s (cos_ia + d_ia)) ]   (Eq. 6)

with ``s = 1 / temperature`` (150 in the paper and the official code). Eq. 6 writes a sum over anchors;
like the official code (a SupContrast derivative, ``SupConLoss_admargin``) we take the mean, which only
rescales the learning rate. The official logits ``s (cos + clamp(2/N_train * |r_i - r_j|, 0, 2))`` with
mid-ranks ``r`` equal these with ``phi = r / N_train``.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks
from contrastive_jax.losses.supcon import check_temperature
from contrastive_jax.losses.supcon import softmax_loss
from contrastive_jax.losses.supcon import split_temperature
from contrastive_jax.losses.supcon import tile_temperature
from contrastive_jax.losses.supcon import unit_rows


@flax.struct.dataclass
class ECDF:
  """Empirical CDF of the training labels (AdaCon Eq. 5); a pytree, usable inside ``jit``.

  ``sorted_labels``: the distinct training labels (float32, ascending); ``values``: ``[m + 1]``
  float32, ``values[k]`` = (number of training labels <= ``sorted_labels[k - 1]``) / N, divided
  and rounded once, on the host (``values[0] = 0``). ``phi(y)`` is then a search and a gather, so
  the device gives the same bits as NumPy (a float32 division on the device need not: XLA may
  multiply by the reciprocal of N, off by one ulp).
  """
  sorted_labels: jax.Array
  values: jax.Array

  def __call__(self, y):
    """``phi(y) = #{train labels <= y} / N`` for an array ``y`` (NumPy in, NumPy out; else jnp)."""
    if isinstance(y, np.ndarray) and isinstance(self.sorted_labels, np.ndarray):
      return np.asarray(self.values)[np.searchsorted(self.sorted_labels, y, side="right")]
    idx = jnp.searchsorted(jnp.asarray(self.sorted_labels), y, side="right")
    return jnp.asarray(self.values)[idx]


def fit_ecdf(train_labels, bucket: Optional[float] = None) -> ECDF:
  """Fits phi on the training labels (as float32): their distinct values and phi of each, evaluated
  with ``searchsorted`` (a label between training labels gets phi of the next lower one).

  ``bucket=None`` (the default, what the configs use): AdaCon Eq. 5, ``phi(y) = #{train labels <=
  y} / N``. ``bucket=w`` (e.g. 0.05): the official code's mid-rank phi (XMed-Lab/AdaCon
  ``echonet/datasets/echo.py``): labels binned by ``y // w`` (floor division in float64, as pandas
  does it, so 55.0 // 0.05 = 1099), and every label of bin ``b`` gets ``phi = (#labels in the bins
  below b + #labels in b / 2) / N``. It differs from Eq. 5 by up to ``(c_b - c_b') / N`` (``c``:
  labels per bin), which moves the loss by up to ~1e-2 relative. (The official code also takes the
  bins as the loss's labels, so that a whole bin is positive: pass ``labels // w`` to :func:`adacon`
  for that.)

  Raises:
    ValueError: if ``train_labels`` is empty, not 1-D, non-finite, or constant (phi would be the step
      function 1 everywhere and every margin 0: AdaCon would silently become SupCon), or ``bucket``
      is not a positive finite number.
  """
  y = np.asarray(train_labels, dtype=np.float64)
  if y.ndim != 1 or y.size == 0:
    raise ValueError(f"`train_labels` must be a non-empty 1-D array; got shape {y.shape}.")
  bad = int(np.sum(~np.isfinite(y)))
  if bad:
    raise ValueError(f"`train_labels` has {bad} non-finite value(s); the ECDF needs finite labels.")
  if np.all(y == y[0]):
    raise ValueError(f"`train_labels` are all equal ({y[0]}): the AdaCon ECDF margin would be 0 "
                     "for every pair. Check the target column.")
  labels, first, counts = np.unique(y.astype(np.float32), return_index=True, return_counts=True)
  if bucket is None:
    values = np.cumsum(counts) / y.size
  else:
    if isinstance(bucket, bool) or not isinstance(bucket, (int, float)) or not (
        np.isfinite(bucket) and bucket > 0):
      raise ValueError(f"`bucket` must be a positive finite number (a label-bin width); got "
                       f"{bucket!r}.")
    bins = np.floor_divide(y, float(bucket))
    keys, per_bin = np.unique(bins, return_counts=True)
    mid_rank = np.cumsum(per_bin) - per_bin / 2.0
    values = mid_rank[np.searchsorted(keys, bins[first])] / y.size
  return ECDF(sorted_labels=labels, values=np.concatenate([[0.0], values]).astype(np.float32))


def prepare_ecdf(train_labels, loss_cfg=None) -> dict:
  """The method registry's hook: ``{'cdf': fit_ecdf(train_labels)}``, passed to :func:`adacon`,
  which applies it to each batch's labels inside the jitted step."""
  del loss_cfg  # AdaCon's options do not change phi
  return {"cdf": fit_ecdf(train_labels)}


def _margin_logits(profile, params, cos, a_aux, c_aux):
  """AdaCon tile (Eq. 4, 6): ``(cos + d) / tau`` with ``d = 2 |phi_i - phi_a|`` for negatives."""
  (a_y, a_phi), (c_y, c_phi) = a_aux, c_aux
  positive = a_y[:, None] == c_y[None, :]
  margin = jnp.where(positive, 0.0, 2.0 * jnp.abs(a_phi[:, None] - c_phi[None, :]))
  return (cos + margin) / tile_temperature(profile, params, cos), positive


def adacon(features: jax.Array, labels: jax.Array, cdf, temperature=1.0 / 150.0,
           *, axis_name: Optional[str] = None, impl: str = "auto", tile=None,
           matmul_dtype=None) -> jax.Array:
  """Adaptive-margin contrastive loss (AdaCon Eq. 6).

  Args:
    features: ``[batch, views, dim]`` projections (L2-normalised here); one view is fine (positives:
      the other samples with the same label).
    labels: ``[batch]`` regression labels; positives are the rows with exactly the same label.
    cdf: ``[batch]`` ``phi(labels)`` in [0, 1], or the :class:`ECDF` ``fit_ecdf(train_labels)``
      itself, then applied to ``labels`` here (on device when traced; the same float32 values as
      the host-side ``ECDF(labels)``).
    temperature: ``1 / s``; the paper's s = 150. A callable gives each pair's temperature from its
      stop-gradient cosine similarity (e.g. a DySTreSS profile, ``dystress_temperature``).
    axis_name: mesh axis when called per shard inside ``shard_map``.
    impl, tile, matmul_dtype: execution mode ('dense' | 'blockwise' | 'ring' | 'fused' |
      'fused_ring' | 'auto'), tile shape and optional bfloat16 similarity matmul (see
      ``pairwise.blockwise``; 'fused': the Pallas kernel of ``pairwise.fused``).
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  if isinstance(cdf, ECDF):
    cdf = cdf(labels)
  cdf = _checks.check_per_sample(cdf, features.shape[0], "cdf")
  host_cdf = _checks.concrete(cdf)
  if host_cdf is not None and (np.any(host_cdf < 0) or np.any(host_cdf > 1)):
    raise ValueError("`cdf` must lie in [0, 1] (the ECDF of the training labels, see fit_ecdf).")
  check_temperature(temperature)
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  anchor_y, column_y = rows.per_sample(labels, axis_name)
  anchor_phi, column_phi = rows.per_sample(cdf.astype(features.dtype), axis_name)
  profile, params = split_temperature(temperature)
  logits_fn = functools.partial(_margin_logits, profile)
  loss = softmax_loss(logits_fn, params, rows, (anchor_y, anchor_phi), (column_y, column_phi),
                      1.0, axis_name, block)
  return _checks.nan_unless_valid(loss, axis_name, finite=(features, labels), unit_interval=(cdf,),
                                  positive=(temperature,))
