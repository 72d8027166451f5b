"""The training loop: data, model, state, data-parallel steps, evaluation, checkpoints, results.

``train_and_evaluate(config, workdir)`` trains ``config.num_train_steps`` steps, evaluates on the
validation split every ``eval_every`` steps (keeping the best state by validation MAE), checkpoints the
latest state every ``checkpoint_every`` steps, and finally evaluates the best state on the test split
and writes ``workdir/results.json``. Calling it again with the same ``workdir`` resumes from the latest
checkpoint and ends with exactly the same results as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Optional

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive_jax import data as data_lib
from contrastive_jax import models
from contrastive_jax.evaluate import regression_metrics
from contrastive_jax.evaluate.probe import knn_regression
from contrastive_jax.evaluate.probe import ridge_probe
from contrastive_jax.losses import fit_ecdf
from contrastive_jax.losses import lds_weights
from contrastive_jax.train import objectives
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.step import make_predict_step
from contrastive_jax.train.step import make_train_step
from contrastive_jax.train.writer import MetricWriter
from contrastive_jax.train.writer import Progress

log = logging.getLogger("contrastive_jax")

# Config fields that steer a run without changing its result; they may differ when resuming.
RUN_CONTROL_FIELDS = ("stop_at_step", "resume", "nonfinite", "log_every", "checkpoint_every",
                      "keep_checkpoints")


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


def _identity(config) -> dict:
  """The config fields that determine a run's result, as their JSON form (tuples become lists)."""
  cfg = json.loads(json.dumps(config.to_dict()))
  return {k: v for k, v in cfg.items() if k not in RUN_CONTROL_FIELDS}


def _diff(a, b, prefix="") -> list:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out += _diff(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{prefix}{key}.")
    return out
  return [] if a == b else [f"{prefix[:-1]}: checkpoint {a!r} vs now {b!r}"]


def _shard(host: dict, mesh: Mesh) -> dict:
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host.items()}


def _local_slice(array: np.ndarray) -> np.ndarray:
  n = array.shape[0] // jax.process_count()
  return array[jax.process_index() * n:(jax.process_index() + 1) * n]


def split_outputs(predict, state, split, batch_size: int, mesh: Mesh) -> np.ndarray:
  """``predict`` over a whole split, in order, padding removed (identical on every process)."""
  outputs, masks = [], []
  for batch in data_lib.eval_batches(split, batch_size):
    x = _shard({"x": _local_slice(batch["x"])}, mesh)["x"]
    outputs.append(np.asarray(multihost_utils.process_allgather(predict(state, x), tiled=True)))
    masks.append(batch["mask"])
  return np.concatenate(outputs)[np.concatenate(masks) > 0]


class Evaluator:
  """Validation/test metrics of a state, by the regression head or a probe of frozen embeddings.

  ``eval_with``: 'head' (the model's regression branch), 'knn' (kNN regression on the embeddings of
  the training split) or 'ridge' (ridge linear probe on them) — the latter two for self-supervised
  pretraining, where the regression branch is not trained.
  """

  MODES = ("head", "knn", "ridge")

  def __init__(self, model, mesh, dataset, config, target_mean: float, target_std: float):
    self.mode = config.get("eval_with", "head")
    if self.mode not in self.MODES:
      raise ValueError(f"Unknown `eval_with`={self.mode!r}; expected one of {self.MODES}.")
    self.mesh, self.dataset = mesh, dataset
    self.batch_size = config.get("eval_batch_size") or config.batch_size
    self.mean, self.std = target_mean, target_std
    self.knn_k = int(config.get("knn_k", 20))
    self.ridge_alpha = float(config.get("ridge_alpha", 1.0))
    self._predict = make_predict_step(model, mesh, "prediction")
    self._embed = make_predict_step(model, mesh, "embedding")

  def _probe(self, mode, state, split) -> np.ndarray:
    train = split_outputs(self._embed, state, self.dataset.train, self.batch_size, self.mesh)
    query = split_outputs(self._embed, state, split, self.batch_size, self.mesh)
    if mode == "knn":
      return knn_regression(train, self.dataset.train.y, query, k=self.knn_k)
    return ridge_probe(train, self.dataset.train.y, query, alpha=self.ridge_alpha)

  def __call__(self, state, split, mode: Optional[str] = None) -> dict:
    """Regression metrics on ``split`` in the target's natural unit."""
    mode = mode or self.mode
    if mode == "head":
      pred = split_outputs(self._predict, state, split, self.batch_size, self.mesh)
      pred = pred * self.std + self.mean
    else:
      pred = self._probe(mode, state, split)
    return regression_metrics(pred, split.y)


def _resolve_loss_kwargs(config, dataset) -> ml_collections.ConfigDict:
  """Fills data-dependent loss hyperparameters (ACCon's label range R = max(Y) - min(Y))."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.method == "accon" and config.loss.contrastive.get("label_range") is None:
    config.loss.contrastive.label_range = float(dataset.label_range)
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints one run; returns the results dict (also ``results.json``)."""
  objectives.check_method(config.method)
  mesh = make_mesh()
  if config.batch_size % mesh.size:
    raise ValueError(f"`batch_size`={config.batch_size} must be divisible by the number of devices "
                     f"({mesh.size}).")
  eval_batch_size = config.get("eval_batch_size") or config.batch_size
  if eval_batch_size % mesh.size:
    raise ValueError(f"`eval_batch_size`={eval_batch_size} must be divisible by the number of "
                     f"devices ({mesh.size}).")
  os.makedirs(workdir, exist_ok=True)

  dataset = data_lib.load_dataset(config.data.name, seed=config.data.seed, **config.data.kwargs)
  config = _resolve_loss_kwargs(config, dataset)
  ecdf = fit_ecdf(dataset.train.y) if config.method == "adacon" else None
  lds = config.loss.get("lds")
  if lds is not None and lds.enabled:
    lds_kwargs = {k: v for k, v in lds.to_dict().items() if k != "enabled"}
    example_weights = lambda y: lds_weights(dataset.train.y, y, **lds_kwargs).astype(np.float32)
  else:
    example_weights = None
  if config.data.normalize_targets:
    mean, std = float(np.mean(dataset.train.y)), float(np.std(dataset.train.y)) or 1.0
  else:
    mean, std = 0.0, 1.0
  log.info("Data %s: %d train / %d val / %d test examples, input shape %s; %d device(s).",
               dataset.name, len(dataset.train.y), len(dataset.val.y), len(dataset.test.y),
               dataset.train.x.shape[1:], mesh.size)

  model = models.build_model(config.model, axis_name=AXIS)
  tx, schedule = make_optimizer(config.optim, config.num_train_steps)
  init_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, dataset.train.x[:2])
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}), rng=aug_key)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("Model %s: %s parameters.", config.model.encoder, f"{num_params:,}")

  latest = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  # The best state is saved synchronously, after any in-flight save of the latest one: with several
  # processes, two concurrent Orbax saves of the same step interfere (seen as hangs and "metadata from
  # just one process" errors), so at most one save is ever in flight.
  best = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1, async_save=False)
  meta = {"best_step": -1, "val_best": None, "config": _identity(config)}
  if latest.latest_step() is not None:
    restored, saved_meta = latest.restore(state)
    differences = _diff(saved_meta.get("config", {}), meta["config"])
    if differences and config.get("resume", "auto") != "force":
      raise ValueError(
          f"The checkpoint in {latest.directory} was written with a different config:\n  "
          + "\n  ".join(differences) + "\nUse a new --workdir, or --config.resume=force to resume "
          "anyway.")
    state, meta["best_step"], meta["val_best"] = restored, saved_meta["best_step"], saved_meta["val_best"]
    log.info("Resumed from step %d of %s.", int(state.step), latest.directory)

  augment_fn = data_lib.get_augment_fn(dataset.kind, **config.data.augment)
  train_step = make_train_step(model, config, mesh, augment_fn, schedule, mean, std)
  evaluate = Evaluator(model, mesh, dataset, config, mean, std)
  writer = MetricWriter(workdir)
  num_steps, step = int(config.num_train_steps), int(state.step)
  first_step = step + 1
  progress = Progress(num_steps, step, config.batch_size)
  stop_at = int(config.get("stop_at_step", -1))
  last_metrics: Optional[dict] = None

  nonfinite_policy = config.get("nonfinite", "stop")
  if nonfinite_policy not in ("stop", "skip"):
    raise ValueError(f"Unknown `nonfinite`={nonfinite_policy!r}; expected 'stop' or 'skip'.")

  def check(step_done: int, metrics) -> dict:
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if metrics.pop("nonfinite"):
      terms = (f"loss={metrics['loss']}, loss_reg={metrics['loss_reg']}, "
               f"loss_con={metrics['loss_con']}, grad_norm={metrics['grad_norm']}")
      if nonfinite_policy == "skip":
        log.warning("Non-finite loss or gradient at step %d (%s): update skipped.", step_done, terms)
        return metrics
      latest.wait()
      raise NonFiniteLossError(
          f"Non-finite loss or gradient at step {step_done}: {terms}. The update was not applied; "
          f"the last good checkpoint (step {latest.latest_step()}) in {latest.directory} is "
          "intact. (--config.nonfinite=skip skips such steps instead.)")
    return metrics

  def validate(step_done: int) -> None:
    val = evaluate(state, dataset.val)
    writer.write_scalars(step_done, {f"val/{k}": v for k, v in val.items()})
    improved = meta["val_best"] is None or val["mae"] < meta["val_best"]["mae"]
    if improved:
      meta["best_step"], meta["val_best"] = step_done, val
      latest.wait()
      best.save(state, meta, force=True)
    log.info("step %d | val MAE %.4f RMSE %.4f R2 %.4f Pearson %.4f%s", step_done, val["mae"],
                 val["rmse"], val["r2"], val["pearson"], " (best)" if improved else "")

  pending = None
  with PreemptionFlag() as preemption:
    while step < num_steps:
      host = data_lib.train_batch(dataset.train, config.batch_size, config.seed, step,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(), cdf_fn=ecdf)
      host["y_norm"] = ((host["y"] - mean) / std).astype(np.float32)
      if example_weights is not None:
        host["weight"] = example_weights(host["y"])
      state, metrics = train_step(state, _shard(host, mesh))
      step += 1
      if pending is not None:  # Read the previous step's metrics while this one runs.
        last_metrics = check(*pending)
      pending = (step, metrics)
      stop = ("stop_at_step" if step == stop_at else
              "signal" if preemption.should_stop(step) else None)
      boundary = (step % config.log_every == 0 or step % config.eval_every == 0
                  or step % config.checkpoint_every == 0 or step in (num_steps, first_step)
                  or stop is not None)
      if not boundary:
        continue
      last_metrics, pending = check(*pending), None
      if step == first_step:
        progress.restart_clock(step)  # Leave compilation out of the throughput and ETA.
      if step % config.log_every == 0 or step == num_steps:
        writer.write_scalars(step, {f"train/{k}": v for k, v in last_metrics.items()})
        log.info(progress.line(step, last_metrics))
      if step % config.eval_every == 0 or step == num_steps:
        validate(step)
      if step % config.checkpoint_every == 0 or step == num_steps or stop is not None:
        latest.save(state, meta, force=True)
      if stop is not None and step < num_steps:
        latest.wait()
        best.wait()
        writer.close()
        why = "stop_at_step" if stop == "stop_at_step" else (preemption.received or "preemption")
        log.info("Stopped at step %d (%s) with a checkpoint; re-run the same command to resume.",
                 step, why)
        return {"status": "stopped", "steps": step}
  if pending is not None:
    check(*pending)
  latest.wait()
  best.wait()

  if best.latest_step() is not None:
    state, _ = best.restore(state)
  test = evaluate(state, dataset.test)
  mean_predictor = regression_metrics(np.full_like(dataset.test.y, np.mean(dataset.train.y)),
                                      dataset.test.y)
  results = {"method": config.method, "dataset": dataset.name, "test": test,
             "test_train_mean_predictor": {"mae": mean_predictor["mae"], "rmse": mean_predictor["rmse"]},
             "val_best": meta["val_best"], "best_step": meta["best_step"], "steps": num_steps,
             "eval_with": evaluate.mode}
  if evaluate.mode != "head":  # Self-supervised runs report both probes.
    for mode in ("knn", "ridge"):
      results[f"test_{mode}"] = evaluate(state, dataset.test, mode)
  writer.write_scalars(num_steps, {f"test/{k}": v for k, v in test.items()})
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  log.info("Test (best step %d): MAE %.4f RMSE %.4f R2 %.4f Pearson %.4f (predicting the training "
           "mean: MAE %.4f)", meta["best_step"], test["mae"], test["rmse"], test["r2"], test["pearson"],
           mean_predictor["mae"])
  latest.close()
  best.close()
  return results
