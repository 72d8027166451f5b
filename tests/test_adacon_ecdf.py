"""AdaCon's phi: Eq. 5's ECDF and the official code's bucketed mid-rank (issue 13 item 6), against
float64 references written from the paper and from the official data loader's description."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax.losses import adacon
from contrastive_jax.losses import fit_ecdf


def eq5_ref(train, y):
  """phi(y) = #{train labels <= y} / N (AdaCon Eq. 5)."""
  return sum(1 for t in train if t <= y) / len(train)


def midrank_ref(train, y, w):
  """The official phi: bin b = floor(y / w) (Python float floor division); phi = (#labels in lower
  bins + #labels in bin b / 2) / N."""
  b = y // w
  lower = sum(1 for t in train if t // w < b)
  same = sum(1 for t in train if t // w == b)
  return (lower + same / 2) / len(train)


TRAIN = [55.0, 55.01, 55.04, 55.05, 60.0, 10.5, 10.5, 72.3, 55.0, 99.99]


def test_eq5_is_the_default():
  phi = fit_ecdf(np.array(TRAIN))
  for y in TRAIN:
    assert float(phi(np.array([y], np.float32))[0]) == pytest.approx(eq5_ref(TRAIN, y), abs=1e-7)


@pytest.mark.parametrize("w", [0.05, 1.0, 5.0])
def test_bucketed_midrank_matches_the_official_definition(w):
  phi = fit_ecdf(np.array(TRAIN), bucket=w)
  got = phi(np.array(TRAIN, np.float32))
  want = [midrank_ref(TRAIN, y, w) for y in TRAIN]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_bucket_edges_follow_float_floor_division():
  """55.0 // 0.05 is 1099 in float64 (as in pandas): 55.0 shares its bin with 54.96, not 55.01."""
  assert 55.0 // 0.05 == 1099.0
  train = [54.96, 55.0, 55.01, 70.0]
  phi = fit_ecdf(np.array(train), bucket=0.05)
  got = phi(np.array(train, np.float32))
  assert got[0] == got[1] != got[2]
  np.testing.assert_allclose(got, [midrank_ref(train, y, 0.05) for y in train], atol=1e-7)


def test_bucketed_phi_on_device_equals_host_and_moves_the_loss_a_little():
  rng = np.random.default_rng(0)
  train = np.round(rng.uniform(20, 80, 200), 2)
  eq5, mid = fit_ecdf(train), fit_ecdf(train, bucket=0.05)
  y = jnp.asarray(train[:16], jnp.float32)
  np.testing.assert_array_equal(jax.jit(lambda v: mid(v))(y), mid(np.asarray(y)))
  f = jnp.asarray(rng.normal(size=(16, 2, 8)), jnp.float32)
  a, b = float(adacon(f, y, eq5)), float(adacon(f, y, mid))
  assert math.isfinite(a) and math.isfinite(b) and a != b
  assert abs(a - b) / abs(a) < 5e-2


@pytest.mark.parametrize("bad", [0.0, -0.05, float("nan"), float("inf"), True, "0.05"])
def test_bad_bucket_is_a_value_error_naming_it(bad):
  with pytest.raises(ValueError, match="bucket"):
    fit_ecdf(np.array(TRAIN), bucket=bad)
