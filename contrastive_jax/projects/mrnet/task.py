"""MRNet downstream classification on the run skeleton (thesis Ch. 3 Sec. 3.4.2 / 3.5.2.2, Ch. 4
Sec. 4.5.2.2): one run trains one plane's classifier for ``data.tasks``.

* Ch. 3 SKID: a frozen SKID pretext trunk + ConvLSTM (Fig. 3.7), 3 outputs (abnormal, ACL,
  meniscus), weighted BCE, 16 uniformly drawn slices per scan;
* Ch. 3 SSLACL: the 9 pretrained branches + the Divide-and-Teach classifier (Alg. 3.3, Fig. 3.6),
  ACL on sagittal scans, the minority class oversampled;
* Ch. 4: the BCL encoder fine-tuned whole (max over 16 slices + Linear), one (plane, task) per run.

Each step draws ``slices.train`` slices of every scan of the batch on the host (a pure function of
``(data.seed, step, position in the batch)``, see ``projects.mrnet.data``), augments them on device
(``augment.kind``: 'affine' rotation / shift / zoom per slice + AWGN, Ch. 3; 'crop' one random
resized crop per scan, Ch. 4; 'none') and applies one optimizer step of the (class-weighted) binary
cross-entropy, data-parallel over every device. Evaluation is the Monte-Carlo mean (Eq. 3.3) of the
sigmoid outputs over ``slices.eval_draws`` draws of ``slices.eval`` slices per scan (sampled
'normal' as Sec. 3.4.2.3 or 'uniform' as Sec. 4.5.2.2), fixed per ``(data.seed, split, draw,
exam)``. ``results.json`` holds, per task and for val and test, AUC / sensitivity / specificity /
accuracy with percentile bootstrap intervals (``evaluate.classification``); ``predictions.npz`` the
Monte-Carlo probabilities the plane ensemble (``projects.mrnet.ensemble``, Eq. 3.1-3.4 / 4.19-4.20)
combines.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from contrastive_jax import models
from contrastive_jax.data import transforms
from contrastive_jax.data.pipeline import steps_per_epoch
from contrastive_jax.evaluate.ensemble import monte_carlo_mean
from contrastive_jax.projects.mrnet import data as mrnet_data
from contrastive_jax.projects.mrnet import metrics as mrnet_metrics
from contrastive_jax.projects.mrnet import model as mrnet_model
from contrastive_jax.train import run as run_lib
from contrastive_jax.train.loop import training_fraction_rows
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.step import guarded_update
from contrastive_jax.train.step import sample_keys
from contrastive_jax.train.step import unit_float

log = logging.getLogger('contrastive_jax')

TASK = 'mrnet'
AUGMENTS = ('none', 'affine', 'crop')
RANGES = ('unit', 'signed')
SELECT = ('loss', 'last')
# Fields that never change what a run computes (how many threads read the volumes).
NON_IDENTITY = ('workers',)


def _check_config(config) -> None:
  if config.get('task') != TASK:
    raise ValueError(f'The MRNet downstream trainer needs `task`={TASK!r}, got '
                     f'{config.get("task")!r}.')
  if not config.data.get('root'):
    raise ValueError('The MRNet downstream task reads the MRNet release: set '
                     '--config.data.root=/path/to/MRNet.')
  for name, value, allowed in (('augment.kind', config.augment.kind, AUGMENTS),
                               ('data.range', config.data.range, RANGES),
                               ('eval.select', config.eval.select, SELECT),
                               ('slices.train_sampling', config.slices.train_sampling,
                                mrnet_data.SAMPLINGS),
                               ('slices.eval_sampling', config.slices.eval_sampling,
                                mrnet_data.SAMPLINGS)):
    if value not in allowed:
      raise ValueError(f'Unknown `{name}`={value!r}; expected one of {allowed}.')
  if int(config.data.channels) not in (1, 3):
    raise ValueError(f'`data.channels`={config.data.channels!r} must be 1 or 3.')
  for name in ('train', 'eval', 'eval_draws'):
    if int(config.slices[name]) < 1:
      raise ValueError(f'`slices.{name}`={config.slices[name]!r} must be >= 1.')


def make_preprocess(config):
  """``(train_fn(key, x), eval_fn(x))``: uint8 scans ``[b, k, H, W, 1]`` -> model inputs
  ``[b, k, H', W', data.channels]`` in ``data.range`` ('unit' [0, 1]; 'signed' [-1, 1], the jigsaw
  pretext's range, [CODE] B1), augmented by ``augment.kind`` for training."""
  aug = config.augment
  kind = aug.kind
  size = aug.get('size')
  channels, signed = int(config.data.channels), config.data.range == 'signed'
  noise = float(aug.get('noise_std', 0.0))

  def finish(x):
    x = 2.0 * x - 1.0 if signed else x
    return jnp.repeat(x, channels, axis=-1) if channels > 1 else x

  def crop_scan(key, scan):  # one random resized crop for every slice of the scan
    k, h, w, c = scan.shape
    stacked = jnp.moveaxis(scan, 0, 2).reshape(h, w, k * c)
    out = transforms.random_resized_crop(key, stacked, (size, size), tuple(aug.crop_scale))
    return jnp.moveaxis(out.reshape(size, size, k, c), 2, 0)

  def affine_scan(key, scan):  # every slice its own rotation, shift and zoom
    keys = jax.random.split(key, scan.shape[0])
    return jax.vmap(lambda kk, s: transforms.random_affine(
        kk, s, float(aug.degrees), float(aug.translate), tuple(aug.scale)))(keys, scan)

  def train_fn(key, x):
    x = unit_float(x)
    keys = sample_keys(key, x.shape[0])
    if kind == 'crop':
      x = jax.vmap(crop_scan)(keys, x)
    elif kind == 'affine':
      x = jax.vmap(affine_scan)(keys, x)
    x = finish(x)
    if kind == 'affine' and noise:  # AWGN in the model's range (Sec. 3.4.1.3: variance 0.01)
      x = x + noise * jax.vmap(lambda kk, v: jax.random.normal(jax.random.fold_in(kk, 1), v.shape))(
          keys, x)
    return x

  def eval_fn(x):
    x = unit_float(x)
    if kind == 'crop' and size != x.shape[2]:  # the whole slice at the crops' size
      full = lambda s: transforms.resized_crop(s, 0.0, 0.0, s.shape[0], s.shape[1], (size, size))
      x = jax.vmap(jax.vmap(full))(x)
    return finish(x)

  return train_fn, eval_fn


def mrnet_task(config: ml_collections.ConfigDict, mesh: Mesh) -> run_lib.Task:
  """The downstream run of ``config`` on ``mesh`` as a :class:`run.Task` (see the module doc)."""
  _check_config(config)
  d, sl = config.data, config.slices
  eval_batch_size = int(config.get('eval_batch_size') or config.batch_size)
  run_lib.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=eval_batch_size)
  splits = mrnet_data.load_exams(d.root, plane=d.plane, tasks=tuple(d.tasks), seed=int(d.seed),
                                 val_fraction=float(d.val_fraction), size=int(d.size))
  tasks, workers = splits.tasks, int(d.get('workers', 1))
  # Fig. 3.14a's label efficiency: a seeded `data.train_fraction` of the training exams (the val
  # and test exams unchanged), then the oversampling and class weights of that subset.
  kept = training_fraction_rows(len(splits.train), d.get('train_fraction', 1.0), int(d.seed))
  kept = np.arange(len(splits.train)) if kept is None else kept
  labels = splits.train.labels[kept]
  pool = kept[mrnet_data.oversample_rows(labels, int(d.seed))] if config.loss.oversample else kept
  if len(pool) < config.batch_size:
    raise ValueError(f'`batch_size`={config.batch_size} is larger than the training split '
                     f'({len(pool)} exams).')
  w_pos, w_neg = mrnet_data.class_weights(labels, config.loss.class_weights)
  log.info('MRNet %s %s: %d train (%d per epoch) / %d val / %d test exams; class weights pos %s '
           'neg %s; %d device(s).', d.plane, '/'.join(tasks), len(kept), len(pool),
           len(splits.val), len(splits.test), np.round(w_pos, 3).tolist(),
           np.round(w_neg, 3).tolist(), mesh.size)

  arch = config.model.arch
  model = models.build_model(config.model, AXIS, task=TASK, num_outputs=len(tasks))
  num_steps = int(config.num_train_steps)
  tx, schedule = make_optimizer(config.optim, num_steps)
  train_fn, eval_fn = make_preprocess(config)
  init_from = config.model.get('init_from', '') or ''

  def init_state(latest) -> TrainState:
    init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
    example = mrnet_data.exam_slices(splits.train, np.arange(2) % len(splits.train), int(sl.train),
                                     'uniform', (0,), np.arange(2))
    variables = jax.jit(lambda k, x: model.init(k, eval_fn(x), train=False))(init_key, example)
    if init_from and latest.latest_step() is None:
      try:
        variables, summary = mrnet_model.pretrained_variables(init_from, arch, model, variables)
      except Exception:
        latest.close()
        raise
      log.info(summary)
    elif not init_from:
      log.warning('model.init_from is empty: the %s starts from a random init (the thesis starts '
                  'from pretext weights).', 'frozen trunk' if config.model.get('freeze') else
                  'encoder')
    params = variables['params']
    log.info('MRNet downstream %s: %s parameters.', arch,
             f'{sum(x.size for x in jax.tree.leaves(params)):,}')
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             batch_stats=variables.get('batch_stats', {}), rng=data_key)

  def on_resume(saved_meta: dict) -> dict:
    if init_from:
      log.info('model.init_from=%r is ignored: resuming from the checkpoint.', init_from)
    return {'init_from': saved_meta.get('init_from', '')}

  pos, neg = jnp.asarray(w_pos), jnp.asarray(w_neg)

  def local_step(state, batch):
    x = train_fn(jax.random.fold_in(state.rng, state.step), batch['x'])
    y = batch['y']

    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                    train=True, mutable=['batch_stats'])
      bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), y)
      loss = jax.lax.pmean(jnp.mean((y * pos + (1.0 - y) * neg) * bce), AXIS)
      return loss, updates.get('batch_stats', state.batch_stats)

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, guard = guarded_update(state, loss, grads, new_stats)
    return new_state, {'loss': loss, 'lr': schedule(state.step), **guard}

  train_step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS)),
                                     out_specs=(P(), P())), donate_argnums=0)

  def local_predict(state, x):
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, eval_fn(x),
                         train=False)
    return jax.nn.sigmoid(logits.astype(jnp.float32))

  predict = jax.jit(jax.shard_map(local_predict, mesh=mesh, in_specs=(P(), P(AXIS)),
                                  out_specs=P(AXIS)))

  def host_batch(step: int) -> dict:
    spe = steps_per_epoch(len(pool), config.batch_size)
    epoch, within = divmod(int(step), spe)
    order = np.random.default_rng([int(d.seed), epoch]).permutation(len(pool))
    position = run_lib.local_slice(np.arange(within * config.batch_size,
                                             (within + 1) * config.batch_size))
    rows = pool[order[position]]
    x = mrnet_data.exam_slices(splits.train, rows, int(sl.train), sl.train_sampling,
                               (int(d.seed), mrnet_data.TRAIN_STREAM, int(step)), position, workers)
    return {'x': x, 'y': splits.train.labels[rows]}

  def draws(state, name: str) -> np.ndarray:
    """``[S, N, J]`` sigmoid outputs of ``S = slices.eval_draws`` Monte-Carlo draws (Eq. 3.3)."""
    exams = getattr(splits, name)
    out = []
    for s in range(int(sl.eval_draws)):
      parts = []
      for start in range(0, len(exams), eval_batch_size):
        rows = np.arange(start, start + eval_batch_size)
        real = rows < len(exams)
        local = run_lib.local_slice(np.where(real, rows, 0))
        x = mrnet_data.exam_slices(exams, local, int(sl.eval), sl.eval_sampling,
                                   (int(d.seed), mrnet_data.EVAL_STREAMS[name], s), local, workers)
        probs = predict(state, run_lib.shard_batch({'x': x}, mesh)['x'])
        parts.append(np.asarray(multihost_utils.process_allgather(probs, tiled=True))[real])
      out.append(np.concatenate(parts))
    return np.stack(out)

  def evaluate(state, name: str) -> dict:
    probs = monte_carlo_mean(draws(state, name))
    return mrnet_metrics.validation_metrics(probs, getattr(splits, name).labels, tasks)

  def describe(metrics: dict) -> str:
    return ' '.join(f'{k} {v:.4f}' for k, v in metrics.items())

  def final(state, meta: dict) -> run_lib.Outcome:
    ev = config.eval
    report = lambda p, y: mrnet_metrics.task_reports(
        p, y, tasks, threshold=float(ev.threshold), seed=int(ev.bootstrap_seed),
        num_resamples=int(ev.bootstrap_resamples), resample_size=ev.get('bootstrap_size'),
        percentiles=tuple(ev.percentiles))
    mc = {name: draws(state, name) for name in ('val', 'test')}
    probs = {name: monte_carlo_mean(v) for name, v in mc.items()}
    results = {'task': TASK, 'method': config.method, 'dataset': 'mrnet', 'arch': arch,
               'plane': splits.plane, 'tasks': list(tasks), 'steps': num_steps,
               'best_step': meta['best_step'], 'val_best': meta['val_best'],
               'init_from': meta.get('init_from', ''),
               'monte_carlo': {'draws': int(sl.eval_draws), 'slices': int(sl.eval),
                               'sampling': sl.eval_sampling},
               'bootstrap': {'resamples': int(ev.bootstrap_resamples),
                             'resample_size': ev.get('bootstrap_size'),
                             'percentiles': list(ev.percentiles), 'stratified': True},
               'threshold': float(ev.threshold),
               'val': report(probs['val'], splits.val.labels),
               'test': report(probs['test'], splits.test.labels)}
    test = {f'{t}_{m}': r[m]['estimate'] for t, r in results['test'].items()
            for m in mrnet_metrics.METRICS if isinstance(r.get(m), dict)}
    lines = [f'Test {splits.plane} {t}: ' + mrnet_metrics.describe(r)
             for t, r in results['test'].items()]

    def write_files(workdir: str) -> None:
      np.savez(os.path.join(workdir, 'predictions.npz'), plane=splits.plane,
               tasks=np.array(tasks), **{f'{n}_{k}': v for n in ('val', 'test') for k, v in (
                   ('ids', getattr(splits, n).ids), ('labels', getattr(splits, n).labels),
                   ('probs', probs[n]), ('draws', mc[n]))})

    return run_lib.Outcome(results, test, lines, write_files)

  identity = run_lib.config_identity(config)
  for name in NON_IDENTITY:
    identity.get('data', {}).pop(name, None)
  return run_lib.Task(
      identity=identity, init_state=init_state, host_batch=host_batch, train_step=train_step,
      evaluate=evaluate, describe=describe, final=final,
      metric='loss' if config.eval.select == 'loss' else None, higher_is_better=False,
      loss_terms=(run_lib.LossTerm('bce', 'loss'),), meta={'init_from': init_from},
      on_resume=on_resume)


def train_downstream(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one MRNet downstream run (``configs/mrnet.py``); returns the results dict (also
  ``results.json``; the Monte-Carlo probabilities in ``predictions.npz``)."""
  return run_lib.run(config, workdir, mrnet_task, run_lib.make_mesh())


__all__ = ['TASK', 'make_preprocess', 'mrnet_task', 'train_downstream']
