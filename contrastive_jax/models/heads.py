"""Projection and regression heads."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrastive_jax.pairwise import l2_normalize


class ProjectionHead(nn.Module):
  """Dense -> ReLU -> Dense(out_dim) -> L2 normalisation.

  Attributes:
    hidden_dim: hidden width; ``None`` uses the input feature size.
    out_dim: size of the (unit-norm) projection.
  """
  hidden_dim: int | None = None
  out_dim: int = 128

  @nn.compact
  def __call__(self, x):
    hidden = self.hidden_dim or x.shape[-1]
    x = nn.Dense(hidden, name='dense_hidden')(x)
    x = nn.relu(x)
    x = nn.Dense(self.out_dim, name='dense_out')(x)
    return l2_normalize(x, axis=-1)


class LinearHead(nn.Module):
  """Dense(1) squeezed to a vector: [N, F] -> [N]."""
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, use_bias=self.use_bias, name='dense')(x)[..., 0]
