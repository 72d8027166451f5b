r"""AdaCon: adaptive-margin contrastive loss + regression branch, trained multi-task (Dai et al. 2023).

Default run (bundled digits, real images, exact angle labels), ~2-3 minutes on a 2-core CPU:
  python -m launch --config=configs/adacon.py --workdir=/tmp/adacon
Variants: `configs/adacon.py:digits_angle` (default), `configs/adacon.py:diabetes`.
"""

from contrastive_jax.train.defaults import base_config


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "adacon"
  config.loss.contrastive.temperature = 1 / 150  # s = 150 (official SupConLoss_admargin scale_s).
  config.loss.reg = "l1"           # BMD: L1 (Sec. IV-A); EchoNet LVEF uses MSE (Sec. V-A).
  config.loss.gamma_reg = 1.0      # Eq. 8: gamma_reg fixed to 1,
  config.loss.gamma_con = 0.005    # gamma_con so both terms have similar size (Table IV: 0.005).
  config.loss.features = "projection"
  return config
