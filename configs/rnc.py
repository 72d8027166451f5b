r"""Rank-N-Contrast (Zha et al., NeurIPS 2023) on the encoder features + regression branch.

  python -m launch --config=configs/rnc.py --workdir=/tmp/rnc
Variants: `configs/rnc.py:digits_angle` (default), `configs/rnc.py:diabetes`.
The paper trains the encoder with RNC, then a linear regressor; here both train jointly (multi-task,
as AdaCon Eq. 8), which the same config turns into the two-stage recipe by gamma_reg = 0 first.
"""

from contrastive_jax.train.defaults import base_config


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "rnc"
  config.loss.contrastive.temperature = 2.0     # Paper / official default tau = 2.
  config.loss.features = "embedding"            # RNC contrasts raw encoder features (L2 distance).
  config.loss.gamma_con = 1.0
  return config
