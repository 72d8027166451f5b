"""Dense == row-sharded (``shard_map`` with ``axis_name``) for every contrastive loss, 8 CPU devices.

XLA_FLAGS must be set before jax initialises, so the comparisons run in a subprocess (this file run as
a script, ``_worker``) that prints one JSON line: for each check, whether sharded and dense agree to
rtol 1e-5 / atol 1e-6 and the largest errors. Batch 16 (2 rows per device), views 1, 2, 3. Checked: the value and ``jax.grad`` wrt the global
features of the ``shard_map``-ped loss, and the gradient wrt replicated parameters ``W`` computed
INSIDE ``shard_map`` (features = x @ W), which is how the trainer uses the losses.
"""

import json
import os
import subprocess
import sys

import numpy as np

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_TESTS_DIR)
_N_DEVICES = 8
_RTOL, _ATOL = 1e-5, 1e-6


def _errors(got, expected):
  """allclose(rtol 1e-5, atol 1e-6); for gradient arrays atol = 1e-6 * max|expected|.

  Scaling atol by the gradient's magnitude keeps the check at float32 rounding both for tiny gradients
  (RNC: entries ~1e-3, where a fixed atol 1e-6 would hide 1e-3-relative errors) and for large ones
  (AdaCon at tau = 1/150: |dL/dW| up to ~10, and even the dense float32 gradient is ~5e-6 away from
  the float64 one in absolute terms, 1e-4 relative on its small entries).
  """
  got = np.asarray(got, np.float64)
  expected = np.asarray(expected, np.float64)
  atol = _ATOL * float(np.max(np.abs(expected))) if expected.ndim else _ATOL
  abs_err = np.abs(got - expected)
  rel = abs_err / np.maximum(np.abs(expected), 1e-30)
  ok = bool(np.all(np.isfinite(got)) and np.allclose(got, expected, rtol=_RTOL, atol=atol))
  return {'ok': ok, 'max_abs': float(abs_err.max()), 'max_rel': float(rel.max()), 'atol': atol,
          'excess': float(np.max(abs_err - (atol + _RTOL * np.abs(expected))))}


def _worker():
  """Runs in the subprocess with 8 forced host devices; prints the JSON results."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  import contrastive_jax as cj  # pylint: disable=import-outside-toplevel

  assert jax.device_count() == _N_DEVICES, jax.devices()
  mesh = Mesh(np.array(jax.devices()), ('batch',))
  batch = 2 * _N_DEVICES

  def l2n(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

  # name -> (loss(features, *args, axis_name), makes the extra args, normalise features first)
  losses = {
      'simclr': (lambda f, axis_name=None: cj.losses.simclr(f, axis_name=axis_name), 'none', False),
      'supcon': (lambda f, y, axis_name=None: cj.losses.supcon(f, y, axis_name=axis_name), 'y',
                 False),
      'adacon': (lambda f, y, c, axis_name=None: cj.losses.adacon(f, y, c, axis_name=axis_name),
                 'y_cdf', False),
      'adacon_tau0.1': (lambda f, y, c, axis_name=None: cj.losses.adacon(
          f, y, c, temperature=0.1, axis_name=axis_name), 'y_cdf', False),
      'accon': (lambda f, y, axis_name=None: cj.losses.accon(f, y, 6.0, axis_name=axis_name), 'y',
                False),
      'accon_bins': (lambda f, y, axis_name=None: cj.losses.accon(
          f, y, 6.0, bin_width=2.0, axis_name=axis_name), 'ycont', False),
      'accon_official': (lambda f, y, axis_name=None: cj.losses.accon(
          f, y, 100.0, official=True, axis_name=axis_name), 'y', True),
      'rnc': (lambda f, y, axis_name=None: cj.losses.rnc(f, y, axis_name=axis_name), 'y', False),
      'rnc_vector': (lambda f, y, axis_name=None: cj.losses.rnc(f, y, axis_name=axis_name), 'yvec',
                     False),
  }

  results = {}
  for views in (1, 2, 3):  # views 1: anchors without positives (the -tau/tau_b official term)
    rng = np.random.default_rng(views)
    feats = rng.normal(size=(batch, views, 8))
    feats *= np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=(batch, views, 1)))
    feats = feats.astype(np.float32)
    unit_feats = (feats / np.linalg.norm(feats, axis=-1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, 4, size=batch).astype(np.float32)
    y[:2] = [5.0, 6.0]  # two unique labels among ties
    ycont = rng.uniform(-3.0, 3.0, size=batch).astype(np.float32)
    yvec = rng.integers(-2, 3, size=(batch, 2)).astype(np.float32)
    train = np.concatenate([y, np.linspace(-1.0, 7.0, 9)]).astype(np.float32)
    cdf = np.asarray(cj.losses.fit_ecdf(train)(jnp.asarray(y)), np.float32)
    extra_args = {'none': (), 'y': (y,), 'y_cdf': (y, cdf), 'ycont': (ycont,), 'yvec': (yvec,)}
    x = rng.normal(size=(batch, views, 5)).astype(np.float32)
    w = (rng.normal(size=(5, 8)) / np.sqrt(5)).astype(np.float32)

    for name, (fn, arg_kind, needs_unit) in losses.items():
      args = extra_args[arg_kind]
      f = unit_feats if needs_unit else feats
      specs = (P('batch'),) * (1 + len(args))

      # (1) value and grad wrt the global features of the shard_map-ped loss
      dense_vg = jax.jit(jax.value_and_grad(fn))(f, *args)
      sharded = jax.jit(jax.shard_map(functools.partial(fn, axis_name='batch'), mesh=mesh,
                                      in_specs=specs, out_specs=P()))
      sharded_vg = jax.jit(jax.value_and_grad(sharded))(f, *args)
      results[f'{name}/views{views}/value'] = _errors(sharded_vg[0], dense_vg[0])
      results[f'{name}/views{views}/grad_features'] = _errors(sharded_vg[1], dense_vg[1])

      # (2) grad wrt replicated W computed inside shard_map (features = x @ W)
      def loss_of_w(w_, x_, *a, axis_name=None, fn=fn, needs_unit=needs_unit):
        feats_ = x_ @ w_
        if needs_unit:
          feats_ = l2n(feats_)
        return fn(feats_, *a, axis_name=axis_name)

      dense_wg = jax.jit(jax.value_and_grad(loss_of_w))(w, x, *args)

      def inside(x_, w_, *a, loss_of_w=loss_of_w):
        return jax.value_and_grad(loss_of_w)(w_, x_, *a, axis_name='batch')

      inside_sm = jax.jit(jax.shard_map(inside, mesh=mesh,
                                        in_specs=(P('batch'), P()) + (P('batch'),) * len(args),
                                        out_specs=(P(), P())))
      inside_v, inside_g = inside_sm(x, w, *args)
      results[f'{name}/views{views}/inside_value'] = _errors(inside_v, dense_wg[0])
      results[f'{name}/views{views}/inside_grad_W'] = _errors(inside_g, dense_wg[1])
  print('RESULTS ' + json.dumps(results))


def test_dense_equals_sharded_on_8_cpu_devices():
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={_N_DEVICES}').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(
      [_REPO_ROOT, _TESTS_DIR] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=_REPO_ROOT,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULTS ')]
  assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads(lines[-1][len('RESULTS '):])
  expected_checks = 9 * 3 * 4
  assert len(results) == expected_checks, sorted(results)
  failures = {k: v for k, v in results.items() if not v['ok']}
  assert not failures, json.dumps(failures, indent=1)


if __name__ == '__main__':
  _worker()
