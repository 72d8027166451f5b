"""The downstream networks of the MRNet pipelines and their pretrained starts.

``build(config.model, axis_name, num_outputs=...)`` (``models.build_model(..., task='mrnet')``)
by ``model.arch``:

* 'skid': :class:`~contrastive_jax.projects.jigsaw.model.SKIDDownstream` (thesis Fig. 3.7): the
  frozen SKID trunk up to DimRed2, 2 ConvLSTM layers, GAP, one logit per task;
* 'sslacl': :class:`~contrastive_jax.projects.jigsaw.model.DivideAndTeachClassifier` (Alg. 3.3,
  Fig. 3.6): the 9 pretrained branches, each on its group of slices, the strided-conv classifier,
  max over slices, FC 1024 x 2;
* 'slice_max': :class:`SliceMaxClassifier` (Ch. 4, Sec. 4.4.3 / Fig. 4.4): the BCL encoder on every
  slice, max over the slices, Linear 2048 -> 1.

Pretrained starts (``model.init_from``): for 'skid' / 'sslacl' a jigsaw pretext run's workdir (or
its ``checkpoints/`` / ``best/``), whose ``trunk`` / ``branches`` subtree is copied
(:func:`pretext_variables`); for 'slice_max' anything ``train.init_from`` reads: a BCL run's
workdir (the encoder) or a torchvision ``.pth`` / ``.safetensors`` file (ImageNet weights).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from contrastive_jax import models
from contrastive_jax.projects.jigsaw import model as jigsaw_model
from contrastive_jax.train.checkpoint import load_checkpoint
from contrastive_jax.train.init_from import checkpoint_directory
from contrastive_jax.train.init_from import load_init_variables

ARCHS = ('skid', 'sslacl', 'slice_max')
# The subtree of the jigsaw pretext net that each Ch. 3 downstream model reuses.
PRETEXT_SUBTREE = {'skid': 'trunk', 'sslacl': 'branches'}


class SliceMaxClassifier(nn.Module):
  """Ch. 4 downstream model: ``slices [B, k, H, W, C] -> logits [B, num_outputs]``.

  ``encoder`` (variables under ``'encoder'``, as in ``ContrastiveRegressor``, so a BCL run's
  encoder loads by ``model.init_from``) embeds every slice; the features are max-pooled over the
  ``k`` slices (Sec. 4.4.3: "a custom layer which computes the maximum of the features ... over
  the slices") and a Linear layer gives the logits (sigmoid in the loss).
  """
  encoder: nn.Module
  num_outputs: int = 1

  @nn.compact
  def __call__(self, slices, train: bool = False):
    if slices.ndim != 5:
      raise ValueError(f'slices must have shape [batch, k, H, W, C], got {slices.shape}.')
    b, k = slices.shape[:2]
    h = self.encoder(slices.reshape((b * k,) + slices.shape[2:]), train=train)
    h = jnp.max(h.astype(jnp.float32).reshape(b, k, -1), axis=1)
    return nn.Dense(self.num_outputs, name='classifier')(h)


def _ints(values) -> tuple:
  return tuple(int(v) for v in values)


def build(model_cfg, axis_name: Optional[str] = None, *, num_outputs: int) -> nn.Module:
  """The downstream net of ``config.model`` with ``num_outputs`` logits (see the module doc).

  Fields: ``arch``; 'skid': ``variant``, ``width_factor``, ``skip_scale``, ``no_blocks``,
  ``use_bn``, ``kernel_init``, ``branch_conv_impl`` (as the pretext config, so the trunk fits its
  weights), ``lstm_features``, ``temporal`` ('convlstm' or Tab. 3.13's 'conv3d'; the model checks
  it), ``freeze``; 'sslacl': ``width_factor``, ``use_bn``, ``kernel_init``, ``branch_conv_impl``,
  ``conv_features`` (``'max'`` entries: a max-pool), ``fc_features``,
  ``classifier_bn``, ``freeze``; 'slice_max': ``encoder``, ``encoder_kwargs``; all: ``dtype``
  (compute dtype, ``models.model_dtype``).
  """
  arch = model_cfg.get('arch')
  get = model_cfg.get
  if arch == 'skid':
    variant = get('variant', 'v3')
    if variant not in jigsaw_model.SKID_VARIANTS:
      raise ValueError(f'Unknown model.variant={variant!r}; expected one of '
                       f'{tuple(jigsaw_model.SKID_VARIANTS)}.')
    widths = jigsaw_model.scale_widths(jigsaw_model.SKID_VARIANTS[variant],
                                       float(get('width_factor', 1.0)))
    trunk = dict(widths, skip_scale=float(get('skip_scale', 0.25)),
                 no_blocks=bool(get('no_blocks', False)), use_bn=bool(get('use_bn', True)),
                 kernel_init=get('kernel_init', 'he_normal'),
                 branch_conv_impl=get('branch_conv_impl', 'shifted_matmul'), axis_name=axis_name,
                 dtype=models.model_dtype(model_cfg))
    return jigsaw_model.SKIDDownstream(trunk=trunk, lstm_features=_ints(get('lstm_features')),
                                       num_outputs=num_outputs, freeze_trunk=bool(get('freeze')),
                                       temporal=get('temporal', 'convlstm'))
  if arch == 'sslacl':
    widths = jigsaw_model.scale_widths(jigsaw_model.SSLACL_WIDTHS, float(get('width_factor', 1.0)))
    conv = tuple(f if f == 'max' else int(f) for f in get('conv_features'))
    return jigsaw_model.DivideAndTeachClassifier(
        branch_features=widths['branch_features'], conv_features=conv,
        fc_features=_ints(get('fc_features')), num_outputs=num_outputs,
        freeze_branches=bool(get('freeze')), use_bn=bool(get('use_bn', True)),
        classifier_bn=bool(get('classifier_bn', False)), kernel_init=get('kernel_init', 'he_normal'),
        branch_conv_impl=get('branch_conv_impl', 'shifted_matmul'), dtype=models.model_dtype(model_cfg))
  if arch == 'slice_max':
    name = get('encoder')
    if name not in models.ENCODERS:
      raise ValueError(f'Unknown model.encoder={name!r}; known encoders: {sorted(models.ENCODERS)}.')
    kwargs = get('encoder_kwargs')
    kwargs = kwargs.to_dict() if hasattr(kwargs, 'to_dict') else dict(kwargs or {})
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return SliceMaxClassifier(models.ENCODERS[name](**kwargs, bn_axis_name=axis_name,
                                                    dtype=models.model_dtype(model_cfg)),
                              num_outputs=num_outputs)
  raise ValueError(f'Unknown model.arch={arch!r} for the MRNet downstream task; expected one of '
                   f'{ARCHS}.')


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree or {}, sep='/')


def pretext_variables(path: str, arch: str, variables: dict) -> tuple[dict, str]:
  """``variables`` with the ``PRETEXT_SUBTREE[arch]`` arrays (params and BatchNorm statistics) of
  the jigsaw pretext checkpoint at ``path`` (a workdir, its ``checkpoints/`` or ``best/``).

  Raises:
    FileNotFoundError: no complete checkpoint at ``path``.
    ValueError: the checkpoint lacks the subtree or an array of it has another shape (the first
      mismatch named: check ``model.arch`` / ``variant`` / ``width_factor`` and the channels against
      the pretext config).
  """
  where = f'`model.init_from`={path!r}'
  subtree = PRETEXT_SUBTREE[arch]
  directory = checkpoint_directory(os.path.abspath(os.path.expanduser(path)))
  try:
    state, _ = load_checkpoint(directory)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{where}: {e} Expected the workdir of a jigsaw pretext run '
                            '(configs/jigsaw.py).') from e
  out = dict(variables)
  loaded = 0
  for coll in ('params', 'batch_stats'):
    mine = (variables.get(coll) or {}).get(subtree)
    if mine is None:
      continue
    theirs = (state.get(coll) or {}).get(subtree)
    if theirs is None:
      raise ValueError(f'{where} ({directory}) has no {coll}/{subtree}: it is not a '
                       f"{'SKID' if arch == 'skid' else 'SSLACL'} jigsaw pretext checkpoint.")
    mine_flat, theirs_flat = _flat(mine), _flat(theirs)
    for key, value in mine_flat.items():
      if key not in theirs_flat or np.shape(theirs_flat[key]) != np.shape(value):
        there = np.shape(theirs_flat[key]) if key in theirs_flat else 'missing'
        raise ValueError(f'{where} does not fit the model: {coll}/{subtree}/{key} has shape '
                         f'{there} there but {np.shape(value)} in the model (model.variant, '
                         'width_factor and data.channels must be those of the pretext run).')
    copied = {k: jnp.asarray(theirs_flat[k], jnp.asarray(v).dtype) for k, v in mine_flat.items()}
    loaded += len(copied)
    out[coll] = {**variables[coll],
                 subtree: flax.traverse_util.unflatten_dict(copied, sep='/')}
  return out, (f'Initialised the {subtree} from the pretext checkpoint {directory}: {loaded} arrays '
               '(params and BatchNorm statistics); the classifier keeps its random init.')


def pretrained_variables(init_from: str, arch: str, model: Any, variables: dict) -> tuple[dict, str]:
  """``variables`` with the weights of ``init_from`` for ``arch`` (see the module doc)."""
  if arch in PRETEXT_SUBTREE:
    return pretext_variables(init_from, arch, variables)
  return load_init_variables(init_from, model, variables)


__all__ = ['ARCHS', 'PRETEXT_SUBTREE', 'SliceMaxClassifier', 'build', 'pretext_variables',
           'pretrained_variables']
