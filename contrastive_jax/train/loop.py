"""The training loop: data, model, state, data-parallel steps, evaluation, checkpoints, results.

``train_and_evaluate(config, workdir)`` trains ``config.num_train_steps`` steps, evaluates on the
validation split every ``eval_every`` steps (keeping the best state by the validation metric of
``config.eval.protocol``: MAE for 'regression', kNN top-1 for 'knn_top1'), checkpoints the
latest state every ``checkpoint_every`` steps, and finally evaluates the best state on the test split
and writes ``workdir/results.json``. Calling it again with the same ``workdir`` resumes from the latest
checkpoint and ends with exactly the same results as an uninterrupted run.

The run itself (resume, boundaries, checkpoints, the non-finite policy, preemption, progress) is
``contrastive_jax.train.run``'s skeleton; this module supplies its :func:`regression_task`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from contrastive_jax import data as data_lib
from contrastive_jax import models
from contrastive_jax.data import video as video_lib
from contrastive_jax.data import normalization
from contrastive_jax.data.pipeline import CROP_FROM
from contrastive_jax.data.pipeline import HostCrop
from contrastive_jax.data.long_tail import long_tail
from contrastive_jax.data.pipeline import take_rows
from contrastive_jax.evaluate import regression_metrics
from contrastive_jax.evaluate import shot_metrics
from contrastive_jax.evaluate.knn import knn_topk
from contrastive_jax.evaluate.knn import l2_knn_top1
from contrastive_jax.evaluate.linear_probe import linear_probe_topk
from contrastive_jax.evaluate.probe import knn_regression
from contrastive_jax.evaluate.probe import ridge_probe
from contrastive_jax.losses import lds_weights
from contrastive_jax.train import bmse
from contrastive_jax.train import objectives
from contrastive_jax.train import run as run_lib
from contrastive_jax.train.defaults import REQUIRED_FIELDS
from contrastive_jax.train.defaults import run_config
from contrastive_jax.train.init_from import initial_variables
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.step import make_predict_step
from contrastive_jax.train.step import make_train_step
# pylint: disable=unused-import  # names of the run skeleton, importable from here as before
from contrastive_jax.train.run import ADDED_FIELDS
from contrastive_jax.train.run import NON_IDENTITY_FIELDS
from contrastive_jax.train.run import NonFiniteLossError
from contrastive_jax.train.run import PreemptionFlag
from contrastive_jax.train.run import RUN_CONTROL_FIELDS
from contrastive_jax.train.run import config_differences
from contrastive_jax.train.run import config_identity
from contrastive_jax.train.run import make_mesh
# pylint: enable=unused-import

log = logging.getLogger("contrastive_jax")

_shard, _local_slice = run_lib.shard_batch, run_lib.local_slice


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
DEFAULT_AUGMENT = {"image": "image", "tabular": "tabular", "video": "echonet", "text": "identity"}


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
  linear probe fitted on the training embeddings (``evaluate.linear_probe``), and for each k of
  ``eval.l2_knn_ks`` the unweighted l2 k-NN top-1 (thesis Ch. 6 long-tailed evaluation). The
  validation metric is the kNN top-1 accuracy (higher is better).
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
    self.l2_knn_ks = tuple(int(k) for k in eval_cfg.get("l2_knn_ks", ()) or ())
    if any(k < 1 for k in self.l2_knn_ks):
      raise ValueError(f"`eval.l2_knn_ks`={self.l2_knn_ks} must hold neighbour counts >= 1.")
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
    knn = knn_topk(train, self.dataset.train.y, query, split.y, ks=(1, 5), k=k,
                   temperature=self.top1_temperature)
    metrics = {"knn_top1": knn[1]}
    if with_probe:  # the test evaluation: top-1 and top-5 of kNN and of the linear probe
      probe = linear_probe_topk(train, self.dataset.train.y, query, split.y, ks=(1, 5),
                                steps=self.probe_steps, learning_rate=self.probe_lr)
      metrics.update(knn_top5=knn[5], linear_probe_top1=probe[1], linear_probe_top5=probe[5])
      for k in self.l2_knn_ks:  # thesis Ch. 6 long-tailed evaluation (Tables 6.5 / 6.6)
        metrics[f"l2_knn{k}_top1"] = l2_knn_top1(train, self.dataset.train.y, query, split.y,
                                                 k=min(k, train.shape[0]))
    return metrics

  def __call__(self, state, split, mode: Optional[str] = None, final: bool = False) -> dict:
    """The protocol's metrics on ``split``; ``final`` adds the test-time extras (linear probe)."""
    mode = mode or self.mode
    if mode == "knn_top1":
      return self._classification(state, split, with_probe=final)
    return regression_metrics(self.predict(state, split, mode), split.y)

  def predict(self, state, split, mode: Optional[str] = None) -> np.ndarray:
    """Regression predictions on ``split`` in the target's unit by ``mode`` ('head', 'knn',
    'ridge'; default: the evaluation mode)."""
    mode = mode or self.mode
    if mode == "head":
      return self.predictions(state, split)
    train, query = self._embeddings(state, split)
    if mode == "knn":
      return knn_regression(train, self.dataset.train.y, query, k=self.knn_k)
    return ridge_probe(train, self.dataset.train.y, query, alpha=self.ridge_alpha)

  def describe(self, metrics: dict) -> str:
    """A one-line summary of ``metrics`` for the log."""
    if self.protocol == "knn_top1":
      return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    return (f"MAE {metrics['mae']:.4f} RMSE {metrics['rmse']:.4f} R2 {metrics['r2']:.4f} "
            f"Pearson {metrics['pearson']:.4f}")


# Config sections whose keys are keyword arguments of a function (checked by that function, or for
# ``loss.contrastive`` against the method's declared options), not fields of the schema in
# ``defaults.py``.
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
  :data:`OPTIONAL_FIELDS`, and, inside ``loss.contrastive``, the options the method registry
  declares for the selected method.
  """
  known = set(_field_paths(run_config().to_dict())) | set(OPTIONAL_FIELDS)
  unknown = [p for p in _field_paths(config.to_dict()) if p not in known]
  accepted = objectives.contrastive_options(config.method)
  if accepted is not None:
    unknown += [f"loss.contrastive.{k}" for k in config.loss.contrastive.keys()
                if k not in accepted]
    known |= {f"loss.contrastive.{k}" for k in accepted}
  if unknown:
    hints = []
    for path in unknown:
      close = difflib.get_close_matches(path, sorted(known), n=1, cutoff=0.6)
      hints.append(f"{path}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ValueError("Unknown config field(s), read by nothing: " + ", ".join(hints) + ". Known "
                     "fields are those of contrastive_jax/train/defaults.py (and, in "
                     "loss.contrastive, the options of the selected method in "
                     "contrastive_jax/losses/registry.py).")
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


def load_data(config: ml_collections.ConfigDict):
  """``data.load_dataset(config.data.name, seed=config.data.seed, **config.data.kwargs)``, with
  ``root=config.data.root`` added when that is set (the file sources take ``root``; the bundled
  data sets take none); then the long-tailed training split of ``data.long_tail_ratio`` and the
  ``data.train_fraction`` subset. A relative ``kwargs.csv_path`` (the ``csv_images`` source) is taken
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
  dataset = data_lib.load_dataset(config.data.name, seed=config.data.seed, **kwargs)
  # Thesis Ch. 6 long-tailed splits (CIFAR10-LT / CIFAR100-LT): the training split only.
  dataset = long_tail(dataset, config.data.get("long_tail_ratio", 1.0), config.data.seed)
  return limit_training_data(dataset, config.data.get("train_fraction", 1.0), config.data.seed)


def training_fraction_rows(num: int, fraction, seed: int) -> np.ndarray | None:
  """Sorted rows of a random ``fraction`` of ``num`` training examples, drawn from ``seed`` (None for
  ``fraction`` 1: all of them). ``data.train_fraction`` of every trainer that offers it.

  Raises:
    ValueError: ``fraction`` not in (0, 1], or so small that no training example is left.
  """
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
    raise ValueError(f"`data.train_fraction` must be a number in (0, 1]; got {fraction!r}.")
  if fraction == 1:
    return None
  keep = int(round(fraction * num))
  if keep < 1:
    raise ValueError(f"`data.train_fraction`={fraction} keeps no training example of {num}.")
  return np.sort(np.random.default_rng([int(seed), 0x7F]).choice(num, keep, replace=False))


def limit_training_data(dataset, fraction, seed: int):
  """``dataset`` with a random ``fraction`` of its training split (ACCon Fig. 4's limited-data
  curve), drawn from ``seed`` (:func:`training_fraction_rows`); the validation and test splits are
  unchanged. ``fraction`` 1 returns ``dataset`` itself.
  """
  rows = training_fraction_rows(len(dataset.train), fraction, seed)
  if rows is None:
    return dataset
  train = data_lib.Split(x=take_rows(dataset.train.x, rows), y=np.asarray(dataset.train.y)[rows])
  return dataclasses.replace(dataset, train=train)


def make_augment_fn(config: ml_collections.ConfigDict, kind: str) -> Callable:
  """The training augmentation ``fn(key, x)``: the pipeline ``data.augment_kind`` (default: that of
  the dataset's ``kind``, :data:`DEFAULT_AUGMENT`) with the options ``data.augment``. With
  ``data.crop_from='full'`` the host takes the random-resized crop (:func:`host_crop`), so the
  device's crop is the identity (``scale`` and ``ratio`` (1, 1): the whole view at its size)."""
  name = config.data.get("augment_kind") or DEFAULT_AUGMENT.get(kind)
  if name is None:
    raise ValueError(f"Data of kind {kind!r} has no default augmentation; set "
                     "`data.augment_kind` (see contrastive_jax.data.augment.get_augment_fn).")
  options = dict(config.data.augment)
  if _crop_from(config) == "full":
    options.update(scale=(1.0, 1.0), ratio=(1.0, 1.0))
  augment = data_lib.get_augment_fn(name, **options)
  return random_slice(augment) if slice_pairs(config, kind) == "different" else augment


# `data.slice_pairs`: how the views of an MR volume are made (see :func:`slice_pairs`).
SLICE_PAIRS = ("same", "different")


def slice_pairs(config: ml_collections.ConfigDict, kind: str) -> Optional[str]:
  """``data.slice_pairs`` for volumes (None for other data): 'same' (default; thesis Sec. 4.5.2.1,
  "we sampled a slice F randomly from each MR scan and then augmented the sampled slice in two
  different ways": both views of a scan come from ONE random slice, :func:`select_slice`) or
  'different' (each view draws its own random slice, :func:`random_slice`: positives are two
  slices of one scan, the behaviour before this field existed)."""
  if kind != "volume":
    return None
  pairs = config.data.get("slice_pairs", "same")
  if pairs not in SLICE_PAIRS:
    raise ValueError(f"Unknown `data.slice_pairs`={pairs!r}; expected one of {SLICE_PAIRS}.")
  return pairs


def make_select_fn(config: ml_collections.ConfigDict, kind: str) -> Optional[Callable]:
  """The per-sample input selection before the views (``step.augment_views``' ``select_fn``):
  :func:`select_slice` for volumes with ``data.slice_pairs='same'``, else None."""
  return select_slice if slice_pairs(config, kind) == "same" else None


def select_slice(key, x):
  """Volumes ``[b, S, H, W, C] -> [b, H, W, C]``: one slice of each scan, uniformly at random."""
  index = jax.random.randint(key, (x.shape[0],), 0, x.shape[1])
  return x[jnp.arange(x.shape[0]), index]


def _crop_from(config) -> str:
  crop_from = config.data.get("crop_from", "decoded")
  if crop_from not in CROP_FROM:
    raise ValueError(f"Unknown `data.crop_from`={crop_from!r}; expected one of {CROP_FROM}.")
  return crop_from


def host_crop(config: ml_collections.ConfigDict, dataset) -> Optional[HostCrop]:
  """The host's random-resized crop of ``data.crop_from='full'`` (None for 'decoded'): SimCLR's
  crop of the whole file, ``data.views`` per sample, with the 'simclr' options ``scale``, ``ratio``
  and ``size`` (default: the source's image size, which evaluation keeps)."""
  if _crop_from(config) == "decoded":
    return None
  name = config.data.get("augment_kind") or DEFAULT_AUGMENT.get(dataset.kind)
  if name != "simclr":
    raise ValueError(f"`data.crop_from`='full' moves the 'simclr' augmentation's random-resized crop "
                     f"to the host; the augmentation here is {name!r}.")
  if dataset.kind != "image" or not isinstance(dataset.train.x, data_lib.LazyArray):
    raise ValueError(f"`data.crop_from`='full' crops image files: the data set {dataset.name!r} "
                     f"(kind {dataset.kind!r}) is not read from image files.")
  options = config.data.augment
  size = options.get("size") or tuple(dataset.train.x.shape[1:3])
  return HostCrop(size, views=int(config.data.views), scale=tuple(options.get("scale", (0.08, 1.0))),
                  ratio=tuple(options.get("ratio", (3 / 4, 4 / 3))))


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
  one slice uniformly at random (its own key), then is augmented as an image
  (``data.slice_pairs='different'``; the thesis' positives are two views of ONE slice, 'same')."""
  def fn(key, x):
    slice_key, image_key = jax.random.split(key)
    index = jax.random.randint(slice_key, (x.shape[0],), 0, x.shape[1])
    return augment(image_key, x[jnp.arange(x.shape[0]), index])
  return fn


def middle_slice(x):
  """The deterministic evaluation input of a volume batch ``[b, S, H, W, C]``: its middle slice."""
  return x[:, x.shape[1] // 2]


def loss_terms(config) -> tuple:
  """The terms of AdaCon Eq. 8, ``gamma_reg L_reg + gamma_con L_con``, with their weights (the
  regression baseline, ``method='none'``, has no contrastive term)."""
  con = 0.0 if config.method == objectives.BASELINE else float(config.loss.gamma_con)
  return (run_lib.LossTerm("reg", "loss_reg", float(config.loss.gamma_reg)),
          run_lib.LossTerm("con", "loss_con", con))


def regression_task(config: ml_collections.ConfigDict, mesh: Mesh) -> run_lib.Task:
  """The contrastive-regression run of ``config`` on ``mesh``, as a :class:`run.Task`: a data-parallel
  step of ``gamma_reg L_reg + gamma_con L_con`` (AdaCon Eq. 8), validated by the protocol's metric
  (the best state is kept), tested at the end (see :func:`train_and_evaluate`)."""
  objectives.check_method(config.method)
  check_config_fields(config)
  if config.model.get("init_from", "") is None:
    raise ValueError("`model.init_from` is unset: this config continues a previous run (e.g. the "
                     "second stage of configs/adacon.py:bmd_finetune); set --config.model.init_from="
                     "<that run's workdir>.")
  protocol = config.eval.get("protocol", "regression") if "eval" in config else "regression"
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown `eval.protocol`={protocol!r}; expected one of {PROTOCOLS}.")
  eval_batch_size = config.get("eval_batch_size") or config.batch_size
  run_lib.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=eval_batch_size)

  dataset = load_data(config)
  check_dataset(dataset, config.batch_size)
  config, prepared = objectives.prepare(config, dataset.train.y)  # the method's registry hook
  if bmse.enabled(config):
    bmse.check_config(config)
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
  # Balanced MSE (GAI): the GMM of the training labels in the units of the loss's targets.
  gmm = bmse.label_gmm(config, dataset.train.y, mean, std) if bmse.enabled(config) else None
  log.info("Data %s: %d train / %d val / %d test examples, input shape %s; %d device(s).",
               dataset.name, len(dataset.train.y), len(dataset.val.y), len(dataset.test.y),
               dataset.train.x.shape[1:], mesh.size)

  model = models.build_model(config.model, AXIS, task="regression",
                             input_normalization=model_input_normalization(config, dataset))
  tx, schedule = make_optimizer(config.optim, config.num_train_steps)
  if bmse.enabled(config):  # the noise scale: its own constant learning rate (or frozen)
    tx = bmse.optimizer(tx, config)
  augment_fn = make_augment_fn(config, dataset.kind)
  select_fn = make_select_fn(config, dataset.kind)
  crop = host_crop(config, dataset)
  preprocess = {"video": video_eval_preprocess(config) if dataset.kind == "video" else None,
                "volume": middle_slice}.get(dataset.kind)
  init_from = config.model.get("init_from", "") or ""

  def init_state(latest) -> TrainState:
    init_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed))
    # Initialise on the input the model will see in training: two augmented training examples.
    example = take_rows(dataset.train.x, np.arange(2))
    if select_fn is not None:
      example = select_fn(jax.random.PRNGKey(0), example)
    example = augment_fn(jax.random.PRNGKey(0), example)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, example)
    variables = initial_variables(init_from, model, variables, latest, log)
    params = variables["params"]
    if bmse.enabled(config):  # Balanced MSE's noise scale, next to the model's parameters
      params = bmse.add_sigma(params, config)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                              batch_stats=variables.get("batch_stats", {}), rng=aug_key)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("Model %s: %s parameters.", config.model.encoder, f"{num_params:,}")
    return state

  def on_resume(saved_meta: dict) -> dict:
    if init_from:
      log.info("model.init_from=%r is ignored: resuming from the checkpoint (the run was "
               "initialised from %r).", init_from, saved_meta.get("init_from", "") or "a random init")
    return {"init_from": saved_meta.get("init_from", "")}

  def host_batch(step: int) -> dict:
    host = data_lib.train_batch(dataset.train, config.batch_size, config.seed, step,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(), scale=False,  # uint8 stays
                                crop=crop)
    host["y_norm"] = ((host["y"] - mean) / std).astype(np.float32)
    if example_weights is not None:
      host["weight"] = example_weights(host["y"])
    return host

  evaluate = Evaluator(model, mesh, dataset, config, mean, std, preprocess)

  def final(state, meta: dict) -> run_lib.Outcome:
    test = evaluate(state, dataset.test, final=True)
    results = {"method": config.method, "dataset": dataset.name, "protocol": evaluate.protocol,
               "metric": evaluate.metric, "test": test, "val_best": meta["val_best"],
               "best_step": meta["best_step"], "steps": int(config.num_train_steps),
               "eval_with": evaluate.mode,
               # the head's output o is mean + std * o in label units (read by train.external)
               "target_normalization": {"mean": mean, "std": std}}
    test_predictions = None
    lines = [f"Test (best step {meta['best_step']}): {evaluate.describe(test)}"]
    if evaluate.protocol == "regression":
      mean_predictor = regression_metrics(np.full_like(dataset.test.y, np.mean(dataset.train.y)),
                                          dataset.test.y)
      results["test_train_mean_predictor"] = {"mae": mean_predictor["mae"],
                                              "rmse": mean_predictor["rmse"]}
      lines.append(f"Predicting the training mean: test MAE {mean_predictor['mae']:.4f}")
      if evaluate.mode != "head":  # Self-supervised runs report both probes.
        for mode in ("knn", "ridge"):
          results[f"test_{mode}"] = evaluate(state, dataset.test, mode)
        predictions = evaluate.predict(state, dataset.test)
      else:  # Kept for fold ensembles (evaluate.crossval.fold_ensemble) and error analysis.
        test_predictions = predictions = evaluate.predictions(state, dataset.test)
      # Many / medium / few-shot metrics of the DIR benchmark (Yang et al. 2021): a test label's
      # group is the number of training labels in its bin (`eval.shots`: > 100, 20-100, < 20 in
      # unit-wide bins by default).
      shots = config.eval.get("shots")
      results["test_shots"] = shot_metrics(predictions, dataset.test.y, dataset.train.y,
                                           **(shots.to_dict() if shots is not None else {}))

    def write_files(workdir: str) -> None:
      if test_predictions is not None:
        np.savez(os.path.join(workdir, "test_predictions.npz"), y=np.asarray(dataset.test.y),
                 prediction=test_predictions)

    return run_lib.Outcome(results, test, lines, write_files)

  return run_lib.Task(
      identity=config_identity(config), init_state=init_state, host_batch=host_batch,
      train_step=make_train_step(model, config, mesh, augment_fn, schedule, mean, std, prepared,
                                 select_fn, gmm),
      evaluate=lambda state, split: evaluate(state, getattr(dataset, split)),
      describe=evaluate.describe, final=final, metric=evaluate.metric,
      higher_is_better=evaluate.higher_is_better, loss_terms=loss_terms(config),
      meta={"init_from": init_from}, on_resume=on_resume)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints one run; returns the results dict (also ``results.json``).

  The :func:`regression_task` of ``config`` run by :func:`run.run` on every device.
  """
  return run_lib.run(config, workdir, regression_task, make_mesh())
