"""Shared test inputs and a float64 finite-difference helper (imported by the loss test files)."""

import numpy as np


def make_features(seed, batch, views, dim, norm='rand'):
  """float32 ``[batch, views, dim]``: 'unit' rows, 'rand' norms in [0.1, 10], 'moderate' [0.3, 3]."""
  rng = np.random.default_rng(seed)
  f = rng.normal(size=(batch, views, dim))
  f /= np.linalg.norm(f, axis=-1, keepdims=True)
  if norm == 'rand':
    f *= np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(batch, views, 1)))
  elif norm == 'moderate':  # raw squared distances stay O(10) (the un-normalised Combo term)
    f *= np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=(batch, views, 1)))
  return f.astype(np.float32)


def central_difference(fn, x, h=1e-6):
  """Central finite-difference gradient of the scalar function ``fn`` at ``x``."""
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (fn(xp) - fn(xm)) / (2 * h)
  return g
