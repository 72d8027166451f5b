"""Float64 NumPy references for the thesis losses (Manna 2025, Ch. 4, 5, 6), from the equations.

Plain loops over ordered pairs ``(i, j)``, clarity over speed, independent of the JAX code. Row
convention as in ``references.py``: ``features [batch, views, dim]`` become ``M = batch * views``
rows, row ``r`` is sample ``r // views``. Positive pairs ``X+``: ``i != j`` of the same sample;
negative pairs ``X-``: different samples; self-pairs ``i == j`` belong to neither.
"""

import math

import numpy as np


def _rows(features):
  f = np.asarray(features, dtype=np.float64)
  b, v, d = f.shape
  return f.reshape(b * v, d), np.repeat(np.arange(b), v), v


def _cosine(z):
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  return zn @ zn.T


def _pairs(sample):
  """(list of ordered positive pairs, list of ordered negative pairs)."""
  m = len(sample)
  pos = [(i, j) for i in range(m) for j in range(m) if i != j and sample[i] == sample[j]]
  neg = [(i, j) for i in range(m) for j in range(m) if sample[i] != sample[j]]
  return pos, neg


def _sigma(u):
  return 1.0 / (1.0 + math.exp(-u))


def _logsumexp(values):
  values = np.asarray(values, dtype=np.float64)
  top = np.max(values)
  return top + math.log(np.sum(np.exp(values - top)))


# ----------------------------------------------------------------------------------------------------
# Chapter 4: binary contrastive loss (Eq. 4.14) and Combo (Eq. 4.17-4.18)
# ----------------------------------------------------------------------------------------------------
def nce_nu(batch, views):
  """Eq. 4.10: nu = P(k=0)/P(k=1) = T_n / T_p; with two views (2N-2)."""
  m = batch * views
  return (m * (m - views)) / (m * (views - 1))


def bcl_ref(features, temperature=0.25, nu=1.0):
  """Eq. 4.13-4.14: -(1/4N^2) [sum_{X+} ln phi + sum_{X-} ln(1 - phi)]; phi = 1/(1+nu e^-c/tau)."""
  z, sample, views = _rows(features)
  m = z.shape[0]
  if nu == 'nce':
    nu = nce_nu(m // views, views)
  cos = _cosine(z)
  pos, neg = _pairs(sample)
  phi = lambda c: 1.0 / (1.0 + nu * math.exp(-c / temperature))
  total = sum(math.log(phi(cos[i, j])) for i, j in pos)
  total += sum(math.log(1.0 - phi(cos[k, l])) for k, l in neg)
  return -total / (m * m)  # 4N^2 with two views


def contr_ref(features, temperature=0.33, normalize=True):
  """Eq. 4.17: InfoNCE on -|z_i - z_j|^2 / tau_c; denominator over a != i; positives averaged."""
  z, sample, _ = _rows(features)
  if normalize:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
  m = z.shape[0]
  total = 0.0
  for i in range(m):
    logits = {a: -np.sum((z[i] - z[a]) ** 2) / temperature for a in range(m) if a != i}
    lse = _logsumexp(list(logits.values()))
    pos = [p for p in range(m) if p != i and sample[p] == sample[i]]
    if pos:
      total += -sum(logits[p] - lse for p in pos) / len(pos)
  return total / m


def combo_ref(features, temperature=0.25, contr_temperature=0.33, contr_weight=1.0, nu=1.0,
              normalize=True):
  """Eq. 4.18: L_Combo = L_Proposed + L_Contr (weight 1 in the thesis)."""
  return (bcl_ref(features, temperature, nu) +
          contr_weight * contr_ref(features, contr_temperature, normalize))


# ----------------------------------------------------------------------------------------------------
# Chapter 5: MIO v1 (Eq. 5.12-5.13), v2 (5.15-5.16), v3 (5.21)
# ----------------------------------------------------------------------------------------------------
def mio_ref(features, temperature=0.2, version=1):
  z, sample, _ = _rows(features)
  cos = _cosine(z)
  pos, neg = _pairs(sample)
  t_p, t_n = len(pos), len(neg)
  u = lambda i, j: cos[i, j] / temperature
  if version == 1:  # -(1/T_p) sum ln sigma(u) - (1/T_n) sum ln(1 - sigma(u))
    return (-sum(math.log(_sigma(u(i, j))) for i, j in pos) / t_p
            - sum(math.log(1.0 - _sigma(u(k, l))) for k, l in neg) / t_n)
  attract = -sum(u(i, j) for i, j in pos) / t_p  # = -(1/N) sum_n c_nn'/tau with two views
  if version == 2:  # + (1/T_n) sum ln(1 + e^u)
    return attract + sum(math.log(1.0 + math.exp(u(k, l))) for k, l in neg) / t_n
  if version == 3:  # + (1/T_n) sum e^u
    return attract + sum(math.exp(u(k, l)) for k, l in neg) / t_n
  raise ValueError(version)


# ----------------------------------------------------------------------------------------------------
# Chapter 6: DySTreSS temperature (Eq. 6.16, Alg. 6.1) and loss (Eq. 6.1 with tau_ij)
# ----------------------------------------------------------------------------------------------------
def temperature_ref(c, tau_min, tau_max, profile='cosine', shift=0.0, scale=1.0, rate=3.5):
  """One scalar c in [-1, 1] -> tau, line by line from the thesis (and the documented guesses)."""
  c = min(max(float(c), -1.0), 1.0)
  d_tau = tau_max - tau_min
  if profile == 'cosine':  # Eq. 6.16
    return tau_min + 0.5 * (tau_max - tau_min) * (1.0 + math.cos(math.pi * (1.0 + c)))
  if profile == 'shifted_literal':  # Alg. 6.1 as printed
    if (shift <= 0 and c <= -shift) or (shift >= 0 and c >= -shift):
      return tau_min + d_tau / 2.0 * (1.0 + math.cos(math.pi / scale * (shift + c)))
    return tau_max
  if profile == 'shifted':  # Alg. 6.1 as Sec. 6.5.4.1 describes it: at dc = 0 "entirely in the left
    # half plane", "constant in the right half plane"; a left shift keeps c <= -dc, a right one c >= -dc
    cosine_side = c <= -shift if shift <= 0 else c >= -shift
    if cosine_side:
      return tau_min + d_tau / 2.0 * (1.0 + math.cos(math.pi / scale * (shift + c)))
    return tau_max
  if profile == 'linear':
    return tau_min + d_tau * abs(c)
  if profile == 'exponential':
    return tau_max - d_tau * math.exp(-rate * abs(c))
  raise ValueError(profile)


def dystress_ref(features, tau_min, tau_max, profile='cosine', shift=0.0, scale=1.0, rate=3.5,
                 tau_matrix=None):
  """mean_i -(1/|P(i)|) sum_p log[e^{c_ip/tau_ip} / sum_{a != i} e^{c_ia/tau_ia}], tau = tau(c).

  ``tau_matrix`` (optional ``[M, M]``) fixes the temperatures instead (the stop-gradient loss seen
  as a function of the features with the temperatures frozen).
  """
  z, sample, _ = _rows(features)
  cos = _cosine(z)
  m = z.shape[0]
  tau = lambda i, j: (tau_matrix[i, j] if tau_matrix is not None else
                      temperature_ref(cos[i, j], tau_min, tau_max, profile, shift, scale, rate))
  total = 0.0
  for i in range(m):
    logits = {a: cos[i, a] / tau(i, a) for a in range(m) if a != i}
    lse = _logsumexp(list(logits.values()))
    pos = [p for p in range(m) if p != i and sample[p] == sample[i]]
    if pos:
      total += -sum(logits[p] - lse for p in pos) / len(pos)
  return total / m


def temperature_matrix_ref(features, tau_min, tau_max, profile='cosine', shift=0.0, scale=1.0,
                           rate=3.5):
  z, _, _ = _rows(features)
  cos = _cosine(z)
  tau = lambda c: temperature_ref(c, tau_min, tau_max, profile, shift, scale, rate)
  return np.vectorize(tau)(cos)


# ----------------------------------------------------------------------------------------------------
# DCL (Yeh et al. 2022 Eq. 6), the Ch. 5 / 6 comparator
# ----------------------------------------------------------------------------------------------------
def dcl_ref(features, temperature=0.1):
  """Anchor by anchor: mean over the positives p of -c_ip/tau, plus log sum over the negatives only
  (the other samples' views) of exp(c_ik/tau); the mean over every row."""
  z, sample, _ = _rows(features)
  c = _cosine(z)
  m = len(sample)
  total = 0.0
  for i in range(m):
    positives = [j for j in range(m) if j != i and sample[j] == sample[i]]
    negatives = [k for k in range(m) if sample[k] != sample[i]]
    total += -sum(c[i, j] / temperature for j in positives) / len(positives)
    total += _logsumexp([c[i, k] / temperature for k in negatives])
  return total / m


def dcl_two_way_ref(features, temperature=0.1):
  """lightly's ``DCLLoss`` form for two views: (l(z1, z2) + l(z2, z1)) / 2 with the one-way
  l(a, b) = mean_n [-a_n.b_n/tau + log(sum_{m != n} e^{a_n.a_m/tau} + sum_{m != n} e^{a_n.b_m/tau})]."""
  f = np.asarray(features, dtype=np.float64)
  z = f / np.linalg.norm(f, axis=2, keepdims=True)
  a, b = z[:, 0], z[:, 1]

  def one_way(a, b):
    n = len(a)
    out = 0.0
    for i in range(n):
      neg = [a[i] @ a[j] / temperature for j in range(n) if j != i]
      neg += [a[i] @ b[j] / temperature for j in range(n) if j != i]
      out += -a[i] @ b[i] / temperature + _logsumexp(neg)
    return out / n
  return 0.5 * (one_way(a, b) + one_way(b, a))


def dclw_lightly_ref(features, temperature=0.1, sigma=0.5):
  """lightly's ``DCLWLoss`` for two views: (l(z1, z2) + l(z2, z1)) / 2, the one-way l(a, b) =
  mean_n [-w_n a_n.b_n/tau + log(sum_{m != n} e^{a_n.a_m/tau} + sum_{m != n} e^{a_n.b_m/tau})]
  with w_n = 2 - N softmax_n(a.b / sigma) over the N pairs."""
  f = np.asarray(features, dtype=np.float64)
  z = f / np.linalg.norm(f, axis=2, keepdims=True)
  a, b = z[:, 0], z[:, 1]

  def one_way(a, b):
    n = len(a)
    pos = np.array([a[i] @ b[i] for i in range(n)])
    e = np.exp(pos / sigma - np.max(pos / sigma))
    w = 2.0 - n * e / e.sum()
    out = 0.0
    for i in range(n):
      neg = [a[i] @ a[j] / temperature for j in range(n) if j != i]
      neg += [a[i] @ b[j] / temperature for j in range(n) if j != i]
      out += -w[i] * pos[i] / temperature + _logsumexp(neg)
    return out / n
  return 0.5 * (one_way(a, b) + one_way(b, a))


def dclw_weights(features, sigma=0.5):
  """DCLW's w_i = 2 - M softmax_i(cbar_i / sigma) over the M rows, cbar_i = mean positive cosine."""
  z, sample, _ = _rows(features)
  c = _cosine(z)
  m = len(sample)
  cbar = np.array([np.mean([c[i, j] for j in range(m) if j != i and sample[j] == sample[i]])
                   for i in range(m)])
  e = np.exp(cbar / sigma - np.max(cbar / sigma))
  return 2.0 - m * e / e.sum()


def dclw_ref(features, temperature=0.1, sigma=0.5, weights=None):
  """DCL with anchor i's positive term weighted by ``weights`` (default :func:`dclw_weights`)."""
  z, sample, _ = _rows(features)
  c = _cosine(z)
  m = len(sample)
  w = dclw_weights(features, sigma) if weights is None else weights
  total = 0.0
  for i in range(m):
    positives = [j for j in range(m) if j != i and sample[j] == sample[i]]
    negatives = [k for k in range(m) if sample[k] != sample[i]]
    total += -w[i] * sum(c[i, j] / temperature for j in positives) / len(positives)
    total += _logsumexp([c[i, k] / temperature for k in negatives])
  return total / m
