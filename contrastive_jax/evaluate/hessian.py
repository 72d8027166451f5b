"""Hessian eigenspectrum by Lanczos on Hessian-vector products (thesis Ch. 5, Figs. 5.3-5.5).

The thesis computes "100 eigenvalues which approximate the entire eigenspectrum" of the loss Hessian
w.r.t. the parameters with the Lanczos iteration of the Deep Curvature suite (Granziol et al. 2019;
thesis Sec. 5.5.3). Here: ``m`` Lanczos steps from a random unit vector, each one Hessian-vector
product ``jax.jvp(jax.grad(loss), (params,), (v,))`` (forward-over-reverse, never the Hessian
itself), with full reorthogonalisation against every previous Lanczos vector (applied twice), so the
tridiagonal ``T_m = Q^T H Q`` is an exact orthogonal projection of ``H`` up to rounding. Its
eigenvalues are the Ritz values; the squared first components of its eigenvectors are the weights of
the stochastic-Lanczos-quadrature spectral density (what the Deep Curvature plots show).

If the Krylov space is exhausted early (``beta_j`` below ``sqrt(eps)`` times the running norm
estimate, e.g. repeated eigenvalues) the iteration restarts from a fresh random vector orthogonal to
all previous ones (``beta_j = 0``), so ``m = dim`` steps always recover every eigenvalue.
Memory: the ``m`` Lanczos vectors, ``m * num_params`` floats (100 x 11M ResNet-18 parameters =
4.5 GB in float32).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np


def hessian_vector_product(loss_fn: Callable, params, vector):
  """``H v`` with ``H`` the Hessian of the scalar ``loss_fn(params)``; ``vector`` is a pytree like
  ``params`` (forward-over-reverse: ``jax.jvp(jax.grad(loss_fn), (params,), (vector,))``)."""
  return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def _orthogonalise(w: jax.Array, basis: jax.Array) -> jax.Array:
  """``w`` minus its projection on the rows of ``basis`` (zero rows are harmless), twice."""
  for _ in range(2):
    w = w - basis.T @ (basis @ w)
  return w


def lanczos(matvec: Callable[[jax.Array], jax.Array], dim: int, key: jax.Array,
            num_iterations: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Lanczos tridiagonalisation with full reorthogonalisation (jit-able; ``dim`` and
  ``num_iterations`` static).

  Args:
    matvec: ``v -> A v`` for a symmetric ``A`` of size ``dim``.
    dim: the vector length.
    key: PRNG key of the start vector (and of restart vectors after a breakdown).
    num_iterations: ``m`` in ``[1, dim]``, the number of matvecs.
    dtype: floating dtype of the iteration.

  Returns:
    ``(alpha [m], beta [m - 1])``: diagonal and off-diagonal of ``T_m``.
  """
  if not 1 <= num_iterations <= dim:
    raise ValueError(f"`num_iterations`={num_iterations} must be in [1, dim={dim}] (at most one "
                     "Ritz value per parameter).")
  m = num_iterations
  tol = jnp.sqrt(jnp.finfo(dtype).eps)

  def unit_random(k, basis):
    w = _orthogonalise(jax.random.normal(k, (dim,), dtype), basis)
    return w / jnp.linalg.norm(w)

  basis = jnp.zeros((m, dim), dtype)
  v0 = unit_random(key, basis)

  def step(carry, j):
    basis, v, v_prev, beta_prev, scale = carry
    basis = basis.at[j].set(v)
    w = matvec(v).astype(dtype)
    alpha = jnp.vdot(v, w)
    w = _orthogonalise(w - alpha * v - beta_prev * v_prev, basis)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.abs(alpha) + beta_prev)
    broke = beta <= tol * scale
    restart = unit_random(jax.random.fold_in(key, j + 1), basis)
    v_next = jnp.where(broke, restart, w / jnp.where(broke, 1.0, beta))
    beta = jnp.where(broke, 0.0, beta)
    return (basis, v_next, v, beta, scale), (alpha, beta)

  init = (basis, v0, jnp.zeros(dim, dtype), jnp.zeros((), dtype), jnp.zeros((), dtype))
  _, (alpha, beta) = jax.lax.scan(step, init, jnp.arange(m))
  return alpha, beta[:-1]


def tridiagonal_ritz(alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ritz values (ascending) of ``T = tridiag(beta, alpha, beta)`` and their quadrature weights
  (squared first eigenvector components; they sum to 1)."""
  t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
  values, vectors = jnp.linalg.eigh(t)
  return values, vectors[0] ** 2


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_iterations"))
def _spectrum(loss_fn, params, key, num_iterations):
  flat, unravel = ravel_pytree(params)

  def matvec(v):
    return ravel_pytree(hessian_vector_product(loss_fn, params, unravel(v)))[0]

  alpha, beta = lanczos(matvec, flat.size, key, num_iterations, flat.dtype)
  return tridiagonal_ritz(alpha, beta)


def hessian_eigenspectrum(loss_fn: Callable, params, key: jax.Array, num_iterations: int = 100,
                          *, return_weights: bool = False):
  """Ritz values of the Hessian of ``loss_fn(params)`` (thesis Figs. 5.3-5.5: 100 of them).

  Args:
    loss_fn: ``params -> scalar`` (close over the batch, e.g. ``functools.partial``); hashable.
    params: a pytree of floating arrays (flattened with ``ravel_pytree``; float64 stays float64).
    key: PRNG key of the Lanczos start vector.
    num_iterations: number of Lanczos steps = Ritz values, at most the number of parameters.
    return_weights: also return the spectral-density weights of :func:`tridiagonal_ritz`.

  Returns:
    ``[m]`` ascending Ritz values, or ``(values, weights)``.
  """
  flat, _ = ravel_pytree(params)
  if flat.size == 0 or not jnp.issubdtype(flat.dtype, jnp.floating):
    raise ValueError(f"`params` must hold floating-point arrays; got {flat.size} values of dtype "
                     f"{flat.dtype}.")
  if not isinstance(num_iterations, (int, np.integer)) or not 1 <= num_iterations <= flat.size:
    raise ValueError(f"`num_iterations`={num_iterations!r} must be an integer in [1, number of "
                     f"parameters={flat.size}].")
  out = jax.eval_shape(loss_fn, params)
  if getattr(out, "shape", None) != ():
    raise ValueError(f"`loss_fn` must return a scalar; got shape {getattr(out, 'shape', out)}.")
  values, weights = _spectrum(loss_fn, params, key, int(num_iterations))
  return (values, weights) if return_weights else values
