"""The launcher's bad command lines, ``--help``, run-control checks, compile messages and re-runs of
finished workdirs (issue 16, items 5-9).

Bad command lines run ``python -m launch`` in a subprocess: each must exit non-zero with exactly one
``error:`` line on stderr and no traceback. They fail before JAX is imported (the config files and
``contrastive_jax.train.run_checks`` import none), so each takes a fraction of a second.
"""

import glob
import json
import logging
import os
import subprocess
import sys

import pytest

from contrastive_jax.train import run_checks
from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.writer import Progress

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from launch import __main__ as launcher  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = ["--config=configs/adacon.py:diabetes", "--config.num_train_steps=4",
        "--config.eval_every=2", "--config.batch_size=16",
        "--config.model.encoder_kwargs.hidden_sizes=(16,)"]


def _launch(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
  return subprocess.run([sys.executable, "-m", "launch", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _assert_one_error_line(proc, *needles):
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-4000:]
  for needle in needles:
    assert needle in errors[0], (needle, errors[0])
  return errors[0]


def _unwritable_dir():
  """An existing directory where even root cannot create a file (procfs), or None."""
  return "/proc/self" if os.path.isdir("/proc/self") else None


@pytest.mark.parametrize("args, needles", [
    ([], ("--config and --workdir are required",)),
    (["--config=configs/nowhere.py", "--workdir={w}"], ("configs/nowhere.py", "does not exist",
                                                          "configs/adacon.py")),
    (["--config=configs/adacon.py:diabets", "--workdir={w}"],
     ("'diabets'", "did you mean 'diabetes'", "digits_angle, diabetes, bmd, echonet")),
    (["--config=configs/regression.py:mnist", "--workdir={w}"],
     ("'mnist'", "digits_angle, diabetes")),
    (["--config=configs/adacon.py", "--workdir={w}", "--config.num_train_steps=abc"],
     ("--config.num_train_steps=abc",)),
    (["--config=configs/adacon.py", "--workdir={w}", "--config.batch_size=12.5"],
     ("--config.batch_size=12.5",)),
    (["--config=configs/adacon.py", "--workdir={w}", "stray"], ("unexpected arguments", "stray")),
    (["--config=configs/adacon.py"], ("--workdir is required",)),
])
def test_bad_command_line_is_one_error_line(tmp_path, args, needles):
  workdir = tmp_path / "run"
  proc = _launch(*[a.format(w=workdir) for a in args])
  _assert_one_error_line(proc, *needles)
  assert not workdir.exists()


@pytest.mark.parametrize("override, field", [
    ("--config.log_every=0", "`log_every`"),
    ("--config.eval_every=0", "`eval_every`"),
    ("--config.checkpoint_every=0", "`checkpoint_every`"),
    ("--config.num_train_steps=-5", "`num_train_steps`"),
    ("--config.keep_checkpoints=0", "`keep_checkpoints`"),
    ("--config.batch_size=0", "`batch_size`"),
    ("--config.optim.lr=-0.1", "`optim.lr`"),
    ("--config.optim.lr=nan", "`optim.lr`"),
])
def test_bad_run_control_is_refused_before_any_work(tmp_path, override, field):
  workdir = tmp_path / "run"
  _assert_one_error_line(_launch(*TINY, f"--workdir={workdir}", override), field)
  assert not workdir.exists()  # refused before the workdir, the data or JAX


def test_workdir_that_is_a_file_or_not_writable(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  _assert_one_error_line(_launch(*TINY, f"--workdir={a_file}"), "is a file")
  _assert_one_error_line(_launch(*TINY, f"--workdir={a_file}/run"), "cannot be created")
  # Permission bits do not stop root, so the read-only case uses a directory no one can write in
  # (procfs); a chmod-ed directory as well when not root.
  unwritable = _unwritable_dir()
  if os.geteuid() != 0:
    unwritable = tmp_path / "read_only"
    unwritable.mkdir()
    unwritable.chmod(0o500)
  if unwritable is None:
    pytest.skip("no /proc and running as root: no directory that refuses root's writes")
  _assert_one_error_line(_launch(*TINY, f"--workdir={unwritable}"), "not writable")


def test_help_exits_0_and_lists_configs_and_variants():
  proc = _launch("--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  for path in glob.glob(os.path.join(REPO_ROOT, "configs", "*.py")):
    assert os.path.basename(path) in proc.stdout
  lines = {line.split()[0]: line for line in proc.stdout.splitlines() if ".py " in line}
  assert "digits_angle*, diabetes, bmd, echonet" in lines["adacon.py"]
  assert "sslacl*, skid_v1" in lines["jigsaw.py"]
  assert "synthetic*, chaos" in lines["cowpro.py"]
  assert "--workdir" in proc.stdout  # the flags too


def test_config_files_and_run_checks_import_no_jax():
  code = ("import sys, configs.adacon, configs.simclr, configs.jigsaw, "
          "contrastive_jax.train.run_checks; assert 'jax' not in sys.modules, 'jax imported'")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO_ROOT), timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_config_lists_its_variants_literally():
  """``VARIANTS`` (read by the launcher without running the file) matches what get_config builds."""
  import importlib  # pylint: disable=g-import-not-at-top
  for path in sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.py"))):
    variants, default, _ = launcher.config_variants(path)
    name = os.path.basename(path)[:-3]
    assert variants and default in variants, name
    module = importlib.import_module(f"configs.{name}")
    assert tuple(module.VARIANTS) == variants, name
    for variant in variants:
      module.get_config(variant)
    with pytest.raises(ValueError, match="variant"):
      module.get_config("no_such_variant")


@pytest.mark.parametrize("field, value", [
    ("log_every", 0), ("eval_every", 0), ("checkpoint_every", -1), ("num_train_steps", 0),
    ("keep_checkpoints", 0), ("batch_size", 0), ("num_train_steps", -5), ("optim.lr", -1e-3),
    ("optim.lr", float("inf")), ("eval.linear_probe_lr", -0.1),
])
def test_check_run_control_names_the_field(field, value):
  config = base_config("diabetes")
  section, _, name = field.rpartition(".")
  with config.unlocked():
    (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=f"`{field}`"):
    run_checks.check_run_control(config)


def test_check_run_control_accepts_defaults_and_zero_lr():
  config = base_config("digits_angle")
  config.optim.lr = 0.0
  run_checks.check_run_control(config)


@pytest.mark.parametrize("task", sorted(launcher.TASKS))
def test_trainers_refuse_bad_run_control_first(tmp_path, task):
  """Called from Python too, every trainer refuses before reading data or creating the workdir."""
  import importlib  # pylint: disable=g-import-not-at-top
  train = launcher._trainer(task)  # pylint: disable=protected-access
  config = {"regression": lambda: base_config("diabetes"),
            "finetune": lambda: importlib.import_module("configs.transfer").get_config(),
            "jigsaw": lambda: importlib.import_module("configs.jigsaw").get_config(),
            "cowpro": lambda: importlib.import_module("configs.cowpro").get_config(),
            "mrnet": lambda: importlib.import_module("configs.mrnet").get_config()}[task]()
  config.checkpoint_every = 0
  with pytest.raises(ValueError, match="`checkpoint_every`"):
    train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", sorted(launcher.TASKS))
def test_every_task_is_a_project_or_the_loop_on_the_run_skeleton(tmp_path, monkeypatch, task):
  """``launch.TASKS`` names a trainer of ``contrastive_jax/projects/<name>/task.py``, of
  ``train/loop.py`` or of ``train/<name>.py``; calling it hands a task of its own module to ``train.run.run``, and
  ``models.MODELS`` builds that task's network."""
  import functools  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  from contrastive_jax import models  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  module_name = launcher.TASKS[task].partition(":")[0]
  assert module_name in ("contrastive_jax.train.loop", f"contrastive_jax.train.{task}") or (
      module_name == f"contrastive_jax.projects.{task}.task"), module_name
  assert task in models.MODELS
  trainer = launcher._trainer(task)  # pylint: disable=protected-access
  assert callable(trainer) and trainer.__module__ == module_name
  module = importlib.import_module(module_name)
  assert module.run_lib is run_lib
  calls = []
  monkeypatch.setattr(run_lib, "run", lambda *args: calls.append(args) or {"steps": 0})
  config = {"regression": lambda: base_config("diabetes"),
            "finetune": lambda: importlib.import_module("configs.transfer").get_config(),
            "jigsaw": lambda: importlib.import_module("configs.jigsaw").get_config(),
            "cowpro": lambda: importlib.import_module("configs.cowpro").get_config(),
            "mrnet": lambda: importlib.import_module("configs.mrnet").get_config()}[task]()
  assert trainer(config, str(tmp_path / "run")) == {"steps": 0}
  (config_arg, workdir, make_task, _), = calls
  assert config_arg is config and workdir == str(tmp_path / "run")
  make_task = make_task.func if isinstance(make_task, functools.partial) else make_task
  assert make_task.__module__ == module_name and make_task.__name__.endswith("_task")


def test_finished_results(tmp_path):
  assert run_checks.finished_results(str(tmp_path), 4, 4) is None  # no results.json
  (tmp_path / "results.json").write_text(json.dumps({"steps": 4, "test": {"mae": 1.0}}))
  assert run_checks.finished_results(str(tmp_path), 4, 4) == {"steps": 4, "test": {"mae": 1.0}}
  assert run_checks.finished_results(str(tmp_path), 4, 6) is None  # more steps asked: continue
  assert run_checks.finished_results(str(tmp_path), 2, 4) is None  # checkpoint not at the end
  (tmp_path / "results.json").write_text("{truncated")
  assert run_checks.finished_results(str(tmp_path), 4, 4) is None


def test_closes_resources_on_return_and_on_error():
  closed = []

  class Resource:
    def __init__(self, name):
      self.name = name

    def close(self):
      closed.append(self.name)

  @run_checks.closes_resources
  def trainer(fail):
    run_checks.opened(Resource("a"))
    run_checks.opened(Resource("b"))
    if fail:
      raise ValueError("bad")
    return "done"

  assert trainer(False) == "done" and closed == ["b", "a"]
  closed.clear()
  with pytest.raises(ValueError, match="bad"):
    trainer(True)
  assert closed == ["b", "a"]
  assert run_checks.opened(Resource("c")).name == "c"  # outside a trainer: not registered


def test_check_restorable_names_the_parameters_that_changed_shape():
  import numpy as np  # pylint: disable=g-import-not-at-top

  class Saved:
    directory = "/runs/x/checkpoints"

    def saved_shapes(self):
      return {"params": {"head": {"kernel": (4, 2), "bias": (2,)}, "old": {"w": (3,)}},
              "batch_stats": {}}

  class State:
    params = {"head": {"kernel": np.zeros((4, 3)), "bias": np.zeros(2)}, "new": {"w": np.zeros(3)}}
    batch_stats = {}

  with pytest.raises(ValueError, match="different model") as raised:
    run_checks.check_restorable(Saved(), State())
  message = str(raised.value)
  assert "params.head.kernel: checkpoint (4, 2) vs now (4, 3)" in message
  assert "params.old: not in the model" in message
  assert "params.new: not in the checkpoint" in message
  State.params = {"head": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)},
                  "old": {"w": np.zeros(3)}}
  run_checks.check_restorable(Saved(), State())  # same shapes: restorable


def test_progress_shows_no_rate_before_a_timed_step(caplog):
  progress = Progress(total_steps=10, first_step=0, examples_per_step=32)
  metrics = {"loss": 1.0, "loss_reg": 0.5, "loss_con": 0.5, "lr": 0.1}
  with caplog.at_level(logging.INFO, logger="contrastive_jax"):
    progress.compiling()
    progress.restart_clock(1)  # after the first step: compilation excluded
  messages = [r.getMessage() for r in caplog.records]
  assert messages[0].startswith("Compiling the train step")
  assert messages[1].startswith("Compiled in")
  first = progress.line(1, metrics)
  assert first.endswith("| -- ex/s | ETA --"), first
  later = progress.line(3, metrics)
  assert "-- ex/s" not in later and "ex/s | ETA " in later, later


@pytest.mark.slow  # three launcher runs that train or restore: ~20 s on a quiet 2-core CPU
def test_launcher_compiles_finishes_once_and_fails_cleanly_after_a_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  first = _launch(*TINY, "--config.log_every=1", f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  out = first.stdout
  assert out.index("Compiling the train step") < out.index("Compiled in") < out.index("step 1/4")
  step_1 = [line for line in out.splitlines() if "step 1/4" in line]
  assert step_1 and step_1[0].endswith("-- ex/s | ETA --"), out

  def outputs():
    return (sorted(os.listdir(workdir / "tensorboard")), (workdir / "metrics.jsonl").read_text(),
            (workdir / "results.json").read_text())

  before = outputs()
  again = _launch(*TINY, "--config.log_every=1", f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already finished" in again.stdout and "test MAE" in again.stdout
  assert outputs() == before  # no metrics line, no TensorBoard file, results untouched

  # A restore that fails (a different projection width, forced): one line, no asyncio noise from
  # an Orbax manager left open.
  forced = _launch(*TINY, f"--workdir={workdir}", "--config.resume=force",
                   "--config.model.proj_dim=64")
  _assert_one_error_line(forced, "different model", "params.projector.dense_out.kernel",
                         "checkpoint (16, 128) vs now (16, 64)")
  assert "Event loop is closed" not in forced.stderr

  # An error in the trainer, before it writes anything: the workdir the launcher created is removed.
  typo = _launch(*TINY, f"--workdir={tmp_path / 'typo'}", "--config.method=adacn")
  _assert_one_error_line(typo, "adacn")
  assert not (tmp_path / "typo").exists()


def test_switching_the_method_drops_the_files_options_of_its_own_method():
  """``--config.method=<m>`` on a paper config: the file's options of its own method go (ACCon's
  temperature 0.05 must not silently become RNC's), options given on the command line stay, and the
  result passes the trainer's field check that the unswitched options fail."""
  from contrastive_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = launcher._file_config("configs/accon.py:agedb")  # pylint: disable=protected-access
  assert config.method == "accon"
  with config.unlocked():
    config.method = "rnc"
  with pytest.raises(ValueError, match="label_range"):
    loop.check_config_fields(config)
  config.loss.contrastive.temperature = 3.0  # as if given on the command line
  dropped = launcher.switch_method(config, "accon", {"method", "loss.contrastive.temperature"})
  assert set(dropped) == {"label_range", "official"}
  assert dict(config.loss.contrastive) == {"temperature": 3.0}
  loop.check_config_fields(config)
  # Not switched (no --config.method, or the file's own method): nothing changes.
  again = launcher._file_config("configs/accon.py:agedb")  # pylint: disable=protected-access
  assert launcher.switch_method(again, "accon", {"method"}) == {}
  assert launcher.switch_method(again, "accon", set()) == {}
  assert "label_range" in again.loss.contrastive
  assert launcher._overridden_fields(  # pylint: disable=protected-access
      ["--config.method=rnc", "--config.loss.contrastive.temperature", "2", "--workdir=w"]) == {
          "method", "loss.contrastive.temperature"}


def test_a_comparator_runs_on_a_paper_recipe_from_the_command_line(tmp_path):
  """N-pair takes no temperature: on AdaCon's config it was refused; now it runs, saying what went."""
  proc = _launch(*TINY, "--config.method=npair", f"--workdir={tmp_path / 'npair'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--config.method=npair replaces the config's adacon" in proc.stdout + proc.stderr
  results = json.loads((tmp_path / "npair" / "results.json").read_text())
  assert results["method"] == "npair"
