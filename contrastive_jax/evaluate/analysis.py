"""Representation analysis: label-distance correlation, uniformity / alignment / tolerance, plots.

* Cosine similarity vs label distance over pairs, summarised by Pearson's r (ACCon, Zhao et al.
  2025, Fig. 3b: r = -0.735 on AgeDB; AdaCon, Dai et al. 2023, Fig. 3e-h / 4e-h as a scatter plot).
* Uniformity ``log E_{i<j} exp(-t ||z_i - z_j||^2)`` (t = 2) and alignment
  ``E ||z - z+||^alpha`` (alpha = 2) of L2-normalised features (Wang & Isola 2020, Eq. 4-5; the
  thesis's Figs. 5.1, 6.4-6.7 use them without defining them, THESIS_CH5_7.md "Shared notation").
* Tolerance: the mean ``z_i^T z_j`` over pairs of distinct examples of the same class (Wang & Liu
  2021, as THESIS_CH5_7.md defines it).
* PNG plots (matplotlib, no pyplot / global backend): the similarity-vs-label-distance scatter, the
  angular plot (AdaCon Fig. 3a-d / 4a-d) and a t-SNE map coloured by label (ACCon Fig. 3a).

Everything is float64 NumPy on the host; randomness (pair sampling, t-SNE) comes from explicit
seeds.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from contrastive_jax.evaluate.metrics import _correlation
from contrastive_jax.evaluate.probe import host_matrix
from contrastive_jax.losses._checks import host_vector


def _unit(x: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError("Features contain an all-zero row: its direction (cosine) is undefined.")
  return x / norms


def _features_labels(features, labels, min_rows: int = 2):
  z = host_matrix(features, "features", min_rows=min_rows)
  y = host_vector(labels, "labels")
  if y.shape[0] != z.shape[0]:
    raise ValueError(f"`labels` must have one entry per feature row ({z.shape[0]}); got "
                     f"{y.shape[0]}.")
  return z, y


def pair_cosine_label_distance(features, labels, *, num_pairs: Optional[int] = None,
                               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``(cos(z_i, z_j), |y_i - y_j|)`` over pairs of distinct examples.

  ``num_pairs=None``: every unordered pair ``i < j`` (``N (N - 1) / 2``: for ``N`` beyond a few
  thousand pass ``num_pairs``); else that many pairs drawn
  uniformly (with replacement) among ordered pairs ``i != j`` from ``seed`` (AdaCon's "randomly
  sampled pairs").
  """
  z, y = _features_labels(features, labels)
  z, n = _unit(z), z.shape[0]
  if num_pairs is None:
    i, j = np.triu_indices(n, k=1)
  else:
    if num_pairs < 1:
      raise ValueError(f"`num_pairs` must be >= 1 or None; got {num_pairs!r}.")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, num_pairs)
    j = (i + rng.integers(1, n, num_pairs)) % n  # uniform over j != i
  return np.einsum("pd,pd->p", z[i], z[j]), np.abs(y[i] - y[j])


def cosine_label_pearson(features, labels, *, num_pairs: Optional[int] = None,
                         seed: int = 0) -> float:
  """Pearson r between pair cosine similarity and label distance (ACCon Fig. 3b: -0.735).

  Scaling the label distance (ACCon divides by 100) does not change r. A constant similarity or
  distance (collapsed features, one label) gives 0.
  """
  cos, dist = pair_cosine_label_distance(features, labels, num_pairs=num_pairs, seed=seed)
  return _correlation(cos, dist)


def uniformity(features, t: float = 2.0) -> float:
  """``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` of the L2-normalised features (Wang & Isola Eq. 5).

  In ``[-4 t, 0]``; lower = more uniform. Two antipodal points give exactly ``-4 t``. Computed in
  row blocks of ``chunk`` (never the whole ``N x N`` matrix).
  """
  if not (np.isfinite(t) and t > 0):
    raise ValueError(f"`t` must be a finite number > 0; got {t!r}.")
  from scipy.special import logsumexp  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  z = _unit(host_matrix(features, "features", min_rows=2))
  n, chunk = z.shape[0], 1024
  block_lse = []
  for start in range(0, n - 1, chunk):
    rows = np.arange(start, min(start + chunk, n))
    sq = np.maximum(2.0 - 2.0 * (z[rows] @ z.T), 0.0)
    upper = np.arange(n)[None, :] > rows[:, None]  # pairs i < j
    block_lse.append(logsumexp(-t * sq[upper]))
  return float(logsumexp(block_lse) - np.log(n * (n - 1) / 2))


def alignment(features, positive_features, alpha: float = 2.0) -> float:
  """``mean_i ||z_i - z_i+||^alpha`` over positive pairs (row i of each array; Wang & Isola Eq. 4).

  Features are L2-normalised; in ``[0, 2^alpha]``, lower = better aligned.
  """
  if not (np.isfinite(alpha) and alpha > 0):
    raise ValueError(f"`alpha` must be a finite number > 0; got {alpha!r}.")
  a = _unit(host_matrix(features, "features"))
  b = _unit(host_matrix(positive_features, "positive_features"))
  if a.shape != b.shape:
    raise ValueError(f"`features` {a.shape} and `positive_features` {b.shape} must have one shape "
                     "(row i of each is a positive pair).")
  return float(np.mean(np.linalg.norm(a - b, axis=1) ** alpha))


def tolerance(features, labels) -> float:
  """Mean ``z_i^T z_j`` over pairs ``i != j`` with the same label (Wang & Liu 2021), unit ``z``.

  In ``[-1, 1]``; higher = semantically similar samples kept closer. Needs one same-label pair.
  """
  z, y = _features_labels(features, labels)
  z = _unit(z)
  total, count = 0.0, 0
  for value in np.unique(y):
    members = z[y == value]
    m = members.shape[0]
    if m >= 2:
      s = members.sum(0)
      total += float(s @ s) - m  # sum over ordered pairs i != j of z_i.z_j (self terms are 1)
      count += m * (m - 1)
  if count == 0:
    raise ValueError("`labels` has no two examples with the same label: tolerance is undefined.")
  return total / count


def angular_positions(features) -> tuple[np.ndarray, tuple[int, int]]:
  """Angles (radians) of AdaCon's angular plot (Fig. 3a-d / 4a-d) and its two endpoints.

  The pair ``(a, b)`` with the minimum cosine similarity are the endpoints, at angles 0 and
  ``theta_ab = arccos(cos(z_a, z_b))``. Every other example is placed between them by its angles to
  the two endpoints: ``theta_ab * theta_ia / (theta_ia + theta_ib)`` (our reading of "the remaining
  features are distributed based on cosine similarity with the endpoints"; exact when all features
  lie on the great circle through ``a`` and ``b`` between them).
  """
  z = _unit(host_matrix(features, "features", min_rows=2))
  cos = np.clip(z @ z.T, -1.0, 1.0)
  np.fill_diagonal(cos, np.inf)
  a, b = np.unravel_index(np.argmin(cos), cos.shape)
  np.fill_diagonal(cos, 1.0)
  theta = np.arccos(cos)
  to_a, to_b, span = theta[:, a], theta[:, b], theta[a, b]
  denom = to_a + to_b
  angles = np.where(denom > 0, span * to_a / np.where(denom > 0, denom, 1.0), 0.0)
  return angles, (int(a), int(b))


def tsne_embedding(features, *, seed: int = 0, perplexity: Optional[float] = None) -> np.ndarray:
  """2-D t-SNE (scikit-learn, PCA initialisation) of the features; ``[N, 2]``.

  ``perplexity`` must be below ``N``; default ``min(30, (N - 1) / 3)``. Exact gradients up to
  ``N = 1000`` points (faster there), Barnes-Hut above.
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top

  z = host_matrix(features, "features", min_rows=3)
  n = z.shape[0]
  if perplexity is None:
    perplexity = min(30.0, (n - 1) / 3.0)
  if not 0 < perplexity < n:
    raise ValueError(f"`perplexity` must be in (0, N={n}); got {perplexity!r}.")
  method = "exact" if n <= 1000 else "barnes_hut"
  return TSNE(n_components=2, perplexity=perplexity, init="pca", method=method,
              random_state=seed).fit_transform(z)


def _new_figure(size=(5.0, 4.0)):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=size, dpi=100)


def _save(fig, path) -> str:
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, format="png", bbox_inches="tight")  # Agg canvas, no pyplot state
  return path


def plot_similarity_vs_label_distance(features, labels, path, *, num_pairs: int = 2000,
                                      seed: int = 0, ecdf: Optional[Callable] = None,
                                      title: str = "") -> str:
  """Scatter of pair cosine similarity vs label distance (AdaCon Fig. 3e-h); returns ``path``.

  ``ecdf``: e.g. ``cj.losses.fit_ecdf(train_labels)``; the x axis is then AdaCon's
  ``|phi(y_i) - phi(y_j)|``. The title gives Pearson's r of the plotted pairs.
  """
  _, y = _features_labels(features, labels)
  if ecdf is not None:
    y = np.asarray(ecdf(y), np.float64)
  cos, dist = pair_cosine_label_distance(features, y, num_pairs=num_pairs, seed=seed)
  fig = _new_figure()
  ax = fig.subplots()
  ax.scatter(dist, cos, s=4, alpha=0.4, color="tab:blue", linewidths=0)
  ax.set_xlabel("label distance |phi(y_i) - phi(y_j)|" if ecdf is not None
                else "label distance |y_i - y_j|")
  ax.set_ylabel("cosine similarity")
  ax.set_title(f"{title + ': ' if title else ''}Pearson r = {_correlation(cos, dist):.3f}")
  return _save(fig, path)


def plot_angular(features, labels, path, *, title: str = "") -> str:
  """AdaCon's angular plot (Fig. 3a-d): one unit ray per example at :func:`angular_positions`,
  coloured from blue (low label) to red (high label); returns ``path``."""
  from matplotlib.collections import LineCollection  # pylint: disable=g-import-not-at-top

  z, y = _features_labels(features, labels)
  angles, _ = angular_positions(z)
  segments = np.stack([np.zeros((angles.size, 2)),
                       np.stack([np.cos(angles), np.sin(angles)], axis=1)], axis=1)
  fig = _new_figure((5.0, 5.0))
  ax = fig.subplots()
  lines = LineCollection(segments, cmap="coolwarm", linewidths=0.8, alpha=0.7)
  lines.set_array(y)
  ax.add_collection(lines)
  ax.set_xlim(-1.05, 1.05)
  ax.set_ylim(-1.05, 1.05)
  ax.set_aspect("equal")
  ax.set_axis_off()
  fig.colorbar(lines, ax=ax, label="label", shrink=0.7)
  ax.set_title(title or "angular plot")
  return _save(fig, path)


def plot_tsne(features, labels, path, *, seed: int = 0, perplexity: Optional[float] = None,
              title: str = "") -> str:
  """t-SNE of the features coloured by label (ACCon Fig. 3a); returns ``path``."""
  _, y = _features_labels(features, labels, min_rows=3)
  xy = tsne_embedding(features, seed=seed, perplexity=perplexity)
  fig = _new_figure()
  ax = fig.subplots()
  points = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="viridis", s=8, linewidths=0)
  fig.colorbar(points, ax=ax, label="label")
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title or "t-SNE")
  return _save(fig, path)
