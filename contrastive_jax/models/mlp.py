"""Multi-layer perceptron encoder for tabular or flattened inputs."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPEncoder(nn.Module):
  """Dense -> (BatchNorm) -> ReLU, once per entry of ``hidden_sizes``.

  Attributes:
    hidden_sizes: width of each hidden layer; the last one is the feature size.
    use_batch_norm: insert BatchNorm between each Dense and its ReLU.
    bn_axis_name: mesh/pmap axis over which BatchNorm statistics are averaged
      (``None``: per-device statistics).
    dtype: computation dtype (parameters stay float32).
  """
  hidden_sizes: Sequence[int] = (256, 256)
  use_batch_norm: bool = True
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps ``x`` of shape [N, ...] to features [N, hidden_sizes[-1]]."""
    x = jnp.reshape(x, (x.shape[0], -1)).astype(self.dtype)
    for i, width in enumerate(self.hidden_sizes):
      x = nn.Dense(width, dtype=self.dtype, name=f'dense_{i}')(x)
      if self.use_batch_norm:
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5,
            axis_name=self.bn_axis_name, dtype=self.dtype, name=f'bn_{i}')(x)
      x = nn.relu(x)
    return x
