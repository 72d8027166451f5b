r"""Plain regression baseline: the AdaCon network without its contrastive branch (gamma_con = 0).

Runs in ~1 minute on a 2-core CPU:
  python -m launch --config=configs/regression.py --workdir=/tmp/regression
Variants: `configs/regression.py:digits_angle` (default), `configs/regression.py:diabetes`.
"""

from contrastive_jax.train.defaults import base_config


# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes")


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "none"
  config.loss.reg = "l1"           # AdaCon's regression baseline for BMD uses L1 (Table II).
  config.loss.gamma_con = 0.0
  return config
