r"""DySTreSS: NT-Xent with a similarity-dependent temperature (thesis Ch. 6, Eq. 6.16 / Alg. 6.1).

  python -m launch --config=configs/dystress.py --workdir=/tmp/dystress
Shifted profiles of Alg. 6.1: --config.loss.contrastive.profile=shifted
  --config.loss.contrastive.shift=-0.2 --config.loss.contrastive.scale=0.6 (Table 6.15 settings).
"""

from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import self_supervised


def get_config(variant: str = "digits_angle"):
  config = self_supervised(base_config(variant))
  config.method = "dystress"
  config.loss.contrastive.tau_min = 0.07     # Ch. 6 small-scale runs: tau_min 0.07, tau_max 0.2
  config.loss.contrastive.tau_max = 0.2      # (Table 6.14 on IN-100: 0.07/0.2 -> 78.46 top-1).
  config.loss.contrastive.profile = "cosine"  # Eq. 6.16: tau_max at c = +-1, tau_min at c = 0.
  config.loss.contrastive.shift = 0.0
  config.loss.contrastive.scale = 1.0
  return config
