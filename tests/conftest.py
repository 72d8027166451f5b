"""Makes the repository root and tests/ importable (``contrastive_jax``, ``references``)."""

import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(_TESTS_DIR), _TESTS_DIR):
  if _path not in sys.path:
    sys.path.insert(0, _path)


import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='module')
def fast_compile():
  """Skips most XLA optimisations for a module whose time is compilation of tiny programs (as flax's
  examples/imagenet/train_test.py does); restores the previous setting afterwards. Opt in with
  ``pytestmark = pytest.mark.usefixtures('fast_compile')``."""
  previous = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(autouse=True)
def _no_system_data(request, monkeypatch, tmp_path_factory):
  """The default suite runs as on a fresh machine: data that only a system package installs (Debian's
  ``dataset-fashion-mnist`` in /usr/share/datasets) is out of reach unless a test is marked
  ``real_data``, so a test that needs it fails on every machine, not only on a new one."""
  if request.node.get_closest_marker('real_data') is None:
    from contrastive_jax.data.sources import idx  # pylint: disable=import-outside-toplevel
    missing = tmp_path_factory.getbasetemp() / 'no-system-datasets' / 'fashion-mnist'
    monkeypatch.setattr(idx, 'DEFAULT_ROOT', str(missing))
