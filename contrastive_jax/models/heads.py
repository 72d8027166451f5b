"""Projection and regression heads."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrastive_jax.pairwise import l2_normalize


class ProjectionHead(nn.Module):
  """Dense -> ReLU -> Dense(out_dim) -> L2 normalisation (AdaCon Sec. III-B, SimCLR), or with
  ``batch_norm`` the thesis' projector Dense -> BN -> ReLU -> Dense -> BN (Ch. 4-6, as in SimCLR v2 /
  BYOL code), then L2 normalisation.

  Attributes:
    hidden_dim: hidden width; ``None`` uses the input feature size.
    out_dim: size of the (unit-norm) projection.
    batch_norm: insert BatchNorm after both Dense layers (their biases are then dropped).
    bn_axis_name: mesh axis for synchronised BatchNorm statistics.
  """
  hidden_dim: int | None = None
  out_dim: int = 128
  batch_norm: bool = False
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = self.hidden_dim or x.shape[-1]
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                     axis_name=self.bn_axis_name, name=name)
    x = nn.Dense(hidden, use_bias=not self.batch_norm, name='dense_hidden')(x)
    if self.batch_norm:
      x = norm('bn_hidden')(x)
    x = nn.relu(x)
    x = nn.Dense(self.out_dim, use_bias=not self.batch_norm, name='dense_out')(x)
    if self.batch_norm:
      x = norm('bn_out')(x)
    return l2_normalize(x, axis=-1)


class LinearHead(nn.Module):
  """Dense(1) squeezed to a vector: [N, F] -> [N]."""
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, use_bias=self.use_bias, name='dense')(x)[..., 0]
