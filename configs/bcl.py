r"""Binary contrastive learning (thesis Ch. 4, Eq. 4.14; the Combo loss of Eq. 4.18 as a variant flag).

  python -m launch --config=configs/bcl.py --workdir=/tmp/bcl
  python -m launch --config=configs/bcl.py --workdir=/tmp/bcl_combo --config.method=binary_contrastive_combo
"""

from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import self_supervised


def get_config(variant: str = "digits_angle"):
  config = self_supervised(base_config(variant))
  config.method = "binary_contrastive"
  config.loss.contrastive.temperature = 0.25  # Eq. 4.14: tau = 0.25.
  config.loss.contrastive.nu = 1.0            # The thesis trains with nu = 1 (Sec. 5.4.1.1).
  return config
