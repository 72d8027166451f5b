"""Argument validation shared by the losses: shapes at trace time, values when they are concrete.

Concrete (host-visible) inputs are checked on the host and raise ``ValueError`` naming the argument.
Traced inputs (inside ``jit``, ``grad``, ``shard_map``) cannot be inspected; :func:`nan_unless_valid`
makes the loss NaN instead (value and gradient) when one of them is non-finite or out of range, so a
bad batch can never produce a finite loss.
"""

from __future__ import annotations

import functools
import operator
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> Optional[np.ndarray]:
  """``x`` as a NumPy array, or None when it is a tracer (values unknown until run time)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def is_traced(x) -> bool:
  """True for a JAX tracer (a value unknown until run time)."""
  return isinstance(x, jax.core.Tracer)


def _check_finite_host(x, name: str):
  host = concrete(x)
  if host is not None and np.issubdtype(host.dtype, np.floating):
    bad = int(np.sum(~np.isfinite(host)))
    if bad:
      raise ValueError(f"`{name}` has {bad} non-finite value(s) (NaN or inf).")


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
  dtype = getattr(features, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"`{name}` must be floating point; got dtype {dtype}.")
  _check_finite_host(features, name)
  features = jnp.asarray(features)
  return features.astype(compute_dtype(features))


def check_views(features, min_views: int, loss: str, name: str = "features"):
  """``features`` needs ``views >= min_views``: the self-supervised (SimCLR-style) losses, whose
  positives are the other views of a sample, refuse one view (it would give a constant loss)."""
  if features.shape[1] < min_views:
    raise ValueError(f"`{name}` must have at least {min_views} views for {loss} (positives are "
                     f"the other views of a sample); got shape {tuple(features.shape)}.")


def check_per_sample(values, batch: int, name: str, *, allow_vector: bool = False,
                     finite: bool = True):
  """Checks a per-sample array (labels, cdf, ...) has leading size ``batch`` and finite values."""
  if values is None:
    raise ValueError(f"`{name}` is required.")
  if not hasattr(values, "shape"):
    values = np.asarray(values)
  dtype = values.dtype
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
          or dtype == np.bool_):
    raise ValueError(f"`{name}` must be numeric (integer, floating point or bool); got dtype "
                     f"{dtype}.")
  ranks = (1, 2) if allow_vector else (1,)
  if len(values.shape) not in ranks or values.shape[0] != batch:
    expected = "[batch] or [batch, k]" if allow_vector else "[batch]"
    raise ValueError(f"`{name}` must have shape {expected} with batch={batch} (the features' first "
                     f"axis); got {tuple(values.shape)}.")
  if finite:
    _check_finite_host(values, name)
  return jnp.asarray(values)


def check_positive(value, name: str):
  """Checks a scalar hyperparameter is finite and > 0 (when it is concrete)."""
  host = concrete(value)
  if host is not None and (host.ndim != 0 or not np.isfinite(host) or host <= 0):
    raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}.")


def _traced_condition(x, test) -> Optional[jax.Array]:
  """``all(test(x))`` as a traced bool scalar, or None when ``x`` is concrete (checked on the host
  already), None or a callable."""
  if x is None or callable(x) or not is_traced(x):
    return None
  return jnp.all(test(x))


def _finite(x):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return jnp.ones((), bool)
  return jnp.isfinite(x)


def nan_unless_valid(loss: jax.Array, axis_name: Optional[str] = None, *,
                     finite: Iterable = (), positive: Iterable = (), nonnegative: Iterable = (),
                     unit_interval: Iterable = (), conditions: Iterable = ()) -> jax.Array:
  """``loss``, or NaN (value and gradient) when a TRACED input is invalid.

  Concrete inputs are skipped (the host checks above raised on them). For traced ones the test is
  one reduction each: ``finite`` (all finite), ``positive`` (finite and > 0), ``nonnegative``
  (finite and >= 0), ``unit_interval`` (in [0, 1]); ``conditions`` are traced bools (None skipped).
  With ``axis_name`` (inside ``shard_map``) the verdict is combined over the mesh axis, so a bad
  value on any shard poisons the loss on every shard. The loss is multiplied by exactly 1.0 when
  valid: values and gradients of valid inputs are unchanged.
  """
  oks = [_traced_condition(x, _finite) for x in finite]
  oks += [_traced_condition(x, lambda v: jnp.isfinite(v) & (v > 0)) for x in positive]
  oks += [_traced_condition(x, lambda v: jnp.isfinite(v) & (v >= 0)) for x in nonnegative]
  oks += [_traced_condition(x, lambda v: (v >= 0) & (v <= 1)) for x in unit_interval]
  oks += list(conditions)
  oks = [ok for ok in oks if ok is not None]
  if not oks:
    return loss
  valid = functools.reduce(operator.and_, oks)
  if axis_name is not None:
    valid = jax.lax.pmin(valid.astype(jnp.int32), axis_name) > 0
  return loss * jnp.where(valid, 1.0, jnp.nan).astype(loss.dtype)


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
