"""One run skeleton for every trainer: the loop around a :class:`Task`'s pure train step.

A trainer is a :class:`Task` (what differs: its state, its batches, its jitted step, its evaluation
and its results) run by :func:`run` (what does not: the device mesh, resume and the config-identity
refusal, finished-run detection, log / eval / checkpoint boundaries, ``stop_at_step``, latest and
best checkpoints, the non-finite policy, preemption, progress lines and metric files, the compile
message, ``results.json``, the workdir lock and the closing of every resource). The split follows
big_vision (``train.py`` vs its evaluators) and scenic (``train_lib`` vs ``projects/``).

The loop never waits for the device between steps: step ``s``'s metrics (its loss terms and its
``nonfinite`` flag) are read on the host while step ``s + 1`` runs, and at every boundary. A
non-finite step therefore raises :class:`NonFiniteLossError` naming it, one step later at most, and
its update was not applied (the step function keeps the old state under ``jnp.where``). Batches are
a pure function of ``(seed, step)`` and the state holds the step, so re-running the same command
resumes exactly from the newest complete checkpoint, on any process / device layout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive_jax.data.prefetch import Prefetcher
from contrastive_jax.train import run_checks
from contrastive_jax.train.bmse import DEFAULTS as BMSE_DEFAULTS
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.workdir_lock import locked_workdir
from contrastive_jax.train.writer import MetricWriter
from contrastive_jax.train.writer import Progress

log = logging.getLogger("contrastive_jax")

# Config fields that steer a run without changing its result; they may differ when resuming.
RUN_CONTROL_FIELDS = ("stop_at_step", "resume", "nonfinite", "log_every", "checkpoint_every",
                      "keep_checkpoints")
NONFINITE_POLICIES = ("stop", "skip")

# Fields added after runs were first checkpointed, with the value that reproduces those runs: left out
# of the identity while they hold it, so older checkpoints still resume.
ADDED_FIELDS = {"data.normalize": ("", None), "optim.exclude_bias_and_norm": (None,),
                "loss.matmul_dtype": (None,), "micro_batch": (None,),
                "loss.reg_units": ("normalized",), "data.train_fraction": (1.0,),
                "data.num_folds": (0,), "data.fold": (0,), "eval.top_percent": (100.0,),
                "eval.shots": ({"bin_width": 1.0, "many": 100, "few": 20, "top": None},),
                # Read for MR volumes only; the one volume config (configs/bcl.py:mrnet) changed
                # identity with it (its Ch. 4 projector), so no earlier volume run resumes into it.
                "data.slice_pairs": ("same",), "data.crop_from": ("decoded",),
                "model.dtype": ("float32",),
                "data.long_tail_ratio": (1.0,), "eval.l2_knn_ks": ([],),
                "data.oversample": (False,), "model.temporal": ("convlstm",),
                "loss.bmse": (dict(BMSE_DEFAULTS),)}
# Fields that never change what a resumed run computes: where the data are staged (``data.root``),
# the weights of step 0, which a checkpoint already holds (``model.init_from``; resuming ignores
# it), and the schedule of the pairwise loss (``loss.impl`` / ``loss.tile``: the same function, e.g.
# 'ring' after moving to more devices) or of the micro-batches (``micro_batch_unroll``), and how many
# batches are built ahead of the loop (``data.prefetch``; batches are a pure function of the step).
NON_IDENTITY_FIELDS = ("data.root", "model.init_from", "loss.impl", "loss.tile",
                       "micro_batch_unroll", "data.prefetch")
DEFAULT_PREFETCH = 2


class NonFiniteLossError(FloatingPointError):
  """Raised when a training step produced a non-finite loss or gradient."""


class PreemptionFlag:
  """Records SIGTERM / SIGINT so the loop can checkpoint at the next step boundary and exit cleanly.

  Multi-process runs use JAX's own preemption sync point instead (every process must stop at the same
  step for the collective checkpoint), which ``jax.distributed`` arms for SIGTERM.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[str] = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C stops at once.
    self.received = signal.Signals(signum).name
    log.warning("Received %s: saving a checkpoint after the current step, then exiting.",
                self.received)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None


def make_mesh() -> Mesh:
  """A 1-D mesh named 'batch' over every device of every process (Auto axis type)."""
  return Mesh(np.array(jax.devices()), (AXIS,))


def shard_batch(host: dict, mesh: Mesh) -> dict:
  """This process's rows of a global batch -> global arrays split over the mesh's 'batch' axis."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host.items()}


def local_slice(array: np.ndarray) -> np.ndarray:
  """This process's contiguous share of the leading axis of a global (host) batch."""
  n = array.shape[0] // jax.process_count()
  return array[jax.process_index() * n:(jax.process_index() + 1) * n]


def check_divisible(mesh, **batch_sizes) -> None:
  """Refuses a global batch size (``name=value``) that the mesh's devices cannot share equally."""
  for name, value in batch_sizes.items():
    if int(value) % mesh.size:
      raise ValueError(f"`{name}`={value} must be divisible by the number of devices "
                       f"({mesh.size}).")


# ----------------------------------------------------------------------------- config identity


def config_identity(config, run_control=RUN_CONTROL_FIELDS) -> dict:
  """The config fields that determine a run's result, as their JSON form (tuples become lists).

  Left out: the ``run_control`` fields, the :data:`NON_IDENTITY_FIELDS`, and the
  :data:`ADDED_FIELDS` while they hold their earlier-runs value.
  """
  return _strip_identity(json.loads(json.dumps(config.to_dict())), run_control)


def _strip_identity(cfg: dict, run_control=RUN_CONTROL_FIELDS) -> dict:
  """:func:`config_identity` of a config's JSON form (also applied to a checkpoint's stored
  identity, so a field that entered :data:`ADDED_FIELDS` later, e.g. ``model.dtype``, which some
  runs stored, compares equal while it holds its earlier-runs value)."""
  cfg = json.loads(json.dumps(cfg))
  for path in NON_IDENTITY_FIELDS + tuple(ADDED_FIELDS):
    section, _, name = path.rpartition(".")
    fields = cfg.get(section) if section else cfg
    if isinstance(fields, dict) and name in fields and (
        path in NON_IDENTITY_FIELDS or fields[name] in ADDED_FIELDS[path]):
      fields.pop(name)
  return {k: v for k, v in cfg.items() if k not in run_control}


def config_differences(a, b, prefix="") -> list:
  """Readable ``field: checkpoint X vs now Y`` lines for two :func:`config_identity` dicts."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out += config_differences(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{prefix}{key}.")
    return out
  return [] if a == b else [f"{prefix[:-1]}: checkpoint {a!r} vs now {b!r}"]


def refuse_changed_config(directory: str, saved: dict, current: dict, resume: str = "auto") -> list:
  """The :func:`config_differences` of a checkpoint's identity ``saved`` and the run's ``current``.

  Raises:
    ValueError: naming every changed field, unless ``resume`` is 'force'.
  """
  differences = config_differences(_strip_identity(saved, ()), current)
  if differences and resume != "force":
    raise ValueError(
        f"The checkpoint in {directory} was written with a different config:\n  "
        + "\n  ".join(differences) + "\nUse a new --workdir, or --config.resume=force to resume "
        "anyway.")
  return differences


def prefetch_depth(config) -> int:
  """``data.prefetch``: batches built ahead of the loop by a background thread (0: none)."""
  data = config.get("data")
  depth = data.get("prefetch", DEFAULT_PREFETCH) if hasattr(data, "get") else DEFAULT_PREFETCH
  if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
    raise ValueError(f"`data.prefetch`={depth!r} must be an integer >= 0.")
  return int(depth)


def check_run_control(config) -> None:
  """:func:`run_checks.check_run_control` plus the ``nonfinite`` and ``resume`` choices."""
  run_checks.check_run_control(config)
  policy = config.get("nonfinite", "stop")
  if policy not in NONFINITE_POLICIES:
    raise ValueError(f"Unknown `nonfinite`={policy!r}; expected 'stop' or 'skip'.")
  if config.get("resume", "auto") not in ("auto", "force"):
    raise ValueError(f"Unknown `resume`={config.resume!r}; expected 'auto' or 'force'.")
  prefetch_depth(config)


# ----------------------------------------------------------------------------- the task interface


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """One term of a task's objective: ``metrics[key]``, printed as ``label`` on the progress line
  while ``weight`` is None or non-zero (a SimCLR run, ``gamma_reg = 0``, prints no ``reg``)."""
  label: str
  key: str
  weight: Optional[float] = None

  @property
  def shown(self) -> bool:
    return self.weight is None or float(self.weight) != 0.0


@dataclasses.dataclass
class Outcome:
  """What a task reports at the end of a run (:attr:`Task.final`).

  ``results``: written to ``results.json`` and returned; ``test``: the scalars written as
  ``test/<name>``; ``log_lines``: logged after ``results.json`` is written; ``write_files``: called
  on process 0 with the workdir after ``results.json`` (e.g. test predictions).
  """
  results: dict
  test: dict
  log_lines: Sequence[str] = ()
  write_files: Optional[Callable[[str], None]] = None


@dataclasses.dataclass
class Task:
  """What one kind of training run supplies to :func:`run`; everything else is shared.

  Attributes:
    identity: the run's :func:`config_identity` (a checkpoint with another one is refused).
    init_state: ``init_state(latest) -> TrainState`` at step 0 (``latest``: the run's checkpoint
      directory, to skip loading ``model.init_from`` weights when resuming). :func:`run`
      replicates it over the mesh.
    host_batch: ``host_batch(step) -> {name: np.ndarray}``, this process's rows of the global batch
      of ``step`` (a pure function of the seed and ``step``); :func:`run` shards it over the mesh.
      None for a task with a :attr:`device_batch`.
    train_step: the jitted ``(state, batch) -> (state, metrics)``; ``metrics`` are device scalars
      with ``'loss'`` and ``'nonfinite'`` (1: the update was not applied), plus the loss terms.
    evaluate: ``evaluate(state, split) -> {name: float}`` for ``split`` 'val' (every ``eval_every``
      steps and at the end).
    describe: ``describe(metrics) -> str``, one line of :attr:`evaluate`'s metrics for the log.
    final: ``final(state, meta) -> Outcome`` after the last step (``state``: the best one when the
      task has a :attr:`metric`, else the last one; ``meta``: the run's checkpoint meta).
    metric: the validation metric that selects the best state (saved in ``workdir/best``); None:
      no best state.
    higher_is_better: the direction of :attr:`metric`.
    loss_terms: the objective's terms (:class:`LossTerm`), on the progress line and in the
      non-finite error.
    shown_metrics: ``(label, key, format)`` of further step metrics on the progress line.
    meta: the task's own checkpoint ``meta`` entries (JSON), saved with every checkpoint.
    on_resume: ``on_resume(saved_meta) -> dict`` of those entries to continue with; may log.
    device_batch: ``device_batch(step) -> pytree of global arrays``, the step's batch already on the
      mesh, used instead of :attr:`host_batch` by a task whose examples are synthesised on device
      (CoWPro: its pseudo-masks, device-resident, from which ``train_step`` draws the episodes of
      ``state.step``).
    record: ``record(meta, step, val)`` after each evaluation ``val`` of ``step``: updates the
      task's own :attr:`meta` entries (e.g. an evaluation history), saved with the next checkpoint.
  """
  identity: dict
  init_state: Callable[[Checkpointer], Any]
  host_batch: Callable[[int], dict]
  train_step: Callable
  evaluate: Callable[[Any, str], dict]
  describe: Callable[[dict], str]
  final: Callable[[Any, dict], Outcome]
  metric: Optional[str] = None
  higher_is_better: bool = False
  loss_terms: Sequence[LossTerm] = ()
  shown_metrics: Sequence[tuple] = ()
  meta: dict = dataclasses.field(default_factory=dict)
  on_resume: Optional[Callable[[dict], dict]] = None
  device_batch: Optional[Callable[[int], Any]] = None
  record: Optional[Callable[[dict, int, dict], None]] = None

  def is_better(self, metrics: dict, best: Optional[dict]) -> bool:
    """Whether ``metrics`` improves on ``best`` (None: nothing yet) by :attr:`metric`."""
    if best is None:
      return True
    new, old = metrics[self.metric], best[self.metric]
    return new > old if self.higher_is_better else new < old


def _nonfinite_terms(task: Task, metrics: dict) -> str:
  keys = ["loss"] + [t.key for t in task.loss_terms] + ["grad_norm"]
  return ", ".join(f"{k}={metrics[k]}" for k in dict.fromkeys(keys) if k in metrics)


# ----------------------------------------------------------------------------- the skeleton


@locked_workdir
@run_checks.closes_resources
def run(config, workdir: str, build_task: Callable[[Any, Mesh], Task], mesh: Mesh) -> dict:
  """Trains, evaluates and checkpoints one run of ``build_task(config, mesh)``.

  Run control read from ``config``: ``num_train_steps``, ``batch_size`` (examples per step, for the
  throughput), ``log_every``, ``eval_every``, ``checkpoint_every``, ``keep_checkpoints``,
  ``stop_at_step``, ``nonfinite`` ('stop' | 'skip'), ``resume`` ('auto' | 'force').

  Returns:
    The task's results (also ``workdir/results.json``), the stored results of a run that already
    finished, or ``{'status': 'stopped', 'steps'}`` after ``stop_at_step`` / SIGTERM / SIGINT.

  Raises:
    ValueError: a bad config, or a checkpoint of a different config or model.
    NonFiniteLossError: a non-finite loss or gradient under ``nonfinite='stop'``.
  """
  check_run_control(config)
  task = build_task(config, mesh)
  os.makedirs(workdir, exist_ok=True)
  num_steps = int(config.num_train_steps)
  latest = run_checks.opened(Checkpointer(os.path.join(workdir, "checkpoints"),
                                          config.keep_checkpoints))
  meta = {"best_step": -1, "val_best": None, "config": task.identity, **task.meta}
  resuming = latest.latest_step() is not None
  if resuming:  # Checked before any array is built or read: a refused resume costs nothing.
    differences = refuse_changed_config(latest.directory, latest.read_meta().get("config", {}),
                                        task.identity, config.get("resume", "auto"))
    if not differences and (done := run_checks.finished_results(workdir, latest.latest_step(),
                                                                num_steps)):
      return done

  state = jax.device_put(task.init_state(latest), NamedSharding(mesh, P()))
  # The best state is saved synchronously, after any in-flight save of the latest one: with several
  # processes, two concurrent Orbax saves of the same step interfere (seen as hangs and "metadata from
  # just one process" errors), so at most one save is ever in flight. Superseded best states are
  # deleted by the loop (see `committed_best`), not by Orbax, so that the best state named by the
  # newest complete latest checkpoint survives a crash at any moment.
  best = (run_checks.opened(Checkpointer(os.path.join(workdir, "best"), max_to_keep=None,
                                         async_save=False)) if task.metric else None)
  if resuming:
    run_checks.check_restorable(latest, state)
    state, saved_meta = latest.restore(state)
    meta["best_step"] = saved_meta.get("best_step", -1)
    meta["val_best"] = saved_meta.get("val_best")
    if best is not None:  # Best states saved after this step are recomputed (identically).
      best.keep_only(s for s in best.all_steps() if s <= int(state.step))
    log.info("Resumed from step %d of %s.", int(state.step), latest.directory)
    if task.on_resume is not None:
      meta.update(task.on_resume(saved_meta))

  writer = run_checks.opened(MetricWriter(workdir))
  step = int(state.step)
  first_step = step + 1
  progress = Progress(num_steps, step, config.batch_size,
                      terms=tuple((t.label, t.key) for t in task.loss_terms if t.shown),
                      shown=tuple(task.shown_metrics))
  stop_at = int(config.get("stop_at_step", -1))
  nonfinite_policy = config.get("nonfinite", "stop")
  every = lambda name: int(config[name])

  def check(step_done: int, metrics) -> dict:
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if metrics.pop("nonfinite"):
      terms = _nonfinite_terms(task, metrics)
      if nonfinite_policy == "skip":
        log.warning("Non-finite loss or gradient at step %d (%s): update skipped.", step_done, terms)
        return metrics
      latest.wait()
      raise NonFiniteLossError(
          f"Non-finite loss or gradient at step {step_done}: {terms}. The update was not applied; "
          f"{latest.describe_last_good()}. (--config.nonfinite=skip skips such steps instead.)")
    return metrics

  # The best step named by the newest latest checkpoint: a crash resumes from that checkpoint, so its
  # best state is kept until a newer latest checkpoint (naming a newer best) is complete.
  committed_best = meta["best_step"]

  def validate(step_done: int) -> None:
    val = task.evaluate(state, "val")
    writer.write_scalars(step_done, {f"val/{k}": v for k, v in val.items()})
    if task.record is not None:
      task.record(meta, step_done, val)
    improved = best is not None and task.is_better(val, meta["val_best"])
    if improved:
      meta["best_step"], meta["val_best"] = step_done, val
      latest.wait()  # Every latest checkpoint saved so far is now complete.
      best.save(state, meta, force=True)
      best.keep_only({step_done, committed_best})
    log.info("step %d | val %s%s", step_done, task.describe(val), " (best)" if improved else "")

  def save_latest() -> None:
    nonlocal committed_best
    latest.save(state, meta, force=True)
    committed_best = meta["best_step"]

  def wait_all() -> None:
    latest.wait()
    if best is not None:
      best.wait()

  pending = None
  if step < num_steps:
    progress.compiling()
  if task.device_batch is not None:  # synthesised on device: nothing for the host to overlap
    batches = Prefetcher(task.device_batch, step, num_steps, depth=0)
  else:
    batches = Prefetcher(lambda s: shard_batch(task.host_batch(s), mesh), step, num_steps,
                         depth=prefetch_depth(config))
  with batches, PreemptionFlag() as preemption:
    while step < num_steps:
      with progress.waiting():  # the progress line's data share
        batch = batches.get(step)
      state, metrics = task.train_step(state, batch)
      step += 1
      if pending is not None:  # Read the previous step's metrics while this one runs.
        check(*pending)
      pending = (step, metrics)
      stop = ("stop_at_step" if step == stop_at else
              "signal" if preemption.should_stop(step) else None)
      boundary = (step % every("log_every") == 0 or step % every("eval_every") == 0
                  or step % every("checkpoint_every") == 0 or step in (num_steps, first_step)
                  or stop is not None)
      if not boundary:
        continue
      last_metrics, pending = check(*pending), None
      if step == first_step:
        progress.restart_clock(step)  # Leave compilation out of the throughput and ETA.
      if step % every("log_every") == 0 or step == num_steps:
        writer.write_scalars(step, {f"train/{k}": v for k, v in last_metrics.items()})
        log.info(progress.line(step, last_metrics))
      with progress.paused():  # Evaluation and checkpoints stay out of the ex/s.
        if step % every("eval_every") == 0 or step == num_steps:
          validate(step)
        if step % every("checkpoint_every") == 0 or step == num_steps or stop is not None:
          save_latest()
      if stop is not None and step < num_steps:
        wait_all()
        writer.close()
        why = "stop_at_step" if stop == "stop_at_step" else (preemption.received or "preemption")
        log.info("Stopped at step %d (%s) with a checkpoint; re-run the same command to resume.",
                 step, why)
        return {"status": "stopped", "steps": step}
  if pending is not None:
    check(*pending)
  wait_all()

  if best is not None and meta["best_step"] >= 0:
    if meta["best_step"] not in best.all_steps():
      raise ValueError(f"The best state (step {meta['best_step']}) is missing from {best.directory} "
                       f"(found steps {list(best.all_steps())}); the workdir was changed by hand or "
                       "written by an older version. Use a new --workdir.")
    best.keep_only({meta["best_step"]})
    state, _ = best.restore(state, meta["best_step"])
  outcome = task.final(state, meta)
  writer.write_scalars(num_steps, {f"test/{k}": v for k, v in outcome.test.items()})
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
      json.dump(outcome.results, f, indent=2)
    if outcome.write_files is not None:
      outcome.write_files(workdir)
  for line in outcome.log_lines:
    log.info("%s", line)
  latest.close()
  if best is not None:
    best.close()
  return outcome.results
