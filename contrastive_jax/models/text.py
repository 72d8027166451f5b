"""BiLSTM sentence-pair encoder of the DIR benchmark's STS-B-DIR model (Yang et al., ICML 2021).

The official model (YyzHarry/imbalanced-regression ``sts-b-dir/models.py``, the GLUE baseline's
``HeadlessPairEncoder``; ACCon's ``sts-b/models.py`` is the same encoder): frozen 300-d GloVe
embeddings -> dropout 0.2 -> a 2-layer bidirectional LSTM with 1,500 hidden units per direction
(``--d_hid 1500 --n_layers_enc 2``, AllenNLP's ``lstm`` with no dropout between layers, padding
masked) -> dropout 0.2 -> max pooling over the real tokens -> ``u``, ``v`` ``[N, 2 * 1500]``; the pair
feature is ``[u, v, |u - v|, u * v]`` ``[N, 12,000]``, on which the DIR model's regressor is one
``Linear(12000, 1)`` (here the ``ContrastiveRegressor``'s head, ``regress_from='backbone'``). No
highway layers (``--n_layers_highway 0``).

Input: ``x`` float32 ``[N, 2, L, D + 1]`` from ``data.sources.sts_b`` -- two sentences of ``L``
embedded tokens, the last channel 1 on real tokens, 0 on padding.

Differences from PyTorch's LSTM: Flax's ``OptimizedLSTMCell`` has one bias per gate (PyTorch two,
``b_ih + b_hh``: the same function class) and Flax's initialisers (PyTorch: U(-1/sqrt(h), 1/sqrt(h))).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BiLSTMPairEncoder(nn.Module):
  """``[N, 2, L, D + 1] -> [N, 8 * hidden_size]``: ``[u, v, |u - v|, u * v]`` of two max-pooled
  BiLSTM sentence encodings (module docstring).

  Attributes:
    hidden_size: LSTM units per direction (official 1,500).
    num_layers: stacked bidirectional layers (official 2).
    dropout: dropout rate on the embeddings and on the LSTM outputs (official 0.2; training only).
    bn_axis_name: unused (no BatchNorm); the encoder interface of ``models.ENCODERS``.
    dtype: computation dtype.
  """
  hidden_size: int = 1500
  num_layers: int = 2
  dropout: float = 0.2
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if x.ndim != 4 or x.shape[1] != 2:
      raise ValueError(f'BiLSTMPairEncoder takes [N, 2, L, D + 1] sentence pairs; got {x.shape}.')
    n = x.shape[0]
    # Both sentences through the same encoder: [2N, L, D], sentence 1 rows first.
    tokens = jnp.concatenate([x[:, 0], x[:, 1]], axis=0).astype(self.dtype)
    embedded, mask = tokens[..., :-1], tokens[..., -1] > 0.5
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    h = nn.Dropout(self.dropout, deterministic=not train)(embedded)
    for layer in range(self.num_layers):
      cell = lambda direction: nn.OptimizedLSTMCell(self.hidden_size, dtype=self.dtype,
                                                    name=f'lstm_{layer}_{direction}')
      forward = nn.RNN(cell('forward'))
      backward = nn.RNN(cell('backward'), reverse=True, keep_order=True)
      # Zero initial states derived from the inputs, so that inside shard_map they vary over the
      # batch axis as the states the scan computes do.
      zero = 0.0 * h[:, 0, :1] * jnp.zeros((1, self.hidden_size), self.dtype)
      h = nn.Bidirectional(forward, backward, name=f'bilstm_{layer}')(
          h, initial_carry=((zero, zero), (zero, zero)), seq_lengths=lengths)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    # Max pooling over the real tokens (padding filled with -inf, as the official code).
    pooled = jnp.max(jnp.where(mask[..., None], h, -jnp.inf), axis=1)
    pooled = jnp.where(lengths[:, None] > 0, pooled, 0.0)  # an all-padding row (eval padding): 0
    u, v = pooled[:n], pooled[n:]
    return jnp.concatenate([u, v, jnp.abs(u - v), u * v], axis=-1)
