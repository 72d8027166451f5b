"""Self-supervised training and 1-shot evaluation of CoWPro (thesis Ch. 7).

``train_cowpro(config, workdir)``: builds the offline superpixel pseudo-masks of the training slices
(Sec. 7.4.1.1; cached in ``workdir/superpixels`` or ``config.data.cache_dir``), trains on episodes
synthesised on device (Sec. 7.4.1.5: support = slice + random superpixel, query = its affine + elastic +
gamma transform) with ``L_ssl + L_reg`` (Eq. 7.14), evaluates with the 1-shot protocol (3 chunks,
3-D Dice per query scan; ``contrastive_jax.projects.cowpro.segmentation``) every ``eval_every`` steps and at
the end, and writes ``workdir/results.json``: the :func:`cowpro_task` of the config run by the skeleton
of ``contrastive_jax.train.run`` (resume, checkpoints, boundaries, the non-finite policy, preemption,
progress).

The step is data-parallel over every device (one ``shard_map`` over the 'batch' axis): the pseudo-masks
are replicated on every device, episode ``i`` of step ``s`` is drawn from
``fold_in(fold_in(rng, s), i)`` (``i`` its global index, so any device layout draws the same
episodes), BatchNorm statistics are synchronised over the axis and the loss (a mean over episodes) is
averaged over devices, so the step equals the one-device step on the whole batch. A run resumes exactly
from its latest Orbax checkpoint; a non-finite loss or gradient is not applied and raises
``NonFiniteLossError`` naming the step (``nonfinite='skip'`` skips the update instead).
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive_jax import models
from contrastive_jax.projects.cowpro import data as cowpro_data
from contrastive_jax.projects.cowpro import segmentation
from contrastive_jax.projects.cowpro import losses as cowpro_losses
from contrastive_jax.projects.cowpro import model as cowpro_model
from contrastive_jax.train import run as run_lib
from contrastive_jax.train.init_from import initial_variables
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.run import NonFiniteLossError  # pylint: disable=unused-import
from contrastive_jax.train.run import config_identity
from contrastive_jax.train.run import make_mesh
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.step import guarded_update
from contrastive_jax.train.step import sample_keys

log = logging.getLogger('contrastive_jax')


# ----------------------------------------------------------------------------------------------------
# Data.

def fold_selection(data_cfg) -> tuple:
  """``(data.num_folds, data.fold)`` as ints (``(0, 0)`` when unset: no cross-validation)."""
  num_folds, fold = data_cfg.get('num_folds', 0) or 0, data_cfg.get('fold', 0) or 0
  for name, value in (('num_folds', num_folds), ('fold', fold)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f'`data.{name}` must be an integer; got {value!r}.')
  if num_folds == 1 or num_folds < 0 or (num_folds and not 0 <= fold < num_folds) or (
      not num_folds and fold):
    raise ValueError(f'`data.num_folds`={num_folds} / `data.fold`={fold}: expected num_folds 0 (no '
                     'cross-validation, fold 0) or >= 2 with 0 <= fold < num_folds.')
  return int(num_folds), int(fold)


def load_volumes(data_cfg) -> tuple:
  """``(train Volumes, eval Volumes)`` for ``data_cfg.name`` in ('cowpro_phantom', 'chaos')."""
  if fold_selection(data_cfg)[0] and data_cfg.name != 'chaos':
    raise ValueError(f'`data.num_folds` selects CHAOS scans (the thesis\' 5-fold protocol); the '
                     f'data {data_cfg.name!r} has fixed training and evaluation volumes: set '
                     '--config.data.num_folds=0.')
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

  ``data.num_folds = 0``: the source splits patients 70/15/15 by ``data.seed``; its ``train`` split is
  used for self-supervised training and ``data.eval_split`` ('val' by default) for the 1-shot
  evaluation. ``data.num_folds = K``: fold ``data.fold`` of the seeded K-fold cross-validation by
  patient is the evaluation split and the other folds train (thesis Sec. 7.5.1: K = 5, 16 / 4
  scans; ``chaos.patient_split``). Slices are regrouped into scans (a split holds its
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
  num_folds, fold = fold_selection(data_cfg)
  dataset = data_lib.load_dataset('chaos', root=data_cfg.root, seed=int(data_cfg.seed),
                                  size=int(data_cfg.size), num_folds=num_folds, fold=fold,
                                  **dict(data_cfg.get('kwargs', {})))
  scans = {scan.patient: scan for scan in chaos_source.find_scans(data_cfg.root)}
  train_ids, val_ids, test_ids = chaos_source.patient_split(list(scans), int(data_cfg.seed),
                                                            num_folds, fold)
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


def make_train_step(model, config, schedule, mesh: Mesh):
  """``train_step(state, data) -> (state, metrics)``, jit-compiled and data-parallel over ``mesh``.

  ``data``: ``{'images', 'superpixels', 'counts'}`` of the pseudo-mask set, replicated on every
  device. Each device draws its ``batch_size / mesh.size`` episodes (global indices
  ``[d * b, (d + 1) * b)``, :func:`sample_keys`), runs the encoder on its supports and queries with
  BatchNorm synchronised over the 'batch' axis, and takes the device mean of Eq. 7.14's per-episode
  mean; the gradient of that global mean is the same on every device. ``metrics``: ``loss``,
  ``loss_ssl``, ``loss_reg`` (global means), ``query_dice`` (the Dice of the predicted query masks,
  pooled over the global batch), ``grad_norm``, ``lr``, ``nonfinite`` (1: the update was not applied;
  the step counter still moves on).
  """
  aug = cowpro_data.QueryAugment(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                    for k, v in config.augment.to_dict().items()})
  local = int(config.batch_size) // mesh.size
  loss_cfg = config.loss
  loss_kwargs = dict(
      class_weights=tuple(loss_cfg.class_weights), normalize=loss_cfg.normalize,
      reg_weight=float(loss_cfg.reg_weight), reg_threshold=_threshold(loss_cfg.reg_threshold),
      reg_class_weights=tuple(loss_cfg.reg_class_weights),
      fg_threshold=_threshold(config.prototypes.fg_threshold),
      bg_threshold=_threshold(config.prototypes.bg_threshold), **_proto_kwargs(config.prototypes))
  bn_train = bool(config.model.get('bn_train', True))

  def local_step(state, data):
    keys = sample_keys(jax.random.fold_in(state.rng, state.step), local)
    episodes = jax.vmap(lambda k: cowpro_data.sample_episode(
        k, data['images'], data['superpixels'], data['counts'], aug))(keys)
    x = jnp.concatenate([episodes['support_image'], episodes['query_image']])

    def loss_fn(params):
      variables = {'params': params, 'batch_stats': state.batch_stats}
      if bn_train:
        feats, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
        new_stats = updates.get('batch_stats', state.batch_stats)
      else:
        feats, new_stats = model.apply(variables, x, train=False), state.batch_stats
      loss, aux = cowpro_losses.cowpro_loss(feats[:local], episodes['support_mask'], feats[local:],
                                            episodes['query_mask'], **loss_kwargs)
      aux = {**aux, 'loss_ssl': jax.lax.pmean(aux['loss_ssl'], AXIS),
             'loss_reg': jax.lax.pmean(aux['loss_reg'], AXIS)}
      return jax.lax.pmean(loss, AXIS), (aux, new_stats)

    (loss, (aux, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, guard = guarded_update(state, loss, grads, new_stats)
    pred = cowpro_model.predict_mask(aux['logits'])
    truth = episodes['query_mask'] > 0.5
    inter, total = jax.lax.psum((jnp.sum(pred & truth), jnp.sum(pred) + jnp.sum(truth)), AXIS)
    query_dice = 2.0 * inter / jnp.maximum(total, 1)
    metrics = {'loss': loss, 'loss_ssl': aux['loss_ssl'], 'loss_reg': aux['loss_reg'],
               'lr': schedule(state.step), 'query_dice': query_dice, **guard}
    return new_state, metrics

  return jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P())),
                 donate_argnums=0)


class Predictor:
  """The 1-shot predictor of :func:`segmentation.one_shot_evaluate` for a fixed state."""

  def __init__(self, model, config):
    self.batch = int(config.eval.batch_size)
    thresholds = config.eval.thresholds
    thresholds = thresholds.to_dict() if hasattr(thresholds, 'to_dict') else dict(thresholds)
    self.thresholds = {name: _threshold(value) for name, value in thresholds.items()}
    kwargs = _proto_kwargs(config.prototypes)
    kwargs['window'] = int(config.eval.get('window') or kwargs['window'])
    # Table 7.4's Top-k% of the prototypes, at inference only (100: all, as trained).
    kwargs['top_percent'] = cowpro_model.check_top_percent(config.eval.get('top_percent', 100.0))
    self.top_percent = kwargs['top_percent']
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

def one_shot(predictor: Predictor, state, volumes: cowpro_data.Volumes, config) -> dict:
  """The 1-shot evaluation of ``state`` (:func:`segmentation.one_shot_evaluate`)."""
  predictor.set_state(state)
  classes = {name: int(cid) for name, cid in config.eval.classes.items()}
  return segmentation.one_shot_evaluate(
      predictor, volumes.images, volumes.labels, classes, support_index=int(config.eval.support_index),
      npart=int(config.eval.npart), quadrant_masking=bool(config.eval.quadrant_masking),
      scan_ids=volumes.ids)


def flat_dice(result: dict) -> dict:
  """``{'dice_<class>': ..., 'mean_dice': ...}`` of a :func:`one_shot` result."""
  return {**{f'dice_{k}': v for k, v in result['dice'].items()}, 'mean_dice': result['mean_dice']}


def _dice_text(metrics: dict) -> str:
  dice = ' '.join(f'{k[len("dice_"):]} {v:.4f}' for k, v in metrics.items() if k.startswith('dice_'))
  return f"{dice} | mean {metrics['mean_dice']:.4f}"


def describe(metrics: dict) -> str:
  """One log line of :func:`flat_dice` metrics."""
  return f'1-shot Dice {_dice_text(metrics)}'


def cowpro_task(config: ml_collections.ConfigDict, mesh: Mesh, workdir: str = '') -> run_lib.Task:
  """The CoWPro run of ``config`` on ``mesh`` as a :class:`run.Task` (see the module doc).

  Validation ('val': every ``eval_every`` steps and at the end) is the 1-shot Dice of the evaluation
  scans, written as ``val/dice_<class>`` / ``val/mean_dice`` and appended to the checkpoint meta's
  ``history``; no best state: the final state is reported (``test/...`` and ``results.json``).
  The pseudo-masks are cached in ``data.cache_dir``, else ``workdir/superpixels`` (none without).
  """
  run_lib.check_divisible(mesh, batch_size=config.batch_size)
  train_volumes, eval_volumes = load_volumes(config.data)
  slices = cowpro_data.training_slices(train_volumes, tuple(config.data.exclude_labels))
  cache_dir = config.data.get('cache_dir') or (os.path.join(workdir, 'superpixels') if workdir
                                               else None)
  pseudo = cowpro_data.build_pseudo_masks(slices, cache_dir=cache_dir,
                                          **config.data.superpixels.to_dict())
  log.info('CoWPro data %s: %d training slices with %.1f superpixels on average, %d evaluation '
           'scans of %s; %d device(s).', config.data.name, len(pseudo), float(np.mean(pseudo.counts)),
           len(eval_volumes), eval_volumes.images.shape[1:], mesh.size)

  model = models.build_model(config.model, AXIS, task='cowpro')
  num_steps = int(config.num_train_steps)
  tx, schedule = make_optimizer(config.optim, num_steps)
  init_from = config.model.get('init_from', '') or ''
  replicated = NamedSharding(mesh, P())
  data = jax.device_put({'images': np.asarray(pseudo.images),
                         'superpixels': np.asarray(pseudo.superpixels),
                         'counts': np.asarray(pseudo.counts)}, replicated)

  def init_state(latest) -> TrainState:
    init_key, episode_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, pseudo.images[:2])
    variables = initial_variables(init_from, model, variables, latest, log)
    state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                              batch_stats=variables.get('batch_stats', {}), rng=episode_key)
    log.info('CoWPro model (%s encoder): %s parameters.', config.model.encoder,
             f'{sum(x.size for x in jax.tree.leaves(state.params)):,}')
    return state

  def on_resume(saved_meta: dict) -> dict:
    if init_from:
      log.info('model.init_from=%r is ignored: resuming from the checkpoint.', init_from)
    return {'history': list(saved_meta.get('history', [])),
            'init_from': saved_meta.get('init_from', '')}

  predictor = Predictor(model, config)
  evaluated = {}  # The newest 1-shot result and its step: the final state's is not recomputed.

  def evaluate(state, split: str) -> dict:
    if split != 'val':
      raise ValueError(f'CoWPro evaluates the 1-shot protocol on its evaluation scans; got {split!r}.')
    evaluated.clear()
    evaluated[int(state.step)] = one_shot(predictor, state, eval_volumes, config)
    return flat_dice(evaluated[int(state.step)])

  def record(meta: dict, step: int, val: dict) -> None:
    meta['history'] = meta['history'] + [{'step': step, 'mean_dice': val['mean_dice']}]

  def final(state, meta: dict) -> run_lib.Outcome:
    result = evaluated.get(int(state.step)) or one_shot(predictor, state, eval_volumes, config)
    results = {'task': 'cowpro', 'method': 'cowpro', 'dataset': config.data.name, 'steps': num_steps,
               'mean_dice': result['mean_dice'],
               'test': {'dice': result['dice'], 'mean_dice': result['mean_dice']},
               'dice_per_scan': result['dice_per_scan'], 'eval_history': meta['history'],
               'protocol': {'support_index': int(config.eval.support_index),
                            'npart': int(config.eval.npart),
                            'quadrant_masking': bool(config.eval.quadrant_masking),
                            'top_percent': predictor.top_percent},
               'eval_scans': list(eval_volumes.ids)}
    num_folds, fold = fold_selection(config.data)
    if num_folds:  # read by contrastive_jax.projects.cowpro.crossval.combine_folds
      results['cross_validation'] = {'fold': fold, 'num_folds': num_folds,
                                     'seed': int(config.data.seed)}
    return run_lib.Outcome(results, flat_dice(result),
                           [f'1-shot Dice on the evaluation scans: {_dice_text(flat_dice(result))}'])

  return run_lib.Task(
      identity=config_identity(config), init_state=init_state, host_batch=None,
      device_batch=lambda step: data, train_step=make_train_step(model, config, schedule, mesh),
      evaluate=evaluate, describe=describe, final=final,
      loss_terms=(run_lib.LossTerm('reg', 'loss_reg'), run_lib.LossTerm('ssl', 'loss_ssl')),
      shown_metrics=(('query Dice', 'query_dice', '.3f'),),
      meta={'history': [], 'init_from': init_from}, on_resume=on_resume, record=record)


def task_mesh(batch_size: int) -> Mesh:
  """:func:`run.make_mesh` (every device) when the devices can share ``batch_size`` episodes equally
  or with several processes (:func:`run.check_divisible` then names the problem); else the most of
  this process's devices that can (one for the thesis' batch of 1), with a warning."""
  devices = jax.devices()
  if jax.process_count() > 1 or batch_size < 1 or batch_size % len(devices) == 0:
    return make_mesh()
  count = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
  log.warning('`batch_size`=%d episodes cannot be shared equally by %d devices: training on %d of '
              'them.', batch_size, len(devices), count)
  return Mesh(np.array(devices[:count]), (AXIS,))


def train_cowpro(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains CoWPro self-supervised, evaluates it 1-shot; returns (and writes) the results dict.

  Args:
    config: see ``configs/cowpro.py``.
    workdir: output directory; an existing checkpoint there is resumed.

  Returns:
    ``{'task', 'method', 'dataset', 'steps', 'mean_dice', 'test': {'dice', 'mean_dice'},
    'dice_per_scan', 'eval_history', 'protocol', 'eval_scans'}`` (``eval_history``: ``{'step',
    'mean_dice'}`` of every validation, the last step's included), plus ``'cross_validation':
    {'fold', 'num_folds', 'seed'}`` with ``data.num_folds`` (combined over the folds by
    ``contrastive_jax.projects.cowpro.crossval``), or ``{'status': 'stopped', 'steps'}`` when stopped
    early (``stop_at_step``, SIGTERM / SIGINT).

  Raises:
    ValueError: a bad config or data, or a checkpoint of a different config.
    NonFiniteLossError: a non-finite loss or gradient (``nonfinite='stop'``).
  """
  run_lib.check_run_control(config)
  return run_lib.run(config, workdir, functools.partial(cowpro_task, workdir=workdir),
                     task_mesh(int(config.batch_size)))


__all__ = ['cowpro_task', 'load_volumes', 'train_cowpro']
