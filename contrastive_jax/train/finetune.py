"""Transfer fine-tuning: a pretrained encoder + a linear classifier trained end to end on a target set.

Thesis Sec. 5.5.3.3 / 6.5.2.2 (Tables 5.6-5.7, 6.11-6.12): the encoder of a self-supervised run
(``model.init_from=<pretraining workdir>``) is fine-tuned with a new linear classifier on another
data set by softmax cross-entropy, optionally class-weighted (``finetune.class_weights``, the
thesis' weights for its imbalanced medical sets),

    L = sum_i w_{y_i} CE(f(x_i), y_i) / sum_i w_{y_i}     (torch's weighted ``CrossEntropyLoss``),

with SGD, batch 128, lr 0.1 (multi-class) / 1.0 (binary), 50 epochs, x0.1 at epochs 30 and 40
(``configs/transfer.py``). Every parameter is trained (encoder included). The best state by
validation top-1 is kept; ``results.json`` reports its test top-1 and top-5.

This is the :func:`finetune_task` of the run skeleton (``train.run``): the loop, resume,
checkpoints and preemption are shared with the other trainers; the data path (sources,
``data.long_tail_ratio`` / ``data.train_fraction``), augmentation, optimizer and ``init_from``
are those of the contrastive trainer (``train.loop``).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from contrastive_jax import data as data_lib
from contrastive_jax import models
from contrastive_jax.data.pipeline import take_rows
from contrastive_jax.evaluate.knn import topk_accuracy
from contrastive_jax.train import loop
from contrastive_jax.train import run as run_lib
from contrastive_jax.train.init_from import initial_variables
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.step import guarded_update
from contrastive_jax.train.step import augment_views
from contrastive_jax.train.step import make_predict_step
from contrastive_jax.train.step import unit_float

log = logging.getLogger("contrastive_jax")

# Fields of the `finetune` section (beyond the regression trainer's schema, `defaults.run_config`).
FINETUNE_FIELDS = ("finetune.class_weights", "finetune.num_classes")


def check_config(config: ml_collections.ConfigDict) -> None:
  """``task='finetune'``, no unknown field (the regression trainer's schema plus
  :data:`FINETUNE_FIELDS`), the required fields set."""
  if config.get("task") != "finetune":
    raise ValueError(f"The fine-tuning trainer needs `task`='finetune', got {config.get('task')!r}.")
  paths = loop._field_paths  # pylint: disable=protected-access
  known = set(paths(loop.run_config().to_dict())) | set(loop.OPTIONAL_FIELDS) | set(FINETUNE_FIELDS)
  unknown = [p for p in paths(config.to_dict()) if p not in known]
  if unknown:
    raise ValueError("Unknown config field(s), read by nothing: " + ", ".join(unknown) + ". Known "
                     "fields: those of contrastive_jax/train/defaults.py and "
                     f"{', '.join(FINETUNE_FIELDS)}.")
  loop.check_required_fields(config)


def class_ids(y, name: str) -> np.ndarray:
  """``y`` as int32 class ids >= 0; a ValueError names the split otherwise."""
  y = np.asarray(y)
  if np.any(y != np.round(y)) or (y.size and y.min() < 0):
    raise ValueError(f"Fine-tuning needs integer class ids >= 0 as labels; the {name} split has "
                     "others (a regression target?).")
  return y.astype(np.int32)


def class_weight_vector(weights, num_classes: int) -> np.ndarray:
  """``finetune.class_weights`` as ``[num_classes]`` float32: None -> ones; one number -> the
  weight of class 1 of a binary task, class 0 weighted 1 (the thesis' "positive class weight",
  MURA 0.7097 / ISIC2016 4.24 / MHIST 2.45, here on a 2-way softmax rather than a one-logit
  sigmoid); else one positive weight per class (Chaoyang: 1.264, 1.667, 1.0, 2.114)."""
  if weights is None:
    return np.ones(num_classes, np.float32)
  w = np.atleast_1d(np.asarray(weights, np.float64))
  if w.size == 1 and num_classes == 2:
    w = np.array([1.0, float(w[0])])
  if w.shape != (num_classes,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
    raise ValueError(f"`finetune.class_weights`={weights!r} must be None, one positive number "
                     f"(binary tasks: `(w,)` on the command line) or {num_classes} positive numbers.")
  return w.astype(np.float32)


def finetune_task(config: ml_collections.ConfigDict, mesh: Mesh) -> run_lib.Task:
  """The fine-tuning run of ``config`` on ``mesh`` as a :class:`run.Task` (see the module doc)."""
  check_config(config)
  eval_batch_size = config.get("eval_batch_size") or config.batch_size
  run_lib.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=eval_batch_size)
  dataset = loop.load_data(config)
  loop.check_dataset(dataset, config.batch_size)
  labels = {name: class_ids(getattr(dataset, name).y, name) for name in ("train", "val", "test")}
  seen = max(int(v.max()) for v in labels.values()) + 1
  num_classes = int(config.finetune.get("num_classes") or seen)
  if num_classes < seen:
    raise ValueError(f"`finetune.num_classes`={num_classes} but the labels reach class {seen - 1}.")
  weights = jnp.asarray(class_weight_vector(config.finetune.get("class_weights"), num_classes))
  log.info("Data %s: %d train / %d val / %d test examples, %d classes, input shape %s; %d "
           "device(s).", dataset.name, len(dataset.train.y), len(dataset.val.y),
           len(dataset.test.y), num_classes, dataset.train.x.shape[1:], mesh.size)

  model = models.build_model(config.model, AXIS, task="finetune", num_classes=num_classes,
                             input_normalization=loop.model_input_normalization(config, dataset))
  num_steps = int(config.num_train_steps)
  tx, schedule = make_optimizer(config.optim, num_steps)
  augment_fn = loop.make_augment_fn(config, dataset.kind)
  init_from = config.model.get("init_from", "") or ""

  def init_state(latest) -> TrainState:
    init_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed))
    example = augment_fn(jax.random.PRNGKey(0), take_rows(dataset.train.x, np.arange(2)))
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, example)
    variables = initial_variables(init_from, model, variables, latest, log)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables.get("batch_stats", {}), rng=aug_key)
    log.info("Model %s + %d-way classifier: %s parameters.", config.model.encoder, num_classes,
             f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")
    return state

  def on_resume(saved_meta: dict) -> dict:
    if init_from:
      log.info("model.init_from=%r is ignored: resuming from the checkpoint.", init_from)
    return {"init_from": saved_meta.get("init_from", "")}

  def local_step(state, batch):
    """One device's share: its augmented images, the global weighted cross-entropy and gradient."""
    key = jax.random.fold_in(state.rng, state.step)
    x = augment_views(key, unit_float(batch["x"]), 1, augment_fn)[:, 0]  # one view per example
    y = batch["y"].astype(jnp.int32)
    w = weights[y]

    def loss_fn(params):
      out, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                 train=True, mutable=["batch_stats"])
      ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], y)
      loss = jax.lax.psum(jnp.sum(w * ce), AXIS) / jax.lax.psum(jnp.sum(w), AXIS)
      correct = jax.lax.pmean(jnp.mean((jnp.argmax(out["logits"], -1) == y).astype(jnp.float32)),
                              AXIS)
      return loss, (correct, updates["batch_stats"])

    (loss, (acc, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, guard = guarded_update(state, loss, grads, new_stats)
    metrics = {"loss": loss, "accuracy": acc, "lr": schedule(state.step), **guard}
    return new_state, metrics

  train_step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS)),
                                     out_specs=(P(), P())), donate_argnums=0)
  predict = make_predict_step(model, mesh, "logits")

  def scores(state, name: str, ks=(1,)) -> dict:
    logits = loop.split_outputs(predict, state, getattr(dataset, name), eval_batch_size, mesh)
    return {f"top{k}": topk_accuracy(logits, labels[name], k) for k in ks}

  def host_batch(step: int) -> dict:
    return data_lib.train_batch(dataset.train, config.batch_size, config.seed, step,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(), scale=False)

  def describe(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())

  def final(state, meta: dict) -> run_lib.Outcome:
    test = scores(state, "test", (1, 5))
    results = {"task": "finetune", "dataset": dataset.name, "num_classes": num_classes,
               "init_from": meta.get("init_from", init_from), "metric": "top1", "test": test,
               "val_best": meta["val_best"], "best_step": meta["best_step"], "steps": num_steps,
               "train_examples": len(dataset.train.y)}
    return run_lib.Outcome(results, test, [f"Test (best step {meta['best_step']}): "
                                           f"{describe(test)}"])

  return run_lib.Task(
      identity=run_lib.config_identity(config), init_state=init_state, host_batch=host_batch,
      train_step=train_step, evaluate=lambda state, split: scores(state, split),
      describe=describe, final=final, metric="top1", higher_is_better=True,
      loss_terms=(run_lib.LossTerm("ce", "loss"),), shown_metrics=(("acc", "accuracy", ".3f"),),
      meta={"init_from": init_from}, on_resume=on_resume)


def train_finetune(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes one run (:func:`finetune_task` on every device); returns the results dict (also
  ``workdir/results.json``)."""
  return run_lib.run(config, workdir, finetune_task, run_lib.make_mesh())
