"""End-to-end trainer tests on tiny configs: training, exact resume, guards, launch errors.

Every run here uses the bundled diabetes data with a small MLP so that a run compiles and trains in a
few seconds on a 2-core CPU.
"""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import pytest

from contrastive_jax.train import loop
from contrastive_jax.train import train_and_evaluate
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.checkpoint import restore_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import accon, adacon, bcl, conr, dcl, dystress, mio, ranksim, regression, rnc, simclr, supcon, supremix  # pylint: disable=g-import-not-at-top,wrong-import-position,line-too-long

CONFIGS = {"regression": regression, "adacon": adacon, "accon": accon, "rnc": rnc, "supcon": supcon,
           "simclr": simclr, "supremix": supremix, "conr": conr, "ranksim": ranksim, "mio": mio,
           "dystress": dystress, "bcl": bcl, "dcl": dcl}


def tiny_config(method="adacon", steps=20):
  config = CONFIGS[method].get_config("diabetes")
  config.model.encoder_kwargs.hidden_sizes = (32,)
  config.model.proj_dim = 16
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = steps
  config.log_every = 5
  config.eval_every = 10
  config.checkpoint_every = 10
  config.optim.warmup_steps = 2
  return config


def final_params(workdir):
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  step = ckpt.latest_step()
  state, _ = ckpt.restore_tree(step)
  ckpt.close()
  return step, state["params"]


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_every_config_trains_and_writes_results(tmp_path, method):
  results = train_and_evaluate(tiny_config(method), str(tmp_path))
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert set(saved) >= {"method", "dataset", "test", "val_best", "steps"}
  assert set(saved["test"]) >= {"mae", "rmse", "r2", "pearson"}
  if method in ("simclr", "mio", "dystress", "bcl", "dcl"):  # Self-supervised: frozen-embedding probes.
    assert saved["eval_with"] == "knn" and saved["test"] == saved["test_knn"]
    assert set(saved["test_ridge"]) >= {"mae", "rmse"}
  assert saved["method"] == tiny_config(method).method and saved["dataset"] == "diabetes"
  assert np.isfinite(saved["test"]["mae"])
  # TensorBoard event files and the JSON-lines metric log.
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  train = [l["train/loss"] for l in lines if "train/loss" in l]
  assert len(train) == 4 and all(np.isfinite(train))


def test_loss_falls_and_beats_mean_predictor(tmp_path):
  config = tiny_config("adacon", steps=120)
  config.eval_every = 40
  results = train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  reg = [l["train/loss_reg"] for l in lines if "train/loss_reg" in l]
  assert reg[-1] < 0.8 * reg[0]
  assert results["test"]["mae"] < results["test_train_mean_predictor"]["mae"]


def test_resume_after_stop_matches_uninterrupted_run(tmp_path):
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  expected = train_and_evaluate(tiny_config(), straight)

  stopped = tiny_config()
  stopped.stop_at_step = 10
  assert train_and_evaluate(stopped, interrupted) == {"status": "stopped", "steps": 10}
  assert not os.path.exists(os.path.join(interrupted, "results.json"))
  resumed = train_and_evaluate(tiny_config(), interrupted)  # The same command again.

  assert resumed == expected
  step_a, params_a = final_params(straight)
  step_b, params_b = final_params(interrupted)
  assert step_a == step_b == 20
  chex.assert_trees_all_equal(params_a, params_b)


def test_rerun_of_finished_run_reports_same_results(tmp_path):
  first = train_and_evaluate(tiny_config(steps=10), str(tmp_path))
  outputs = lambda: (sorted(os.listdir(tmp_path / "tensorboard")),
                     (tmp_path / "metrics.jsonl").read_text(),
                     (tmp_path / "results.json").read_text())
  before = outputs()
  again = train_and_evaluate(tiny_config(steps=10), str(tmp_path))
  assert again == json.loads(json.dumps(first))
  assert outputs() == before  # finished: no metrics line, no TensorBoard file, results untouched


def test_resume_refuses_a_different_config_unless_forced(tmp_path):
  config = tiny_config()
  config.stop_at_step = 10
  train_and_evaluate(config, str(tmp_path))
  changed = tiny_config()
  changed.loss.gamma_con = 0.5
  with pytest.raises(ValueError, match=r"different config(.|\n)*loss.gamma_con"):
    train_and_evaluate(changed, str(tmp_path))
  reshaped = tiny_config()  # forced, but the parameters no longer fit: named, before any read
  reshaped.model.proj_dim, reshaped.resume = 8, "force"
  with pytest.raises(ValueError, match=r"different model: .*projector.dense_out.bias: checkpoint "
                     r"\(16,\) vs now \(8,\)"):
    train_and_evaluate(reshaped, str(tmp_path))
  changed.resume = "force"
  assert train_and_evaluate(changed, str(tmp_path))["steps"] == 20


@pytest.mark.parametrize("field,value,message", [
    ("method", "nope", "Unknown `method`"),
    ("loss.reg", "l3", "Unknown regression loss"),
    ("optim.name", "rmsprop", "Unknown `optim.name`"),
    ("model.encoder", "vit", "model.encoder"),
    ("data.name", "mnist", "digits_angle"),
])
def test_bad_config_values_raise_clear_errors(tmp_path, field, value, message):
  config = tiny_config(steps=2)
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(config, str(tmp_path))


def test_accon_label_range_comes_from_training_labels(tmp_path):
  from contrastive_jax.train import objectives  # pylint: disable=g-import-not-at-top
  config = tiny_config("accon", steps=2)
  resolved, prepared = objectives.prepare(config, np.array([2.0, 125.0, 7.0]))
  assert resolved.loss.contrastive.label_range == 123.0 and prepared == {}
  assert config.loss.contrastive.label_range is None  # the caller's config is left alone
  with pytest.raises(ValueError, match="label range R .* is 0.0"):
    objectives.prepare(config, np.full(5, 3.0))
  config.loss.contrastive.label_range = -1.0
  with pytest.raises(ValueError, match="label_range"):
    train_and_evaluate(config, str(tmp_path))


def _launch(args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "launch", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_launch_runs_and_rejects_unknown_fields(tmp_path):
  common = ["--config=configs/regression.py:diabetes", f"--workdir={tmp_path}",
            "--config.num_train_steps=4", "--config.eval_every=2", "--config.log_every=2",
            "--config.model.encoder_kwargs.hidden_sizes=(16,)"]
  done = _launch(common)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "step 4/4" in done.stdout and "test MAE" in done.stdout
  assert json.load(open(tmp_path / "results.json"))["steps"] == 4

  unknown = _launch(common + ["--config.no_such_field=1"])
  assert unknown.returncode != 0 and "no_such_field" in unknown.stderr

  bad_variant = _launch(["--config=configs/adacon.py:mnist", f"--workdir={tmp_path}/b"])
  assert bad_variant.returncode != 0 and "Unknown config variant" in bad_variant.stderr


DATA_PARALLEL_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {repo!r})
    from tests.test_train import tiny_config
    from contrastive_jax.train import train_and_evaluate
    config = tiny_config({method!r}, steps=10)
    config.batch_size = 32
    config.eval_batch_size = 64
    results = train_and_evaluate(config, sys.argv[1])
    lines = [json.loads(l) for l in open(sys.argv[1] + '/metrics.jsonl')]
    print(json.dumps({{'devices': jax.device_count(), 'test': results['test'],
                      'losses': [l['train/loss'] for l in lines if 'train/loss' in l]}}))
""")


# Slow (two launcher processes each, ~20 s): the default suite keeps the regression trainer on 8
# devices in tests/test_micro_batch.py (one pass == micro-batches) and every loss's sharded == dense
# (tests/test_losses_sharded.py).
@pytest.mark.slow
@pytest.mark.parametrize("method", ["adacon", "rnc"])
def test_eight_devices_train_like_one(tmp_path, method):
  """The data-parallel step (sharded loss, synced BatchNorm, global gradients) equals one device."""
  outputs = {}
  for devices in (1, 8):
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    code = DATA_PARALLEL_WORKER.format(repo=REPO, method=method)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / str(devices))],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env},
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs[devices] = json.loads(done.stdout.strip().splitlines()[-1])
  assert outputs[1]["devices"] == 1 and outputs[8]["devices"] == 8
  np.testing.assert_allclose(outputs[8]["losses"], outputs[1]["losses"], rtol=2e-4)
  np.testing.assert_allclose(outputs[8]["test"]["mae"], outputs[1]["test"]["mae"], rtol=2e-3)
  # Final parameters, read back into this 1-device process from both layouts' checkpoints.
  _assert_params_close(restore_params(str(tmp_path / "8" / "checkpoints")),
                       restore_params(str(tmp_path / "1" / "checkpoints")), rtol=2e-4, atol=1e-5)


def _assert_params_close(actual, expected, rtol, atol):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _wait_for_checkpoint(proc, ckpt_dir, at_least, timeout=240):
  import time  # pylint: disable=g-import-not-at-top
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if ckpt_dir.exists() else []
    if steps and max(steps) >= at_least:
      return max(steps)
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint >= {at_least} before the run ended or timed out")


def test_sigkill_and_sigterm_then_rerun_resume_exactly(tmp_path):
  """SIGKILL once a complete checkpoint exists, re-run, SIGTERM (checkpoint at the next step and
  exit 0), re-run to the end: results and final parameters equal an uninterrupted run's."""
  import signal  # pylint: disable=g-import-not-at-top
  args = ["--config=configs/regression.py:diabetes", "--config.num_train_steps=300",
          "--config.checkpoint_every=5", "--config.eval_every=100", "--config.log_every=100",
          "--config.model.encoder_kwargs.hidden_sizes=(16,)"]
  killed, straight = tmp_path / "killed", tmp_path / "straight"
  command = [sys.executable, "-m", "launch", *args, f"--workdir={killed}"]

  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_checkpoint(proc, killed / "checkpoints", 10)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (killed / "results.json").exists()

  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  _wait_for_checkpoint(proc, killed / "checkpoints", 50)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert "Resumed from step" in out and "Stopped at step" in out and "SIGTERM" in out + err
  assert not (killed / "results.json").exists()

  resumed = _launch(args + [f"--workdir={killed}"])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # The reference run checkpoints only at the end (run control: not part of what is computed).
  straight_run = _launch(args + [f"--workdir={straight}", "--config.checkpoint_every=300"])
  assert straight_run.returncode == 0, straight_run.stderr[-3000:]
  assert json.load(open(killed / "results.json")) == json.load(open(straight / "results.json"))
  step_a, params_a = final_params(str(killed))
  step_b, params_b = final_params(str(straight))
  assert step_a == step_b == 300
  chex.assert_trees_all_equal(params_a, params_b)


def _nan_batch_at(step_to_poison):
  """A train_batch that returns NaN inputs at one step (everything else unchanged)."""
  from contrastive_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  original = data_lib.train_batch

  def poisoned(split, batch_size, seed, step, **kwargs):
    batch = original(split, batch_size, seed, step, **kwargs)
    if step + 1 == step_to_poison:
      batch = {**batch, "x": np.full_like(batch["x"], np.nan)}
    return batch
  return poisoned


def test_nonfinite_step_stops_naming_it_or_is_skipped(tmp_path, monkeypatch):
  from contrastive_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(data_lib, "train_batch", _nan_batch_at(3))
  config = tiny_config("adacon", steps=12)
  config.checkpoint_every = 2
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 3: loss=nan"):
    train_and_evaluate(config, str(tmp_path / "stop"))
  step, params = final_params(str(tmp_path / "stop"))
  assert step == 2 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))

  config.nonfinite = "skip"
  results = train_and_evaluate(config, str(tmp_path / "skip"))
  assert np.isfinite(results["test"]["mae"])
  step, params = final_params(str(tmp_path / "skip"))
  assert step == 12 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_lds_weights_reach_the_regression_loss(tmp_path):
  """With label-distribution smoothing on, step 1's L_reg is the LDS-weighted mean of the plain one."""
  first_reg = {}
  for enabled in (False, True):
    config = tiny_config("regression", steps=1)
    config.loss.lds.enabled = enabled
    config.loss.lds.bin_width = 10.0
    config.log_every = 1
    workdir = tmp_path / str(enabled)
    train_and_evaluate(config, str(workdir))
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    first_reg[enabled] = [l["train/loss_reg"] for l in lines if "train/loss_reg" in l][0]
  assert np.isfinite(first_reg[True]) and first_reg[True] != pytest.approx(first_reg[False])


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


# `python -m launch ARGS` that also records the labels of every training batch this process loads.
SPY_LAUNCH = textwrap.dedent("""
    import json, runpy, sys
    sys.path.insert(0, {repo!r})
    from contrastive_jax import data as data_lib
    original, seen = data_lib.train_batch, []
    def spy(*args, **kwargs):
      batch = original(*args, **kwargs)
      seen.append(batch['y'].tolist())
      return batch
    data_lib.train_batch = spy
    out, sys.argv = sys.argv[1], ['launch'] + sys.argv[2:]
    try:
      runpy.run_module('launch', run_name='__main__', alter_sys=True)
    finally:
      with open(out, 'w') as f:
        json.dump(seen, f)
""")


@pytest.mark.slow  # 2 JAX processes + 1 more run: ~30 s on a quiet 2-core CPU, minutes when loaded.
def test_two_processes_train_like_one(tmp_path):
  """2 processes x 4 CPU devices (jax.distributed on localhost) == 1 process x 8 devices: the same
  per-step losses, test metrics and final parameters; each process loads only its half of every
  global batch; only process 0 logs and reports, while both write the checkpoints collectively."""
  args = ["--config=configs/adacon.py:diabetes", "--config.num_train_steps=10",
          "--config.eval_every=5", "--config.log_every=1", "--config.checkpoint_every=5",
          "--config.model.encoder_kwargs.hidden_sizes=(32,)"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-c", SPY_LAUNCH.format(repo=REPO), str(tmp_path / f"seen{i}.json"), *args,
       f"--workdir={tmp_path / 'multi'}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "step 10/10" in outputs[0][0] and "test MAE" in outputs[0][0]  # process 0 logs, reports
  assert "step 10/10" not in outputs[1][0] and "test MAE" not in outputs[1][0]

  # Each process loaded only its contiguous half of each global batch of 64.
  from contrastive_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  train = data_lib.load_dataset("diabetes", seed=0).train
  seen = [json.load(open(tmp_path / f"seen{i}.json")) for i in range(2)]
  assert len(seen[0]) == len(seen[1]) == 10
  for step in range(10):
    expected = data_lib.train_batch(train, 64, 0, step)["y"]
    np.testing.assert_array_equal(seen[0][step], expected[:32])
    np.testing.assert_array_equal(seen[1][step], expected[32:])

  single = _launch(args + [f"--workdir={tmp_path / 'single'}"],
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert single.returncode == 0, single.stderr[-3000:]
  losses = {}
  for name in ("multi", "single"):
    lines = [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl")]
    losses[name] = [l["train/loss"] for l in lines if "train/loss" in l]
  assert len(losses["multi"]) == 10
  np.testing.assert_allclose(losses["multi"], losses["single"], rtol=1e-5)
  multi = json.load(open(tmp_path / "multi" / "results.json"))
  np.testing.assert_allclose(multi["test"]["mae"],
                             json.load(open(tmp_path / "single" / "results.json"))["test"]["mae"],
                             rtol=1e-4)
  # Final and best parameters: the checkpoints written by 2 processes x 4 devices and by 1 x 8,
  # both read back into this 1-device process.
  for directory in ("checkpoints", "best"):
    _assert_params_close(restore_params(str(tmp_path / "multi" / directory)),
                         restore_params(str(tmp_path / "single" / directory)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("field", ["batch_size", "eval_batch_size"])
def test_batch_not_divisible_by_device_count_is_refused(tmp_path, monkeypatch, field):
  """The check runs before anything is built; a 3-device mesh stands in for real devices."""
  monkeypatch.setattr(loop, "make_mesh", lambda: type("Mesh3", (), {"size": 3})())
  config = tiny_config(steps=2)
  config.batch_size, config.eval_batch_size = 30, 60
  config[field] = 32
  with pytest.raises(ValueError, match=rf"`{field}`=32 must be divisible by the number of devices \(3\)"):
    train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("method,line", [
    ("simclr", "step 3/20 | loss 0.5000 (con 0.5000) | lr 0.1"),  # gamma_reg = 0: no reg term
    ("regression", "step 3/20 | loss 0.5000 (reg 0.2500) | lr 0.1"),  # no contrastive term
    ("adacon", "step 3/20 | loss 0.5000 (reg 0.2500, con 0.5000) | lr 0.1"),
])
def test_progress_line_prints_the_terms_of_the_objective(method, line):
  """The progress line shows the terms of Eq. 8 that the run's objective has (a non-zero weight)."""
  from contrastive_jax.train.writer import Progress  # pylint: disable=g-import-not-at-top
  terms = [(t.label, t.key) for t in loop.loss_terms(tiny_config(method)) if t.shown]
  metrics = {"loss": 0.5, "loss_reg": 0.25, "loss_con": 0.5, "lr": 0.1}
  assert Progress(20, 3, 32, terms=terms).line(3, metrics) == line + " | -- ex/s | ETA --"
