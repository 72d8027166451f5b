"""Reliability of the trainer (issue 7): crash-safe checkpoints, restoring into another device layout,
and clear errors for bad configs and bad labels.

The SIGKILL test kills a run from *inside* Orbax's background (async) checkpoint write, after the
temporary step directory holds the arrays but before it is committed, so the crash point is exact
rather than a race with a timer.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import pytest

from contrastive_jax import data as data_lib
from contrastive_jax.data import Dataset
from contrastive_jax.data import Split
from contrastive_jax.train import train_and_evaluate
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.checkpoint import load_checkpoint
from contrastive_jax.train.checkpoint import restore_params
from contrastive_jax.train.checkpoint import restore_variables
from contrastive_jax.train.loop import check_config_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def kill_config():
  """AdaCon on diabetes with a tiny MLP: augmentation, ECDF margins and SGD momentum all matter."""
  sys.path.insert(0, REPO)
  from configs import adacon  # pylint: disable=g-import-not-at-top
  config = adacon.get_config("diabetes")
  config.model.encoder_kwargs.hidden_sizes = (16,)
  config.model.proj_dim = 8
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 30
  config.log_every = 10
  config.eval_every = 10
  config.checkpoint_every = 10
  config.optim.warmup_steps = 2
  return config


# Runs kill_config() and SIGKILLs itself inside the async write of checkpoints/<kill_step>:
# 'before_commit': the temporary directory holds the arrays, nothing is committed yet;
# 'before_rename': commit_success.txt is written too, only the final rename is missing.
KILL_WORKER = textwrap.dedent("""
    import json, os, signal, sys, threading
    sys.path.insert(0, {repo!r})
    import orbax.checkpoint as ocp
    from tests.test_reliability import kill_config
    from contrastive_jax.train import train_and_evaluate
    workdir, kill_step, point = sys.argv[1], sys.argv[2], sys.argv[3]
    atomicity = ocp.path.atomicity

    def is_target(final):
      return final.parent.name == 'checkpoints' and final.name == kill_step

    def die(tmp):
      with open(os.path.join(workdir, 'killed.json'), 'w') as f:
        json.dump({{'tmp': str(tmp), 'in_main_thread':
                   threading.current_thread() is threading.main_thread()}}, f)
      os.kill(os.getpid(), signal.SIGKILL)

    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def killing_finalize(self):
      if point == 'before_commit' and is_target(self.get_final()):
        die(self.get())
      return await finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize

    rename = atomicity.async_path.rename
    async def killing_rename(src, dst):
      if point == 'before_rename' and is_target(dst):
        die(src)
      return await rename(src, dst)
    atomicity.async_path.rename = killing_rename

    train_and_evaluate(kill_config(), workdir)
""")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  results = train_and_evaluate(kill_config(), str(workdir))
  return workdir, results


@pytest.mark.slow  # A subprocess and three short runs: ~15 s on a quiet 2-core CPU, ~1 min loaded.
@pytest.mark.parametrize("point", ["before_commit", "before_rename"])
def test_sigkill_inside_async_checkpoint_write_resumes_exactly(tmp_path, straight_run, caplog, point):
  """Killed while step 20 is being written: step 20 is never read, the re-run resumes from step 10
  (losing only steps 11-20), cleans the unfinished directory, and ends bitwise equal to a straight
  run (data order, augmentation keys, optimizer state and best-state bookkeeping all restored)."""
  workdir = tmp_path / "killed"
  workdir.mkdir()
  done = subprocess.run([sys.executable, "-c", KILL_WORKER.format(repo=REPO), str(workdir), "20",
                         point], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == -9, done.stderr[-3000:]
  killed = json.load(open(workdir / "killed.json"))
  assert not killed["in_main_thread"]  # The write was asynchronous: training had moved on.
  ckpt = workdir / "checkpoints"
  assert sorted(os.listdir(ckpt)) == ["10", "20" + TMP_SUFFIX]
  assert os.path.exists(ckpt / ("20" + TMP_SUFFIX) / "commit_success.txt") == (point == "before_rename")
  assert not (workdir / "results.json").exists()
  state, _ = load_checkpoint(str(ckpt))  # Never the partial step 20.
  assert int(state["step"]) == 10

  caplog.set_level(logging.INFO, logger="contrastive_jax")
  resumed = train_and_evaluate(kill_config(), str(workdir))
  assert "Resumed from step 10 " in caplog.text
  assert not [n for n in os.listdir(ckpt) if TMP_SUFFIX in n]  # Cleaned when the run reopened it.

  straight, expected = straight_run
  assert resumed == expected
  for name in ("checkpoints", "best"):
    chex.assert_trees_all_equal(restore_params(str(workdir / name)),
                                restore_params(str(straight / name)))
  assert load_checkpoint(str(workdir / "best"))[1]["best_step"] == expected["best_step"]


class _State:
  """The fields a Checkpointer saves, as a plain object (no model needed)."""

  def __init__(self, step, scale=1.0):
    self.step = np.int32(step)
    self.params = {"w": np.full((3, 2), scale, np.float32)}
    self.batch_stats = {}
    self.opt_state = (None, {"mu": np.zeros(2, np.float32)})
    self.rng = np.array([0, 7], np.uint32)


def test_unfinished_write_is_ignored_and_cleaned(tmp_path):
  """A step directory that was never committed (any content) is not listed, read or kept."""
  directory = tmp_path / "ckpt"
  ckpt = Checkpointer(str(directory), max_to_keep=3, async_save=False)
  ckpt.save(_State(5), {"best_step": 5})
  ckpt.close()
  partial = directory / ("9" + TMP_SUFFIX)
  partial.mkdir()
  (partial / "state").mkdir()
  (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
  assert Checkpointer(str(directory), max_to_keep=3, read_only=True).latest_step() == 5
  assert partial.exists()  # Read-only opening deletes nothing.
  state, meta = load_checkpoint(str(directory))
  assert int(state["step"]) == 5 and meta == {"best_step": 5}
  ckpt = Checkpointer(str(directory), max_to_keep=3, async_save=False)  # Starts the clean-up,
  assert ckpt.latest_step() == 5
  ckpt.save(_State(6), {"best_step": 6})  # which any save waits for.
  ckpt.close()
  assert not partial.exists()
  assert Checkpointer(str(directory), max_to_keep=3, read_only=True).all_steps() == (5, 6)


def test_load_checkpoint_contents_and_errors(tmp_path):
  directory = tmp_path / "ckpt"
  ckpt = Checkpointer(str(directory), max_to_keep=3, async_save=False)
  for step in (1, 2):
    ckpt.save(_State(step, scale=float(step)), {"best_step": step, "val_best": {"mae": 0.5}})
  ckpt.close()
  state, meta = load_checkpoint(str(directory), step=1)
  assert set(state) == {"step", "params", "batch_stats", "opt_state", "rng"}
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(state))
  np.testing.assert_array_equal(state["params"]["w"], np.ones((3, 2), np.float32))
  np.testing.assert_array_equal(state["rng"], [0, 7])
  assert state["opt_state"][0] is None and meta["val_best"] == {"mae": 0.5}
  np.testing.assert_array_equal(restore_params(str(directory))["w"], np.full((3, 2), 2.0))
  assert set(restore_variables(str(directory))) == {"params", "batch_stats"}

  with pytest.raises(ValueError, match=r"`step`=7 has no checkpoint .*available steps: \[1, 2\]"):
    load_checkpoint(str(directory), step=7)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_checkpoint(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
    load_checkpoint(str(tmp_path / "empty"))


SHARDED_WRITER = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, {repo!r})
    from tests.test_reliability import _State
    from contrastive_jax.train.checkpoint import Checkpointer
    mesh = Mesh(np.array(jax.devices()), ('batch',))
    state = _State(3)
    state.params = {{'w': jax.device_put(np.arange(8 * 3, dtype=np.float32).reshape(8, 3),
                                         NamedSharding(mesh, P('batch')))}}
    ckpt = Checkpointer(sys.argv[1], max_to_keep=1, async_save=False)
    ckpt.save(state, {{}})
    ckpt.close()
""")


def test_checkpoint_sharded_over_4_devices_restores_on_one(tmp_path):
  """An array written sharded over 4 devices comes back whole in this 1-device process."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", SHARDED_WRITER.format(repo=REPO), str(tmp_path)],
                        cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  np.testing.assert_array_equal(restore_params(str(tmp_path))["w"],
                                np.arange(24, dtype=np.float32).reshape(8, 3))


# ---- Clear errors for bad configs and bad labels (all raised before anything is compiled). ----


def test_unknown_config_fields_are_named_with_suggestions(tmp_path):
  config = kill_config()
  config.loss.gama_con = 0.1            # a typo in a config file: ml_collections accepts it
  config.checkpoint_evry = 5
  config.loss.contrastive.temprature = 0.1
  with pytest.raises(ValueError, match=r"checkpoint_evry \(did you mean checkpoint_every\?\)"
                                       r".*loss.gama_con \(did you mean loss.gamma_con\?\)"
                                       r".*loss.contrastive.temprature \(did you mean "
                                       r"loss.contrastive.temperature\?\)"):
    train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # Refused before anything was written.


REGRESSION_CONFIGS = ("accon", "adacon", "bcl", "conr", "dystress", "mio", "ranksim", "regression",
                      "rnc", "simclr", "supcon", "supremix")


@pytest.mark.parametrize("variant", ["digits_angle", "diabetes"])
def test_every_regression_config_passes_the_field_check(variant):
  sys.path.insert(0, REPO)
  import importlib  # pylint: disable=g-import-not-at-top
  for name in REGRESSION_CONFIGS:
    check_config_fields(importlib.import_module(f"configs.{name}").get_config(variant))


def test_loss_argument_the_method_does_not_take_is_refused(tmp_path):
  config = kill_config()
  config.method = "rnc"  # RNC takes no margin; AdaCon's temperature it does take.
  config.loss.contrastive.margin = 1.0
  with pytest.raises(ValueError, match=r"loss.contrastive.margin"):
    train_and_evaluate(config, str(tmp_path))


def _dataset(train_y, val_y=(1.0, 2.0), test_y=(1.0, 2.0)):
  def split(y):
    y = np.asarray(y, np.float32)
    return Split(x=np.zeros((len(y), 10), np.float32), y=y)
  return Dataset(name="toy", kind="tabular", train=split(train_y), val=split(val_y),
                 test=split(test_y))


@pytest.mark.parametrize("method,dataset,message", [
    ("adacon", _dataset(np.r_[np.nan, np.arange(39.0)]), r"1 non-finite label\(s\).*train split"),
    ("regression", _dataset(np.arange(40.0), val_y=[1.0, np.inf]), r"non-finite.*val split"),
    ("regression", _dataset(np.arange(40.0), test_y=[]), r"the test split is empty"),
    ("regression", _dataset(np.arange(20.0)), r"`batch_size`=32 is larger than the training split"),
    ("adacon", _dataset(np.full(40, 3.0)), r"`train_labels` are all equal"),
    ("accon", _dataset(np.full(40, 3.0)), r"label range .* is 0.0: all training labels"),
])
def test_bad_labels_raise_clear_errors(tmp_path, monkeypatch, method, dataset, message):
  """Whatever the data source returns, the trainer refuses labels it cannot train on."""
  monkeypatch.setattr(data_lib, "load_dataset", lambda *args, **kwargs: dataset)
  sys.path.insert(0, REPO)
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{method}").get_config("diabetes")
  config.batch_size = 32
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(config, str(tmp_path))


def test_config_identity_tolerates_schedule_and_added_fields():
  """Resuming compares ``config_identity``: the pairwise schedule (``loss.impl`` / ``loss.tile``)
  may change; a field added later holding its earlier-runs value matches a checkpoint without it;
  anything that changes the computation is reported."""
  from contrastive_jax.train.loop import config_differences  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.loop import config_identity  # pylint: disable=g-import-not-at-top
  config = kill_config()
  saved = config_identity(config)
  for section, name in (("loss", "impl"), ("loss", "tile"), ("loss", "matmul_dtype"),
                        ("optim", "exclude_bias_and_norm"), ("data", "normalize")):
    saved[section].pop(name, None)  # as written before these fields existed
  moved = config.copy_and_resolve_references()
  moved.loss.impl, moved.loss.tile = "ring", (64, 128)
  assert config_differences(saved, config_identity(moved)) == []
  changed = config.copy_and_resolve_references()
  changed.loss.matmul_dtype = "bfloat16"
  changed.optim.exclude_bias_and_norm = True
  assert config_differences(saved, config_identity(changed)) == [
      "loss.matmul_dtype: checkpoint '<missing>' vs now 'bfloat16'",
      "optim.exclude_bias_and_norm: checkpoint '<missing>' vs now True"]
