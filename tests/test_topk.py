"""Top-k accuracy of kNN and of the linear probe (thesis Ch. 5/6: top-1 and top-5; issue 13 item 3)."""

import numpy as np
import pytest

from contrastive_jax.evaluate import knn_topk
from contrastive_jax.evaluate import linear_probe_topk
from contrastive_jax.evaluate import topk_accuracy
from contrastive_jax.evaluate.knn import knn_top1
from contrastive_jax.evaluate.linear_probe import linear_probe_accuracy


def topk_ref(scores, labels, k):
  """Row by row: the label is a hit if fewer than k classes beat it (a higher score, or an equal
  score and a lower class id)."""
  hits = 0
  for row, y in zip(np.asarray(scores, np.float64), labels):
    better = sum(1 for c, v in enumerate(row) if v > row[y] or (v == row[y] and c < y))
    hits += better < k
  return hits / len(labels)


def test_topk_matches_the_reference_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties
  labels = rng.integers(0, 7, size=50)
  for k in (1, 2, 5, 7, 9):
    assert topk_accuracy(scores, labels, k) == pytest.approx(topk_ref(scores, labels, min(k, 7)))
  assert topk_accuracy(scores, labels, 7) == 1.0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_k_names_it(bad):
  with pytest.raises(ValueError, match="`k`"):
    topk_accuracy(np.zeros((2, 3)), [0, 1], bad)


def test_knn_and_probe_top1_agree_with_the_top1_functions():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(8, 16))
  y_train, y_test = rng.integers(0, 8, 200), rng.integers(0, 8, 60)
  train = centres[y_train] + 0.8 * rng.normal(size=(200, 16))
  test = centres[y_test] + 0.8 * rng.normal(size=(60, 16))
  knn = knn_topk(train, y_train, test, y_test, ks=(1, 5), k=20, temperature=0.1)
  assert knn[1] == knn_top1(train, y_train, test, y_test, k=20, temperature=0.1)
  assert knn[1] <= knn[5] <= 1.0
  probe = linear_probe_topk(train, y_train, test, y_test, ks=(1, 5), steps=100)
  assert probe[1] == linear_probe_accuracy(train, y_train, test, y_test, steps=100)
  assert probe[1] <= probe[5]
