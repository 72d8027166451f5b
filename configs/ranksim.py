r"""RankSim: ranking similarity regularizer (Gong et al., ICML 2022).

  python -m launch --config=configs/ranksim.py --workdir=/tmp/ranksim
"""

from contrastive_jax.train.defaults import base_config


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "ranksim"
  config.loss.contrastive.lambda_ = 2.0      # Blackbox-differentiation interpolation strength.
  config.loss.gamma_con = 100.0              # gamma = 100, the official loss weight.
  config.loss.features = "embedding"         # RankSim compares encoder-feature similarities.
  return config
