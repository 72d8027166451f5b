"""Jigsaw pretext training (thesis Ch. 3, Sec. 3.4.1 and 3.5.2.1): SSLACL and SKID v1/v2/v3.

``train_pretext(config, workdir)`` trains a jigsaw net with categorical cross-entropy over the ``C``
permutation indices. Each step takes a batch of images (a pure function of ``(data.seed, step)``),
turns every image into 9 jumbled, per-patch augmented crops on device (``fold_in(rng, step)``: the
examples are a pure function of ``(seed, step, sample)``), and applies one optimizer update. Validation
and test examples are fixed (one arrangement, one crop per image, no augmentation). Checkpoints hold
step, params, BatchNorm statistics, optimizer state and the PRNG key, so re-running with the same
``workdir`` resumes exactly; a non-finite loss or gradient is not applied and raises
:class:`NonFiniteLossError` naming the step (``nonfinite='skip'`` skips the update instead).

Writes ``metrics.jsonl`` + TensorBoard events, ``checkpoints/`` and ``results.json``.
"""

from __future__ import annotations

import json
import logging
import os
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from contrastive_jax.data import eval_batches
from contrastive_jax.data import load_dataset
from contrastive_jax.data import train_batch
from contrastive_jax.data import jigsaw as jigsaw_data
from contrastive_jax.models import jigsaw as jigsaw_models
from contrastive_jax.train import run_checks
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.workdir_lock import locked_workdir
from contrastive_jax.train.loop import NonFiniteLossError
from contrastive_jax.train.loop import config_differences
from contrastive_jax.train.loop import config_identity
from contrastive_jax.train.loop import PreemptionFlag
from contrastive_jax.train.optim import decay_mask
from contrastive_jax.train.optim import exclude_bias_and_norm
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.optim import make_schedule
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.writer import MetricWriter
from contrastive_jax.train.writer import Progress

log = logging.getLogger('contrastive_jax')

# Config fields that steer a run without changing its result; they may differ when resuming.
RUN_CONTROL_FIELDS = ('stop_at_step', 'resume', 'nonfinite', 'log_every', 'checkpoint_every',
                      'keep_checkpoints', 'eval_every')
# Offsets of the fixed evaluation streams (folded into PRNGKey(seed)).
_EVAL_STREAMS = {'val': 1, 'test': 2}


class PretextProgress(Progress):
  """Console line with the pretext metrics (cross-entropy, accuracy) instead of reg/con losses."""

  def line(self, step: int, metrics: dict) -> str:
    rest = super().line(step, {'loss': metrics['loss'], 'loss_reg': 0.0, 'loss_con': 0.0,
                               'lr': metrics['lr']})
    rest = rest.split('| lr ', 1)[1]
    return (f"step {step}/{self.total} | loss {metrics['loss']:.4f} | acc {metrics['accuracy']:.3f} "
            f"| lr {rest}")






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


def _model_from_config(config) -> nn.Module:
  m = config.model
  return jigsaw_models.make_pretext_model(
      m.arch, config.jigsaw.num_classes, variant=m.get('variant', 'v3'),
      width_factor=float(m.get('width_factor', 1.0)), use_bn=bool(m.get('use_bn', True)),
      skip_scale=float(m.get('skip_scale', 0.25)), no_blocks=bool(m.get('no_blocks', False)),
      kernel_init=m.get('kernel_init', 'he_normal'),
      branch_conv_impl=m.get('branch_conv_impl', 'shifted_matmul'))


def _check_config(config) -> None:
  for name in ('batch_size', 'num_train_steps', 'log_every', 'eval_every', 'checkpoint_every',
               'keep_checkpoints'):
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'`{name}` must be a positive integer, got {value!r}.')
  if config.get('nonfinite', 'stop') not in ('stop', 'skip'):
    raise ValueError(f"Unknown `nonfinite`={config.nonfinite!r}; expected 'stop' or 'skip'.")
  if config.get('resume', 'auto') not in ('auto', 'force'):
    raise ValueError(f"Unknown `resume`={config.resume!r}; expected 'auto' or 'force'.")
  if config.get('task', 'jigsaw') != 'jigsaw':
    raise ValueError(f"train_pretext needs `task`='jigsaw', got {config.task!r}.")


def _patches_to_model(patches: jax.Array, channels: int) -> jax.Array:
  return patches if patches.shape[-1] == channels else jnp.repeat(patches, channels, axis=-1)


def _grayscale(x: np.ndarray, name: str) -> np.ndarray:
  if x.ndim != 4 or x.shape[-1] != 1:
    raise ValueError(f'Dataset {name!r} must hold grayscale images [N, H, W, 1] for the jigsaw '
                     f'task, got shape {x.shape}.')
  return x


@locked_workdir
@run_checks.closes_resources
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
    ValueError: a bad config or data set, or a checkpoint written with a different config.
    NonFiniteLossError: a non-finite loss or gradient (``nonfinite='stop'``).
  """
  run_checks.check_run_control(config)
  _check_config(config)
  jig = config.jigsaw
  crop, channels = int(jig.crop_size), int(config.data.get('channels', 3))
  os.makedirs(workdir, exist_ok=True)
  ckpt = run_checks.opened(Checkpointer(os.path.join(workdir, 'checkpoints'),
                                        config.keep_checkpoints))
  meta = {'config': config_identity(config, RUN_CONTROL_FIELDS)}
  resume = ckpt.latest_step() is not None
  if resume:  # checked first: a refused resume costs nothing, and before parameter shapes can clash
    differences = config_differences(ckpt.read_meta().get('config', {}),
                        meta['config'])
    if differences and config.get('resume', 'auto') != 'force':
      ckpt.close()
      raise ValueError(f'The checkpoint in {ckpt.directory} was written with a different config:\n  '
                       + '\n  '.join(differences) + '\nUse a new workdir, or resume=force.')
    if not differences and (done := run_checks.finished_results(workdir, ckpt.latest_step(),
                                                                config.num_train_steps)):
      return done

  dataset = load_dataset(config.data.name, seed=config.data.seed, **config.data.kwargs)
  if dataset.kind != 'image':
    raise ValueError(f'The jigsaw task needs an image data set, got {dataset.name!r} '
                     f'(kind {dataset.kind!r}).')
  _grayscale(dataset.train.x, dataset.name)
  jigsaw_data.check_image_shape(dataset.train.x.shape[1:], crop)
  perms = jnp.asarray(jigsaw_data.permutation_set(jig.permutations, jig.num_classes, jig.perm_seed,
                                                  cache_dir=jig.get('cache_dir')), jnp.int32)
  augment = jigsaw_data.PatchAugment(**jig.augment.to_dict())
  crop_then_augment = bool(jig.get('crop_then_augment', False))
  max_offset = jig.get('max_crop_offset')

  model = _model_from_config(config)
  num_steps = int(config.num_train_steps)
  tx, schedule = make_pretext_optimizer(config.optim, num_steps)
  init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((2, jigsaw_data.NUM_PATCHES, crop, crop, channels), jnp.float32)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, dummy)
  state = TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply,
                     params=variables['params'], tx=tx, opt_state=jax.jit(tx.init)(variables['params']),
                     batch_stats=variables.get('batch_stats', {}), rng=data_key)
  num_params = jigsaw_models.count_parameters(variables)
  log.info('Jigsaw %s: %s parameters, %d classes (%s set), %d train images %s.', config.method,
           f'{num_params:,}', jig.num_classes, jig.permutations, len(dataset.train),
           dataset.train.x.shape[1:])
  if resume:
    run_checks.check_restorable(ckpt, state)
    state, _ = ckpt.restore(state)
    log.info('Resumed from step %d of %s.', int(state.step), ckpt.directory)

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

  @jax.jit
  def train_step(state, images):
    key = jax.random.fold_in(state.rng, state.step)
    patches, labels = jigsaw_data.jigsaw_batch(key, jigsaw_data.to_model_range(images, 1), perms,
                                               crop, augment, crop_then_augment=crop_then_augment,
                                               max_crop_offset=max_offset)
    patches = _patches_to_model(patches, channels)

    def loss_fn(params):
      losses, correct, new_stats = loss_and_metrics(params, state.batch_stats, patches, labels, True)
      return jnp.mean(losses), (jnp.mean(correct), new_stats)

    (loss, (acc, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads=grads, batch_stats=new_stats)
    skipped = state.replace(step=state.step + 1)
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), updated, skipped)
    metrics = {'loss': loss, 'accuracy': acc, 'grad_norm': grad_norm, 'lr': schedule(state.step),
               'finite': finite}
    return new_state, metrics

  @jax.jit
  def eval_step(state, images, index, key):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    patches, labels = jax.vmap(lambda k, im: jigsaw_data.jigsaw_example(
        k, im, perms, crop, None, max_crop_offset=max_offset))(keys,
                                                               jigsaw_data.to_model_range(images, 1))
    losses, correct, _ = loss_and_metrics(state.params, state.batch_stats,
                                          _patches_to_model(patches, channels), labels, False)
    return losses, correct

  eval_batch_size = int(config.get('eval_batch_size') or config.batch_size)
  max_eval = int(config.get('max_eval_examples', -1))

  def evaluate(split_name: str) -> dict:
    split = getattr(dataset, split_name)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _EVAL_STREAMS[split_name])
    total_loss = total_correct = count = 0.0
    for b, batch in enumerate(eval_batches(split, eval_batch_size)):
      index = jnp.arange(b * eval_batch_size, (b + 1) * eval_batch_size)
      losses, correct = jax.device_get(eval_step(state, batch['x'], index, key))
      mask = batch['mask'] * (np.asarray(index) < max_eval if max_eval > 0 else 1.0)
      total_loss += float(np.sum(losses * mask))
      total_correct += float(np.sum(correct * mask))
      count += float(np.sum(mask))
      if 0 < max_eval <= (b + 1) * eval_batch_size:
        break
    return {'loss': total_loss / count, 'accuracy': total_correct / count}

  writer = run_checks.opened(MetricWriter(workdir))
  step = int(state.step)
  progress = PretextProgress(num_steps, step, config.batch_size)
  stop_at = int(config.get('stop_at_step', -1))
  first_step = step + 1
  if step < num_steps:
    progress.compiling()
  with PreemptionFlag() as preemption:
    while step < num_steps:
      images = train_batch(dataset.train, config.batch_size, config.data.seed, step)['x']
      state, metrics = train_step(state, images)
      step += 1
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not metrics.pop('finite'):
        terms = f"loss={metrics['loss']}, grad_norm={metrics['grad_norm']}"
        if config.get('nonfinite', 'stop') == 'skip':
          log.warning('Non-finite loss or gradient at step %d (%s): update skipped.', step, terms)
        else:
          ckpt.wait()
          writer.close()
          raise NonFiniteLossError(
              f'Non-finite loss or gradient at step {step}: {terms}. The update was not applied; '
              f'{ckpt.describe_last_good()}. (nonfinite=skip skips such steps instead.)')
      if step == first_step:
        progress.restart_clock(step)  # Leave compilation out of the throughput and ETA.
      stop = step == stop_at or preemption.should_stop(step)
      if step % config.log_every == 0 or step in (num_steps, first_step):
        writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})
        log.info(progress.line(step, metrics))
      if step % config.eval_every == 0 or step == num_steps:
        val = evaluate('val')
        writer.write_scalars(step, {f'val/{k}': v for k, v in val.items()})
        log.info('step %d | val loss %.4f accuracy %.4f (chance %.4f)', step, val['loss'],
                 val['accuracy'], 1.0 / jig.num_classes)
      if step % config.checkpoint_every == 0 or step == num_steps or stop:
        ckpt.save(state, meta, force=True)
      if stop and step < num_steps:
        ckpt.wait()
        ckpt.close()
        writer.close()
        log.info('Stopped at step %d with a checkpoint; re-run the same command to resume.', step)
        return {'status': 'stopped', 'steps': step}
  ckpt.wait()

  val, test = evaluate('val'), evaluate('test')
  writer.write_scalars(num_steps, {f'test/{k}': v for k, v in test.items()})
  writer.close()
  ckpt.close()
  results = {'task': 'jigsaw', 'method': config.method, 'dataset': dataset.name,
             'num_classes': int(jig.num_classes), 'num_params': num_params, 'steps': num_steps,
             'val': val, 'test': test, 'chance_accuracy': 1.0 / jig.num_classes}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)
  log.info('Test: loss %.4f accuracy %.4f (chance %.4f)', test['loss'], test['accuracy'],
           1.0 / jig.num_classes)
  return results


__all__ = ['PretextProgress', 'make_pretext_optimizer', 'train_pretext']
