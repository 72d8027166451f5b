r"""MIO v1/v2/v3 self-supervised pretraining (thesis Ch. 5, Eq. 5.13 / 5.16 / 5.21), kNN-scored.

  python -m launch --config=configs/mio.py --workdir=/tmp/mio
  python -m launch --config=configs/mio.py:diabetes --workdir=/tmp/mio_diabetes --config.loss.contrastive.version=1
"""

from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import self_supervised


def get_config(variant: str = "digits_angle"):
  config = self_supervised(base_config(variant))
  config.method = "mio"
  config.loss.contrastive.temperature = 0.2  # Ch. 5: tau = 0.2 for MIO (Table 5.8 best for v3).
  config.loss.contrastive.version = 3        # MIOv3, the thesis' headline variant (Table 5.2).
  return config
