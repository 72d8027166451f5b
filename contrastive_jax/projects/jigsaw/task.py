"""Jigsaw pretext training (thesis Ch. 3, Sec. 3.4.1 and 3.5.2.1): SSLACL and SKID v1/v2/v3.

``train_pretext(config, workdir)`` trains a jigsaw net with categorical cross-entropy over the ``C``
permutation indices (on a set of grey images, or of MR volumes: one uniformly drawn slice of each
scan per step, the middle slice for evaluation): the :func:`jigsaw_task` of the config run by the
skeleton of ``contrastive_jax.train.run`` (resume, checkpoints, boundaries, the non-finite policy,
preemption, progress). Each step takes a batch of images (a pure function of ``(data.seed, step)``), turns every
image into 9 jumbled, per-patch augmented crops on device (image ``i`` of step ``s`` uses
``fold_in(fold_in(rng, s), i)``: the examples are a pure function of ``(seed, step, sample)``), and
applies one optimizer update. The step is data-parallel over every device (one ``shard_map`` over the
'batch' axis, BatchNorm statistics synchronised across devices), so it equals the one-device step on
the whole batch. Validation and test examples are fixed (one arrangement, one crop per image, no
augmentation). Checkpoints hold step, params, BatchNorm statistics, optimizer state and the PRNG key,
so re-running with the same ``workdir`` resumes exactly; a non-finite loss or gradient is not applied
and raises :class:`NonFiniteLossError` naming the step (``nonfinite='skip'`` skips the update instead).

Writes ``metrics.jsonl`` + TensorBoard events, ``checkpoints/`` and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from contrastive_jax import models
from contrastive_jax.data import Split
from contrastive_jax.data import eval_batches
from contrastive_jax.data import load_dataset
from contrastive_jax.data import train_batch
from contrastive_jax.data.sources.base import subset
from contrastive_jax.projects.jigsaw import data as jigsaw_data
from contrastive_jax.projects.jigsaw import model as jigsaw_models
from contrastive_jax.projects.mrnet.data import oversample_rows
from contrastive_jax.train import run as run_lib
from contrastive_jax.train.optim import decay_mask
from contrastive_jax.train.optim import exclude_bias_and_norm
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.optim import make_schedule
from contrastive_jax.train.run import NonFiniteLossError  # pylint: disable=unused-import
from contrastive_jax.train.run import config_identity
from contrastive_jax.train.run import make_mesh
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.step import guarded_update
from contrastive_jax.train.step import sample_keys

log = logging.getLogger('contrastive_jax')

# Config fields that steer a run without changing its result; they may differ when resuming (the
# final state is reported, whichever validation was best, so ``eval_every`` is one of them).
RUN_CONTROL_FIELDS = run_lib.RUN_CONTROL_FIELDS + ('eval_every',)
# Offsets of the fixed evaluation streams (folded into PRNGKey(seed)).
_EVAL_STREAMS = {'val': 1, 'test': 2}


def make_pretext_optimizer(cfg, num_train_steps: int):
  """``make_optimizer`` plus 'rmsprop' (the thesis' pretext optimizer, Sec. 3.5.2.1), which
  ``train/optim.py`` does not offer; its schedule comes from the same ``make_schedule``."""
  if cfg.name == 'rmsprop':
    schedule = make_schedule(cfg, num_train_steps)
    tx = optax.rmsprop(schedule, decay=float(cfg.get('rho', 0.9)), eps=float(cfg.get('eps', 1e-7)))
    wd = float(cfg.get('weight_decay', 0.0))
    mask = decay_mask if exclude_bias_and_norm(cfg) else None
    return (optax.chain(optax.add_decayed_weights(wd, mask=mask), tx) if wd else tx), schedule
  return make_optimizer(cfg, num_train_steps)


def _check_config(config) -> None:
  if config.get('task', 'jigsaw') != 'jigsaw':
    raise ValueError(f"train_pretext needs `task`='jigsaw', got {config.task!r}.")


def _patches_to_model(patches: jax.Array, channels: int) -> jax.Array:
  return patches if patches.shape[-1] == channels else jnp.repeat(patches, channels, axis=-1)


def _grayscale(x: np.ndarray, name: str, volume: bool = False) -> np.ndarray:
  if x.ndim != (5 if volume else 4) or x.shape[-1] != 1:
    raise ValueError(f'Dataset {name!r} must hold grayscale '
                     f"{'volumes [N, S, H, W, 1]' if volume else 'images [N, H, W, 1]'} for the "
                     f'jigsaw task, got shape {x.shape}.')
  return x


def oversampled_train(dataset, seed: int):
  """``dataset`` whose training split has its minority class drawn again until both classes are
  equally frequent (thesis Sec. 3.5.4.2 / Table 3.11, "with oversampling": the SSLACL pretext trained
  on the ACL-balanced MRNet set, "an equal number of samples from both classes"), by the downstream
  runs' rule (``projects.mrnet.data.oversample_rows``, seeded). The label is the source's binary one
  (MRNet: ``data.kwargs.task``); the images are a lazy view (nothing decoded, rows repeated).

  Raises:
    ValueError: the training labels are not one binary label per example.
  """
  y = np.asarray(dataset.train.y)
  if y.ndim != 1 or not np.all((y == 0) | (y == 1)):
    raise ValueError(f'`data.oversample` balances a binary training label (MRNet: the '
                     f'`data.kwargs.task` label); the data set {dataset.name!r} has labels of shape '
                     f'{y.shape} with values {np.unique(y)[:5].tolist()}...')
  rows = oversample_rows(y[:, None].astype(np.float32), seed)
  log.info('Oversampled the minority class of the training split: %d -> %d examples (%d positive).',
           len(y), len(rows), int(np.sum(y[rows])))
  return dataclasses.replace(dataset, train=Split(x=subset(dataset.train.x, rows), y=y[rows]))


def one_slice(x: np.ndarray, index) -> np.ndarray:
  """``[b, S, H, W, C] -> [b, H, W, C]``: slice ``index[i]`` of volume ``i`` (an int: the same)."""
  index = np.broadcast_to(np.asarray(index, np.int64), (x.shape[0],))
  return x[np.arange(x.shape[0]), index]


def jigsaw_task(config: ml_collections.ConfigDict, mesh: Mesh) -> run_lib.Task:
  """The jigsaw pretext run of ``config`` on ``mesh`` as a :class:`run.Task` (see the module doc).

  Loss: the categorical cross-entropy of the permutation index, averaged over the global batch
  (Sec. 3.5.2.1); no best state: the final state is evaluated on the validation and test examples.
  """
  _check_config(config)
  jig = config.jigsaw
  crop, channels = int(jig.crop_size), int(config.data.get('channels', 3))
  eval_batch_size = int(config.get('eval_batch_size') or config.batch_size)
  run_lib.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=eval_batch_size)
  kwargs = dict(config.data.kwargs)
  if config.data.get('root'):  # a file source's folder (e.g. --config.data.root=/data/MRNet)
    kwargs['root'] = config.data.root
  dataset = load_dataset(config.data.name, seed=config.data.seed, **kwargs)
  if dataset.kind not in ('image', 'volume'):
    raise ValueError(f'The jigsaw task needs an image or volume data set, got {dataset.name!r} '
                     f'(kind {dataset.kind!r}).')
  if config.data.get('oversample', False):
    dataset = oversampled_train(dataset, int(config.data.seed))
  # MR volumes (e.g. `mrnet`): every step takes one uniformly drawn slice of each scan of the batch
  # (Sec. 3.5.2.1 "slices chosen randomly according to a uniform distribution from MR scans";
  # spec B3: one slice per scan, batches across scans); evaluation the middle slice of each scan.
  volume = dataset.kind == 'volume'
  _grayscale(dataset.train.x, dataset.name, volume)
  jigsaw_data.check_image_shape(dataset.train.x.shape[-3:], crop)
  perms = jnp.asarray(jigsaw_data.permutation_set(jig.permutations, jig.num_classes, jig.perm_seed,
                                                  cache_dir=jig.get('cache_dir')), jnp.int32)
  augment = jigsaw_data.PatchAugment(**jig.augment.to_dict())
  crop_then_augment = bool(jig.get('crop_then_augment', False))
  max_offset = jig.get('max_crop_offset')
  chance = 1.0 / jig.num_classes

  model = models.build_model(config.model, AXIS, task='jigsaw', num_classes=jig.num_classes)
  num_steps = int(config.num_train_steps)
  tx, schedule = make_pretext_optimizer(config.optim, num_steps)
  counted = {}

  def init_state(latest) -> TrainState:  # pylint: disable=unused-argument
    init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
    dummy = jnp.zeros((2, jigsaw_data.NUM_PATCHES, crop, crop, channels), jnp.float32)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, dummy)
    counted['params'] = jigsaw_models.count_parameters(variables)
    log.info('Jigsaw %s: %s parameters, %d classes (%s set), %d train images %s.', config.method,
             f"{counted['params']:,}", jig.num_classes, jig.permutations, len(dataset.train),
             dataset.train.x.shape[1:])
    return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply,
                      params=variables['params'], tx=tx,
                      opt_state=jax.jit(tx.init)(variables['params']),
                      batch_stats=variables.get('batch_stats', {}), rng=data_key)

  def loss_and_metrics(params, batch_stats, patches, labels, train):
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
      logits, updates = model.apply(variables, patches, train=True, mutable=['batch_stats'])
      batch_stats = updates['batch_stats']
    else:
      logits = model.apply(variables, patches, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return losses, correct, batch_stats

  def local_step(state, batch):
    """One device's share: its images' examples, the global-mean loss and its global gradient."""
    key = jax.random.fold_in(state.rng, state.step)
    images = jigsaw_data.to_model_range(batch['x'], 1)
    keys = sample_keys(key, images.shape[0])  # image i of the global batch: fold_in(key, i)
    patches, labels = jax.vmap(lambda k, im: jigsaw_data.jigsaw_example(
        k, im, perms, crop, augment, crop_then_augment=crop_then_augment,
        max_crop_offset=max_offset))(keys, images)
    patches = _patches_to_model(patches, channels)

    def loss_fn(params):
      losses, correct, new_stats = loss_and_metrics(params, state.batch_stats, patches, labels, True)
      loss = jax.lax.pmean(jnp.mean(losses), AXIS)
      return loss, (jax.lax.pmean(jnp.mean(correct), AXIS), new_stats)

    (loss, (acc, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, guard = guarded_update(state, loss, grads, new_stats)
    metrics = {'loss': loss, 'accuracy': acc, 'lr': schedule(state.step), **guard}
    return new_state, metrics

  train_step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS)),
                                     out_specs=(P(), P())), donate_argnums=0)

  def make_eval_step(stream: int):
    def local_eval(state, images, index):
      key = jax.random.fold_in(jax.random.PRNGKey(config.seed), stream)
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
      patches, labels = jax.vmap(lambda k, im: jigsaw_data.jigsaw_example(
          k, im, perms, crop, None, max_crop_offset=max_offset))(keys,
                                                                 jigsaw_data.to_model_range(images, 1))
      losses, correct, _ = loss_and_metrics(state.params, state.batch_stats,
                                            _patches_to_model(patches, channels), labels, False)
      return losses, correct
    return jax.jit(jax.shard_map(local_eval, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                                 out_specs=(P(AXIS), P(AXIS))))

  eval_steps = {name: make_eval_step(stream) for name, stream in _EVAL_STREAMS.items()}
  max_eval = int(config.get('max_eval_examples', -1))

  def evaluate(state, split_name: str) -> dict:
    split = getattr(dataset, split_name)
    total_loss = total_correct = count = 0.0
    for b, batch in enumerate(eval_batches(split, eval_batch_size)):
      if volume:
        batch = dict(batch, x=one_slice(batch['x'], batch['x'].shape[1] // 2))
      index = np.arange(b * eval_batch_size, (b + 1) * eval_batch_size, dtype=np.int32)
      sharded = run_lib.shard_batch({'x': run_lib.local_slice(batch['x']),
                                     'index': run_lib.local_slice(index)}, mesh)
      outputs = eval_steps[split_name](state, sharded['x'], sharded['index'])
      losses, correct = (np.asarray(multihost_utils.process_allgather(o, tiled=True))
                         for o in outputs)
      mask = batch['mask'] * (index < max_eval if max_eval > 0 else 1.0)
      total_loss += float(np.sum(losses * mask))
      total_correct += float(np.sum(correct * mask))
      count += float(np.sum(mask))
      if 0 < max_eval <= (b + 1) * eval_batch_size:
        break
    return {'loss': total_loss / count, 'accuracy': total_correct / count}

  def host_batch(step: int) -> dict:
    x = train_batch(dataset.train, config.batch_size, config.data.seed, step,
                    process_index=jax.process_index(), process_count=jax.process_count())['x']
    if volume:  # slice i of the global batch drawn from (data.seed, step), on any process layout
      index = np.random.default_rng([int(config.data.seed), 0x511CE, int(step)]).integers(
          0, x.shape[1], config.batch_size)
      x = one_slice(x, run_lib.local_slice(index))
    return {'x': x}

  def describe(metrics: dict) -> str:
    return f"loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.4f} (chance {chance:.4f})"

  def final(state, meta: dict) -> run_lib.Outcome:  # pylint: disable=unused-argument
    val, test = evaluate(state, 'val'), evaluate(state, 'test')
    results = {'task': 'jigsaw', 'method': config.method, 'dataset': dataset.name,
               'num_classes': int(jig.num_classes), 'num_params': counted['params'],
               'steps': num_steps, 'val': val, 'test': test, 'chance_accuracy': chance}
    return run_lib.Outcome(results, test, [f'Test: {describe(test)}'])

  return run_lib.Task(
      identity=config_identity(config, RUN_CONTROL_FIELDS), init_state=init_state,
      host_batch=host_batch, train_step=train_step, evaluate=evaluate, describe=describe,
      final=final, shown_metrics=(('acc', 'accuracy', '.3f'),))


def train_pretext(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one jigsaw pretext run; returns the results dict (also written to ``results.json``).

  Args:
    config: see ``configs/jigsaw.py``.
    workdir: output directory; an existing checkpoint there is resumed.

  Returns:
    ``{'task', 'method', 'dataset', 'num_classes', 'num_params', 'steps', 'val', 'test',
    'chance_accuracy'}`` with ``val``/``test`` = ``{'loss', 'accuracy'}``, or
    ``{'status': 'stopped', 'steps'}`` when stopped early (``stop_at_step``, SIGTERM/SIGINT).

  Raises:
    ValueError: a bad config or data set, or a checkpoint of a different config.
    NonFiniteLossError: a non-finite loss or gradient (``nonfinite='stop'``).
  """
  return run_lib.run(config, workdir, jigsaw_task, make_mesh())


__all__ = ['jigsaw_task', 'make_pretext_optimizer', 'train_pretext']
