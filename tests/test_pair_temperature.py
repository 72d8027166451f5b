"""A per-pair (callable) temperature in supcon / adacon, e.g. a DySTreSS profile (thesis Eq. 6.16)."""

import functools

import jax
import numpy as np
import pytest

import contrastive_jax as cj


def _profile_np(c, tau_min, tau_max):
  """Eq. 6.16 written independently: tau_min + (tau_max - tau_min)/2 * (1 + cos(pi (1 + c)))."""
  return tau_min + 0.5 * (tau_max - tau_min) * (1.0 + np.cos(np.pi * (1.0 + c)))


def _reference(features, labels, cdf=None, tau_min=0.07, tau_max=0.2):
  """SupCon (cdf None) / AdaCon with tau_ij from Eq. 6.16, float64 loops."""
  f = np.asarray(features, np.float64)
  b, v, d = f.shape
  z = f.reshape(b * v, d)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  y = np.repeat(np.asarray(labels, np.float64), v)
  phi = None if cdf is None else np.repeat(np.asarray(cdf, np.float64), v)
  total = 0.0
  for i in range(b * v):
    logits = []
    for a in range(b * v):
      c = z[i] @ z[a]
      margin = 0.0 if (phi is None or y[a] == y[i]) else 2 * abs(phi[i] - phi[a])
      logits.append((c + margin) / _profile_np(np.clip(c, -1, 1), tau_min, tau_max))
    logits = np.array(logits)
    others = [a for a in range(b * v) if a != i]
    lse = np.log(np.sum(np.exp(logits[others] - logits[others].max()))) + logits[others].max()
    pos = [p for p in others if y[p] == y[i]]
    if pos:
      total += -np.mean([logits[p] - lse for p in pos])
  return total / (b * v)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_and_adacon_with_dystress_temperature_match_reference(views):
  rng = np.random.default_rng(views)
  f = rng.normal(size=(6, views, 5)).astype(np.float32)
  y = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0], np.float32)
  cdf = np.array([0.1, 0.4, 0.4, 0.6, 0.9, 0.9], np.float32)
  tau = functools.partial(cj.losses.dystress_temperature, tau_min=0.07, tau_max=0.2)
  supcon = lambda x: cj.losses.supcon(x, y, temperature=tau, base_temperature=None)
  # One jitted program for the three results (eager dispatch compiled every primitive op by op for
  # each of the three shapes). Eager == jit for these losses is test_losses.py's
  # test_jit_matches_eager, and the next test runs the callable temperature eagerly.
  supcon_value, adacon_value, grads = jax.jit(
      lambda x: (supcon(x), cj.losses.adacon(x, y, cdf, temperature=tau), jax.grad(supcon)(x)))(f)
  np.testing.assert_allclose(supcon_value, _reference(f, y), rtol=1e-5)
  np.testing.assert_allclose(adacon_value, _reference(f, y, cdf), rtol=1e-5)
  assert np.all(np.isfinite(grads))


def test_constant_callable_equals_scalar_and_base_temperature_is_refused():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(8, 2, 4)).astype(np.float32)
  y = rng.integers(0, 3, size=8).astype(np.float32)
  np.testing.assert_allclose(
      cj.losses.supcon(f, y, temperature=lambda c: 0.1 + 0.0 * c, base_temperature=None),
      cj.losses.supcon(f, y, temperature=0.1, base_temperature=0.1), rtol=1e-6)
  with pytest.raises(ValueError, match="base_temperature"):
    cj.losses.supcon(f, y, temperature=lambda c: 0.1 + 0.0 * c)
