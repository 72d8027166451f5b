"""Float64 NumPy references for SupReMix (tests/test_supremix.py), independent of the JAX code.

Both build every mixture VECTOR explicitly (the JAX code never does: it works on the similarity
matrix), with plain loops. Rows are sample-major (row ``r`` = sample ``r // views``, view ``r % views``),
the indexing of ``alphas [M, M]`` (row = anchor, column = k).

* :func:`supremix_ref`: the formula of METHODS.md / the paper, written term by term.
* :func:`supremix_official_ref`: a transcription of the official pipeline's data flow
  (Dingyijiang1/Mixup-Your-Own-Pairs ``train_supremix.py::mixing_func`` -> ``utils.py::compress_mixtures``
  -> ``supremix_loss.py::SupConLoss_v2.forward`` with ``use_weight``, ``L1_inv``): the ``[M, M, M]``
  mask / label / mixture tensors, the per-row sort and ``-1`` padding of the compressed mixture matrix,
  the two separate row-max shifts and ``exp * mask * weight``. Two documented deviations: each mixture
  keeps its own label (the official code sorts the labels separately, pairing them with other
  mixtures), and an anchor without positives contributes 0 (official: NaN).
"""

import math

import numpy as np


def _unit_rows(features):
  f = np.asarray(features, dtype=np.float64)
  b, v, d = f.shape
  z = f.reshape(b * v, d)
  return z / np.linalg.norm(z, axis=1, keepdims=True), v


def _logsumexp(values):
  values = np.asarray(values, dtype=np.float64)
  m = np.max(values)
  return m + math.log(np.sum(np.exp(values - m)))


def _hard_positive(yi, yj, yk, window):
  return yj < yi < yk and yi - yj < window and yk - yi < window


def supremix_ref(features, labels, alphas, temperature=0.5, window=5.0, frozen_features=None):
  """SupReMix, term by term.

  For anchor i the terms are (logit = <z_i, vector> / tau, weight = |y_i - label| + 1, positive?):
    real a != i:                       vector z_a,                       label y_a,   positive iff y_a == y_i
    hard negative k (y_k != y_i):       alpha z_i + (1 - alpha) z_k,       label alpha y_i + (1 - alpha) y_k
    hard positive (j, k) in the window: b z_j + (1 - b) z_k, b = (y_k - y_i) / (y_k - y_j), label y_i, positive
  L_i = -(1/|P|) sum_{p in P} (logit_p - log sum_t weight_t exp(logit_t)); 0 without positives; mean over i.

  ``frozen_features``: the vectors the mixtures are built from (default: ``features``). Holding them
  fixed while ``features`` moves gives the stop-gradient derivative by finite differences.
  """
  z, views = _unit_rows(features)
  zm = z if frozen_features is None else _unit_rows(frozen_features)[0]
  y = np.repeat(np.asarray(labels, dtype=np.float64), views)
  alphas = np.asarray(alphas, dtype=np.float64)
  m = z.shape[0]
  total = 0.0
  for i in range(m):
    terms = []  # (logit, weight, positive)
    for a in range(m):
      if a != i:
        terms.append((z[i] @ z[a] / temperature, abs(y[i] - y[a]) + 1.0, y[a] == y[i]))
    for k in range(m):
      if y[k] != y[i]:
        al = alphas[i, k]
        vec = al * zm[i] + (1.0 - al) * zm[k]
        label = al * y[i] + (1.0 - al) * y[k]
        terms.append((z[i] @ vec / temperature, abs(y[i] - label) + 1.0, False))
    for j in range(m):
      for k in range(m):
        if _hard_positive(y[i], y[j], y[k], window):
          b = (y[k] - y[i]) / (y[k] - y[j])
          vec = b * zm[j] + (1.0 - b) * zm[k]
          terms.append((z[i] @ vec / temperature, abs(y[i] - y[i]) + 1.0, True))
    log_den = _logsumexp([l + math.log(w) for l, w, _ in terms])
    positives = [l for l, _, p in terms if p]
    if positives:
      total += -sum(l - log_den for l in positives) / len(positives)
  return total / m


def supremix_official_ref(features, labels, alphas, temperature=0.5, window=5.0, pad_quirk=True,
                          frozen_features=None):
  """The official pipeline's data flow (module docstring).

  ``pad_quirk=False`` drops the padded slots from the mixture row max (to show that the quirk
  matters). ``frozen_features``: the mixtures AND both row maxima (``.detach()``-ed in the official
  code) are computed from these (default: ``features``), for finite differences of the official
  gradient.
  """
  z, views = _unit_rows(features)
  z0 = z if frozen_features is None else _unit_rows(frozen_features)[0]
  y = np.repeat(np.asarray(labels, dtype=np.float64), views)
  alphas = np.asarray(alphas, dtype=np.float64)
  m, d = z.shape

  # mixing_func: mask -1 (excluded) / 0 (hard negative) / 1 (hard positive) over (i, j, k)
  mask = -np.ones((m, m, m))
  label = np.zeros((m, m, m))
  mix = np.zeros((m, m, m, d))
  for i in range(m):
    for j in range(m):
      for k in range(m):
        if j == i and k != i and y[j] != y[k]:
          mask[i, j, k] = 0
          al = alphas[i, k]
          mix[i, j, k] = al * z0[j] + (1 - al) * z0[k]
          label[i, j, k] = al * y[j] + (1 - al) * y[k]
        if _hard_positive(y[i], y[j], y[k], window):
          mask[i, j, k] = 1
          b = min(max((y[k] - y[i]) / max(y[k] - y[j], 1e-9), 0.0), 1.0)
          mix[i, j, k] = b * z0[j] + (1 - b) * z0[k]
          label[i, j, k] = y[i]
  mask, label, mix = mask.reshape(m, m * m), label.reshape(m, m * m), mix.reshape(m, m * m, d)

  # compress_mixtures: per row, excluded slots first (sorted by mask), keep the columns that are not
  # excluded in every row; an excluded slot in a kept column holds the vector (-1, ..., -1).
  order = np.argsort(np.where(mask == -1, -np.inf, mask), axis=1, kind='stable')
  mask_s = np.take_along_axis(mask, order, axis=1)
  label_s = np.take_along_axis(label, order, axis=1)  # deviation: labels stay with their mixtures
  mix_s = np.take_along_axis(mix, order[:, :, None], axis=1)
  mix_s[mask_s == -1] = -1.0
  keep = ~np.all(mask_s == -1, axis=0)
  mask_c, label_c, mix_c = mask_s[:, keep], label_s[:, keep], mix_s[:, keep]

  # SupConLoss_v2.forward
  adc = z @ z.T / temperature
  logits = adc - (z0 @ z0.T / temperature).max(axis=1, keepdims=True)
  real_pos = (y[:, None] == y[None, :]) & ~np.eye(m, dtype=bool)
  real_valid = ~np.eye(m, dtype=bool)
  adm = np.einsum('icd,id->ic', mix_c, z) / temperature
  adm0 = np.einsum('icd,id->ic', mix_c, z0) / temperature
  row_max_source = adm0 if pad_quirk else np.where(mask_c == -1, -np.inf, adm0)
  myop_logits = adm - row_max_source.max(axis=1, keepdims=True)
  all_logits = np.concatenate([logits, myop_logits], axis=1)
  positive = np.concatenate([real_pos, mask_c == 1], axis=1)
  valid = np.concatenate([real_valid, mask_c != -1], axis=1)
  weight = np.concatenate([np.abs(y[:, None] - y[None, :]) + 1, np.abs(y[:, None] - label_c) + 1],
                          axis=1)
  log_prob = all_logits - np.log(np.sum(np.exp(all_logits) * valid * weight, axis=1, keepdims=True))
  count = positive.sum(axis=1)
  mean_pos = np.where(count > 0, (positive * log_prob).sum(axis=1) / np.maximum(count, 1), 0.0)
  return float(-mean_pos.mean())


def padding_decides_row_max(features, labels, alphas, temperature=0.5, window=5.0):
  """True if some anchor's official mixture row max is a padded (-1 vector) slot."""
  a = supremix_official_ref(features, labels, alphas, temperature, window, pad_quirk=True)
  b = supremix_official_ref(features, labels, alphas, temperature, window, pad_quirk=False)
  return not np.isclose(a, b, rtol=1e-9, atol=0)
