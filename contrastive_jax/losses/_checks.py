"""Argument validation shared by the losses: shapes at trace time, values when they are concrete."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> Optional[np.ndarray]:
  """``x`` as a NumPy array, or None when it is a tracer (values unknown until run time)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def compute_dtype(x: jax.Array):
  """float32 for losses and reductions (float64 when the input is float64 and x64 is on)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def check_features(features, axis_name: Optional[str] = None, name: str = "features"):
  """Checks ``features`` is ``[batch, views, dim]`` floating point; returns it as a float array."""
  if not hasattr(features, "shape") or len(features.shape) != 3:
    shape = getattr(features, "shape", type(features).__name__)
    raise ValueError(f"`{name}` must have shape [batch, views, dim]; got {shape}. "
                     "Stack the views of each sample along axis 1 (e.g. features[:, None] for one view).")
  batch, views, dim = features.shape
  if batch < 1 or views < 1 or dim < 1:
    raise ValueError(f"`{name}` has an empty axis: shape {features.shape}.")
  if axis_name is None and batch * views < 2:
    raise ValueError(f"`{name}` needs at least 2 rows (batch * views) to contrast; got shape "
                     f"{features.shape}.")
  features = jnp.asarray(features)
  if not jnp.issubdtype(features.dtype, jnp.floating):
    raise ValueError(f"`{name}` must be floating point; got dtype {features.dtype}.")
  return features.astype(compute_dtype(features))


def check_per_sample(values, batch: int, name: str, *, allow_vector: bool = False,
                     finite: bool = True):
  """Checks a per-sample array (labels, cdf, ...) has leading size ``batch`` and finite values."""
  if values is None:
    raise ValueError(f"`{name}` is required.")
  if not hasattr(values, "shape"):
    values = np.asarray(values)
  ranks = (1, 2) if allow_vector else (1,)
  if len(values.shape) not in ranks or values.shape[0] != batch:
    expected = "[batch] or [batch, k]" if allow_vector else "[batch]"
    raise ValueError(f"`{name}` must have shape {expected} with batch={batch} (the features' first "
                     f"axis); got {tuple(values.shape)}.")
  if finite:
    host = concrete(values)
    if host is not None and np.issubdtype(host.dtype, np.floating):
      bad = int(np.sum(~np.isfinite(host)))
      if bad:
        raise ValueError(f"`{name}` has {bad} non-finite value(s) (NaN or inf).")
  return jnp.asarray(values)


def check_positive(value, name: str):
  """Checks a scalar hyperparameter is finite and > 0 (when it is concrete)."""
  host = concrete(value)
  if host is not None and (host.ndim != 0 or not np.isfinite(host) or host <= 0):
    raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}.")


def host_vector(values, name: str, *, min_size: int = 1) -> np.ndarray:
  """A host-side 1-D float64 array (a trailing axis of size 1 is squeezed), finite, with at least
  ``min_size`` entries; ValueError naming ``name`` otherwise. For metrics and label statistics."""
  if values is None:
    raise ValueError(f"`{name}` is required.")
  arr = np.asarray(values)
  if arr.ndim == 2 and arr.shape[1] == 1:
    arr = arr[:, 0]
  if arr.ndim != 1:
    raise ValueError(f"`{name}` must be 1-D (or [N, 1]); got shape {arr.shape}.")
  if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    raise ValueError(f"`{name}` must be numeric; got dtype {arr.dtype}.")
  arr = arr.astype(np.float64)
  if arr.size < min_size:
    raise ValueError(f"`{name}` needs at least {min_size} entr{'y' if min_size == 1 else 'ies'}; "
                     f"got {arr.size}.")
  bad = int(np.sum(~np.isfinite(arr)))
  if bad:
    raise ValueError(f"`{name}` has {bad} non-finite value(s) (NaN or inf).")
  return arr
