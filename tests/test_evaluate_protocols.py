"""Evaluation protocols against float64 NumPy references, scikit-learn and closed forms.

kNN (InstDisc weighted vote), linear probe (vs sklearn LogisticRegression / ridge normal equations),
best-by-validation selection, k-fold splits and the fold ensemble, ROC AUC / sensitivity /
specificity / Youden / bootstrap, uniformity / alignment / tolerance / label-distance Pearson,
the PNG plots, and Lanczos Ritz values vs ``np.linalg.eigvalsh`` of explicit Hessians.
"""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold
from sklearn.neighbors import KNeighborsClassifier

from contrastive_jax import evaluate as ev

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _unit(a):
  return a / np.linalg.norm(a, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------- kNN ---

def _knn_reference(train, labels, query, k, temp, num_classes):
  """InstDisc: sum over the k most cosine-similar training points of exp(s / T), per class."""
  sims = _unit(query) @ _unit(train).T
  scores = np.zeros((len(query), num_classes))
  for q, row in enumerate(sims):
    for i in np.argsort(-row)[:k]:
      scores[q, labels[i]] += np.exp(row[i] / temp)
  return scores


def test_knn_scores_match_instdisc_reference_and_sklearn():
  rng = np.random.default_rng(0)
  train, query = rng.normal(size=(60, 5)), rng.normal(size=(13, 5))
  labels = rng.integers(0, 4, 60)
  got = np.asarray(ev.knn_class_scores(train, labels, query, k=10, temperature=0.07, chunk=4))
  expected = _knn_reference(train, labels, query, 10, 0.07, 4)
  # The scores are InstDisc's times exp(-1/T) (overflow-free); the argmax is the same.
  np.testing.assert_allclose(got * np.exp(1 / 0.07), expected, rtol=1e-4)
  pred = ev.knn_classify(train, labels, query, k=10, temperature=0.07, chunk=4)
  np.testing.assert_array_equal(pred, np.argmax(expected, 1))
  clf = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute",
                             weights=lambda d: np.exp((1.0 - d) / 0.07)).fit(train, labels)
  np.testing.assert_array_equal(pred, clf.predict(query))
  query_labels = rng.integers(0, 4, 13)
  assert ev.knn_top1(train, labels, query, query_labels, k=10) == pytest.approx(
      clf.score(query, query_labels))


def test_knn_closed_forms_and_errors():
  rng = np.random.default_rng(1)
  train, labels = rng.normal(size=(20, 3)), rng.integers(0, 3, 20)
  # k = 1 on the training points themselves returns their own labels: top-1 accuracy 1.
  assert ev.knn_top1(train, labels, train, labels, k=1) == 1.0
  # Scaling a feature row does not change cosine kNN.
  np.testing.assert_array_equal(ev.knn_classify(train, labels, 3.0 * train[:5], k=4),
                                ev.knn_classify(train, labels, train[:5], k=4))
  assert ev.top1_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
  with pytest.raises(ValueError, match="`k`"):
    ev.knn_class_scores(train, labels, train, k=21)
  with pytest.raises(ValueError, match="`train_labels`"):
    ev.knn_class_scores(train, -labels - 1, train, k=2)
  with pytest.raises(ValueError, match="`query_features` dim"):
    ev.knn_class_scores(train, labels, train[:, :2], k=2)
  with pytest.raises(ValueError, match="`temperature`"):
    ev.knn_class_scores(train, labels, train, k=2, temperature=0.0)
  with pytest.raises(ValueError, match="non-finite"):
    ev.knn_class_scores(np.where(train > 1, np.nan, train), labels, train, k=2)


# -------------------------------------------------------------------------------- linear probe ---

def _problem(seed, n=120, d=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d) + 2.0
  return rng, x, (x - x.mean(0)) / (x.std(0) + 1e-8)


def test_logistic_probe_matches_sklearn_logistic_regression():
  rng, x, xs = _problem(0)
  y = np.argmax(x @ rng.normal(size=(3, 3)) + rng.normal(size=(120, 3)), 1)
  l2 = 0.01
  probe = ev.fit_linear_probe(x, y, l2=l2, steps=1000)
  # sklearn minimises C * sum CE + ||W||^2 / 2 == mean CE + ||W||^2 / (2 C N): C = 1 / (l2 N).
  ref = LogisticRegression(C=1.0 / (l2 * 120), tol=1e-12, max_iter=10000).fit(xs, y)
  probs = np.asarray(jax.nn.softmax(ev.probe_outputs(probe, x[:30])))
  np.testing.assert_allclose(probs, ref.predict_proba(xs[:30]), atol=1e-4)
  np.testing.assert_array_equal(ev.probe_predict(probe, x), ref.predict(xs))
  assert probe.losses[-1] < probe.losses[0]
  assert ev.linear_probe_accuracy(x, y, x, y, l2=l2) == pytest.approx(ref.score(xs, y))


def test_regression_probe_reaches_the_ridge_solution():
  rng, x, xs = _problem(1)
  y = x @ rng.normal(size=3) + 50.0 + 0.3 * rng.normal(size=120)
  l2 = 0.05
  got = ev.linear_probe(x, y, x[:20], task="regression", l2=l2)
  # mean squared error + l2/2 ||w||^2  <=>  ||r||^2 + alpha ||w||^2 with alpha = N l2 / 2.
  alpha = 120 * l2 / 2
  coef = np.linalg.solve(xs.T @ xs + alpha * np.eye(3), xs.T @ (y - y.mean()))
  np.testing.assert_allclose(got, xs[:20] @ coef + y.mean(), atol=1e-4)
  np.testing.assert_allclose(got, ev.ridge_probe(x, y, x[:20], alpha=alpha), atol=1e-4)
  targets = np.stack([y, -2.0 * y + 1.0], axis=1)  # vector targets: one ridge per column
  got2 = ev.linear_probe(x, targets, x[:20], task="regression", l2=l2)
  assert got2.shape == (20, 2)
  np.testing.assert_allclose(got2[:, 1], -2.0 * got + 1.0, atol=5e-4)


def test_minibatch_probe_is_a_function_of_its_key():
  rng, x, _ = _problem(2, n=64)
  y = (x[:, 0] > x[:, 0].mean()).astype(int)
  fit = lambda key: ev.fit_linear_probe(x, y, steps=40, batch_size=16, key=key)
  a, b, c = fit(jax.random.key(0)), fit(jax.random.key(0)), fit(jax.random.key(1))
  chex.assert_trees_all_equal(a.weights, b.weights)
  assert not np.allclose(a.weights, c.weights)
  assert a.losses[-1] < a.losses[0]
  with pytest.raises(ValueError, match="`key`"):
    ev.fit_linear_probe(x, y, batch_size=16)
  with pytest.raises(ValueError, match="`batch_size`"):
    ev.fit_linear_probe(x, y, batch_size=65, key=jax.random.key(0))
  with pytest.raises(ValueError, match="`task`"):
    ev.fit_linear_probe(x, y, task="ranking")
  with pytest.raises(ValueError, match="`l2`"):
    ev.fit_linear_probe(x, y, l2=-1.0)
  with pytest.raises(ValueError, match="`features` dim"):
    ev.probe_predict(a, x[:, :2])
  del rng


def test_best_by_validation_selection():
  assert ev.best_index([0.5, 0.9, 0.9, 0.1]) == 1  # ties -> earliest
  assert ev.best_index([3.0, 1.0, 1.0, 2.0], mode="min") == 1
  assert ev.best_index([np.nan, 0.2, np.inf * 0]) == 1  # diverged runs are never picked
  assert ev.best_index([np.nan, 2.0, 1.0], mode="min") == 2
  assert ev.select_best(["lr=0.1", "lr=0.3", "lr=1"], [0.7, 0.8, 0.8]) == ("lr=0.3", 1)
  with pytest.raises(ValueError, match="no finite"):
    ev.best_index([np.nan, np.nan])
  with pytest.raises(ValueError, match="same length"):
    ev.select_best([1, 2], [0.1])
  with pytest.raises(ValueError, match="`mode`"):
    ev.best_index([1.0], mode="best")


# ----------------------------------------------------------------------------- cross-validation ---

def test_plain_folds_partition_deterministically_like_sklearn_kfold():
  folds = ev.kfold_indices(23, 4, seed=3)
  np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(23))
  assert sorted(len(f) for f in folds) == [5, 6, 6, 6]
  for f, g in zip(folds, ev.kfold_indices(23, 4, seed=3)):
    np.testing.assert_array_equal(f, g)
  assert any(not np.array_equal(f, g) for f, g in zip(folds, ev.kfold_indices(23, 4, seed=4)))
  for f, (_, test) in zip(ev.kfold_indices(23, 4, shuffle=False), KFold(4).split(np.arange(23))):
    np.testing.assert_array_equal(f, test)
  with pytest.raises(ValueError, match="`num_folds`"):
    ev.kfold_indices(3, 4)
  with pytest.raises(ValueError, match="`num_folds`"):
    ev.kfold_indices(10, 1)


def test_stratified_and_grouped_folds():
  rng = np.random.default_rng(0)
  classes = rng.integers(0, 3, 50)
  folds = ev.kfold_indices(50, 4, seed=1, stratify=classes)
  counts = np.array([[np.sum(classes[f] == c) for c in range(3)] for f in folds])
  assert np.all(counts.max(0) - counts.min(0) <= 1)
  np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(50))
  groups = rng.integers(0, 12, 50)  # 12 patients, several images each
  for strat in (None, classes):
    folds = ev.kfold_indices(50, 3, seed=2, groups=groups, stratify=strat)
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(50))
    owner = {}
    for k, f in enumerate(folds):
      for g in np.unique(groups[f]):
        assert owner.setdefault(g, k) == k, f"group {g} split between folds"
    assert all(len(f) > 0 for f in folds)
  with pytest.raises(ValueError, match="number of groups"):
    ev.kfold_indices(50, 13, groups=groups)
  with pytest.raises(ValueError, match="`groups`"):
    ev.kfold_indices(50, 3, groups=groups[:10])


def test_fold_ensemble_is_the_mean_of_the_fold_models():
  preds = [np.array([1.0, 2.0]), np.array([3.0, 6.0]), np.array([2.0, 1.0])]
  np.testing.assert_allclose(ev.fold_ensemble(preds), [2.0, 3.0])
  np.testing.assert_allclose(ev.fold_ensemble(preds, weights=[1, 0, 1]), [1.5, 1.5])
  with pytest.raises(ValueError, match="one shape"):
    ev.fold_ensemble([np.zeros(2), np.zeros(3)])
  with pytest.raises(ValueError, match="`weights`"):
    ev.fold_ensemble(preds, weights=[1, -1, 1])


def test_cross_validate_driver():
  groups = np.repeat(np.arange(10), 3)
  y = np.arange(30, dtype=float)
  external = np.array([1.0, 2.0])
  seen = []

  def fit_predict(train, val, test):
    seen.append((train, val, test))
    offset = float(len(seen))  # each fold model predicts the external set differently
    return {"test": 2.0 * y[test], "external": external * offset}

  result = ev.cross_validate(fit_predict, 30, 5, seed=0, groups=groups, inner_folds=4)
  np.testing.assert_allclose(result.oof, 2.0 * y)
  np.testing.assert_allclose(result.ensemble["external"], external * np.mean([1, 2, 3, 4, 5]))
  for train, val, test in seen:
    assert len(val) > 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val, test])), np.arange(30))
    for a, b in itertools.combinations((train, val, test), 2):
      assert not set(groups[a]) & set(groups[b])  # no patient in two parts
  plain = ev.cross_validate(lambda tr, va, te: y[te] + 1, 30, 3)
  np.testing.assert_allclose(plain.oof, y + 1)
  assert all(s["val"].size == 0 for s in plain.splits)
  with pytest.raises(ValueError, match="test predictions"):
    ev.cross_validate(lambda tr, va, te: y[tr], 30, 3)
  with pytest.raises(ValueError, match="'test'"):
    ev.cross_validate(lambda tr, va, te: {"pred": y[te]}, 30, 3)


# ------------------------------------------------------------------------------ classification ---

def _auc_pairs(scores, labels):
  """P(score_pos > score_neg) + 0.5 P(equal), over all (positive, negative) pairs."""
  pos, neg = scores[labels == 1], scores[labels == 0]
  diff = pos[:, None] - neg[None, :]
  return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_roc_auc_rank_formula_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 80)
  scores = np.round(rng.normal(size=80) + labels, 1)  # many ties
  got = ev.roc_auc(scores, labels)
  assert got == pytest.approx(_auc_pairs(scores, labels), abs=1e-12)
  assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
  assert ev.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0  # perfectly separated
  assert ev.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
  assert ev.roc_auc([0.5] * 4, [True, False, True, False]) == 0.5
  with pytest.raises(ValueError, match="both positive and negative"):
    ev.roc_auc([0.1, 0.2], [1, 1])
  with pytest.raises(ValueError, match="binary"):
    ev.roc_auc([0.1, 0.2], [0, 2])
  with pytest.raises(ValueError, match="`scores`"):
    ev.roc_auc([0.1, np.nan], [0, 1])


def test_sensitivity_specificity_and_youden_threshold():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 60)
  scores = np.round(rng.uniform(size=60) * 0.6 + 0.4 * labels, 2)
  tp = np.sum((scores >= 0.5) & (labels == 1))
  tn = np.sum((scores < 0.5) & (labels == 0))
  sens, spec = ev.sensitivity_specificity(scores, labels, 0.5)
  assert sens == pytest.approx(tp / np.sum(labels == 1))
  assert spec == pytest.approx(tn / np.sum(labels == 0))
  metrics = ev.binary_metrics(scores, labels, 0.5)
  assert metrics["accuracy"] == pytest.approx((tp + tn) / 60)
  assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores))
  fpr, tpr, _ = roc_curve(labels, scores)
  t = ev.youden_threshold(scores, labels)
  s, p = ev.sensitivity_specificity(scores, labels, t)
  assert s + p - 1 == pytest.approx(np.max(tpr - fpr))
  assert ev.youden_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.8


def test_bootstrap_intervals_are_deterministic_percentiles():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, 40)
  scores = rng.normal(size=40) + labels
  a = ev.bootstrap_ci(ev.roc_auc, scores, labels, key=0, num_resamples=200)
  b = ev.bootstrap_ci(ev.roc_auc, scores, labels, key=jax.random.key(0), num_resamples=200)
  c = ev.bootstrap_ci(ev.roc_auc, scores, labels, key=1, num_resamples=200)
  np.testing.assert_array_equal(a.samples, b.samples)
  assert not np.array_equal(a.samples, c.samples)
  assert a.estimate == ev.roc_auc(scores, labels)
  low, high = np.percentile(a.samples, [5, 95])
  assert (a.low, a.high) == (low, high) and low < a.estimate < high
  # The bootstrap standard error of a mean is ~ std / sqrt(n).
  values = rng.normal(size=400)
  mean_ci = ev.bootstrap_ci(np.mean, values, key=3, num_resamples=500)
  assert np.std(mean_ci.samples) == pytest.approx(values.std() / 20, rel=0.15)
  const = ev.bootstrap_ci(np.mean, np.full(10, 2.5), key=0, num_resamples=20)
  assert (const.low, const.high) == (2.5, 2.5)
  # Stratified resampling keeps each class's count, so AUC is always defined.
  one_pos = np.array([1, 0, 0, 0, 0, 0])
  strat = ev.bootstrap_ci(ev.roc_auc, np.arange(6.0), one_pos, key=0, num_resamples=50,
                          stratify=one_pos)
  assert strat.num_failed == 0 and strat.samples.size == 50
  free = ev.bootstrap_ci(ev.roc_auc, np.arange(6.0), one_pos, key=0, num_resamples=50)
  assert free.num_failed > 0 and free.samples.size == 50 - free.num_failed
  with pytest.raises(ValueError, match="first axis"):
    ev.bootstrap_ci(ev.roc_auc, scores, labels[:5], key=0)
  with pytest.raises(ValueError, match="`percentiles`"):
    ev.bootstrap_ci(np.mean, values, key=0, percentiles=(95, 5))


# ------------------------------------------------------------------------------------ analysis ---

def test_uniformity_alignment_closed_forms_and_reference():
  e = np.array([[1.0, 0.0, 0.0]])
  assert ev.uniformity(np.concatenate([e, -e])) == pytest.approx(-8.0)  # log exp(-2 * 4)
  assert ev.uniformity(np.concatenate([e, 5 * e, 2 * e])) == pytest.approx(0.0)
  assert ev.alignment(e, -3 * e) == pytest.approx(4.0)
  assert ev.alignment(e, 2 * e) == pytest.approx(0.0)
  rng = np.random.default_rng(0)
  z, zp = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
  u = _unit(z)
  terms = [np.exp(-2.0 * np.sum((u[i] - u[j]) ** 2)) for i in range(9) for j in range(i + 1, 9)]
  assert ev.uniformity(z) == pytest.approx(np.log(np.mean(terms)), rel=1e-12)
  assert ev.uniformity(z, t=0.5) < 0
  up = _unit(zp)
  assert ev.alignment(z, zp) == pytest.approx(np.mean(np.sum((u - up) ** 2, 1)), rel=1e-12)
  assert ev.alignment(z, zp, alpha=1) == pytest.approx(np.mean(np.linalg.norm(u - up, axis=1)))
  with pytest.raises(ValueError, match="all-zero"):
    ev.uniformity(np.zeros((3, 2)))
  with pytest.raises(ValueError, match="one shape"):
    ev.alignment(z, zp[:3])


def test_tolerance_and_cosine_label_pearson():
  rng = np.random.default_rng(1)
  z, y = rng.normal(size=(12, 3)), rng.integers(0, 3, 12)
  u = _unit(z)
  same = [u[i] @ u[j] for i in range(12) for j in range(12) if i != j and y[i] == y[j]]
  assert ev.tolerance(z, y) == pytest.approx(np.mean(same), rel=1e-12)
  e = np.eye(2)
  assert ev.tolerance(np.array([e[0], 2 * e[0], e[1], e[1]]), [0, 0, 1, 1]) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="same label"):
    ev.tolerance(z[:3], [0, 1, 2])
  labels = rng.uniform(0, 100, 12)
  pairs = [(u[i] @ u[j], abs(labels[i] - labels[j])) for i in range(12) for j in range(i + 1, 12)]
  expected = pearsonr(*np.array(pairs).T)[0]
  assert ev.cosine_label_pearson(z, labels) == pytest.approx(expected, rel=1e-10)
  assert ev.cosine_label_pearson(z, labels / 100) == pytest.approx(expected, rel=1e-10)
  # Embeddings whose angle is the label: similarity falls with label distance.
  angle = rng.uniform(0, np.pi, 30)
  circle = np.stack([np.cos(angle), np.sin(angle)], 1)
  assert ev.cosine_label_pearson(circle, angle) < -0.9
  sampled = ev.cosine_label_pearson(circle, angle, num_pairs=500, seed=4)
  assert sampled == ev.cosine_label_pearson(circle, angle, num_pairs=500, seed=4) < -0.9
  cos, dist = ev.pair_cosine_label_distance(circle, angle, num_pairs=500, seed=4)
  np.testing.assert_allclose(cos, np.cos(dist), atol=1e-12)


def test_angular_positions_recover_an_arc():
  angle = np.array([0.3, 1.1, 2.6, 0.7, 1.9])
  arc = 4.0 * np.stack([np.cos(angle), np.sin(angle), np.zeros(5)], 1)
  got, (a, b) = ev.angular_positions(arc)
  assert {a, b} == {0, 2}  # the least similar pair
  np.testing.assert_allclose(got, np.abs(angle - angle[a]), atol=1e-7)


def test_plots_write_png_files(tmp_path):
  rng = np.random.default_rng(2)
  y = rng.uniform(0, 1, 30)
  z = np.stack([np.cos(2 * y), np.sin(2 * y), 0.1 * rng.normal(size=30)], 1)
  paths = [
      ev.plot_similarity_vs_label_distance(z, y, tmp_path / "a" / "scatter.png", num_pairs=200),
      ev.plot_angular(z, y, str(tmp_path / "angular.png")),
      ev.plot_tsne(z, y, tmp_path / "tsne.png", seed=0),
  ]
  for path in paths:
    with open(path, "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n"
  assert ev.tsne_embedding(z, seed=0).shape == (30, 2)
  with pytest.raises(ValueError, match="`perplexity`"):
    ev.tsne_embedding(z, perplexity=30)
  with pytest.raises(ValueError, match="`labels`"):
    ev.plot_angular(z, y[:5], tmp_path / "bad.png")


# ------------------------------------------------------------------------------------- Hessian ---

def _pytree_quadratic(a, b):
  def loss(p):
    x = jnp.concatenate([p["w"], p["m"].reshape(-1)])
    return 0.5 * x @ jnp.asarray(a, x.dtype) @ x + jnp.asarray(b, x.dtype) @ x
  return loss


def test_lanczos_ritz_values_of_a_quadratic_equal_its_eigenvalues():
  rng = np.random.default_rng(0)
  m = rng.normal(size=(7, 7))
  a = (m + m.T) / 2  # indefinite: negative eigenvalues too
  params = {"w": jnp.ones(3), "m": jnp.ones((2, 2))}
  got = ev.hessian_eigenspectrum(_pytree_quadratic(a, rng.normal(size=7)), params,
                                 jax.random.key(0), num_iterations=7)
  np.testing.assert_allclose(got, np.linalg.eigvalsh(a), atol=2e-5)


@pytest.mark.usefixtures("x64")
def test_lanczos_breakdown_interlacing_and_weights():
  rng = np.random.default_rng(1)
  q = np.linalg.qr(rng.normal(size=(7, 7)))[0]
  eig = np.array([-3.0, -3.0, 1.0, 1.0, 1.0, 2.0, 2.0])  # Krylov space of dim 3: restarts
  a = q @ np.diag(eig) @ q.T
  params = {"w": jnp.ones(3, jnp.float64), "m": jnp.ones((2, 2), jnp.float64)}
  loss = _pytree_quadratic(a, np.zeros(7))
  values, weights = ev.hessian_eigenspectrum(loss, params, jax.random.key(1), num_iterations=7,
                                             return_weights=True)
  np.testing.assert_allclose(values, eig, atol=1e-10)
  assert float(jnp.sum(weights)) == pytest.approx(1.0)
  # Fewer steps on a generic matrix: Cauchy interlacing lam_k <= theta_k <= lam_{k + n - m}.
  m = rng.normal(size=(7, 7))
  a = (m + m.T) / 2
  lam = np.linalg.eigvalsh(a)
  theta = np.asarray(ev.hessian_eigenspectrum(_pytree_quadratic(a, np.zeros(7)), params,
                                              jax.random.key(2), num_iterations=4))
  assert np.all(lam[:4] <= theta + 1e-10) and np.all(theta <= lam[3:] + 1e-10)
  with pytest.raises(ValueError, match="`num_iterations`"):
    ev.hessian_eigenspectrum(loss, params, jax.random.key(0), num_iterations=8)
  with pytest.raises(ValueError, match="scalar"):
    ev.hessian_eigenspectrum(lambda p: p["w"], params, jax.random.key(0), num_iterations=2)


def _mlp_numpy(flat, x, y):
  w1, b1, w2, b2 = flat[:6].reshape(2, 3), flat[6:9], flat[9:12].reshape(3, 1), flat[12:]
  return np.mean((np.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2)


@pytest.mark.usefixtures("x64")
def test_hessian_of_a_small_mlp_matches_finite_differences():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 1))
  flat = rng.normal(size=13)
  h, eye = 1e-4, np.eye(13)
  hess = np.zeros((13, 13))
  for i, j in itertools.product(range(13), repeat=2):
    ei, ej = h * eye[i], h * eye[j]
    f = lambda d: _mlp_numpy(flat + d, x, y)  # pylint: disable=cell-var-from-loop
    hess[i, j] = (f(ei + ej) - f(ei - ej) - f(-ei + ej) + f(-ei - ej)) / (4 * h * h)
  params = {"w1": jnp.asarray(flat[:6].reshape(2, 3)), "b1": jnp.asarray(flat[6:9]),
            "w2": jnp.asarray(flat[9:12].reshape(3, 1)), "b2": jnp.asarray(flat[12:])}

  def loss(p):
    return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y) ** 2)

  got = ev.hessian_eigenspectrum(loss, params, jax.random.key(0), num_iterations=13)
  np.testing.assert_allclose(got, np.linalg.eigvalsh((hess + hess.T) / 2), atol=1e-6)
  v = {k: jnp.ones_like(p) for k, p in params.items()}
  hv = ev.hessian_vector_product(loss, params, v)
  chex.assert_trees_all_close(hv["w1"].reshape(-1), hess[:6] @ np.ones(13), atol=1e-6)
