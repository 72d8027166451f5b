r"""SupCon with each unique label as a class (AdaCon's comparator, Table II) + regression branch.

  python -m launch --config=configs/supcon.py --workdir=/tmp/supcon
Variants: `configs/supcon.py:digits_angle` (default), `configs/supcon.py:diabetes`.
"""

from contrastive_jax.train.defaults import base_config


# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes")


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "supcon"
  config.loss.contrastive.temperature = 0.07       # Khosla et al. 2020 / SupContrast default.
  config.loss.contrastive.base_temperature = 0.07
  config.loss.gamma_con = 0.1      # Both terms of similar size after the first epoch (as AdaCon).
  return config
