"""kNN regression and ridge probe on frozen embeddings, against direct float64 computations."""

import numpy as np
import pytest

from contrastive_jax.evaluate import knn_regression
from contrastive_jax.evaluate import ridge_probe


def test_knn_regression_matches_brute_force():
  rng = np.random.default_rng(0)
  train, query = rng.normal(size=(50, 4)), rng.normal(size=(7, 4))
  y = rng.normal(size=50)
  got = knn_regression(train, y, query, k=5, chunk=3)
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  sims = unit(query) @ unit(train).T
  expected = np.array([y[np.argsort(-row)[:5]].mean() for row in sims])
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  # k = 1 on the training points themselves returns their own labels.
  np.testing.assert_allclose(knn_regression(train, y, train, k=1), y)
  with pytest.raises(ValueError, match="`k`"):
    knn_regression(train, y, query, k=51)


def test_ridge_probe_recovers_a_linear_target_and_matches_normal_equations():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 6)) * rng.uniform(0.1, 10, size=6) + 3.0
  y = x @ rng.normal(size=6) + 2.5
  np.testing.assert_allclose(ridge_probe(x, y, x[:10], alpha=0.0), y[:10], rtol=1e-8, atol=1e-8)
  alpha = 3.0
  xs = (x - x.mean(0)) / (x.std(0) + 1e-8)
  coef = np.linalg.solve(xs.T @ xs + alpha * np.eye(6), xs.T @ (y - y.mean()))
  np.testing.assert_allclose(ridge_probe(x, y, x[:5], alpha=alpha), xs[:5] @ coef + y.mean(),
                             rtol=1e-10)
  with pytest.raises(ValueError, match="`alpha`"):
    ridge_probe(x, y, x, alpha=-1.0)
