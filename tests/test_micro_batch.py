"""``config.micro_batch``: gradient caching (GradCache) in the train step.

* Without BatchNorm or dropout the model treats rows independently, so a run with micro-batches
  equals the one-pass run (parameters after several steps, rtol 1e-4): on one device, and on 8
  forced CPU devices (this file re-runs itself as the worker, see ``sharded_harness``).
* With BatchNorm it trains (finite, decreasing loss); ``micro_batch`` = all rows is the one-pass step.
* The compiled step's activation memory shrinks with the micro-batch; the scan and the unrolled
  loop compute the same step.
* A micro-batch that does not divide the rows is refused by name.
"""

import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sharded_harness
from contrastive_jax import models
from contrastive_jax.train import loop
from contrastive_jax.train import train_and_evaluate
from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import adacon  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(micro_batch=None, batch_norm=False, steps=4):
  """AdaCon (contrastive + regression terms) on diabetes with a small MLP: 32 samples x 2 views."""
  config = adacon.get_config("diabetes")
  config.model.encoder_kwargs.hidden_sizes = (32,)
  config.model.encoder_kwargs.use_batch_norm = batch_norm
  config.model.proj_dim = 16
  config.loss.gamma_con = 1.0
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = steps
  config.log_every = steps
  config.eval_every = steps
  config.checkpoint_every = steps
  config.optim.warmup_steps = 1
  config.micro_batch = micro_batch
  return config


def _final_params(workdir):
  from contrastive_jax.train.checkpoint import restore_params  # pylint: disable=g-import-not-at-top
  return restore_params(os.path.join(workdir, "checkpoints"))


def _compare_runs(tmp_dir, micro_batch):
  """(max relative parameter difference, both finite) of a one-pass and a micro-batch run."""
  one = train_and_evaluate(tiny_config(None), os.path.join(tmp_dir, "one"))
  micro = train_and_evaluate(tiny_config(micro_batch), os.path.join(tmp_dir, "micro"))
  a, b = _final_params(os.path.join(tmp_dir, "one")), _final_params(os.path.join(tmp_dir, "micro"))
  return a, b, one, micro


def test_micro_batches_equal_one_pass_without_batch_norm(tmp_path):
  a, b, one, micro = _compare_runs(str(tmp_path), micro_batch=16)
  chex.assert_trees_all_close(b, a, rtol=1e-4, atol=1e-6)
  assert abs(one["test"]["mae"] - micro["test"]["mae"]) < 1e-3 * abs(one["test"]["mae"])


def _worker():
  import tempfile  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == sharded_harness.N_DEVICES
  with tempfile.TemporaryDirectory() as tmp:
    a, b, _, _ = _compare_runs(tmp, micro_batch=4)  # 8 rows per device, two passes of 4
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  results = {f"param_{i}": sharded_harness.errors(y, x, rtol=1e-4, atol=1e-6)
             for i, (x, y) in enumerate(zip(flat_a, flat_b))}
  sharded_harness.emit(results)


def test_micro_batches_equal_one_pass_on_8_cpu_devices():
  results = sharded_harness.run_worker(__file__)
  assert results and all(r["ok"] for r in results.values()), results


def _small_cnn_step(micro_batch, batch=32, unroll=None):
  config = base_config("digits_angle")
  config.method = "simclr"
  config.loss.gamma_con = 1.0
  config.micro_batch = micro_batch
  config.micro_batch_unroll = unroll
  model = models.build_model(config.model, axis_name=loop.AXIS)
  mesh = loop.make_mesh()
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, 16, 16, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x[:2], train=False)
  tx, schedule = make_optimizer(config.optim, 10)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}), rng=jax.random.PRNGKey(1))
  step = make_train_step(model, config, mesh, lambda k, v: v, schedule)
  data = {"x": x, "y": jnp.arange(batch, dtype=jnp.float32),
          "y_norm": jnp.arange(batch, dtype=jnp.float32)}
  return step, state, data


def test_batch_norm_model_trains_and_one_micro_batch_is_one_pass():
  step, state, data = _small_cnn_step(None)
  _, reference = step(jax.tree.map(jnp.copy, state), data)
  step_all, _, _ = _small_cnn_step(64)  # 32 samples x 2 views: all rows in one micro-batch
  _, same = step_all(jax.tree.map(jnp.copy, state), data)
  chex.assert_trees_all_close(same["loss"], reference["loss"], rtol=1e-6)
  chex.assert_trees_all_close(same["grad_norm"], reference["grad_norm"], rtol=1e-5)
  step_micro, state_micro, _ = _small_cnn_step(16)
  losses = []
  for _ in range(5):
    state_micro, metrics = step_micro(state_micro, data)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.slow  # compiles two full steps to read their memory analysis, ~15 s
def test_activation_memory_shrinks_with_the_micro_batch():
  """``lax.scan`` (the accelerator path) keeps one micro-batch live; the unrolled CPU default
  saves less (XLA:CPU's scheduler keeps several of them live)."""
  temp = {}
  for micro, unroll in ((None, None), (16, False), (16, True)):
    step, state, data = _small_cnn_step(micro, batch=128, unroll=unroll)
    temp[micro, unroll] = step.lower(state, data).compile().memory_analysis().temp_size_in_bytes
  one_pass = temp[None, None]
  assert temp[16, False] < 0.2 * one_pass and temp[16, True] < 0.8 * one_pass, temp


def test_scan_and_unrolled_micro_batches_agree():
  results = {}
  for unroll in (False, True):
    step, state, data = _small_cnn_step(16, unroll=unroll)
    new_state, metrics = step(state, data)
    results[unroll] = (new_state.params, new_state.batch_stats, metrics)
  chex.assert_trees_all_close(results[True], results[False], rtol=1e-5, atol=1e-6)


def test_micro_batch_must_divide_the_rows():
  step, state, data = _small_cnn_step(24)  # 64 rows
  with pytest.raises(ValueError, match="`micro_batch`=24 must divide the 64 rows"):
    step(state, data)
  with pytest.raises(ValueError, match="`micro_batch`=0"):
    _small_cnn_step(0)


if __name__ == "__main__":
  _worker()
