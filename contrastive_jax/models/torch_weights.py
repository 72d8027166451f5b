"""Pretrained torchvision / timm weights -> Flax variables (``{'params', 'batch_stats'}``).

The papers start from ImageNet (AdaCon's EfficientNet-B1, Dai et al. TMI 2023 Sec. IV-A.1; the
thesis' ResNets) or Kinetics-400 (AdaCon's R(2+1)D-18, Sec. IV-B.1) checkpoints. Given a ``.pth`` /
``.safetensors`` file the user has::

    sd = load_torch_state_dict('resnet50-0676ba61.pth')
    variables = convert_resnet(sd, models.ResNet50(stem='imagenet'))   # fc.* ignored: no classifier

Inside ``build_model``'s ContrastiveRegressor the encoder's variables live under the ``'encoder'``
key: ``params['encoder'] = variables['params']``, ``batch_stats['encoder'] =
variables['batch_stats']``.

Conversion rules (torch is NCHW / NCTHW, Flax NHWC / NTHWC):

* conv weight ``[O, I, H, W]`` -> kernel ``[H, W, I, O]``; 3D ``[O, I, T, H, W]`` ->
  ``[T, H, W, I, O]`` (a depthwise ``[C, 1, k, k]`` becomes Flax's grouped ``[k, k, 1, C]``);
* Linear weight ``[O, I]`` -> Dense kernel ``[I, O]``; biases unchanged;
* BatchNorm weight/bias -> ``params`` scale/bias, running_mean/var -> ``batch_stats`` mean/var;
  ``num_batches_tracked`` is dropped. (Train-mode updates differ in one detail: torch stores the
  unbiased batch variance in running_var, Flax the biased one.)

The expected keys come from the Flax model itself (``jax.eval_shape`` of its ``init``), so a
checkpoint that does not fit the model (another depth, stem, width) fails with one ``ValueError``
listing every missing, unexpected and mis-shaped key. A checkpoint's classifier (``fc.*``,
``classifier.*``) is ignored when the model has ``num_classes=None``. timm's ResNets share
torchvision's key names and convert with ``convert_resnet``; timm's EfficientNets use other names
and are not supported.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.models.efficientnet import EfficientNet
from contrastive_jax.models.r2plus1d import R2Plus1D
from contrastive_jax.models.resnet import ResNet

_PTH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
_MAX_LISTED = 25


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict into ``{key: numpy array}``.

  ``.safetensors`` files are read with the ``safetensors`` package's NumPy API (no torch needed);
  ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` files need torch (``torch.load(weights_only=True)``). A
  checkpoint that wraps the weights (``{'state_dict': ...}`` or ``{'model': ...}``) is unwrapped and
  a DataParallel ``module.`` prefix is stripped.

  Args:
    path: the checkpoint file.

  Returns:
    Flat mapping from torch parameter/buffer names to NumPy arrays (bfloat16 becomes float32).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: unknown suffix, or the file holds no tensor mapping.
    ImportError: the package the format needs is not installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Checkpoint file not found: {path!r}.')
  suffix = os.path.splitext(path)[1].lower()
  if suffix == '.safetensors':
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'Reading {path!r} needs the safetensors package: '
                        '`pip install safetensors`.') from e
    return _normalise(load_file(path))
  if suffix in _PTH_SUFFIXES:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'Reading {path!r} needs PyTorch (`pip install torch`), or convert the '
                        'file to .safetensors first.') from e
    obj = torch.load(path, map_location='cpu', weights_only=True)
    for wrapper in ('state_dict', 'model'):
      if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
    if not isinstance(obj, Mapping):
      raise ValueError(f'{path!r} holds a {type(obj).__name__}, not a state dict (a mapping from '
                       'parameter names to tensors).')
    return _normalise(obj)
  raise ValueError(f'Unknown checkpoint suffix {suffix!r} of {path!r}; expected .safetensors or '
                   f'one of {_PTH_SUFFIXES}.')


def _to_numpy(value: Any) -> np.ndarray:
  """A NumPy copy: a torch tensor's ``.numpy()`` shares its memory, and the module's later in-place
  updates (BatchNorm running stats in train mode) must not leak into the converted variables."""
  if hasattr(value, 'detach'):  # a torch tensor; bfloat16 has no NumPy dtype
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':
      value = value.float()
    value = value.numpy()
  return np.array(value, copy=True)


def _normalise(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """NumPy values, DataParallel ``module.`` prefix stripped."""
  if not isinstance(state_dict, Mapping):
    raise ValueError(f'state_dict must be a mapping from names to arrays; got '
                     f'{type(state_dict).__name__}.')
  out = {str(k): _to_numpy(v) for k, v in state_dict.items()}
  if out and all(k.startswith('module.') for k in out):
    out = {k[len('module.'):]: v for k, v in out.items()}
  return out


def _torch_to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
  """Transposes one torch tensor to the Flax layout of ``leaf`` ('kernel', 'scale', ...)."""
  if leaf != 'kernel':
    return value
  if value.ndim == 2:  # Linear [O, I] -> Dense [I, O]
    return value.T
  if value.ndim in (4, 5):  # Conv [O, I, *spatial] -> [*spatial, I, O]
    return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
  return value


_LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def _template(model: Any, input_shape: tuple[int, ...]) -> dict:
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, jax.random.key(0), jnp.zeros(input_shape, jnp.float32))


def _convert(state_dict: dict[str, np.ndarray], template: dict,
             torch_prefix: Callable[[tuple[str, ...]], str],
             ignored_prefixes: tuple[str, ...], family: str) -> dict:
  """Fills ``template``'s leaves from a ``_normalise``d ``state_dict``; one ValueError lists every
  mismatch."""
  flat = flax.traverse_util.flatten_dict(
      {k: v for k, v in template.items() if k in ('params', 'batch_stats')})
  used, missing, misshaped, out = set(), [], [], {}
  for path, spec in flat.items():
    collection, module_path, leaf = path[0], path[1:-1], path[-1]
    if (collection, leaf) not in _LEAF_NAMES:
      raise ValueError(f'No torch counterpart for Flax variable {"/".join(path)}.')
    key = f'{torch_prefix(module_path)}.{_LEAF_NAMES[(collection, leaf)]}'
    if key not in state_dict:
      missing.append(f'{key} (for {"/".join(path)}, shape {tuple(spec.shape)})')
      continue
    used.add(key)
    value = _torch_to_flax(leaf, state_dict[key])
    if value.shape != tuple(spec.shape):
      misshaped.append(f'{key}: torch {tuple(state_dict[key].shape)} -> {value.shape}, '
                       f'model expects {tuple(spec.shape)} ({"/".join(path)})')
      continue
    out[path] = jnp.asarray(value, dtype=jnp.float32)
  unexpected = sorted(
      k for k in state_dict
      if k not in used and not k.endswith('num_batches_tracked')
      and not k.startswith(ignored_prefixes))
  if missing or misshaped or unexpected:
    raise ValueError(
        f'The state dict does not fit the Flax {family}: '
        f'{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys.'
        + _listing('missing', missing) + _listing('unexpected', unexpected)
        + _listing('mis-shaped', misshaped))
  return flax.traverse_util.unflatten_dict(out)


def _listing(title: str, items: list[str]) -> str:
  if not items:
    return ''
  shown = '\n  '.join(items[:_MAX_LISTED])
  more = f'\n  ... and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
  return f'\n{title}:\n  {shown}{more}'


def _in_channels(state_dict: Mapping[str, Any], key: str) -> int:
  value = state_dict.get(key)
  return int(np.shape(value)[1]) if value is not None and np.ndim(value) >= 2 else 3


def _check_model(model: Any, cls: type, fn: str) -> None:
  if not isinstance(model, cls):
    raise ValueError(f'{fn} needs a models.{cls.__name__} instance (pass the encoder, not a '
                     f'wrapper); got {type(model).__name__}.')


def _prepare(state_dict: Mapping[str, Any], model: Any, cls: type, fn: str, stem_key: str,
             spatial: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict]:
  """The converters' common start: checks that ``model`` is a ``cls`` (``fn`` names the converter in
  the error) and returns the ``_normalise``d state dict and ``model``'s variable template for an
  input of ``spatial`` size with the checkpoint's input channels (those of its stem conv
  ``stem_key``; 3 when absent)."""
  _check_model(model, cls, fn)
  sd = _normalise(state_dict)
  return sd, _template(model, (1, *spatial, _in_channels(sd, stem_key)))


def convert_resnet(state_dict: Mapping[str, Any], model: ResNet) -> dict:
  """torchvision / timm ResNet state dict -> ``{'params', 'batch_stats'}`` for ``model``.

  Args:
    state_dict: torch names -> arrays or tensors (``load_torch_state_dict``'s output).
    model: the target ``ResNet`` (its stage sizes, block, stem, width and ``num_classes`` must
      match the checkpoint; ``num_classes=None`` ignores ``fc.*``).

  Returns:
    Flax variables for ``model.apply``.

  Raises:
    ValueError: listing missing, unexpected and mis-shaped keys.
  """
  sd, template = _prepare(state_dict, model, ResNet, 'convert_resnet', 'conv1.weight', (32, 32))
  block_stage = [(i, j) for i, n in enumerate(model.stage_sizes) for j in range(n)]

  def prefix(path: tuple[str, ...]) -> str:
    top = {'conv_init': 'conv1', 'bn_init': 'bn1', 'fc': 'fc'}
    if path[0] in top:
      return top[path[0]]
    i, j = block_stage[int(path[0].rsplit('_', 1)[1])]
    child = path[1]
    if child in ('conv_proj', 'norm_proj'):
      sub = 'downsample.0' if child == 'conv_proj' else 'downsample.1'
    else:
      kind, n = child.rsplit('_', 1)
      sub = f'{"conv" if kind == "Conv" else "bn"}{int(n) + 1}'
    return f'layer{i + 1}.{j}.{sub}'

  ignored = ('fc.',) if model.num_classes is None else ()
  return _convert(sd, template, prefix, ignored, 'ResNet')


def convert_efficientnet(state_dict: Mapping[str, Any], model: EfficientNet) -> dict:
  """torchvision ``efficientnet_b*`` state dict -> ``{'params', 'batch_stats'}`` for ``model``.

  Arguments, result and errors as in :func:`convert_resnet`, with an ``EfficientNet`` target; the
  checkpoint's ``classifier.*`` is ignored when ``model.num_classes`` is None.
  """
  sd, template = _prepare(state_dict, model, EfficientNet, 'convert_efficientnet',
                          'features.0.0.weight', (32, 32))
  params = template['params']
  num_stages = 1 + max(int(re.match(r'stage(\d+)_', k).group(1))
                       for k in params if k.startswith('stage'))
  top = {'stem_conv': 'features.0.0', 'stem_bn': 'features.0.1',
         'head_conv': f'features.{num_stages + 1}.0', 'head_bn': f'features.{num_stages + 1}.1',
         'classifier': 'classifier.1'}
  parts = {'expand_conv': ('expand', '0'), 'expand_bn': ('expand', '1'),
           'depthwise_conv': ('depthwise', '0'), 'depthwise_bn': ('depthwise', '1'),
           'project_conv': ('project', '0'), 'project_bn': ('project', '1')}

  def prefix(path: tuple[str, ...]) -> str:
    if path[0] in top:
      return top[path[0]]
    s, b = map(int, re.match(r'stage(\d+)_block(\d+)$', path[0]).groups())
    order = (['expand'] if 'expand_conv' in params[path[0]] else []) + [
        'depthwise', 'se', 'project']
    if path[1] == 'se':
      return f'features.{s + 1}.{b}.block.{order.index("se")}.{path[2]}'
    part, sub = parts[path[1]]
    return f'features.{s + 1}.{b}.block.{order.index(part)}.{sub}'

  ignored = ('classifier.',) if model.num_classes is None else ()
  return _convert(sd, template, prefix, ignored, 'EfficientNet')


def convert_r2plus1d(state_dict: Mapping[str, Any], model: R2Plus1D) -> dict:
  """torchvision ``r2plus1d_18`` state dict -> ``{'params', 'batch_stats'}`` for ``model``.

  Arguments, result and errors as in :func:`convert_resnet`, with an ``R2Plus1D`` target; the
  checkpoint's ``fc.*`` is ignored when ``model.num_classes`` is None.
  """
  sd, template = _prepare(state_dict, model, R2Plus1D, 'convert_r2plus1d', 'stem.0.weight',
                          (4, 32, 32))
  top = {'stem_spatial': 'stem.0', 'stem_bn1': 'stem.1', 'stem_temporal': 'stem.3',
         'stem_bn2': 'stem.4', 'fc': 'fc'}
  inner = {'spatial': '0.0', 'bn_mid': '0.1', 'temporal': '0.3'}
  block = {'bn1': 'conv1.1', 'bn2': 'conv2.1', 'downsample_conv': 'downsample.0',
           'downsample_bn': 'downsample.1'}

  def prefix(path: tuple[str, ...]) -> str:
    if path[0] in top:
      return top[path[0]]
    i, j = re.match(r'layer(\d+)_(\d+)$', path[0]).groups()
    if path[1] in block:
      return f'layer{i}.{j}.{block[path[1]]}'
    return f'layer{i}.{j}.{path[1]}.{inner[path[2]]}'

  ignored = ('fc.',) if model.num_classes is None else ()
  return _convert(sd, template, prefix, ignored, 'R2Plus1D')


def convert(state_dict: Mapping[str, Any], model: Any) -> dict:
  """Dispatches to ``convert_resnet`` / ``convert_efficientnet`` / ``convert_r2plus1d`` by model."""
  for cls, fn in ((ResNet, convert_resnet), (EfficientNet, convert_efficientnet),
                  (R2Plus1D, convert_r2plus1d)):
    if isinstance(model, cls):
      return fn(state_dict, model)
  raise ValueError(f'No torch converter for {type(model).__name__}; expected a ResNet, '
                   'EfficientNet or R2Plus1D.')
