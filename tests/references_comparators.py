"""Float64 NumPy references for ConR, RankSim, N-pair and the adaptive triplet loss.

Written from the equations (module docstrings of contrastive_jax/losses/{conr,ranksim,metric_learning}.py
and the papers) with plain loops over anchors and partners, plus transliterations of the official
PyTorch code (BorealisAI/ConR ``agedb-dir/loss.py::ConR``; BorealisAI/ranksim-imbalanced-regression
``agedb-dir/ranking.py::rank``) in NumPy. Independent of the JAX code.

Rows: ``features [batch, views, dim]`` -> ``M = batch * views`` rows, sample-major.
"""

import math

import numpy as np


def _rows(features):
  f = np.asarray(features, np.float64)
  b, v, d = f.shape
  return f.reshape(b * v, d), np.repeat(np.arange(b), v)


def _unit(z):
  return z / np.linalg.norm(z, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------
# ConR
# ----------------------------------------------------------------------------------------------------
def conr_ref(features, labels, preds, window=1.0, temperature=0.07, e=0.01, weights=None,
             angle_range=None):
  """ConR (paper form): anchors without a positive or without a negative contribute 0. With
  ``angle_range`` R, "+ACCon+ConR": each confusing negative enters the denominator as
  exp(cos(theta + phi) / tau) (ACCon's angle, theta of the cosine itself, phi = (1 - |dy| / R) pi)
  instead of with the pushing weight."""
  z, sample = _rows(features)
  z = _unit(z)
  m = z.shape[0]
  y = np.asarray(labels, np.float64)[sample]
  p = np.asarray(preds, np.float64).reshape(-1)
  w = np.ones(m) if weights is None else np.asarray(weights, np.float64)[sample]
  total = 0.0
  for i in range(m):
    pos = [k for k in range(m) if k != i and abs(y[k] - y[i]) <= window]
    neg = [k for k in range(m) if abs(y[k] - y[i]) > window and abs(p[k] - p[i]) <= window]
    if not pos or not neg:
      continue
    s = lambda k, i=i: float(z[i] @ z[k]) / temperature
    denom = sum(math.exp(s(k)) for k in pos)
    if angle_range is None:
      denom += sum(w[i] * math.exp(e * abs(y[k] - y[i])) * math.exp(s(k)) for k in neg)
    else:
      denom += sum(math.exp(_angle_logit(min(max(s(k) * temperature, -1.0), 1.0),
                                         abs(y[k] - y[i]), angle_range, temperature)) for k in neg)
    li = -sum(s(k) - math.log(denom) for k in pos) / len(pos)
    total += w[i] * li
  return total / m


def conr_official_ref(features, labels, preds, window=1.0, temperature=0.2, e=0.01, weights=None,
                      zero_empty_positives=False):
  """NumPy transliteration of BorealisAI/ConR ``agedb-dir/loss.py::ConR`` (targets/preds/weights as
  ``[M, 1]`` columns as in ``agedb-dir/train.py``). ``temperature`` is ignored, like there (t = 0.07).

  An anchor without positive yields NaN there (0/0); ``zero_empty_positives`` replaces that per-anchor
  NaN by 0 (what :func:`contrastive_jax.losses.conr.conr` does).
  """
  del temperature
  t = 0.07
  z, sample = _rows(features)
  q = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  k = q
  m = z.shape[0]
  targets = np.asarray(labels, np.float64)[sample][:, None]
  preds_c = np.asarray(preds, np.float64).reshape(m, 1)
  weights_c = np.ones((m, 1)) if weights is None else np.asarray(weights, np.float64)[sample][:, None]
  l_k, l_q = targets.flatten()[None, :], targets
  p_k, p_q = preds_c.flatten()[None, :], preds_c
  l_dist = np.abs(l_q - l_k)
  p_dist = np.abs(p_q - p_k)
  pos_i = l_dist <= window
  neg_i = (~pos_i) & (p_dist <= window)
  np.fill_diagonal(pos_i, False)
  prod = q @ k.T / t
  pos = prod * pos_i
  neg = prod * neg_i
  pushing_w = weights_c * np.exp(l_dist * e)
  neg_exp_dot = (pushing_w * np.exp(neg) * neg_i).sum(1)
  no_neg_flag = neg_i.sum(1).astype(bool)
  denom = pos_i.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.exp(pos) / (np.exp(pos).sum(1) + neg_exp_dot)[:, None]
    loss = (-np.log(ratio) * pos_i).sum(1) / denom
  if zero_empty_positives:
    loss = np.where(denom > 0, loss, 0.0)
  loss = (weights_c * (loss * no_neg_flag)[:, None]).mean()
  return float(loss)


# ----------------------------------------------------------------------------------------------------
# RankSim
# ----------------------------------------------------------------------------------------------------
def rank_ref(values):
  """Normalised descending rank by counting: (1 + #greater + #equal-and-later) / n."""
  v = np.asarray(values, np.float64)
  n = v.size
  out = np.empty(n)
  for j in range(n):
    greater = sum(1 for k in range(n) if v[k] > v[j])
    tied_later = sum(1 for k in range(n) if v[k] == v[j] and k > j)
    out[j] = (1 + greater + tied_later) / n
  return out


def rank_official_ref(values):
  """Official ``rank_normalised`` (``argsort(argsort(v).flip(1))``) with a stable argsort."""
  v = np.asarray(values, np.float64)
  return (np.argsort(np.argsort(v, kind="stable")[::-1], kind="stable") + 1) / v.size


def blackbox_rank_grad_ref(values, grad_output, lambda_):
  """TrueRanker backward: ``-(rank(v) - rank(v + lambda g)) / lambda``."""
  v = np.asarray(values, np.float64)
  g = np.asarray(grad_output, np.float64)
  return -(rank_ref(v) - rank_ref(v + lambda_ * g)) / lambda_


def _ranksim_subset(features, labels, selected):
  z, sample = _rows(features)
  y = np.asarray(labels, np.float64)[sample]
  idx = np.flatnonzero(np.asarray(selected))
  assert len(set(y[idx].tolist())) == idx.size, "one representative per label"
  idx = idx[np.argsort(y[idx])]  # ascending label order, like the official torch.unique
  return z, y, idx


def ranksim_ref(features, labels, selected):
  """sum_i mean_j (rank(cos_i)_j - rank(-|y_i - y|)_j)^2 over the selected rows (ascending labels)."""
  z, y, idx = _ranksim_subset(features, labels, selected)
  x = _unit(z[idx])
  ys = y[idx]
  cos = x @ x.T
  total = 0.0
  for i in range(idx.size):
    fr = rank_ref(cos[i])
    lr = rank_ref(-np.abs(ys[i] - ys))
    total += np.mean((fr - lr) ** 2)
  return total


def ranksim_grad_ref(features, labels, selected, lambda_=2.0, scale=1.0):
  """d(scale * ranksim)/d features with the blackbox backward (chain rule written out by hand)."""
  z, y, idx = _ranksim_subset(features, labels, selected)
  norms = np.linalg.norm(z[idx], axis=1, keepdims=True)
  x = z[idx] / norms
  ys = y[idx]
  n = idx.size
  cos = x @ x.T
  grad_cos = np.zeros_like(cos)
  for i in range(n):
    fr = rank_ref(cos[i])
    lr = rank_ref(-np.abs(ys[i] - ys))
    g = scale * 2.0 * (fr - lr) / n  # d(scale * mean (fr - lr)^2) / d fr
    grad_cos[i] = blackbox_rank_grad_ref(cos[i], g, lambda_)
  grad_x = grad_cos @ x + grad_cos.T @ x  # cos = x x^T
  grad_z = (grad_x - x * np.sum(x * grad_x, axis=1, keepdims=True)) / norms  # through x = z / |z|
  out = np.zeros_like(z)
  out[idx] = grad_z
  return out.reshape(np.asarray(features).shape)


# ----------------------------------------------------------------------------------------------------
# N-pair and adaptive triplet
# ----------------------------------------------------------------------------------------------------
def npair_ref(features, labels, normalize=True, l2_reg=0.0):
  """mean over (i, p != i, y_p == y_i) of log(1 + sum_{n: y_n != y_i} exp(f_i.f_n - f_i.f_p))."""
  z, sample = _rows(features)
  f = _unit(z) if normalize else z
  y = np.asarray(labels, np.float64)[sample]
  m = z.shape[0]
  total, count = 0.0, 0
  for i in range(m):
    for p in range(m):
      if p == i or y[p] != y[i]:
        continue
      count += 1
      inner = sum(math.exp(f[i] @ f[n] - f[i] @ f[p]) for n in range(m) if y[n] != y[i])
      total += math.log1p(inner)
  loss = total / count if count else 0.0
  return loss + l2_reg * float(np.mean(np.sum(z * z, axis=1)))


def adaptive_triplet_ref(features, labels, margin_scale=1.0, mining="all", distance="squared"):
  """max(0, d_ip - d_in + margin_scale (|y_n - y_i| - |y_p - y_i|)) over |y_p - y_i| < |y_n - y_i|."""
  z, sample = _rows(features)
  u = _unit(z)
  y = np.asarray(labels, np.float64)[sample]
  m = z.shape[0]

  sq = [[float(np.sum((u[a] - u[b]) ** 2)) for b in range(m)] for a in range(m)]
  dist = [[x if distance == "squared" else math.sqrt(x) for x in row] for row in sq]
  yl = y.tolist()

  total, count, per_anchor = 0.0, 0, []
  for i in range(m):
    hinges = []
    for p in range(m):
      for n in range(m):
        if i in (p, n) or not abs(yl[p] - yl[i]) < abs(yl[n] - yl[i]):
          continue
        margin = margin_scale * (abs(yl[n] - yl[i]) - abs(yl[p] - yl[i]))
        hinges.append(max(0.0, dist[i][p] - dist[i][n] + margin))
    total += sum(hinges)
    count += len(hinges)
    per_anchor.append(max(hinges) if hinges else 0.0)
  if mining == "all":
    return total / count if count else 0.0
  return float(np.mean(per_anchor))


def _angle_logit(cos_theta, label_dist, angle_range, temperature):
  """ACCon's cos(theta + phi) / tau with phi = (1 - |dy| / R) pi, sin theta = sqrt(1 - c^2 + 1e-6)."""
  phi = (1.0 - label_dist / angle_range) * math.pi
  sin_theta = math.sqrt(1.0 - cos_theta ** 2 + 1e-6)
  return (cos_theta * math.cos(phi) - sin_theta * abs(math.sin(phi))) / temperature


def acconr_official_ref(features, labels, preds, angle_range=100.0, window=1.0, weights=None):
  """Haifengtao/ACCon ``agedb/loss.py::acConR`` line by line in NumPy (t = 0.07; cos theta = the
  clamp of the similarity ALREADY divided by t; every non-positive column adds exp(0) = 1 to the
  denominator, as ConR's official code); anchors without a positive give 0 here (0/0 there)."""
  t = 0.07
  z, sample = _rows(features)
  q = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  m = z.shape[0]
  targets = np.asarray(labels, np.float64)[sample][:, None]
  preds_c = np.asarray(preds, np.float64).reshape(m, 1)
  weights_c = np.ones((m, 1)) if weights is None else np.asarray(weights, np.float64)[sample][:, None]
  l_dist = np.abs(targets - targets.T)
  p_dist = np.abs(preds_c - preds_c.T)
  pos_i = l_dist <= window
  neg_i = (~pos_i) & (p_dist <= window)
  np.fill_diagonal(pos_i, False)
  prod = q @ q.T / t
  pos = prod * pos_i
  phi = (1 - l_dist / angle_range) * np.pi
  cos_theta = np.clip(prod, -1, 1)
  sin_theta = np.sqrt(1 - cos_theta ** 2 + 1e-6)
  neg_logit = (cos_theta * np.cos(phi) - sin_theta * np.abs(np.sin(phi))) / t
  neg_exp_dot = (np.exp(neg_logit * neg_i) * neg_i).sum(1)
  no_neg_flag = neg_i.sum(1).astype(bool)
  denom = pos_i.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.exp(pos) / (np.exp(pos).sum(1) + neg_exp_dot)[:, None]
    loss = (-np.log(ratio) * pos_i).sum(1) / denom
  loss = np.where(denom > 0, loss, 0.0)
  return float((weights_c * (loss * no_neg_flag)[:, None]).mean())
