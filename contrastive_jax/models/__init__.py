"""Flax linen encoders and heads, and ``build_model``: the one factory of every network a config names.

``build_model(config.model, axis_name, task=config.task)`` builds the network of a task through its
builder in ``MODELS``: the regression / contrastive ``ContrastiveRegressor`` (an encoder of
``ENCODERS`` + heads), the jigsaw pretext nets and the CoWPro net (``contrastive_jax.projects``).

Pretrained torchvision / timm weights load with ``models.torch_weights`` (``load_torch_state_dict``,
``convert_resnet``, ``convert_efficientnet``, ``convert_r2plus1d``).
"""

from __future__ import annotations

from collections.abc import Mapping
import importlib
from typing import Any, Callable

import jax.numpy as jnp

from contrastive_jax.models import torch_weights
from contrastive_jax.models.cnn import SmallCNN
from contrastive_jax.models.efficientnet import EfficientNet
from contrastive_jax.models.efficientnet import EfficientNetB0
from contrastive_jax.models.efficientnet import EfficientNetB1
from contrastive_jax.models.heads import l2_normalize
from contrastive_jax.models.heads import LinearHead
from contrastive_jax.models.heads import ProjectionHead
from contrastive_jax.models.mlp import MLPEncoder
from contrastive_jax.models.net import Classifier
from contrastive_jax.models.net import ContrastiveRegressor
from contrastive_jax.models.r2plus1d import R2Plus1D
from contrastive_jax.models.r2plus1d import R2Plus1D18
from contrastive_jax.models.resnet import BasicBlock
from contrastive_jax.models.resnet import Bottleneck
from contrastive_jax.models.resnet import ResNet
from contrastive_jax.models.resnet import ResNet101
from contrastive_jax.models.resnet import ResNet18
from contrastive_jax.models.resnet import ResNet34
from contrastive_jax.models.resnet import ResNet50
from contrastive_jax.models.resnet import ResNet9
from contrastive_jax.models.text import BiLSTMPairEncoder

# Every encoder takes ``bn_axis_name`` and ``dtype`` and is called as ``encoder(x, train=...)``.
ENCODERS = {
    'mlp': MLPEncoder,
    'small_cnn': SmallCNN,
    'resnet9': ResNet9,  # thesis Table 5.11
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'efficientnet_b0': EfficientNetB0,
    'efficientnet_b1': EfficientNetB1,
    'r2plus1d_18': R2Plus1D18,
    'bilstm_pair': BiLSTMPairEncoder,  # STS-B sentence pairs (data.sources.sts_b)
}

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  """Reads ``key`` from a mapping or an attribute object (e.g. a ConfigDict)."""
  if isinstance(cfg, Mapping):
    return cfg.get(key, default)
  if hasattr(cfg, 'get'):  # ml_collections.ConfigDict is not a Mapping.
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def _to_plain(value: Any) -> Any:
  """ConfigDict/mapping -> dict, list -> tuple (hashable module attributes)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _to_plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_to_plain(v) for v in value)
  return value


def model_dtype(model_config: Any) -> Any:
  """The compute dtype of ``config.model.dtype`` ('float32' (default) or 'bfloat16'; parameters and
  BatchNorm statistics stay float32) for every task's builder."""
  name = _get(model_config, 'dtype', None) or 'float32'
  if name not in _DTYPES:
    raise ValueError(f'Unknown model.dtype={name!r}; expected one of {sorted(_DTYPES)}.')
  return _DTYPES[name]


def _encoder(model_config: Any, axis_name: str | None):
  """The encoder of ``config.model`` (``encoder``, ``encoder_kwargs``, ``dtype``)."""
  name = _get(model_config, 'encoder')
  if name not in ENCODERS:
    raise ValueError(f'Unknown model.encoder={name!r}; '
                     f'known encoders: {sorted(ENCODERS)}.')
  kwargs = _to_plain(_get(model_config, 'encoder_kwargs', None) or {})
  return ENCODERS[name](**kwargs, bn_axis_name=axis_name, dtype=model_dtype(model_config))


def build_classifier(model_config: Any, axis_name: str | None = None, *, num_classes: int,
                     input_normalization: tuple | None = None) -> Classifier:
  """The encoder of ``config.model`` under a ``num_classes``-way linear classifier
  (``MODELS['finetune']``: the transfer / fine-tuning task)."""
  return Classifier(encoder=_encoder(model_config, axis_name), num_classes=int(num_classes),
                    input_mean=tuple(input_normalization[0]) if input_normalization else None,
                    input_std=tuple(input_normalization[1]) if input_normalization else None)


def build_regressor(model_config: Any, axis_name: str | None = None,
                    input_normalization: tuple | None = None) -> ContrastiveRegressor:
  """Builds a ContrastiveRegressor from ``config.model``-style fields (``MODELS['regression']``).

  Args:
    model_config: ConfigDict/mapping with ``encoder`` (a key of ENCODERS),
      ``encoder_kwargs``, ``proj_hidden_dim``, ``proj_dim``, ``regress_from``,
      ``head_bias``, ``proj_batch_norm`` and optionally ``dtype`` ('float32' or 'bfloat16').
    axis_name: mesh axis for synchronised BatchNorm (``encoder.bn_axis_name``).
    input_normalization: ``(mean, std)`` per channel applied to the inputs inside the model
      (``data.normalization.input_normalization`` of ``config.data.normalize``); None: none.

  Returns:
    An unbound ContrastiveRegressor.
  """
  return ContrastiveRegressor(
      encoder=_encoder(model_config, axis_name),
      proj_hidden_dim=_get(model_config, 'proj_hidden_dim', None),
      proj_dim=_get(model_config, 'proj_dim', 128),
      regress_from=_get(model_config, 'regress_from', 'backbone'),
      head_bias=_get(model_config, 'head_bias', True),
      proj_batch_norm=bool(_get(model_config, 'proj_batch_norm', False)),
      bn_axis_name=axis_name,
      input_mean=tuple(input_normalization[0]) if input_normalization else None,
      input_std=tuple(input_normalization[1]) if input_normalization else None,
  )


# ``config.task`` -> the builder of its network, ``builder(model_config, axis_name=None, **kwargs)``:
# a callable, or "module:function" imported on first use (a project's model module imports the
# library, never the other way round). ``launch.TASKS`` has the same keys.
MODELS: dict[str, Callable[..., Any] | str] = {
    'regression': build_regressor,
    'finetune': build_classifier,
    'jigsaw': 'contrastive_jax.projects.jigsaw.model:build',
    'cowpro': 'contrastive_jax.projects.cowpro.model:build',
    'mrnet': 'contrastive_jax.projects.mrnet.model:build',
}


def build_model(model_config: Any, axis_name: str | None = None, *, task: str = 'regression',
                **kwargs: Any) -> Any:
  """The one model factory: the unbound Flax network of ``config.model`` for ``config.task``.

  Args:
    model_config: the ``config.model`` fields of ``task`` (ConfigDict or mapping).
    axis_name: mesh axis the BatchNorm statistics are synchronised over (inside ``shard_map``);
      None: the local batch.
    task: a key of ``MODELS`` ('regression' (default), 'finetune', 'jigsaw', 'cowpro', 'mrnet').
    **kwargs: what the task's builder needs beyond ``config.model``: 'regression'
      ``input_normalization`` (see :func:`build_regressor`); 'finetune' ``num_classes`` and
      ``input_normalization``; 'jigsaw' ``num_classes``
      (``config.jigsaw.num_classes``); 'cowpro' none; 'mrnet' ``num_outputs`` (one
      logit per task of ``config.data.tasks``).

  Returns:
    ``ContrastiveRegressor`` ('regression'), ``SSLACLNet`` / ``SKIDNet`` ('jigsaw'), ``CoWPro``,
    ``SKIDDownstream`` / ``DivideAndTeachClassifier`` / ``SliceMaxClassifier`` ('mrnet').
  """
  if task not in MODELS:
    raise ValueError(f'Unknown task={task!r} for build_model; expected one of {sorted(MODELS)}.')
  builder = MODELS[task]
  if isinstance(builder, str):
    module, _, name = builder.partition(':')
    builder = getattr(importlib.import_module(module), name)
  return builder(model_config, axis_name=axis_name, **kwargs)


__all__ = [
    'BasicBlock', 'BiLSTMPairEncoder', 'Bottleneck', 'Classifier', 'ContrastiveRegressor', 'ENCODERS',
    'EfficientNet',
    'EfficientNetB0', 'EfficientNetB1', 'LinearHead', 'MLPEncoder', 'MODELS', 'ProjectionHead',
    'R2Plus1D', 'R2Plus1D18', 'ResNet', 'ResNet101', 'ResNet18', 'ResNet34', 'ResNet50', 'ResNet9',
    'SmallCNN', 'build_classifier', 'build_model', 'build_regressor', 'l2_normalize', 'torch_weights',
]
