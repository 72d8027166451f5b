r"""SupReMix: supervised contrastive regression with embedding-level mixup (Wu et al., 2023).

  python -m launch --config=configs/supremix.py --workdir=/tmp/supremix
Mixture embeddings are never materialised (their similarities are linear in the similarity matrix),
so memory stays O(M^2) where the official code builds an M^3 x D tensor.
"""

from contrastive_jax.train.defaults import base_config


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "supremix"
  config.loss.contrastive.temperature = 0.5  # Official default tau = 0.5.
  config.loss.contrastive.window = 5.0       # Hard-positive label window n = 5 (label units).
  config.loss.contrastive.beta = (2.0, 8.0)  # alpha ~ Beta(2, 8) for hard negatives (official).
  config.loss.gamma_con = 0.1                # Both terms of similar size after the first epoch.
  return config
