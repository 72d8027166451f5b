"""``config.model.init_from``: start a run from pretrained weights instead of a random init.

* A ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.safetensors`` file: a torchvision state dict
  (ResNet-18..101, EfficientNet-B0/B1, R(2+1)D-18; a DeepLab-style ``backbone.`` prefix is
  stripped), converted by ``models.torch_weights`` into the encoder's ``params`` and
  ``batch_stats``. The classifier of the file is ignored; the projection and regression heads keep
  their random init.
* A directory: a contrastive_jax run's workdir (its ``checkpoints/``, the latest state) or a
  checkpoint directory itself (``<workdir>/checkpoints`` or ``<workdir>/best``). The encoder must
  match exactly; head arrays are copied where path and shape match and keep their random init
  otherwise (e.g. another ``proj_dim``). Only weights are copied: the optimizer state, step and
  PRNG key start afresh.

Every encoder array of the model must be filled, with its shape: otherwise one ``ValueError`` names
``model.init_from``, the source and the first mismatching array (its path and both shapes). A
missing path raises ``FileNotFoundError``. The trainers call :func:`load_init_variables` only when
the workdir holds no checkpoint of its own: resuming always wins.
"""

from __future__ import annotations

import os
from typing import Any, Tuple

import flax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.models import torch_weights
from contrastive_jax.train.checkpoint import load_checkpoint

ENCODER = 'encoder'
COLLECTIONS = ('params', 'batch_stats')


def checkpoint_directory(path: str) -> str:
  """A run's workdir -> its ``checkpoints/`` (latest states); a checkpoint directory unchanged."""
  latest = os.path.join(path, 'checkpoints')
  return latest if os.path.isdir(latest) else path


def _flat(variables: dict) -> dict:
  """``{(collection, *path): array}`` of the ``params`` and ``batch_stats`` collections."""
  out = {}
  for coll in COLLECTIONS:
    tree = variables.get(coll) or {}
    out.update({(coll,) + k: v for k, v in flax.traverse_util.flatten_dict(tree).items()})
  return out


def _strip_backbone(state_dict: dict) -> dict:
  """A torchvision segmentation model's ``backbone.*`` keys (DeepLab-v3) -> the bare backbone."""
  bare = ('conv1.', 'features.', 'stem.')
  if any(k.startswith('backbone.') for k in state_dict) and not any(
      k.startswith(bare) for k in state_dict):
    return {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
  return state_dict


def _from_torch(path: str, model: Any) -> dict:
  """The converted encoder arrays of a torchvision state-dict file, keyed as :func:`_flat`."""
  where = f'`model.init_from`={path!r}'
  try:
    state_dict = _strip_backbone(torch_weights.load_torch_state_dict(path))
    converted = torch_weights.convert(state_dict, model.encoder)
  except (ValueError, ImportError) as e:
    raise type(e)(f'{where}: {e}') from e
  return {(k[0], ENCODER) + k[1:]: v for k, v in _flat(converted).items()}


def _from_checkpoint(path: str) -> Tuple[dict, str]:
  """``params`` / ``batch_stats`` of a contrastive_jax checkpoint (directory, latest step)."""
  directory = checkpoint_directory(path)
  try:
    state, _ = load_checkpoint(directory)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'`model.init_from`={path!r}: {e} Expected a workdir of a previous '
                            'run, its checkpoints/ or best/ directory, or a torchvision weights '
                            'file.') from e
  return _flat({c: state.get(c) for c in COLLECTIONS}), directory


def _shape(x) -> tuple:
  return tuple(np.shape(x))


def _merge(variables: dict, loaded: dict, where: str) -> Tuple[dict, int, int]:
  """New variables: every encoder array from ``loaded`` (required, same shape), head arrays where
  path and shape match. Returns ``(variables, encoder arrays, head arrays)`` loaded."""
  flat = _flat(variables)
  is_encoder = lambda k: len(k) > 1 and k[1] == ENCODER
  problems = []
  for key, value in flat.items():
    if is_encoder(key):
      if key not in loaded:
        problems.append(f'{"/".join(key)} (model shape {_shape(value)}) is missing from it')
      elif _shape(loaded[key]) != _shape(value):
        problems.append(f'{"/".join(key)} has shape {_shape(loaded[key])} there but '
                        f'{_shape(value)} in the model')
  problems += [f'{"/".join(k)} (shape {_shape(v)}) is there but not in the model'
               for k, v in loaded.items() if is_encoder(k) and k not in flat]
  if not any(is_encoder(k) for k in loaded):
    raise ValueError(f'{where} holds no encoder weights (no {"/".join(COLLECTIONS)} under '
                     f'{ENCODER!r}); it was not written by a contrastive_jax regression run.')
  if problems:
    raise ValueError(f'{where} does not fit the model: {problems[0]} ({len(problems)} '
                     'mismatching encoder array(s); check model.encoder / encoder_kwargs and the '
                     'input channels).')
  updated = {k: (jnp.asarray(loaded[k], dtype=jnp.asarray(v).dtype)
                 if k in loaded and _shape(loaded[k]) == _shape(v) else v)
             for k, v in flat.items()}
  out = dict(variables)
  for coll in COLLECTIONS:
    part = {k[1:]: v for k, v in updated.items() if k[0] == coll}
    if part:
      out[coll] = flax.traverse_util.unflatten_dict(part)
  encoder = sum(1 for k in flat if is_encoder(k))
  heads = sum(1 for k, v in flat.items() if not is_encoder(k) and k in loaded
              and _shape(loaded[k]) == _shape(v))
  return out, encoder, heads


def load_init_variables(init_from: str, model: Any, variables: dict) -> Tuple[dict, str]:
  """``variables`` (of ``model.init``) with the weights of ``init_from`` (see the module doc).

  Args:
    init_from: a torchvision weights file or a contrastive_jax workdir / checkpoint directory.
    model: the ``ContrastiveRegressor`` (or any module with an ``encoder`` attribute whose
      variables live under ``'encoder'``).
    variables: ``{'params', 'batch_stats', ...}`` of its random init (not modified).

  Returns:
    ``(new_variables, one-line summary for the log)``.

  Raises:
    FileNotFoundError: ``init_from`` does not exist, or a directory holds no complete checkpoint.
    ValueError: the weights do not fit the model (the first mismatching array is named).
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(init_from)))
  if os.path.isdir(path):
    loaded, directory = _from_checkpoint(path)
    new, encoder, heads = _merge(variables, loaded, f'`model.init_from`={path!r} ({directory})')
    total = len(_flat(variables))
    return new, (f'Initialised from the checkpoint {directory}: {encoder + heads} arrays loaded '
                 f'({encoder} encoder, {heads} head); {total - encoder - heads} head array(s) '
                 'keep their random init.')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'`model.init_from`={init_from!r}: no such file or directory ({path}).')
  new, encoder, _ = _merge(variables, _from_torch(path, model), f'`model.init_from`={path!r}')
  return new, (f'Initialised the encoder from {path}: {encoder} arrays (params and batch_stats) '
               'loaded; the projection and regression heads keep their random init.')


def initial_variables(init_from: str, model: Any, variables: dict, checkpointer, log) -> dict:
  """``variables`` with the weights of ``init_from`` when it is set and ``checkpointer``'s directory
  holds no checkpoint yet (resuming wins); logs what was loaded. On an error the checkpointer is
  closed (its background threads would otherwise keep the process alive) and the error raised."""
  if not init_from or checkpointer.latest_step() is not None:
    return variables
  try:
    variables, summary = load_init_variables(init_from, model, variables)
  except Exception:
    checkpointer.close()
    raise
  log.info(summary)
  return variables
