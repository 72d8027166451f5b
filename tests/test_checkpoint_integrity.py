"""Checkpoints and concurrency (issue 16, items 10-12): the workdir lock, checksummed checkpoints with
fallback to the previous complete one, and the non-finite guard's message without any checkpoint.

Corruption is real: bytes of the files Orbax wrote are flipped, XOR-ed, truncated or deleted.
Concurrency is real: a second process (``python -m launch``) is started on a workdir that a first
process holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax.train import checkpoint as checkpoint_lib
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.checkpoint import load_checkpoint
from contrastive_jax.train.workdir_lock import LOCK_NAME
from contrastive_jax.train.workdir_lock import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _State:
  """The fields a Checkpointer saves (no model needed); ``w`` is random, so it barely compresses."""

  def __init__(self, step):
    self.step = np.int32(step)
    self.params = {"w": np.random.default_rng(step).normal(size=(64, 32)).astype(np.float32)}
    self.batch_stats = {}
    self.opt_state = (None, {"mu": np.full(2, step, np.float32)})
    self.rng = np.array([0, step], np.uint32)


def _write(directory, steps=(1, 2, 3), max_to_keep=3):
  ckpt = Checkpointer(str(directory), max_to_keep=max_to_keep, async_save=False)
  for step in steps:
    ckpt.save(_State(step), {"best_step": step})
  ckpt.close()


def _data_files(step_dir):
  """The ``state`` item's OCDBT data files (``d/<hash>``; per process in ``ocdbt.process_<i>/d``,
  and at the top after Orbax merges them), largest first."""
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for name in names if os.path.basename(root) == "d"]
  # Values of more than 1 KiB live in the per-process files (no checksum); smaller ones inline in
  # the b-tree nodes, which TensorStore checks with CRC-32C.
  return sorted(files, key=lambda f: ("ocdbt.process_" not in f, -os.path.getsize(f)))


def _read_unchecked(step_dir):
  """The arrays of a step as Orbax reads them, without the digest check (``None``: Orbax fails)."""
  directory, step = os.path.split(step_dir)
  original = checkpoint_lib.verify_digests
  checkpoint_lib.verify_digests = lambda tree, digests: None
  try:
    return jax.tree.leaves(load_checkpoint(directory, int(step))[0])
  except ValueError:
    return None
  finally:
    checkpoint_lib.verify_digests = original


def _silent_flip(step_dir, mask, count):
  """XORs ``count`` bytes of a data file with ``mask`` where Orbax then reads different arrays
  *without any error* (the issue's silent corruption); returns the file and offset."""
  clean = _read_unchecked(step_dir)
  for path in _data_files(step_dir):
    data = open(path, "rb").read()
    for offset in range(len(data) // 16, len(data) - count, max(1, len(data) // 100)):
      corrupt = bytearray(data)
      for i in range(offset, offset + count):
        corrupt[i] ^= mask
      with open(path, "wb") as f:
        f.write(bytes(corrupt))
      read = _read_unchecked(step_dir)
      if read is not None and any(not np.array_equal(a, b) for a, b in zip(read, clean)):
        return path, offset
    with open(path, "wb") as f:
      f.write(data)
  raise AssertionError(f"no silent corruption found in {step_dir}")


def _corrupt(step_dir, how):
  if how == "bit_flip":
    _silent_flip(step_dir, mask=0x04, count=1)
  elif how == "xor_bytes":
    _silent_flip(step_dir, mask=0xFF, count=2)
  elif how == "truncated":
    for path in _data_files(step_dir):
      os.truncate(path, os.path.getsize(path) // 2)
  elif how == "no_metadata":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  elif how == "bad_meta_json":
    path = os.path.join(step_dir, "meta", "metadata")
    with open(path, "w") as f:
      f.write('{"best_step": 3, "state_sha2')
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["bit_flip", "xor_bytes", "truncated", "no_metadata",
                                 "bad_meta_json"])
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, caplog, how):
  """Item 11: the corrupt newest step is named with the step used instead, moved aside (so it is
  neither listed, nor rotates good steps away, nor blocks re-saving its step), and step 2 is read."""
  directory = tmp_path / "ckpt"
  _write(directory)
  _corrupt(str(directory / "3"), how)
  ckpt = Checkpointer(str(directory), max_to_keep=3, async_save=False)
  with caplog.at_level(logging.WARNING, logger="contrastive_jax"):
    state, meta = ckpt.restore_tree()
  assert int(state["step"]) == 2 and meta == {"best_step": 2}
  np.testing.assert_array_equal(state["params"]["w"], _State(2).params["w"])
  warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][-1]
  assert re.search(r"Corrupt or unreadable checkpoint\(s\) in .*ckpt: step 3 \(.*\)\. Using the "
                   r"previous complete checkpoint, step 2, instead\. Moved aside: .*3\.corrupt-",
                   warning), warning
  if how in ("bit_flip", "xor_bytes"):  # Read without error: only the digests tell.
    assert "do not match their stored SHA-256 digests: params/w" in warning
  assert ckpt.all_steps() == (1, 2) and ckpt.last_good_step() == 2
  assert ckpt.describe_last_good().startswith("the last good checkpoint (step 2) in ")
  assert [n for n in os.listdir(directory) if n.startswith("3.corrupt-")]
  for step in (3, 4):  # The run goes on: step 3 is re-saved, rotation keeps good steps only.
    ckpt.save(_State(step), {"best_step": step})
  ckpt.close()
  assert Checkpointer(str(directory), 3, read_only=True).all_steps() == (2, 3, 4)
  assert int(load_checkpoint(str(directory))[0]["step"]) == 4


def test_restore_with_template_checks_digests_and_read_only_moves_nothing(tmp_path, caplog):
  directory = tmp_path / "ckpt"
  _write(directory)
  _corrupt(str(directory / "3"), "bit_flip")
  with caplog.at_level(logging.WARNING, logger="contrastive_jax"):
    state, _ = load_checkpoint(str(directory))  # read-only: falls back, renames nothing
  assert int(state["step"]) == 2 and "step 3" in caplog.text
  assert sorted(os.listdir(directory)) == ["1", "2", "3"]
  with pytest.raises(ValueError, match=r"^The checkpoint of step 3 in .* is corrupt or unreadable: "
                                       r"CorruptCheckpointError: .*params/w\.$"):
    load_checkpoint(str(directory), step=3)  # an explicit step has no fallback

  class Template(_State):
    def __init__(self):
      super().__init__(0)
      self.__dict__.update(jax.tree.map(jnp.asarray, self.__dict__))

    def replace(self, **fields):
      self.__dict__.update(fields)
      return self
  ckpt = Checkpointer(str(directory), max_to_keep=3, async_save=False)
  restored, meta = ckpt.restore(Template())
  ckpt.close()
  assert int(restored.step) == 2 and meta == {"best_step": 2}
  assert sorted(n.split(".")[0] for n in os.listdir(directory)) == ["1", "2", "3"]


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
  directory = tmp_path / "ckpt"
  _write(directory, steps=(1, 2))
  _corrupt(str(directory / "2"), "truncated")
  _corrupt(str(directory / "1"), "no_metadata")
  with pytest.raises(ValueError) as error:
    load_checkpoint(str(directory))
  message = str(error.value)
  assert "\n" not in message
  assert re.match(r"No readable checkpoint in .*ckpt: step 2: .*; step 1: .*\. Move the directory "
                  r"aside", message), message


def test_checkpoints_without_digests_are_still_read(tmp_path, monkeypatch):
  """Checkpoints written before digests were stored are read unchecked."""
  monkeypatch.setattr(checkpoint_lib, "state_digests", lambda tree: None)
  _write(tmp_path / "ckpt", steps=(1,))
  monkeypatch.undo()
  state, meta = load_checkpoint(str(tmp_path / "ckpt"))
  assert int(state["step"]) == 1 and meta == {"best_step": 1}


def test_guard_names_no_checkpoint_before_the_first_one(tmp_path):
  """Item 12, unit level: no checkpoint -> says so; otherwise the newest verified step."""
  ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2, async_save=False)
  assert ckpt.last_good_step() is None
  assert ckpt.describe_last_good().startswith("no checkpoint has been written to ")
  ckpt.save(_State(4), {})
  assert ckpt.describe_last_good() == (f"the last good checkpoint (step 4) in {ckpt.directory} is "
                                       "intact")
  ckpt.close()


# ---- Item 10: the workdir lock. ----

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from contrastive_jax.train.workdir_lock import workdir_lock
    with workdir_lock(sys.argv[1]):
      time.sleep(120)
""")


def _wait_for_lock(path, process, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path) and os.path.getsize(path):
      return json.load(open(path))
    assert process.poll() is None, process.communicate()
    time.sleep(0.05)
  raise TimeoutError(path)


def test_second_run_on_a_held_workdir_is_refused_and_a_dead_owner_is_taken_over(tmp_path, caplog):
  """A real second process (the launcher) is refused with one ``error:`` line naming the owner;
  once the owner is killed (no clean-up: SIGKILL), the stale lock is taken over with a warning."""
  workdir = tmp_path / "run"
  lock = workdir / LOCK_NAME
  holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=REPO), str(workdir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    owner = _wait_for_lock(str(lock), holder)
    assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
    second = subprocess.run(
        [sys.executable, "-m", "launch", "--config=configs/adacon.py:diabetes",
         f"--workdir={workdir}", "--config.num_train_steps=4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"})
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert second.returncode != 0
  errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
  assert f"The workdir {workdir} is in use by another run: pid {holder.pid} on host " in errors[0]
  assert "Wait for that run to finish or stop it, or use another --workdir." in errors[0]
  assert sorted(os.listdir(workdir)) == [LOCK_NAME]  # The second run wrote nothing.

  with caplog.at_level(logging.WARNING, logger="contrastive_jax"):
    with workdir_lock(str(workdir)):
      assert json.load(open(lock))["pid"] == os.getpid()
  assert f"Taking over the stale lock {lock} of a run that is gone (pid {holder.pid} " in caplog.text
  assert not lock.exists()  # Released: the file is deleted.


def test_lock_with_dead_pid_is_taken_over_and_released_on_error(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock = tmp_path / LOCK_NAME
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
  with caplog.at_level(logging.WARNING, logger="contrastive_jax"):
    with pytest.raises(RuntimeError, match="inside"):
      with workdir_lock(str(tmp_path)):
        assert json.load(open(lock))["pid"] == os.getpid()
        raise RuntimeError("inside")
  assert f"pid {dead.pid} on host" in caplog.text
  assert not lock.exists()


def test_lock_of_another_host_is_refused_in_one_line(tmp_path):
  lock = tmp_path / LOCK_NAME
  lock.write_text(json.dumps({"host": "elsewhere-node-7", "pid": 1234, "started": "x"}))
  with pytest.raises(ValueError) as error:
    with workdir_lock(str(tmp_path)):
      pass
  message = str(error.value)
  assert "\n" not in message and "pid 1234 on host elsewhere-node-7" in message
  assert f"If no run is alive there, delete {lock}" in message
  assert lock.exists()  # Not ours to delete.


def test_lock_in_the_same_process_is_refused_while_held(tmp_path):
  with workdir_lock(str(tmp_path)):
    with pytest.raises(ValueError, match=rf"in use by another run: pid {os.getpid()} on host"):
      with workdir_lock(str(tmp_path)):
        pass
    assert (tmp_path / LOCK_NAME).exists()  # The refused attempt left the holder's lock alone.
  assert not (tmp_path / LOCK_NAME).exists()


def test_workdir_created_for_the_lock_alone_is_removed(tmp_path):
  """A run refused before writing anything (e.g. a bad config) leaves no empty workdir behind."""
  with workdir_lock(str(tmp_path / "new")):
    assert (tmp_path / "new").is_dir()
  assert not (tmp_path / "new").exists()  # Created for the lock only, nothing written: removed.


# ---- Whole runs of the trainer. ----


def _run_config(steps=20):
  from tests.test_reliability import kill_config  # pylint: disable=g-import-not-at-top
  config = kill_config()
  config.num_train_steps = steps
  config.keep_checkpoints = 3
  config.model.encoder_kwargs.hidden_sizes = (64,)  # 2.5 KiB kernel: stored out of line
  return config


def _nan_at(monkeypatch, step_to_poison):
  from contrastive_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from tests.test_train import _nan_batch_at  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(data_lib, "train_batch", _nan_batch_at(step_to_poison))


@pytest.mark.slow  # Two runs of the trainer: ~7 s on a quiet 2-core CPU, ~15 s loaded.
def test_run_resumes_from_the_checkpoint_before_a_flipped_bit(tmp_path, monkeypatch, caplog,
                                                              fast_compile):
  """Item 11 end to end (with item 10's release after an error): a bit flipped in the newest
  checkpoint's data makes the re-run resume from the one before, warning with both steps; the
  non-finite guard then names that verified checkpoint, never the corrupt one."""
  from contrastive_jax.train import loop  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = _run_config()
  config.stop_at_step = 20
  config.num_train_steps = 30
  workdir = tmp_path / "run"
  assert train_and_evaluate(config, str(workdir)) == {"status": "stopped", "steps": 20}
  ckpt = workdir / "checkpoints"
  assert sorted(os.listdir(ckpt)) == ["10", "20"] and not (workdir / LOCK_NAME).exists()
  _corrupt(str(ckpt / "20"), "bit_flip")

  config.stop_at_step = -1
  _nan_at(monkeypatch, 13)
  caplog.set_level(logging.INFO, logger="contrastive_jax")
  with pytest.raises(loop.NonFiniteLossError) as error:
    train_and_evaluate(config, str(workdir))
  assert re.search(r"checkpoint\(s\) in .*checkpoints: step 20 \(CorruptCheckpointError: .*\)\. "
                   r"Using the previous complete checkpoint, step 10, instead", caplog.text)
  assert "Resumed from step 10 " in caplog.text
  assert "at step 13: loss=nan" in str(error.value)
  assert f"the last good checkpoint (step 10) in {ckpt} is intact" in str(error.value)
  assert sorted(n.split(".")[0] for n in os.listdir(ckpt)) == ["10", "20"]  # 20 moved aside
  assert not (workdir / LOCK_NAME).exists()


def test_guard_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch, fast_compile):
  """Item 12: a non-finite step before any checkpoint no longer says "(step None)"."""
  from contrastive_jax.train import loop  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  _nan_at(monkeypatch, 3)
  workdir = tmp_path / "run"
  with pytest.raises(loop.NonFiniteLossError) as error:
    train_and_evaluate(_run_config(), str(workdir))
  message = str(error.value)
  assert "at step 3: loss=nan" in message and "None" not in message
  assert (f"no checkpoint has been written to {workdir / 'checkpoints'} yet, so a re-run starts "
          "from the beginning" in message)
  assert not (workdir / LOCK_NAME).exists()


@pytest.mark.slow  # Three runs of the trainer: ~25 s on a loaded 2-core CPU.
def test_corrupt_newest_checkpoint_resume_ends_like_a_straight_run(tmp_path, caplog):
  """The issue's case: a flipped bit in the newest checkpoint once gave a silently different test
  MAE; now the run resumes from the previous checkpoint and ends exactly like an uninterrupted run."""
  from contrastive_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.checkpoint import restore_params  # pylint: disable=g-import-not-at-top
  config = _run_config(steps=30)
  expected = train_and_evaluate(config, str(tmp_path / "straight"))
  config.stop_at_step = 20
  workdir = tmp_path / "run"
  train_and_evaluate(config, str(workdir))
  _corrupt(str(workdir / "checkpoints" / "20"), "xor_bytes")
  config.stop_at_step = -1
  caplog.set_level(logging.INFO, logger="contrastive_jax")
  assert train_and_evaluate(config, str(workdir)) == expected
  assert "Resumed from step 10 " in caplog.text and "step 20 (CorruptCheckpointError" in caplog.text
  chex.assert_trees_all_equal(restore_params(str(workdir / "best")),
                              restore_params(str(tmp_path / "straight" / "best")))


@pytest.mark.slow  # Two launcher processes training for a few seconds each.
def test_two_launches_on_one_workdir_the_second_is_refused_the_first_finishes(tmp_path):
  """The issue's case with real runs: the second launch is refused in one line while the first
  trains; the first, stopped by SIGTERM, releases the lock, and a third launch resumes it."""
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "launch", "--config=configs/adacon.py:diabetes",
             f"--workdir={workdir}", "--config.num_train_steps=100000", "--config.batch_size=32",
             "--config.checkpoint_every=50", "--config.eval_every=1000", "--config.log_every=50"]
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_lock(str(workdir / LOCK_NAME), first)
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert first.poll() is None  # Still training, undisturbed.
  finally:
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
  assert second.returncode != 0 and "Traceback" not in second.stderr
  errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"pid {first.pid} on host" in errors[0], second.stderr
  assert first.returncode == 0, err[-3000:]
  assert "with a checkpoint; re-run the same command to resume" in out
  assert not (workdir / LOCK_NAME).exists()
  third = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    for line in third.stdout:
      if "Resumed from step" in line:
        break
  finally:
    third.kill()
    _, err = third.communicate(timeout=300)
  assert "Resumed from step" in line and "error:" not in err, err[-3000:]
