"""Makes the repository root and tests/ importable (``contrastive_jax``, ``references``)."""

import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(_TESTS_DIR), _TESTS_DIR):
  if _path not in sys.path:
    sys.path.insert(0, _path)



def _share_compilations() -> None:
  """One persistent XLA compilation cache for the whole test session: the workers of pytest-xdist
  and the subprocesses that tests start (launcher runs, 8-device workers) inherit it through the
  environment, so a program compiled once (e.g. the same train step before and after a SIGKILL) is
  not compiled again. Set before JAX is imported; a cache directory the caller set is kept; the
  directory is removed when the process that made it exits."""
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  import atexit  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  directory = tempfile.mkdtemp(prefix='contrastive-jax-tests-xla-cache-')
  atexit.register(shutil.rmtree, directory, True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = directory
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')


_share_compilations()

# XLA's optimisation passes off for every program the tests compile, here and in the subprocesses
# (launcher runs, 8-device workers) that inherit the environment: the suite's time is compilation of
# small programs, which this cuts by about a quarter (measured on the trainer tests), and no check
# compares an optimised program with an unoptimised one. Optimised programs are what the benchmarks
# and real runs execute; `JAX_DISABLE_MOST_OPTIMIZATIONS=0 python -m pytest` runs the suite on them.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

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
    # An environment variable, not a patched module global: launcher subprocesses inherit it.
    missing = tmp_path_factory.getbasetemp() / 'no-system-datasets' / 'fashion-mnist'
    monkeypatch.setenv('CONTRASTIVE_JAX_FASHION_MNIST', str(missing))
