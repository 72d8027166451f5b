"""Dense == row-sharded checks for losses, run in a subprocess with 8 forced CPU devices.

XLA_FLAGS must be set before JAX initialises, so a test file runs *itself* as a script through
:func:`run_worker` (its ``if __name__ == '__main__'`` block builds cases and calls :func:`check_loss`
for each, then :func:`emit`), and asserts on the JSON it prints. Per case it compares: the value and
``jax.grad`` wrt the global features of the ``shard_map``-ped loss, and the value and gradient wrt
replicated parameters ``W`` computed INSIDE ``shard_map`` (features = x @ W), which is how the trainer
uses the losses.
"""

import functools
import json
import os
import subprocess
import sys

import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
N_DEVICES = 8
RTOL, ATOL = 1e-5, 1e-6


def errors(got, expected, rtol=RTOL, atol=ATOL):
  """allclose(rtol, atol); for gradient arrays atol is scaled by max|expected|.

  Scaling atol by the gradient's magnitude keeps the check at float32 rounding both for tiny gradients
  (RNC: entries ~1e-3, where a fixed atol 1e-6 would hide 1e-3-relative errors) and for large ones
  (AdaCon at tau = 1/150: |dL/dW| up to ~10, and even the dense float32 gradient is ~5e-6 away from
  the float64 one in absolute terms, 1e-4 relative on its small entries).
  """
  got = np.asarray(got, np.float64)
  expected = np.asarray(expected, np.float64)
  atol = atol * float(np.max(np.abs(expected))) if expected.ndim else atol
  abs_err = np.abs(got - expected)
  rel = abs_err / np.maximum(np.abs(expected), 1e-30)
  ok = bool(np.all(np.isfinite(got)) and np.allclose(got, expected, rtol=rtol, atol=atol))
  return {'ok': ok, 'max_abs': float(abs_err.max()), 'max_rel': float(rel.max()), 'atol': atol,
          'excess': float(np.max(abs_err - (atol + rtol * np.abs(expected))))}


def make_mesh():
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == N_DEVICES, jax.devices()
  return Mesh(np.array(jax.devices()), ('batch',))


def check_loss(results, name, fn, features, sharded_args=(), replicated_args=(), *, x, w,
               normalise=False, mesh, rtol=RTOL, atol=ATOL, reference_fn=None):
  """Adds the four dense-vs-sharded comparisons of ``fn`` under ``results[name/...]``.

  ``reference_fn`` (default ``fn``) computes the unsharded side, e.g. the dense mode of a loss whose
  sharded side ``fn`` runs blockwise.

  ``fn(features, *sharded_args, *replicated_args, axis_name=None)``: ``sharded_args`` are per-sample
  arrays split over the mesh like the features; ``replicated_args`` (PRNG keys, scalars) are passed
  whole to every device. ``x [batch, views, k]`` and ``w [k, dim]`` drive the inside-``shard_map``
  gradient check (features = x @ w, L2-normalised first when ``normalise``).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  sharded_args, replicated_args = tuple(sharded_args), tuple(replicated_args)
  specs = (P('batch'),) * (1 + len(sharded_args)) + (P(),) * len(replicated_args)
  args = sharded_args + replicated_args
  check = functools.partial(errors, rtol=rtol, atol=atol)

  reference_fn = fn if reference_fn is None else reference_fn
  dense_vg = jax.jit(jax.value_and_grad(reference_fn))(features, *args)
  sharded = jax.jit(jax.shard_map(functools.partial(fn, axis_name='batch'), mesh=mesh,
                                  in_specs=specs, out_specs=P()))
  sharded_vg = jax.jit(jax.value_and_grad(sharded))(features, *args)
  results[f'{name}/value'] = check(sharded_vg[0], dense_vg[0])
  results[f'{name}/grad_features'] = check(sharded_vg[1], dense_vg[1])

  def loss_of_w(w_, x_, *a, axis_name=None, loss=fn):
    feats = x_ @ w_
    if normalise:
      feats = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
    return loss(feats, *a, axis_name=axis_name)

  dense_wg = jax.jit(jax.value_and_grad(functools.partial(loss_of_w, loss=reference_fn)))(w, x, *args)
  inside = lambda x_, w_, *a: jax.value_and_grad(loss_of_w)(w_, x_, *a, axis_name='batch')
  inside_sm = jax.jit(jax.shard_map(inside, mesh=mesh, in_specs=(P('batch'), P()) + specs[1:],
                                    out_specs=(P(), P())))
  inside_v, inside_g = inside_sm(x, w, *args)
  results[f'{name}/inside_value'] = check(inside_v, dense_wg[0])
  results[f'{name}/inside_grad_W'] = check(inside_g, dense_wg[1])


def emit(results):
  print('RESULTS ' + json.dumps(results))


def run_worker(script_path, timeout=600):
  """Runs ``script_path`` with 8 forced CPU devices; returns its results dict (asserting success)."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={N_DEVICES}').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(
      [REPO_ROOT, TESTS_DIR] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  proc = subprocess.run([sys.executable, os.path.abspath(script_path)], env=env, cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULTS ')]
  assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(lines[-1][len('RESULTS '):])


def assert_all_ok(results, expected_checks):
  assert len(results) == expected_checks, sorted(results)
  failures = {k: v for k, v in results.items() if not v['ok']}
  assert not failures, json.dumps(failures, indent=1)


def check_losses(results, cases, sharded_args=(), *, x, w, mesh, rtol=RTOL, atol=ATOL):
  """:func:`check_loss` for several losses at once: each of its four comparisons is ONE jitted
  program over all the losses (one compilation instead of one per loss, which dominates the time of
  tiny cases, e.g. Pallas kernels in interpret mode).

  ``cases``: ``name -> (fn, reference_fn, features, normalise)`` with ``fn`` / ``reference_fn`` /
  ``normalise`` as in :func:`check_loss` and ``features`` the global features of that case.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  names = list(cases)
  sharded_args = tuple(sharded_args)
  specs = (P('batch'),) * (1 + len(sharded_args))
  check = functools.partial(errors, rtol=rtol, atol=atol)

  def of_w(loss, normalise):
    def loss_of_w(w_, x_, *a, axis_name=None):
      feats = x_ @ w_
      if normalise:
        feats = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
      return loss(feats, *a, axis_name=axis_name)
    return loss_of_w

  def all_dense(features, *a):
    return [jax.value_and_grad(cases[n][1])(f, *a) for n, f in zip(names, features)]

  def all_sharded(features, *a):
    out = []
    for n, f in zip(names, features):
      sharded = jax.shard_map(functools.partial(cases[n][0], axis_name='batch'), mesh=mesh,
                              in_specs=specs, out_specs=P())
      out.append(jax.value_and_grad(sharded)(f, *a))
    return out

  def all_dense_w(w_, x_, *a):
    return [jax.value_and_grad(of_w(cases[n][1], cases[n][3]))(w_, x_, *a) for n in names]

  def all_inside(x_, w_, *a):
    return [jax.value_and_grad(of_w(cases[n][0], cases[n][3]))(w_, x_, *a, axis_name='batch')
            for n in names]

  features = [cases[n][2] for n in names]
  dense = jax.jit(all_dense)(features, *sharded_args)
  sharded = jax.jit(all_sharded)(features, *sharded_args)
  dense_w = jax.jit(all_dense_w)(w, x, *sharded_args)
  in_w = jax.jit(jax.shard_map(all_inside, mesh=mesh, in_specs=(P('batch'), P()) + specs[1:],
                               out_specs=[(P(), P())] * len(names)))(x, w, *sharded_args)
  for n, d, s, dw, iw in zip(names, dense, sharded, dense_w, in_w):
    results[f'{n}/value'] = check(s[0], d[0])
    results[f'{n}/grad_features'] = check(s[1], d[1])
    results[f'{n}/inside_value'] = check(iw[0], dw[0])
    results[f'{n}/inside_grad_W'] = check(iw[1], dw[1])
