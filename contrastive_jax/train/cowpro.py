"""Self-supervised training and 1-shot evaluation of CoWPro (thesis Ch. 7).

``train_cowpro(config, workdir)``: builds the offline superpixel pseudo-masks of the training slices
(Sec. 7.4.1.1; cached in ``workdir/superpixels`` or ``config.data.cache_dir``), trains on episodes
synthesised on device (Sec. 7.4.1.5: support = slice + random superpixel, query = its affine + elastic +
gamma transform) with ``L_ssl + L_reg`` (Eq. 7.14), evaluates with the 1-shot protocol (3 chunks,
3-D Dice per query scan; ``contrastive_jax.evaluate.segmentation``) every ``eval_every`` steps and at
the end, and writes ``workdir/results.json``. Episodes are a pure function of (seed, step), so a run
resumes exactly from its latest Orbax checkpoint; a non-finite loss or gradient raises
``NonFiniteLossError`` naming the step (the update is not applied).
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from contrastive_jax.data import cowpro as cowpro_data
from contrastive_jax.evaluate import segmentation
from contrastive_jax.losses import cowpro as cowpro_losses
from contrastive_jax.models import cowpro as cowpro_model
from contrastive_jax.train import run_checks
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.workdir_lock import locked_workdir
from contrastive_jax.train.init_from import initial_variables
from contrastive_jax.train.run import NonFiniteLossError
from contrastive_jax.train.run import config_identity
from contrastive_jax.train.run import refuse_changed_config
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.writer import MetricWriter
from contrastive_jax.train.writer import Progress

log = logging.getLogger('contrastive_jax')


# ----------------------------------------------------------------------------------------------------
# Data.

def load_volumes(data_cfg) -> tuple:
  """``(train Volumes, eval Volumes)`` for ``data_cfg.name`` in ('cowpro_phantom', 'chaos')."""
  if data_cfg.name == 'cowpro_phantom':
    n_train, n_eval = int(data_cfg.num_train_volumes), int(data_cfg.num_eval_volumes)
    if n_train < 1 or n_eval < 2:
      raise ValueError(f'`data.num_train_volumes` must be >= 1 and `data.num_eval_volumes` >= 2 '
                       f'(1 support + queries); got {n_train} and {n_eval}.')
    volumes = cowpro_data.make_phantom_volumes(n_train + n_eval, data_cfg.num_slices, data_cfg.size,
                                               seed=data_cfg.seed)
    return volumes.select(range(n_train)), volumes.select(range(n_train, n_train + n_eval))
  if data_cfg.name == 'chaos':
    return _chaos_volumes(data_cfg)
  raise ValueError(f"Unknown `data.name`={data_cfg.name!r}; expected 'cowpro_phantom' or 'chaos'.")


def _chaos_volumes(data_cfg) -> tuple:
  """CHAOS T2-SPIR scans through ``contrastive_jax.data.load_dataset('chaos', root=...)``.

  The source splits patients 70/15/15 by ``data.seed`` (the thesis uses 5-fold CV, 16/4 scans per
  fold, Sec. 7.5.1); its ``train`` split is used for self-supervised training and ``data.eval_split``
  ('val' by default) for the 1-shot evaluation. Slices are regrouped into scans (a split holds its
  patients' slices scan after scan, in ``patient_split`` order), intensities (per-scan clipped and
  scaled to uint8 by the source) mapped to [0, 1], and shorter scans padded with empty slices at the
  end (no label, no body, hence no superpixel and never a query or support slice).
  """
  from contrastive_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from contrastive_jax.data.sources import chaos as chaos_source  # pylint: disable=g-import-not-at-top
  if not data_cfg.get('root'):
    raise ValueError('The chaos variant needs `data.root` (the CHAOS directory with Train_Sets/MR).')
  eval_split = data_cfg.get('eval_split', 'val')
  if eval_split not in ('val', 'test'):
    raise ValueError(f"`data.eval_split` must be 'val' or 'test'; got {eval_split!r}.")
  dataset = data_lib.load_dataset('chaos', root=data_cfg.root, seed=int(data_cfg.seed),
                                  size=int(data_cfg.size), **dict(data_cfg.get('kwargs', {})))
  scans = {scan.patient: scan for scan in chaos_source.find_scans(data_cfg.root)}
  train_ids, val_ids, test_ids = chaos_source.patient_split(list(scans), int(data_cfg.seed))
  eval_ids = val_ids if eval_split == 'val' else test_ids
  return (_regroup(dataset.train, [len(scans[p]) for p in train_ids], train_ids),
          _regroup(getattr(dataset, eval_split), [len(scans[p]) for p in eval_ids], eval_ids))


def _regroup(split, lengths, ids) -> cowpro_data.Volumes:
  """Slices ``x [N, H, W, 1]`` uint8 and label maps ``y [N, H, W]`` of consecutive scans ->
  :class:`Volumes` padded to the longest scan."""
  if sum(lengths) != len(split.y):
    raise ValueError(f'The CHAOS split has {len(split.y)} slices but its scans have {sum(lengths)}.')
  depth = max(lengths)
  _, h, w = split.y.shape
  images = np.zeros((len(lengths), depth, h, w), np.float32)
  labels = np.zeros((len(lengths), depth, h, w), np.int32)
  start = 0
  for v, n in enumerate(lengths):
    images[v, :n] = np.asarray(split.x[start:start + n], np.float32)[..., 0] / 255.0
    labels[v, :n] = np.rint(np.asarray(split.y[start:start + n])).astype(np.int32)
    start += n
  return cowpro_data.Volumes(images, labels, tuple(ids))






# ----------------------------------------------------------------------------------------------------
# Steps.

def build_model(model_cfg) -> cowpro_model.CoWPro:
  encoder = cowpro_model.build_encoder(model_cfg.encoder, **model_cfg.get('encoder_kwargs', {}))
  return cowpro_model.CoWPro(encoder=encoder, feature_dim=model_cfg.get('feature_dim'),
                             in_channels=int(model_cfg.get('in_channels', 1)))


def _proto_kwargs(cfg) -> dict:
  return dict(window=int(cfg.window), temperature=float(cfg.temperature), scale=float(cfg.scale),
              renormalize=bool(cfg.renormalize), mask_resize=cfg.mask_resize)


def _threshold(value):
  """A config threshold (number, numeric string or 'dynamic') as a float or 'dynamic'."""
  if isinstance(value, str) and value.strip() == 'dynamic':
    return 'dynamic'
  try:
    value = float(value)
  except ValueError:
    raise ValueError(f"A prototype threshold must be a number in [0, 1) or 'dynamic'; got "
                     f'{value!r}.') from None
  cowpro_model.check_threshold(value)
  return value


def make_train_step(model, config, schedule):
  """``train_step(state, images, superpixels, counts) -> (state, metrics)`` (jit-compiled)."""
  aug = cowpro_data.QueryAugment(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                    for k, v in config.augment.to_dict().items()})
  batch = int(config.batch_size)
  loss_cfg = config.loss
  loss_kwargs = dict(
      class_weights=tuple(loss_cfg.class_weights), normalize=loss_cfg.normalize,
      reg_weight=float(loss_cfg.reg_weight), reg_threshold=_threshold(loss_cfg.reg_threshold),
      reg_class_weights=tuple(loss_cfg.reg_class_weights),
      fg_threshold=_threshold(config.prototypes.fg_threshold),
      bg_threshold=_threshold(config.prototypes.bg_threshold), **_proto_kwargs(config.prototypes))
  bn_train = bool(config.model.get('bn_train', True))

  def train_step(state, images, superpixel_maps, counts):
    key = jax.random.fold_in(state.rng, state.step)
    episodes = jax.vmap(lambda k: cowpro_data.sample_episode(k, images, superpixel_maps, counts, aug))(
        jax.random.split(key, batch))
    x = jnp.concatenate([episodes['support_image'], episodes['query_image']])

    def loss_fn(params):
      variables = {'params': params, 'batch_stats': state.batch_stats}
      if bn_train:
        feats, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
        new_stats = updates.get('batch_stats', state.batch_stats)
      else:
        feats, new_stats = model.apply(variables, x, train=False), state.batch_stats
      loss, aux = cowpro_losses.cowpro_loss(feats[:batch], episodes['support_mask'], feats[batch:],
                                            episodes['query_mask'], **loss_kwargs)
      return loss, (aux, new_stats)

    (loss, (aux, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads=grads, batch_stats=new_stats)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    pred = cowpro_model.predict_mask(aux['logits'])
    truth = episodes['query_mask'] > 0.5
    inter = jnp.sum(pred & truth)
    query_dice = 2.0 * inter / jnp.maximum(jnp.sum(pred) + jnp.sum(truth), 1)
    metrics = {'loss': loss, 'loss_ssl': aux['loss_ssl'], 'loss_reg': aux['loss_reg'],
               'lr': schedule(state.step), 'grad_norm': grad_norm, 'query_dice': query_dice,
               'nonfinite': ~finite}
    return new_state, metrics

  return jax.jit(train_step)


class Predictor:
  """The 1-shot predictor of :func:`segmentation.one_shot_evaluate` for a fixed state."""

  def __init__(self, model, config):
    self.batch = int(config.eval.batch_size)
    thresholds = config.eval.thresholds
    thresholds = thresholds.to_dict() if hasattr(thresholds, 'to_dict') else dict(thresholds)
    self.thresholds = {name: _threshold(value) for name, value in thresholds.items()}
    kwargs = _proto_kwargs(config.prototypes)
    kwargs['window'] = int(config.eval.get('window') or kwargs['window'])
    self._kwargs = kwargs
    self._encode = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
    self._logits = {}
    self.variables = None

  def set_state(self, state) -> None:
    self.variables = {'params': state.params, 'batch_stats': state.batch_stats}

  def _logits_fn(self, threshold):
    if threshold not in self._logits:
      fn = functools.partial(cowpro_model.episode_logits, fg_threshold=threshold,
                             bg_threshold=threshold, **self._kwargs)

      def batched(s_feat, s_mask, q_feats, image_hw):
        logits = jax.vmap(lambda q: fn(s_feat, s_mask, q, image_hw))(q_feats)
        return cowpro_model.predict_mask(logits)

      self._logits[threshold] = jax.jit(batched, static_argnums=3)
    return self._logits[threshold]

  def __call__(self, support_image, support_mask, query_images, class_name):
    if class_name not in self.thresholds:
      raise ValueError(f'`eval.thresholds` has no threshold for class {class_name!r}; it has '
                       f'{sorted(self.thresholds)}.')
    threshold = self.thresholds[class_name]
    hw = tuple(support_image.shape)
    n = query_images.shape[0]
    preds = []
    for start in range(0, n, self.batch):
      chunk = np.asarray(query_images[start:start + self.batch], np.float32)
      k = chunk.shape[0]
      x = np.zeros((self.batch + 1,) + hw, np.float32)  # Fixed shape: compiled once.
      x[0], x[1:k + 1] = support_image, chunk
      feats = self._encode(self.variables, x)
      pred = self._logits_fn(threshold)(feats[0], jnp.asarray(support_mask, jnp.float32),
                                        feats[1:], hw)
      preds.append(np.asarray(pred)[:k])
    return np.concatenate(preds)


# ----------------------------------------------------------------------------------------------------
# The run.

def evaluate(predictor: Predictor, state, volumes: cowpro_data.Volumes, config) -> dict:
  predictor.set_state(state)
  classes = {name: int(cid) for name, cid in config.eval.classes.items()}
  return segmentation.one_shot_evaluate(
      predictor, volumes.images, volumes.labels, classes, support_index=int(config.eval.support_index),
      npart=int(config.eval.npart), quadrant_masking=bool(config.eval.quadrant_masking),
      scan_ids=volumes.ids)


@locked_workdir
@run_checks.closes_resources
def train_cowpro(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains CoWPro self-supervised, evaluates it 1-shot; returns (and writes) the results dict."""
  run_checks.check_run_control(config)
  os.makedirs(workdir, exist_ok=True)
  train_volumes, eval_volumes = load_volumes(config.data)
  slices = cowpro_data.training_slices(train_volumes, tuple(config.data.exclude_labels))
  cache_dir = config.data.get('cache_dir') or os.path.join(workdir, 'superpixels')
  pseudo = cowpro_data.build_pseudo_masks(slices, cache_dir=cache_dir,
                                          **config.data.superpixels.to_dict())
  log.info('CoWPro data %s: %d training slices with %.1f superpixels on average, %d evaluation '
           'scans of %s.', config.data.name, len(pseudo), float(np.mean(pseudo.counts)),
           len(eval_volumes), eval_volumes.images.shape[1:])

  model = build_model(config.model)
  num_steps = int(config.num_train_steps)
  tx, schedule = make_optimizer(config.optim, num_steps)
  init_key, episode_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, pseudo.images[:2])
  ckpt = run_checks.opened(Checkpointer(os.path.join(workdir, 'checkpoints'),
                                        int(config.keep_checkpoints)))
  init_from = config.model.get('init_from', '') or ''
  variables = initial_variables(init_from, model, variables, ckpt, log)
  state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                            batch_stats=variables.get('batch_stats', {}), rng=episode_key)
  log.info('CoWPro model (%s encoder): %s parameters.', config.model.encoder,
           f'{sum(x.size for x in jax.tree.leaves(state.params)):,}')

  meta = {'config': config_identity(config), 'history': []}
  if ckpt.latest_step() is not None:
    run_checks.check_restorable(ckpt, state)
    state, saved = ckpt.restore(state)
    differences = refuse_changed_config(ckpt.directory, saved.get('config', {}), meta['config'],
                                        config.get('resume', 'auto'))
    if not differences and (done := run_checks.finished_results(workdir, int(state.step),
                                                                config.num_train_steps)):
      return done
    meta['history'] = saved.get('history', [])
    log.info('Resumed from step %d of %s.', int(state.step), ckpt.directory)
    if init_from:
      log.info('model.init_from=%r is ignored: resuming from the checkpoint.', init_from)

  train_step = make_train_step(model, config, schedule)
  predictor = Predictor(model, config)
  device_data = (jnp.asarray(pseudo.images), jnp.asarray(pseudo.superpixels),
                 jnp.asarray(pseudo.counts))
  writer = run_checks.opened(MetricWriter(workdir))
  step = int(state.step)
  progress = Progress(num_steps, step, int(config.batch_size),
                      terms=(('reg', 'loss_reg'), ('ssl', 'loss_ssl')))
  first_step, stop_at = step + 1, int(config.get('stop_at_step', -1))
  if step < num_steps:
    progress.compiling()

  def check(step_done, metrics) -> dict:
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if metrics.pop('nonfinite'):
      ckpt.wait()
      raise NonFiniteLossError(
          f"Non-finite loss or gradient at step {step_done}: loss={metrics['loss']}, "
          f"loss_ssl={metrics['loss_ssl']}, loss_reg={metrics['loss_reg']}, "
          f"grad_norm={metrics['grad_norm']}. The update was not applied; "
          f'{ckpt.describe_last_good()}.')
    return metrics

  while step < num_steps:
    state, metrics = train_step(state, *device_data)
    step += 1
    boundary = (step % config.log_every == 0 or step % config.eval_every == 0
                or step % config.checkpoint_every == 0 or step in (num_steps, first_step, stop_at))
    if not boundary:
      if bool(metrics['nonfinite']):  # Every step is checked, so the error names the right one.
        check(step, metrics)
      continue
    metrics = check(step, metrics)
    if step == first_step:
      progress.restart_clock(step)
    if step % config.log_every == 0 or step == num_steps:
      writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})
      log.info(progress.line(step, metrics) + f" | query Dice {metrics['query_dice']:.3f}")
    if step % config.eval_every == 0 and step != num_steps:
      result = evaluate(predictor, state, eval_volumes, config)
      writer.write_scalars(step, {f'eval/dice_{k}': v for k, v in result['dice'].items()}
                           | {'eval/mean_dice': result['mean_dice']})
      meta['history'].append({'step': step, 'mean_dice': result['mean_dice']})
      log.info('step %d | 1-shot Dice %s | mean %.4f', step,
               ' '.join(f'{k} {v:.4f}' for k, v in result['dice'].items()), result['mean_dice'])
    if step % config.checkpoint_every == 0 or step in (num_steps, stop_at):
      ckpt.save(state, meta, force=True)
    if step == stop_at and step < num_steps:
      ckpt.wait()
      writer.close()
      log.info('Stopped at step %d (stop_at_step) with a checkpoint; re-run to resume.', step)
      return {'status': 'stopped', 'steps': step}
  ckpt.wait()

  result = evaluate(predictor, state, eval_volumes, config)
  writer.write_scalars(num_steps, {f'test/dice_{k}': v for k, v in result['dice'].items()}
                       | {'test/mean_dice': result['mean_dice']})
  writer.close()
  ckpt.close()
  results = {'task': 'cowpro', 'method': 'cowpro', 'dataset': config.data.name, 'steps': num_steps,
             'mean_dice': result['mean_dice'],
             'test': {'dice': result['dice'], 'mean_dice': result['mean_dice']},
             'dice_per_scan': result['dice_per_scan'], 'eval_history': meta['history'],
             'protocol': {'support_index': int(config.eval.support_index),
                          'npart': int(config.eval.npart),
                          'quadrant_masking': bool(config.eval.quadrant_masking)}}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)
  log.info('1-shot Dice on the evaluation scans: %s | mean %.4f',
           ' '.join(f'{k} {v:.4f}' for k, v in result['dice'].items()), result['mean_dice'])
  return results
