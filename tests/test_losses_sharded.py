"""Dense == row-sharded (``shard_map`` with ``axis_name``) for every contrastive loss, 8 CPU devices.

Run through :mod:`sharded_harness` (this file re-runs itself as the 8-device worker). Batch 16 (2 rows
per device); every loss with two views, and one or three views where they change the positive sets
(``CASES_BY_VIEWS``; views 1: anchors without positives, the -tau/tau_b official ACCon term; simclr
refuses one view).
"""

import numpy as np

import sharded_harness


# Every loss with two views; one view (anchors without positives: ACCon's -tau/tau_b official term,
# SupCon's and AdaCon's empty positive sets; simclr refuses it) and three views for the losses whose
# row layout or positive sets change with the number of views.
ALL = ('simclr', 'supcon', 'adacon', 'adacon_tau0.1', 'accon', 'accon_bins', 'accon_official', 'rnc',
       'rnc_vector')
CASES_BY_VIEWS = {
    1: ('supcon', 'adacon', 'accon', 'accon_bins', 'accon_official'),
    2: ALL,
    3: ('simclr', 'adacon_tau0.1', 'accon_official', 'rnc'),
}


def _worker():
  """Runs in the subprocess with 8 forced host devices; prints the JSON results."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import contrastive_jax as cj  # pylint: disable=import-outside-toplevel

  mesh = sharded_harness.make_mesh()
  batch = 2 * sharded_harness.N_DEVICES

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
    x = rng.normal(size=(batch, views, 5)).astype(np.float32)
    w = (rng.normal(size=(5, 8)) / np.sqrt(5)).astype(np.float32)

    # One jitted program per comparison for all the cases of this number of views (compilation is
    # the time of these tiny cases): every case receives all the row-sharded arguments and passes
    # on those of its kind.
    every = (y, cdf, ycont, yvec)
    picks = {'none': (), 'y': (0,), 'y_cdf': (0, 1), 'ycont': (2,), 'yvec': (3,)}
    cases = {}
    for name, (fn, arg_kind, needs_unit) in losses.items():
      if name in CASES_BY_VIEWS[views]:
        def picked(f, *args, axis_name=None, fn=fn, pick=picks[arg_kind]):
          return fn(f, *(args[i] for i in pick), axis_name=axis_name)
        cases[f'{name}/views{views}'] = (picked, picked, unit_feats if needs_unit else feats,
                                         needs_unit)
    sharded_harness.check_losses(results, cases, every, x=x, w=w, mesh=mesh)
  sharded_harness.emit(results)


def test_dense_equals_sharded_on_8_cpu_devices():
  results = sharded_harness.run_worker(__file__)
  sharded_harness.assert_all_ok(results, expected_checks=sum(map(len, CASES_BY_VIEWS.values())) * 4)


if __name__ == '__main__':
  _worker()
