"""Float64 NumPy references for the contrastive and regression losses.

Written from the equations of docs/specs (``/work/shared/specs/METHODS.md``) and the papers, with plain
loops over anchors ``i`` and partners ``j, k``: clarity over speed. Independent of the JAX code.

Row convention: ``features [batch, views, dim]`` become ``M = batch * views`` rows, sample-major
(row ``r`` is sample ``r // views``, view ``r % views``); every row is an anchor. The losses are
invariant to the row order, so this choice does not matter.
"""

import math

import numpy as np


def _rows(features, labels=None):
  """Flattens ``[batch, views, dim]`` into rows; returns (z [M, D], y [M, ...] or None, sample id [M])."""
  f = np.asarray(features, dtype=np.float64)
  b, v, d = f.shape
  z = f.reshape(b * v, d)
  sample = np.repeat(np.arange(b), v)
  y = None
  if labels is not None:
    y = np.asarray(labels, dtype=np.float64)[sample]
  return z, y, sample


def _cosine_matrix(z):
  """cos_ij = <z_i, z_j> / (|z_i| |z_j|)  (inputs here are never zero vectors)."""
  n = np.linalg.norm(z, axis=1)
  zn = z / n[:, None]
  return zn @ zn.T


def _logsumexp(values):
  values = np.asarray(values, dtype=np.float64)
  m = np.max(values)
  return m + math.log(np.sum(np.exp(values - m)))


def _supcon_from_positive_sets(cos, positives, temperature, base_temperature):
  """-(tau/tau_b) (1/|P|) sum_p [cos_ip/tau - log sum_{a != i} exp(cos_ia/tau)], mean over anchors."""
  m = cos.shape[0]
  total = 0.0
  for i in range(m):
    pos = positives(i)
    if not pos:
      continue  # contributes 0, still counts in the mean
    others = [a for a in range(m) if a != i]
    lse = _logsumexp([cos[i, a] / temperature for a in others])
    s = sum(cos[i, p] / temperature - lse for p in pos)
    total += -(temperature / base_temperature) * s / len(pos)
  return total / m


def supcon_ref(features, labels, temperature=0.07, base_temperature=0.07):
  """SupCon: P(i) = {p != i : y_p == y_i} (exact label equality)."""
  z, y, _ = _rows(features, labels)
  cos = _cosine_matrix(z)
  m = z.shape[0]
  positives = lambda i: [p for p in range(m) if p != i and y[p] == y[i]]
  return _supcon_from_positive_sets(cos, positives, temperature, base_temperature)


def simclr_ref(features, temperature=0.5, base_temperature=None):
  """NT-Xent: P(i) = the other views of the same sample; tau_base defaults to tau."""
  if base_temperature is None:
    base_temperature = temperature
  z, _, sample = _rows(features)
  cos = _cosine_matrix(z)
  m = z.shape[0]
  positives = lambda i: [p for p in range(m) if p != i and sample[p] == sample[i]]
  return _supcon_from_positive_sets(cos, positives, temperature, base_temperature)


def ecdf_ref(train_labels, y):
  """phi(y) = (1/N) sum_j 1[y_j <= y]  (AdaCon Eq. 5)."""
  t = np.asarray(train_labels, dtype=np.float64)
  y = np.atleast_1d(np.asarray(y, dtype=np.float64))
  return np.array([np.sum(t <= v) / t.size for v in y])


def adacon_ref(features, labels, cdf, temperature=1.0 / 150):
  """AdaCon Eq. 4-6: d_ia = 2 |phi_i - phi_a| for negatives (0 for same label), in the denominator."""
  z, y, sample = _rows(features, labels)
  phi = np.asarray(cdf, dtype=np.float64)[sample]
  cos = _cosine_matrix(z)
  m = z.shape[0]
  total = 0.0
  for i in range(m):
    pos = [p for p in range(m) if p != i and y[p] == y[i]]
    if not pos:
      continue
    denom_logits = []
    for a in range(m):
      if a == i:
        continue
      d = 0.0 if y[a] == y[i] else 2.0 * abs(phi[i] - phi[a])
      denom_logits.append((cos[i, a] + d) / temperature)
    lse = _logsumexp(denom_logits)
    total += -sum(cos[i, p] / temperature - lse for p in pos) / len(pos)
  return total / m


def _same_bin(ya, yb, bin_width):
  if bin_width is None:
    return ya == yb
  return math.floor(ya / bin_width) == math.floor(yb / bin_width)


def accon_ref(features, labels, label_range, temperature=0.05, bin_width=None, epsilon=1e-6):
  """ACCon paper form (Eq. 4-7): angle-compensated cosine for negatives in the denominator."""
  z, y, _ = _rows(features, labels)
  cos = _cosine_matrix(z)
  m = z.shape[0]
  total = 0.0
  for i in range(m):
    pos = [k for k in range(m) if k != i and _same_bin(y[k], y[i], bin_width)]
    neg = [k for k in range(m) if k != i and not _same_bin(y[k], y[i], bin_width)]
    if not pos:
      continue
    denom_logits = [cos[i, k] / temperature for k in pos]
    for k in neg:
      phi = math.pi * (1.0 - (y[k] - y[i]) / label_range)
      c = min(max(cos[i, k], -1.0), 1.0)
      ctilde = c * math.cos(phi) - abs(math.sin(phi)) * math.sqrt(1.0 - c * c + epsilon) + epsilon
      denom_logits.append(ctilde / temperature)
    lse = _logsumexp(denom_logits)
    total += -sum(cos[i, p] / temperature - lse for p in pos) / len(pos)
  return total / m


def accon_official_ref(features, labels, label_range=100.0, temperature=0.05, epsilon=1e-6,
                       base_temperature=None):
  """Official ACCon (Haifengtao/ACCon agedb/loss.py): plain dot products (inputs assumed unit-norm).

  Positive logits are shifted by the row max (self column included), negatives are not; positive mean
  is (sum + eps) / (count + eps); an anchor without a positive therefore contributes -(tau/tau_b).
  """
  if base_temperature is None:
    base_temperature = temperature
  z, y, _ = _rows(features, labels)
  c = np.clip(z @ z.T, -1.0, 1.0)
  m = z.shape[0]
  total = 0.0
  for i in range(m):
    logits = c[i] / temperature
    mx = np.max(logits)  # over all j, including j = i
    pos = [k for k in range(m) if k != i and y[k] == y[i]]
    neg = [k for k in range(m) if k != i and y[k] != y[i]]
    denom = 0.0
    for k in pos:
      denom += math.exp(logits[k] - mx)
    for k in neg:
      phi = (1.0 - (y[i] - y[k]) / label_range) * math.pi
      sin_t = math.sqrt(1.0 - c[i, k] ** 2 + epsilon)
      neg_logit = (c[i, k] * math.cos(phi) - sin_t * abs(math.sin(phi))) / temperature
      denom += math.exp(neg_logit)
    log_denom = math.log(denom)
    s = sum(logits[p] - mx - log_denom for p in pos)
    mean_i = (s + epsilon) / (len(pos) + epsilon)
    total += -(temperature / base_temperature) * mean_i
  return total / m


def rnc_ref(features, labels, temperature=2.0):
  """Rank-N-Contrast: s_ij = -|z_i - z_j|_2 / tau (raw features), d_ij = |y_i - y_j|_1.

  L = -(1/(M(M-1))) sum_i sum_{j != i} log[exp(s_ij) / sum_{k != i, d_ik >= d_ij} exp(s_ik)].
  """
  f = np.asarray(features, dtype=np.float64)
  b, v, _ = f.shape
  y = np.asarray(labels, dtype=np.float64).reshape(b, -1)
  z, _, sample = _rows(f)
  yr = y[sample]
  m = z.shape[0]
  s = np.array([[-np.linalg.norm(z[i] - z[j]) / temperature for j in range(m)] for i in range(m)])
  d = np.array([[np.sum(np.abs(yr[i] - yr[j])) for j in range(m)] for i in range(m)])
  return rnc_from_matrices_ref(s, d)


def rnc_from_matrices_ref(s, d):
  """Rank-N-Contrast from its similarities ``s [M, M]`` and label distances ``d [M, M]``:

  L = -(1/(M(M-1))) sum_i sum_{j != i} log[exp(s_ij) / sum_{k != i, d_ik >= d_ij} exp(s_ik)].
  ``d`` is compared as given (its dtype sets which distances tie).
  """
  m = s.shape[0]
  total = 0.0
  for i in range(m):
    for j in range(m):
      if j == i:
        continue
      ks = [k for k in range(m) if k != i and d[i, k] >= d[i, j]]
      total += s[i, j] - _logsumexp([s[i, k] for k in ks])
  return -total / (m * (m - 1))


def regression_ref(predictions, targets, kind='l1', delta=1.0, weights=None):
  """Mean per-example L1 / MSE / Huber (0.5 r^2/delta if |r| < delta else |r| - delta/2), weighted."""
  r = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
  if kind == 'l1':
    per = np.abs(r)
  elif kind == 'mse':
    per = r * r
  elif kind == 'huber':
    per = np.where(np.abs(r) < delta, 0.5 * r * r / delta, np.abs(r) - 0.5 * delta)
  else:
    raise ValueError(kind)
  if weights is not None:
    per = per * np.asarray(weights, np.float64)
  return float(np.mean(per))
