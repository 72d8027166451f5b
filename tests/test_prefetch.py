"""The background batch producer (data.prefetch.Prefetcher) and the progress line's data share
(issue 14): batches unchanged, built ahead; the producer's errors named by step in the main thread;
the thread joined on every exit path; the loop's wait for data ~0 when the host is faster than the
step and large when it is slower."""

import logging
import re
import threading
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax.data.prefetch import Prefetcher
from contrastive_jax.train import run as run_lib


def _producer_threads():
  return [t for t in threading.enumerate() if t.name == 'contrastive_jax-prefetch']


@pytest.mark.parametrize('depth', [0, 1, 3])
def test_prefetcher_returns_make_of_each_step_in_order(depth):
  made = []

  def make(step):
    made.append(step)
    return {'x': np.full(2, step)}

  with Prefetcher(make, 5, 12, depth) as batches:
    for step in range(5, 12):
      np.testing.assert_array_equal(batches.get(step)['x'], [step, step])
    with pytest.raises(ValueError, match='expected step 12'):
      batches.get(3)
  assert made == list(range(5, 12))
  assert not _producer_threads()


def test_prefetcher_builds_at_most_depth_ahead_and_close_joins_a_blocked_producer():
  made = []
  with Prefetcher(lambda s: made.append(s) or s, 0, 1000, depth=2) as batches:
    assert batches.get(0) == 0
    time.sleep(0.3)  # the producer fills the queue (2) and blocks holding one more
    assert len(made) <= 4
  assert not _producer_threads() and len(made) <= 4


def test_prefetcher_reraises_the_producers_exception_naming_the_step():
  def make(step):
    if step == 3:
      raise FileNotFoundError('/data/missing.png')
    return step

  with Prefetcher(make, 0, 10, depth=2) as batches:
    assert [batches.get(s) for s in range(3)] == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match='missing.png') as info:
      batches.get(3)
  assert any('step 3' in note for note in info.value.__notes__)
  assert not _producer_threads()


def test_prefetch_depth_is_checked_and_not_part_of_the_identity():
  config = ml_collections.ConfigDict({'data': {'prefetch': 2, 'name': 'x'}, 'seed': 0})
  assert run_lib.prefetch_depth(config) == 2
  identity = run_lib.config_identity(config)
  config.data.prefetch = 0
  assert run_lib.config_identity(config) == identity == {'data': {'name': 'x'}, 'seed': 0}
  for bad in (-1, 1.5, True, 'two'):
    config.data = ml_collections.ConfigDict({'prefetch': bad})
    with pytest.raises(ValueError, match='data.prefetch'):
      run_lib.prefetch_depth(config)
  assert run_lib.prefetch_depth(ml_collections.ConfigDict({'seed': 0})) == run_lib.DEFAULT_PREFETCH


# ----------------------------------------------------------------------------- through run.run


@flax.struct.dataclass
class _State:  # the fields a checkpoint holds (train.checkpoint.STATE_FIELDS); params: the total
  step: jax.Array
  params: jax.Array
  batch_stats: jax.Array
  opt_state: jax.Array
  rng: jax.Array

  @classmethod
  def create(cls):
    zero = jnp.float32(0)
    return cls(jnp.int32(0), zero, zero, zero, jax.random.PRNGKey(0))


def _config(**overrides):
  config = ml_collections.ConfigDict({
      'num_train_steps': 12, 'batch_size': 2, 'log_every': 6, 'eval_every': 100,
      'checkpoint_every': 100, 'keep_checkpoints': 2, 'stop_at_step': -1, 'nonfinite': 'stop',
      'resume': 'auto', 'data': {'prefetch': 2}})
  config.update(overrides)
  return config


def _fake_task(host_s=0.0, step_s=0.0, fail_at=None):
  """A task whose batch of step s is [s, s] (built in ``host_s``) and whose step (``step_s``, on the
  host: a stand-in for a busy device) adds the batch to a running total."""

  def build(config, mesh):
    del mesh

    def host_batch(step):
      time.sleep(host_s)
      if step == fail_at:
        raise ValueError(f'cannot decode the files of step {step}')
      return {'x': np.full(2, step, np.float32)}

    def train_step(state, batch):
      time.sleep(step_s)
      metrics = {'loss': jnp.float32(0.5), 'nonfinite': jnp.int32(0), 'lr': jnp.float32(0.1)}
      return state.replace(step=state.step + 1, params=state.params + jnp.sum(batch['x'])), metrics

    def final(state, meta):
      del meta
      return run_lib.Outcome({'total': float(state.params)}, {})

    return run_lib.Task(
        identity={'fake': 1}, init_state=lambda latest: _State.create(),
        host_batch=host_batch, train_step=train_step, evaluate=lambda state, split: {},
        describe=lambda metrics: '', final=final)

  return build


def _run(tmp_path, name, caplog, config, **task):
  with caplog.at_level(logging.INFO, logger='contrastive_jax'):
    caplog.clear()
    out = run_lib.run(config, str(tmp_path / name), _fake_task(**task), run_lib.make_mesh())
  shares = [int(m) for m in re.findall(r'\| data (\d+)%', caplog.text)]
  return out, shares


def test_batches_are_unchanged_by_prefetch_and_resume_exactly(tmp_path, caplog):
  expected = {'total': float(2 * sum(range(12)))}
  for depth in (0, 2, 5):
    out, _ = _run(tmp_path, f'd{depth}', caplog, _config(data={'prefetch': depth}))
    assert out == expected
  stopped, _ = _run(tmp_path, 'resumed', caplog, _config(stop_at_step=5))
  assert stopped == {'status': 'stopped', 'steps': 5} and not _producer_threads()
  # Resuming with another prefetch depth: not part of the identity, the same result.
  out, _ = _run(tmp_path, 'resumed', caplog, _config(data={'prefetch': 1}))
  assert out == expected and not _producer_threads()


def test_a_failing_batch_is_raised_naming_its_step_and_the_producer_is_joined(tmp_path, caplog):
  with pytest.raises(ValueError, match='files of step 7') as info:
    _run(tmp_path, 'fail', caplog, _config(), fail_at=7)
  assert any('training batch of step 7' in note for note in info.value.__notes__)
  assert not _producer_threads()


def test_data_share_is_near_zero_when_the_host_is_faster_than_the_step(tmp_path, caplog):
  _, shares = _run(tmp_path, 'fast_host', caplog, _config(), host_s=0.02, step_s=0.08)
  assert len(shares) == 2 and max(shares) <= 10, shares


def test_data_share_is_large_when_the_host_is_slower_than_the_step(tmp_path, caplog):
  # Each batch takes 0.08 s, each step 0.02 s: the loop waits ~0.06 of every 0.08 s.
  _, shares = _run(tmp_path, 'slow_host', caplog, _config(), host_s=0.08, step_s=0.02)
  assert len(shares) == 2 and min(shares) >= 50, shares
