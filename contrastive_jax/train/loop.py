"""The training loop: data, model, state, data-parallel steps, evaluation, checkpoints, results.

``train_and_evaluate(config, workdir)`` trains ``config.num_train_steps`` steps, evaluates on the
validation split every ``eval_every`` steps (keeping the best state by the validation metric of
``config.eval.protocol``: MAE for 'regression', kNN top-1 for 'knn_top1'), checkpoints the
latest state every ``checkpoint_every`` steps, and finally evaluates the best state on the test split
and writes ``workdir/results.json``. Calling it again with the same ``workdir`` resumes from the latest
checkpoint and ends with exactly the same results as an uninterrupted run.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
import signal
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive_jax import data as data_lib
from contrastive_jax import models
from contrastive_jax.data import video as video_lib
from contrastive_jax.data import normalization
from contrastive_jax.data.pipeline import take_rows
from contrastive_jax.evaluate import regression_metrics
from contrastive_jax.evaluate.knn import knn_top1
from contrastive_jax.evaluate.linear_probe import linear_probe_accuracy
from contrastive_jax.evaluate.probe import knn_regression
from contrastive_jax.evaluate.probe import ridge_probe
from contrastive_jax.losses import fit_ecdf
from contrastive_jax.losses import get_contrastive_loss
from contrastive_jax.losses import lds_weights
from contrastive_jax.train import objectives
from contrastive_jax.train import run_checks
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.workdir_lock import locked_workdir
from contrastive_jax.train.defaults import REQUIRED_FIELDS
from contrastive_jax.train.defaults import run_config
from contrastive_jax.train.init_from import initial_variables
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


# Fields added after runs were first checkpointed, with the value that reproduces those runs: left out
# of the identity while they hold it, so older checkpoints still resume.
ADDED_FIELDS = {"data.normalize": ("", None), "optim.exclude_bias_and_norm": (None,),
                "loss.matmul_dtype": (None,), "micro_batch": (None,)}
# Fields that never change what a resumed run computes: where the data are staged (``data.root``),
# the weights of step 0, which a checkpoint already holds (``model.init_from``; resuming ignores
# it), and the schedule of the pairwise loss (``loss.impl`` / ``loss.tile``: the same function, e.g.
# 'ring' after moving to more devices).
NON_IDENTITY_FIELDS = ("data.root", "model.init_from", "loss.impl", "loss.tile")


def config_identity(config, run_control=RUN_CONTROL_FIELDS) -> dict:
  """The config fields that determine a run's result, as their JSON form (tuples become lists).

  Left out: the ``run_control`` fields, the :data:`NON_IDENTITY_FIELDS`, and the
  :data:`ADDED_FIELDS` while they hold their earlier-runs value.
  """
  cfg = json.loads(json.dumps(config.to_dict()))
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


PROTOCOLS = ("regression", "knn_top1")
# Augmentation pipeline of each dataset kind when `data.augment_kind` is not set.
DEFAULT_AUGMENT = {"image": "image", "tabular": "tabular", "video": "echonet"}


def video_eval_preprocess(config) -> Optional[Callable]:
  """The deterministic evaluation clip of a video batch ``[b, T, H, W, C]`` (AdaCon Sec. IV-B).

  ``length`` frames (``data.augment.length``, 32 by default) taken consecutively from the stored
  frames (the source already kept every ``period``-th raw frame) starting at the first frame or at
  the centre (``eval.clip_mode``); a split that already holds clips of that length (EchoNet's val /
  test: the first clip) passes unchanged.
  """
  length = int(config.data.augment.get("length", 32))
  mode = config.eval.get("clip_mode", "first")
  if mode not in ("first", "center"):
    raise ValueError(f"`eval.clip_mode`={mode!r}; expected 'first' or 'center'.")

  def preprocess(x):
    if x.shape[1] == length:
      return x
    clip = lambda v: video_lib.sample_clip(jax.random.PRNGKey(0), v, length, 1, mode)
    return jax.vmap(clip)(x)

  return preprocess


class Evaluator:
  """Validation/test metrics of a state, by the protocol ``config.eval.protocol``.

  'regression' (default): regression metrics in the target's natural unit from ``eval_with``:
  'head' (the model's regression branch), 'knn' (kNN regression on the embeddings of the training
  split) or 'ridge' (ridge linear probe on them) -- the latter two for self-supervised pretraining,
  where the regression branch is not trained. The validation metric is MAE (lower is better).

  'knn_top1': class-labelled self-supervised runs (labels are class ids): weighted kNN top-1
  accuracy (InstDisc; ``eval.knn_k``, ``eval.knn_temperature``) of the frozen embeddings of the
  split against those of the training split; the test evaluation adds the top-1 accuracy of a
  linear probe fitted on the training embeddings (``evaluate.linear_probe``). The validation metric
  is the kNN top-1 accuracy (higher is better).
  """

  MODES = ("head", "knn", "ridge")

  def __init__(self, model, mesh, dataset, config, target_mean: float, target_std: float,
               preprocess: Optional[Callable] = None):
    self.protocol = config.eval.get("protocol", "regression") if "eval" in config else "regression"
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"Unknown `eval.protocol`={self.protocol!r}; expected one of {PROTOCOLS}.")
    self.mode = config.get("eval_with", "head")
    if self.mode not in self.MODES:
      raise ValueError(f"Unknown `eval_with`={self.mode!r}; expected one of {self.MODES}.")
    if self.protocol == "knn_top1":
      self.mode = "knn_top1"
    self.metric, self.higher_is_better = (("knn_top1", True) if self.protocol == "knn_top1"
                                          else ("mae", False))
    self.mesh, self.dataset = mesh, dataset
    self.batch_size = config.get("eval_batch_size") or config.batch_size
    self.mean, self.std = target_mean, target_std
    self.knn_k = int(config.get("knn_k", 20))
    self.ridge_alpha = float(config.get("ridge_alpha", 1.0))
    eval_cfg = config.get("eval", ml_collections.ConfigDict())
    self.top1_k = int(eval_cfg.get("knn_k", 200))
    self.top1_temperature = float(eval_cfg.get("knn_temperature", 0.1))
    self.probe_steps = int(eval_cfg.get("linear_probe_steps", 500))
    self.probe_lr = float(eval_cfg.get("linear_probe_lr", 0.1))
    self._predict = make_predict_step(model, mesh, "prediction", preprocess)
    self._embed = make_predict_step(model, mesh, "embedding", preprocess)

  def is_better(self, metrics: dict, best: Optional[dict]) -> bool:
    """Whether ``metrics`` improves on ``best`` (None: nothing yet) by the protocol's metric."""
    if best is None:
      return True
    new, old = metrics[self.metric], best[self.metric]
    return new > old if self.higher_is_better else new < old

  def predictions(self, state, split) -> np.ndarray:
    """The regression head's predictions on ``split`` in the target's natural unit."""
    pred = split_outputs(self._predict, state, split, self.batch_size, self.mesh)
    return pred * self.std + self.mean

  def _embeddings(self, state, split) -> tuple[np.ndarray, np.ndarray]:
    train = split_outputs(self._embed, state, self.dataset.train, self.batch_size, self.mesh)
    query = split_outputs(self._embed, state, split, self.batch_size, self.mesh)
    return train, query

  def _classification(self, state, split, with_probe: bool) -> dict:
    train, query = self._embeddings(state, split)
    k = min(self.top1_k, train.shape[0])
    metrics = {"knn_top1": knn_top1(train, self.dataset.train.y, query, split.y, k=k,
                                    temperature=self.top1_temperature)}
    if with_probe:
      metrics["linear_probe_top1"] = linear_probe_accuracy(
          train, self.dataset.train.y, query, split.y, steps=self.probe_steps,
          learning_rate=self.probe_lr)
    return metrics

  def __call__(self, state, split, mode: Optional[str] = None, final: bool = False) -> dict:
    """The protocol's metrics on ``split``; ``final`` adds the test-time extras (linear probe)."""
    mode = mode or self.mode
    if mode == "knn_top1":
      return self._classification(state, split, with_probe=final)
    if mode == "head":
      pred = self.predictions(state, split)
    else:
      train, query = self._embeddings(state, split)
      if mode == "knn":
        pred = knn_regression(train, self.dataset.train.y, query, k=self.knn_k)
      else:
        pred = ridge_probe(train, self.dataset.train.y, query, alpha=self.ridge_alpha)
    return regression_metrics(pred, split.y)

  def describe(self, metrics: dict) -> str:
    """A one-line summary of ``metrics`` for the log."""
    if self.protocol == "knn_top1":
      return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    return (f"MAE {metrics['mae']:.4f} RMSE {metrics['rmse']:.4f} R2 {metrics['r2']:.4f} "
            f"Pearson {metrics['pearson']:.4f}")


# Config sections whose keys are keyword arguments of a function (checked by that function, or for
# ``loss.contrastive`` against the loss's signature), not fields of the schema in ``defaults.py``.
FREE_FORM_SECTIONS = ("data.kwargs", "data.augment", "model.encoder_kwargs", "loss.reg_kwargs",
                      "loss.contrastive")
# Optional fields that ``run_config`` does not set but the trainer reads.
OPTIONAL_FIELDS = ("task", "optim.nesterov")


def _field_paths(tree: dict, prefix: str = "") -> list:
  """Dotted paths of the leaves of a nested dict; free-form sections count as one leaf."""
  paths = []
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict) and path not in FREE_FORM_SECTIONS:
      paths += _field_paths(value, path + ".")
    else:
      paths.append(path)
  return paths


def check_config_fields(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming every field that no part of the trainer reads (a typo in a config
  file would otherwise be ignored silently), with the closest known field.

  Known fields are those of ``defaults.run_config`` (the neutral base: the schema), the
  :data:`OPTIONAL_FIELDS`, and, inside ``loss.contrastive``, the keyword arguments of the selected
  loss function.
  """
  known = set(_field_paths(run_config().to_dict())) | set(OPTIONAL_FIELDS)
  unknown = [p for p in _field_paths(config.to_dict()) if p not in known]
  if config.method != "none":
    fn = get_contrastive_loss(config.method)
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
      inputs = 1 + len(objectives.LOSS_INPUTS[config.method])  # features + batch-provided inputs
      accepted = [name for name in list(params)[inputs:] if name != "axis_name"]
      unknown += [f"loss.contrastive.{k}" for k in config.loss.contrastive.keys() if k not in accepted]
      known |= {f"loss.contrastive.{k}" for k in accepted}
  if unknown:
    hints = []
    for path in unknown:
      close = difflib.get_close_matches(path, sorted(known), n=1, cutoff=0.6)
      hints.append(f"{path}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ValueError("Unknown config field(s), read by nothing: " + ", ".join(hints) + ". Known "
                     "fields are those of contrastive_jax/train/defaults.py (and, in "
                     "loss.contrastive, the keyword arguments of the selected loss).")
  check_required_fields(config)


def check_required_fields(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the fields that the neutral base leaves unset (``None``) and no
  data-set recipe set (:data:`defaults.REQUIRED_FIELDS`)."""
  missing = []
  for path, meaning in REQUIRED_FIELDS.items():
    value = config
    for part in path.split("."):
      value = value.get(part) if value is not None and part in value else None
    if value is None:
      missing.append(f"`{path}` ({meaning})")
  if missing:
    raise ValueError("The config leaves " + ", ".join(missing) + " unset: start it from a data-set "
                     "recipe of contrastive_jax/train/recipes.py (e.g. recipes.bundled(run_config(), "
                     "'digits_angle')) or set them.")


def check_dataset(dataset, batch_size: int) -> None:
  """Fails early, naming the split, on data no run can train or be scored on.

  Checked for every data source (the bundled ones validate too): every split non-empty with as many
  inputs as labels and finite labels, and at least ``batch_size`` training examples (an epoch needs
  one full batch).
  """
  for name in ("train", "val", "test"):
    split = getattr(dataset, name)
    y = np.asarray(split.y)
    if y.ndim != 1 or y.size == 0:
      raise ValueError(f"Dataset {dataset.name!r}: the {name} split is empty or its labels are not "
                       f"a 1-D array (labels shape {y.shape}); every split needs examples.")
    if len(split.x) != y.shape[0]:
      raise ValueError(f"Dataset {dataset.name!r}: the {name} split has {len(split.x)} inputs but "
                       f"{y.shape[0]} labels.")
    bad = int(np.count_nonzero(~np.isfinite(y)))
    if bad:
      raise ValueError(f"Dataset {dataset.name!r}: {bad} non-finite label(s) (NaN or inf) in the "
                       f"{name} split; remove or fix those examples.")
  if len(dataset.train.y) < batch_size:
    raise ValueError(f"`batch_size`={batch_size} is larger than the training split of "
                     f"{dataset.name!r} ({len(dataset.train.y)} examples).")


def _resolve_loss_kwargs(config, dataset) -> ml_collections.ConfigDict:
  """Fills data-dependent loss hyperparameters (ACCon's label range R = max(Y) - min(Y), Eq. 2)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.method == "accon" and config.loss.contrastive.get("label_range") is None:
    label_range = float(dataset.label_range)
    if not label_range > 0:
      raise ValueError(
          f"ACCon's label range R = max - min of the training labels is {label_range}: all training "
          f"labels of {dataset.name!r} are equal, so the angle compensation (Eq. 2) is undefined. "
          "Check the target column, or set loss.contrastive.label_range.")
    config.loss.contrastive.label_range = label_range
  return config


def load_data(config: ml_collections.ConfigDict):
  """``data.load_dataset(config.data.name, seed=config.data.seed, **config.data.kwargs)``, with
  ``root=config.data.root`` added when that is set (the file sources take ``root``; the bundled
  data sets take none). A relative ``kwargs.csv_path`` (the ``csv_images`` source) is taken
  relative to ``data.root``, so one ``--config.data.root=/path`` moves a whole data set.
  """
  kwargs = dict(config.data.kwargs)
  root = config.data.get("root")
  if not root and config.data.name in data_lib.SOURCES and "root" not in kwargs:
    params = inspect.signature(data_lib.sources.get_loader(config.data.name)).parameters
    if "root" in params and params["root"].default is inspect.Parameter.empty:
      raise ValueError(f"The data source {config.data.name!r} reads files from a folder: set "
                       "--config.data.root=/path/to/the/data.")
  if root:
    if "root" in kwargs:
      raise ValueError(f"Both `data.root`={root!r} and `data.kwargs.root`={kwargs['root']!r} are "
                       "set; set only `data.root`.")
    kwargs["root"] = root
    csv_path = kwargs.get("csv_path")
    if csv_path is not None and not os.path.isabs(os.fspath(csv_path)):
      kwargs["csv_path"] = os.path.join(root, os.fspath(csv_path))
  return data_lib.load_dataset(config.data.name, seed=config.data.seed, **kwargs)


def make_augment_fn(config: ml_collections.ConfigDict, kind: str) -> Callable:
  """The training augmentation ``fn(key, x)``: the pipeline ``data.augment_kind`` (default: that of
  the dataset's ``kind``, :data:`DEFAULT_AUGMENT`) with the options ``data.augment``."""
  name = config.data.get("augment_kind") or DEFAULT_AUGMENT.get(kind)
  if name is None:
    raise ValueError(f"Data of kind {kind!r} has no default augmentation; set "
                     "`data.augment_kind` (see contrastive_jax.data.augment.get_augment_fn).")
  augment = data_lib.get_augment_fn(name, **config.data.augment)
  return random_slice(augment) if kind == "volume" else augment


def model_input_normalization(config: ml_collections.ConfigDict, dataset):
  """``(mean, std)`` of ``data.normalize`` for ``dataset``'s inputs (channels: their last axis), or
  None. The model applies it to its inputs (see ``ContrastiveRegressor.input_mean``)."""
  spec = config.data.get("normalize", "")
  if normalization.is_unset(spec):
    return None
  if dataset.kind == "tabular":
    raise ValueError(f"`data.normalize`={spec!r} normalises image / video channels; the data set "
                     f"{dataset.name!r} is tabular.")
  return normalization.input_normalization(spec, int(dataset.train.x.shape[-1]))


def random_slice(augment: Callable) -> Callable:
  """An image augmentation applied to volumes ``[b, S, H, W, C]``: each view of each sample draws
  one slice uniformly at random (its own key), then is augmented as an image (thesis Ch. 4: 2-D
  slices of the MRNet scans)."""
  def fn(key, x):
    slice_key, image_key = jax.random.split(key)
    index = jax.random.randint(slice_key, (x.shape[0],), 0, x.shape[1])
    return augment(image_key, x[jnp.arange(x.shape[0]), index])
  return fn


def middle_slice(x):
  """The deterministic evaluation input of a volume batch ``[b, S, H, W, C]``: its middle slice."""
  return x[:, x.shape[1] // 2]


@locked_workdir
@run_checks.closes_resources
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints one run; returns the results dict (also ``results.json``)."""
  run_checks.check_run_control(config)
  objectives.check_method(config.method)
  check_config_fields(config)
  protocol = config.eval.get("protocol", "regression") if "eval" in config else "regression"
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown `eval.protocol`={protocol!r}; expected one of {PROTOCOLS}.")
  mesh = make_mesh()
  if config.batch_size % mesh.size:
    raise ValueError(f"`batch_size`={config.batch_size} must be divisible by the number of devices "
                     f"({mesh.size}).")
  eval_batch_size = config.get("eval_batch_size") or config.batch_size
  if eval_batch_size % mesh.size:
    raise ValueError(f"`eval_batch_size`={eval_batch_size} must be divisible by the number of "
                     f"devices ({mesh.size}).")
  os.makedirs(workdir, exist_ok=True)

  dataset = load_data(config)
  check_dataset(dataset, config.batch_size)
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

  model = models.build_model(config.model, axis_name=AXIS,
                             input_normalization=model_input_normalization(config, dataset))
  tx, schedule = make_optimizer(config.optim, config.num_train_steps)
  init_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed))
  augment_fn = make_augment_fn(config, dataset.kind)
  preprocess = {"video": video_eval_preprocess(config) if dataset.kind == "video" else None,
                "volume": middle_slice}.get(dataset.kind)
  # Initialise on the input the model will see in training: two augmented training examples.
  example = augment_fn(jax.random.PRNGKey(0), take_rows(dataset.train.x, np.arange(2)))
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, example)
  latest = run_checks.opened(Checkpointer(os.path.join(workdir, "checkpoints"),
                                          config.keep_checkpoints))
  init_from = config.model.get("init_from", "") or ""
  variables = initial_variables(init_from, model, variables, latest, log)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}), rng=aug_key)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("Model %s: %s parameters.", config.model.encoder, f"{num_params:,}")

  # The best state is saved synchronously, after any in-flight save of the latest one: with several
  # processes, two concurrent Orbax saves of the same step interfere (seen as hangs and "metadata from
  # just one process" errors), so at most one save is ever in flight. Superseded best states are
  # deleted by the loop (see `committed_best`), not by Orbax, so that the best state named by the
  # newest complete latest checkpoint survives a crash at any moment.
  best = run_checks.opened(Checkpointer(os.path.join(workdir, "best"), max_to_keep=None,
                                        async_save=False))
  meta = {"best_step": -1, "val_best": None, "config": config_identity(config),
          "init_from": init_from}
  if latest.latest_step() is not None:
    run_checks.check_restorable(latest, state)
    restored, saved_meta = latest.restore(state)
    differences = config_differences(saved_meta.get("config", {}), meta["config"])
    if differences and config.get("resume", "auto") != "force":
      raise ValueError(
          f"The checkpoint in {latest.directory} was written with a different config:\n  "
          + "\n  ".join(differences) + "\nUse a new --workdir, or --config.resume=force to resume "
          "anyway.")
    if not differences and (done := run_checks.finished_results(workdir, int(restored.step),
                                                                config.num_train_steps)):
      return done
    state, meta["best_step"], meta["val_best"] = restored, saved_meta["best_step"], saved_meta["val_best"]
    meta["init_from"] = saved_meta.get("init_from", "")
    # Best states that the interrupted run saved after this step are recomputed (identically).
    best.keep_only(s for s in best.all_steps() if s <= int(state.step))
    log.info("Resumed from step %d of %s.", int(state.step), latest.directory)
    if init_from:
      log.info("model.init_from=%r is ignored: resuming from the checkpoint (the run was "
               "initialised from %r).", init_from, meta["init_from"] or "a random init")

  train_step = make_train_step(model, config, mesh, augment_fn, schedule, mean, std)
  evaluate = Evaluator(model, mesh, dataset, config, mean, std, preprocess)
  writer = run_checks.opened(MetricWriter(workdir))
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
          f"{latest.describe_last_good()}. (--config.nonfinite=skip skips such steps instead.)")
    return metrics

  def validate(step_done: int) -> None:
    val = evaluate(state, dataset.val)
    writer.write_scalars(step_done, {f"val/{k}": v for k, v in val.items()})
    improved = evaluate.is_better(val, meta["val_best"])
    if improved:
      meta["best_step"], meta["val_best"] = step_done, val
      latest.wait()  # Every latest checkpoint saved so far is now complete.
      best.save(state, meta, force=True)
      best.keep_only({step_done, committed_best})
    log.info("step %d | val %s%s", step_done, evaluate.describe(val),
             " (best)" if improved else "")

  # The best step named by the newest latest checkpoint: a crash resumes from that checkpoint, so its
  # best state is kept until a newer latest checkpoint (naming a newer best) is complete.
  committed_best = meta["best_step"]

  def save_latest() -> None:
    nonlocal committed_best
    latest.save(state, meta, force=True)
    committed_best = meta["best_step"]

  pending = None
  if step < num_steps:
    progress.compiling()
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
      with progress.paused():  # Evaluation and checkpoints stay out of the ex/s.
        if step % config.eval_every == 0 or step == num_steps:
          validate(step)
        if step % config.checkpoint_every == 0 or step == num_steps or stop is not None:
          save_latest()
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

  if meta["best_step"] >= 0:
    if meta["best_step"] not in best.all_steps():
      raise ValueError(f"The best state (step {meta['best_step']}) is missing from {best.directory} "
                       f"(found steps {list(best.all_steps())}); the workdir was changed by hand or "
                       "written by an older version. Use a new --workdir.")
    best.keep_only({meta["best_step"]})
    state, _ = best.restore(state, meta["best_step"])
  test = evaluate(state, dataset.test, final=True)
  results = {"method": config.method, "dataset": dataset.name, "protocol": evaluate.protocol,
             "metric": evaluate.metric, "test": test, "val_best": meta["val_best"],
             "best_step": meta["best_step"], "steps": num_steps, "eval_with": evaluate.mode}
  test_predictions = None
  if evaluate.protocol == "regression":
    mean_predictor = regression_metrics(np.full_like(dataset.test.y, np.mean(dataset.train.y)),
                                        dataset.test.y)
    results["test_train_mean_predictor"] = {"mae": mean_predictor["mae"],
                                            "rmse": mean_predictor["rmse"]}
    if evaluate.mode != "head":  # Self-supervised runs report both probes.
      for mode in ("knn", "ridge"):
        results[f"test_{mode}"] = evaluate(state, dataset.test, mode)
    else:  # Kept for fold ensembles (evaluate.crossval.fold_ensemble) and error analysis.
      test_predictions = evaluate.predictions(state, dataset.test)
  writer.write_scalars(num_steps, {f"test/{k}": v for k, v in test.items()})
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    if test_predictions is not None:
      np.savez(os.path.join(workdir, "test_predictions.npz"), y=np.asarray(dataset.test.y),
               prediction=test_predictions)
  log.info("Test (best step %d): %s", meta["best_step"], evaluate.describe(test))
  if evaluate.protocol == "regression":
    log.info("Predicting the training mean: test MAE %.4f", results["test_train_mean_predictor"]["mae"])
  latest.close()
  best.close()
  return results
