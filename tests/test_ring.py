"""``impl='ring'``: blockwise tiles over a ring of ``ppermute`` steps instead of one all-gather.

Inside ``shard_map`` on 8 forced CPU devices (this file re-runs itself as the worker, see
``sharded_harness``), for every loss of the SupCon family:

* value and gradient (wrt the features, and wrt parameters inside ``shard_map``) == the dense loss,
  for tiles that divide each shard's block and tiles that need padding;
* the compiled forward + backward holds no all-gather: no device ever receives all ``M x d`` features
  (it exchanges one ``[n, d]`` block per step with its ring neighbours).

On one device ``'ring'`` is ``'blockwise'``; rnc refuses it (its ranking sets need every column).
"""

import chex
import jax
import numpy as np
import pytest

import contrastive_jax as cj
import sharded_harness
from test_blockwise import CASES, _inputs, _unit, sharded_inputs

L = cj.losses
RING_CASES = sorted(name for name in CASES if name != 'rnc')
# Per shard: 3 samples x 2 views = 6 rows: (4, 5) pads rows and columns, (3, 3) divides them.
PADDED_TILE, EXACT_TILE = (4, 5), (3, 3)


def _tiles(name):
  return (PADDED_TILE, EXACT_TILE) if name in ('supcon', 'adacon') else (PADDED_TILE,)


def _worker():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  mesh = sharded_harness.make_mesh()
  feats, unit, labels, cdf, x, w = sharded_inputs(seed=1)
  results = {}
  cases, rings = {}, []
  for name in RING_CASES:
    fn = CASES[name][0]
    official = name == 'accon_official'
    inputs = unit if official else feats
    dense = lambda f, y, c, axis_name=None, fn=fn: fn(f, y, c, impl='dense', axis_name=axis_name)
    for tile in _tiles(name):
      ring = lambda f, y, c, axis_name=None, fn=fn, tile=tile: fn(
          f, y, c, impl='ring', tile=tile, axis_name=axis_name)
      cases[f'{name}/{tile}'] = (ring, dense, inputs, official)
    rings.append((lambda f, y, c, fn=fn: fn(f, y, c, impl='ring', tile=PADDED_TILE,
                                            axis_name='batch'), inputs))
  # One jitted program per comparison over all the cases (compilation is the time of these tiny
  # cases), and one program holding every loss's ring forward + backward for the HLO check.
  sharded_harness.check_losses(results, cases, (labels, cdf), x=x, w=w, mesh=mesh)

  def every_ring(features, y, c):
    return [jax.value_and_grad(jax.shard_map(ring, mesh=mesh, in_specs=(P('batch'),) * 3,
                                             out_specs=P()))(f, y, c)
            for (ring, _), f in zip(rings, features)]
  hlo = jax.jit(every_ring).lower([jnp.asarray(f) for _, f in rings], labels, cdf).compile().as_text()
  results['no_all_gather'] = {'ok': 'all-gather' not in hlo and 'collective-permute' in hlo}
  sharded_harness.emit(results)


def test_ring_inside_shard_map_on_8_cpu_devices():
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, sum(4 * len(_tiles(n)) for n in RING_CASES) + 1)


@pytest.mark.parametrize('name', ['supcon', 'adacon', 'accon_official', 'mio_v3', 'bcl_combo'])
def test_ring_without_mesh_is_blockwise(name, fast_compile):
  del fast_compile
  fn = CASES[name][0]
  feats, labels, cdf = _inputs()
  if name == 'accon_official':
    feats = _unit(feats).astype(np.float32)
  value_and_grad = lambda f, impl: jax.value_and_grad(
      lambda f: fn(f, labels, cdf, impl=impl, tile=(4, 5)))(f)
  # Both modes in one jitted program (one compilation; eager dispatch compiled each mode's
  # primitives op by op): without a mesh the ring -> blockwise choice is made in Python when the
  # loss is traced, the same under jit as eagerly.
  ring, blockwise = jax.jit(lambda f: (value_and_grad(f, 'ring'),
                                       value_and_grad(f, 'blockwise')))(feats)
  chex.assert_trees_all_close(ring, blockwise, rtol=1e-6)


def test_ring_argument_errors():
  feats, labels, _ = _inputs()
  with pytest.raises(ValueError, match="rnc does not support impl='ring'"):
    L.rnc(feats, labels, impl='ring')
  with pytest.raises(ValueError, match='`impl`'):
    L.supcon(feats, labels, impl='rings')


def test_config_selects_the_execution_mode():
  """``loss.impl`` / ``loss.tile`` / ``loss.matmul_dtype`` reach the losses that take them."""
  from contrastive_jax.train import defaults, objectives  # pylint: disable=import-outside-toplevel
  loss_cfg = defaults.base_config().loss
  assert objectives.loss_kwargs('supcon', loss_cfg) == {}
  loss_cfg.impl, loss_cfg.tile, loss_cfg.matmul_dtype = 'ring', (64, 128), 'bfloat16'
  assert objectives.loss_kwargs('supcon', loss_cfg) == {
      'impl': 'ring', 'tile': (64, 128), 'matmul_dtype': 'bfloat16'}
  assert objectives.loss_kwargs('none', loss_cfg) == {}
  with pytest.raises(ValueError, match=r"`loss.impl`='ring': the 'conr' loss has no such option"):
    objectives.loss_kwargs('conr', loss_cfg)
  loss_cfg.contrastive.impl = 'dense'
  with pytest.raises(ValueError, match='both set'):
    objectives.loss_kwargs('supcon', loss_cfg)


if __name__ == '__main__':
  _worker()
