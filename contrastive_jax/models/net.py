"""Encoder + projection head + regression head, as used by AdaCon and ACCon."""

import flax.linen as nn
import jax.numpy as jnp

from contrastive_jax.data.normalization import normalize
from contrastive_jax.models.heads import LinearHead
from contrastive_jax.models.heads import ProjectionHead

REGRESS_FROM = ('backbone', 'projection')


class ContrastiveRegressor(nn.Module):
  """Backbone features feed a contrastive projection and a scalar regressor.

  Attributes:
    encoder: a module called as ``encoder(x, train=train)`` returning [N, F].
    proj_hidden_dim: hidden width of the projection head (``None``: F).
    proj_dim: size of the unit-norm projection.
    regress_from: 'backbone' (AdaCon: Linear(bias=head_bias) on the backbone
      features) or 'projection' (ACCon: Linear without bias on the
      L2-normalised projection; ``head_bias`` is ignored).
    head_bias: whether the backbone regression head has a bias.
    proj_batch_norm: the thesis' BatchNorm projector (see ``ProjectionHead``).
    bn_axis_name: mesh axis for the projector's synchronised BatchNorm.
    input_mean, input_std: per-channel input statistics (``config.data.normalize``): the encoder
      sees ``(x - input_mean) / input_std``. Applied here, in every forward pass (training,
      evaluation, probes, ``init``), so train and eval inputs are normalised identically. None:
      inputs unchanged.
  """
  encoder: nn.Module
  proj_hidden_dim: int | None = None
  proj_dim: int = 128
  regress_from: str = 'backbone'
  head_bias: bool = True
  proj_batch_norm: bool = False
  bn_axis_name: str | None = None
  input_mean: tuple[float, ...] | None = None
  input_std: tuple[float, ...] | None = None

  @nn.compact
  def __call__(self, x, train: bool) -> dict:
    """Returns {'embedding': [N, F], 'projection': [N, proj_dim], 'prediction': [N]}.

    All three outputs are float32 (heads run in float32 whatever the encoder dtype).
    """
    if self.regress_from not in REGRESS_FROM:
      raise ValueError(f'Unknown regress_from={self.regress_from!r}; '
                       f'expected one of {REGRESS_FROM}.')
    if self.input_mean is not None:
      x = normalize(x, self.input_mean, self.input_std)
    embedding = self.encoder(x, train=train).astype(jnp.float32)
    projection = ProjectionHead(self.proj_hidden_dim, self.proj_dim, self.proj_batch_norm,
                                self.bn_axis_name, name='projector')(embedding, train=train)
    if self.regress_from == 'backbone':
      prediction = LinearHead(use_bias=self.head_bias, name='regressor')(embedding)
    else:
      prediction = LinearHead(use_bias=False, name='regressor')(projection)
    return {'embedding': embedding, 'projection': projection,
            'prediction': prediction}


class Classifier(nn.Module):
  """Encoder + linear classifier: the transfer / fine-tuning network (thesis Tables 5.6-5.7 /
  6.11-6.12: the pretrained encoder fine-tuned end to end under a new linear layer).

  The encoder's variables live under ``'encoder'``, as in :class:`ContrastiveRegressor`, so
  ``model.init_from`` copies a pretraining run's encoder; the classifier starts at random.

  Attributes:
    encoder: a module called as ``encoder(x, train=train)`` returning [N, F].
    num_classes: outputs of the linear classifier.
    input_mean, input_std: per-channel input statistics, as in :class:`ContrastiveRegressor`.
  """
  encoder: nn.Module
  num_classes: int
  input_mean: tuple[float, ...] | None = None
  input_std: tuple[float, ...] | None = None

  @nn.compact
  def __call__(self, x, train: bool) -> dict:
    """Returns {'embedding': [N, F], 'logits': [N, num_classes]}, both float32."""
    if self.input_mean is not None:
      x = normalize(x, self.input_mean, self.input_std)
    embedding = self.encoder(x, train=train).astype(jnp.float32)
    logits = nn.Dense(self.num_classes, name='classifier')(embedding)
    return {'embedding': embedding, 'logits': logits}
