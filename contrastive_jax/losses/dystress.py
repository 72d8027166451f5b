"""DySTreSS: dynamic temperature scaling of NT-Xent (thesis Ch. 6, Manna 2025).

SimCLR's InfoNCE (Eq. 6.1) in which the temperature of EVERY logit (the positive ones and the
negatives) is a function of that pair's cosine similarity, ``tau_ij = tau(c_ij)`` (Sec. 6.4.2):

    L = mean_i -(1/|P(i)|) sum_{p in P(i)}
        log[ exp(c_ip / tau_ip) / sum_{a != i} exp(c_ia / tau_ia) ].

Temperature profiles (:func:`dystress_temperature`), ``dtau = tau_max - tau_min``:
  * ``'cosine'`` (Eq. 6.16): ``tau = tau_min + dtau/2 (1 + cos(pi (1 + c)))``; ``tau_max`` at
    ``c = +-1``, ``tau_min`` at ``c = 0``.
  * ``'shifted'`` (Alg. 6.1 as the thesis text and the author's code apply it; shift ``dc = shift``,
    scale ``k_s = scale``): the cosine branch ``tau = tau_min + dtau/2 (1 + cos((pi / k_s)(dc + c)))``
    on ``c <= -dc`` when ``dc <= 0`` and on ``c >= -dc`` when ``dc > 0``, else ``tau = tau_max``.
    Table 6.15's (shift, scale) settings: (0.0, 0.5), (0.2, 0.6), (0.4, 0.7), (-0.2, 0.6),
    (-0.4, 0.7) (``tau_max`` at both ends ``c = +-1`` for each); Eq. 6.16 is the case (1, 1). At
    ``dc = 0`` the profile lies "entirely in the left half plane" with "the temperature constant
    in the right half plane" (Sec. 6.5.4.1, the third shifted-minima version): the cosine on
    ``c <= 0``, ``tau_max`` on ``c > 0``.
  * ``'shifted_literal'``: Alg. 6.1 exactly as printed, ``(dc <= 0 and c <= -dc) or (dc >= 0 and
    c >= -dc)``. It differs from ``'shifted'`` only at ``dc = 0``, where both conditions hold and
    the cosine branch applies everywhere (a profile symmetric in ``c``).
  * ``'linear'`` (Table 6.13, no formula in the thesis): ``tau = tau_min + dtau |c|``.
  * ``'exponential'`` (Table 6.13, no formula in the thesis):
    ``tau = tau_max - dtau exp(-rate |c|)``: the ``a - b exp(-c * cossim)`` of a comment in the
    author's code (sadimanna/DySTreSS) with ``a = tau_max``, ``b = dtau``, and ``|c|`` so that the
    slope is negative for ``c < 0`` and positive for ``c > 0`` (what Sec. 6.5.4.1 requires of every
    profile); ``rate = 3.5`` is a guess.

Interpretations:
  * ``tau`` is computed from STOP-GRADIENT similarities by default, as in the author's code
    (``logits / get_temp(logits.detach())``); ``grad_through_temperature=True`` differentiates
    through ``tau(c)`` too (the derivative the thesis' analysis uses, Eq. 6.6-6.7).
  * ``c`` is the cosine similarity of the L2-normalised projector outputs, clipped to [-1, 1] before
    the profile (rounding can exceed 1 by an ulp), so ``tau`` stays in ``[tau_min, tau_max]``.
  * The loss is the MEAN over the ``batch * views`` anchors (Eq. 6.1 writes a sum; the author's code
    and SimCLR average). With ``V > 2`` views an anchor's positives are averaged as in
    SimCLR/SupCon; one view (no positive at all) is refused with a ValueError, as in ``simclr``.
  * Table 6.15's (0.0, 0.5) is, with ``'shifted'``, ``tau_max`` at ``c = -1, 0`` and on ``c > 0``,
    ``tau_min`` at ``c = -0.5``; with ``'shifted_literal'`` the symmetric profile with ``tau_max`` at
    ``c = -1, 0, 1`` and ``tau_min`` at ``c = +-0.5``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.losses import _checks
from contrastive_jax import pairwise
from contrastive_jax.losses.supcon import softmax_loss
from contrastive_jax.losses.supcon import unit_rows

PROFILES = ("cosine", "shifted", "shifted_literal", "linear", "exponential")
SHIFTED_PROFILES = ("shifted", "shifted_literal")


def _check_profile_args(tau_min, tau_max, profile, shift, scale, rate):
  """ValueErrors naming the argument for the profile and its parameters (when concrete)."""
  if profile not in PROFILES:
    raise ValueError(f"`profile` must be one of {PROFILES}; got {profile!r}.")
  _checks.check_positive(tau_min, "tau_min")
  _checks.check_positive(tau_max, "tau_max")
  lo, hi = _checks.concrete(tau_min), _checks.concrete(tau_max)
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(f"`tau_min` must be <= `tau_max`; got tau_min={tau_min!r}, "
                     f"tau_max={tau_max!r}.")
  if profile in SHIFTED_PROFILES:
    _checks.check_positive(scale, "scale")
    s = _checks.concrete(shift)
    if s is not None and (s.ndim != 0 or not np.isfinite(s)):
      raise ValueError(f"`shift` must be a finite number; got {shift!r}.")
  else:
    for name, value, default in (("shift", shift, 0.0), ("scale", scale, 1.0)):
      v = _checks.concrete(value)
      if v is None or v.ndim != 0 or v != default:
        raise ValueError(f"`{name}` is a parameter of the shifted profiles (Alg. 6.1) only; got "
                         f"{name}={value!r} with profile={profile!r}.")
  if profile == "exponential":
    _checks.check_positive(rate, "rate")


def _shifted(c, tau_min, tau_max, shift, scale, literal: bool):
  """Alg. 6.1 (``literal``: as printed; else as the thesis text applies it at ``shift = 0``, see the
  module docstring). ``shift`` may be a tracer: the branch is a ``where``."""
  wave = jnp.cos((math.pi / scale) * (shift + c))
  cos_branch = tau_min + 0.5 * (tau_max - tau_min) * (1.0 + wave)
  if literal:
    use_cos = ((shift <= 0) & (c <= -shift)) | ((shift >= 0) & (c >= -shift))
  else:
    use_cos = jnp.where(shift <= 0, c <= -shift, c >= -shift)
  return jnp.where(use_cos, cos_branch, jnp.asarray(tau_max, c.dtype))


def dystress_temperature(similarity, tau_min, tau_max, profile: str = "cosine", shift=0.0,
                         scale=1.0, *, rate=3.5) -> jax.Array:
  """Per-pair temperature ``tau(c)`` of DySTreSS (thesis Eq. 6.16 / Alg. 6.1), elementwise.

  Pure and vectorised: ``similarity`` may have any shape (e.g. an ``[n, N]`` cosine-similarity
  matrix) and is clipped to [-1, 1]; the result has its shape and (floating) dtype.
  Differentiable in ``similarity`` (apply ``jax.lax.stop_gradient`` to it for the thesis'
  default).

  Args:
    similarity: cosine similarities ``c``.
    tau_min: the profile's minimum temperature (> 0).
    tau_max: its maximum (>= tau_min).
    profile: ``'cosine'`` (Eq. 6.16), ``'shifted'`` (Alg. 6.1 as the thesis applies it),
      ``'shifted_literal'`` (Alg. 6.1 as printed), ``'linear'`` or ``'exponential'`` (Table 6.13,
      formulas interpreted; see the module docstring).
    shift: ``dc`` of Alg. 6.1 (the shifted profiles only).
    scale: ``k_s`` of Alg. 6.1 (> 0; the shifted profiles only).
    rate: decay rate of the ``'exponential'`` profile.

  Returns:
    ``tau`` with the shape of ``similarity``.
  """
  _check_profile_args(tau_min, tau_max, profile, shift, scale, rate)
  return _profile(similarity, tau_min, tau_max, profile, shift, scale, rate)


def _profile(similarity, tau_min, tau_max, profile, shift, scale, rate):
  """:func:`dystress_temperature` without the argument checks (hyperparameters may be tracers)."""
  c = jnp.asarray(similarity)
  if not jnp.issubdtype(c.dtype, jnp.floating):
    c = c.astype(jnp.float32)
  c = jnp.clip(c, -1.0, 1.0)
  dtau = tau_max - tau_min
  if profile == "cosine":
    tau = tau_min + 0.5 * dtau * (1.0 + jnp.cos(math.pi * (1.0 + c)))
  elif profile in SHIFTED_PROFILES:
    tau = _shifted(c, tau_min, tau_max, shift, scale, literal=profile == "shifted_literal")
  elif profile == "linear":
    tau = tau_min + dtau * jnp.abs(c)
  else:
    tau = tau_max - dtau * jnp.exp(-rate * jnp.abs(c))
  return tau.astype(c.dtype)


def _dystress_logits(profile, grad_through_temperature, params, cos, a_s, c_s):
  """DySTreSS tile: ``c / tau(c)`` (Eq. 6.1), positives the other views of the same sample."""
  source = cos if grad_through_temperature else jax.lax.stop_gradient(cos)
  tau = _profile(source, params["tau_min"], params["tau_max"], profile, params["shift"],
                 params["scale"], params["rate"])
  return cos / tau, a_s[:, None] == c_s[None, :]


def dystress(features: jax.Array, tau_min, tau_max, profile: str = "cosine", shift=0.0,
             scale=1.0, *, rate=3.5, grad_through_temperature: bool = False,
             axis_name: Optional[str] = None, impl: str = "auto", tile=None,
             matmul_dtype=None) -> jax.Array:
  """NT-Xent with per-pair temperatures ``tau(c_ij)`` (DySTreSS: Eq. 6.1 with Eq. 6.16 / Alg. 6.1).

  Args:
    features: ``[batch, views, dim]`` projector outputs (L2-normalised here), ``views >= 2``.
    tau_min, tau_max: temperature range (thesis: 0.07/0.2 on CIFAR, 0.1/0.2 on ImageNet).
    profile, shift, scale, rate: the temperature profile (see :func:`dystress_temperature`).
    grad_through_temperature: False (default, the author's code): ``tau`` from stop-gradient
      similarities; True: differentiate through ``tau(c)`` as well.
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    impl, tile, matmul_dtype: execution mode ('dense' | 'blockwise' | 'ring' | 'fused' |
      'fused_ring' | 'auto'), tile shape and optional bfloat16 similarity matmul (see
      ``pairwise.blockwise``; 'fused': the Pallas kernel of ``pairwise.fused``).

  Returns:
    The scalar loss, the mean over all anchors of the global batch.
  """
  features = _checks.check_features(features, axis_name)
  _checks.check_views(features, 2, "dystress")
  _check_profile_args(tau_min, tau_max, profile, shift, scale, rate)
  block = pairwise.blocking(impl, tile, matmul_dtype)
  rows = unit_rows(features, axis_name)
  params = {"tau_min": tau_min, "tau_max": tau_max, "shift": shift, "scale": scale, "rate": rate}
  logits_fn = functools.partial(_dystress_logits, profile, bool(grad_through_temperature))
  loss = softmax_loss(logits_fn, params, rows, rows.anchor_sample, rows.column_sample, 1.0,
                      axis_name, block)
  ordered = None
  if _checks.is_traced(tau_min) or _checks.is_traced(tau_max):
    ordered = jnp.all(jnp.asarray(tau_min) <= jnp.asarray(tau_max))
  shifted = profile in SHIFTED_PROFILES
  return _checks.nan_unless_valid(
      loss, axis_name, finite=(features, shift if shifted else None),
      positive=(tau_min, tau_max, scale if shifted else None,
                rate if profile == "exponential" else None),
      conditions=(ordered,))
