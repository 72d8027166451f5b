r"""ACCon: angle-compensated contrastive regulariser (Zhao et al., AAAI 2025).

  python -m launch --config=configs/accon.py --workdir=/tmp/accon
Variants: `configs/accon.py:digits_angle` (default), `configs/accon.py:diabetes`.
The label range R of Eq. 2 defaults to max - min of the training labels (set
`--config.loss.contrastive.label_range=100` for the official AgeDB value).
"""

from ml_collections.config_dict import placeholder

from contrastive_jax.train.defaults import base_config


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "accon"
  config.loss.contrastive.temperature = 0.05    # Official README runs: --temperature 0.05.
  config.loss.contrastive.label_range = placeholder(float)  # None: from the training labels.
  config.loss.contrastive.official = False      # True: the official code's quirks (METHODS.md).
  config.loss.gamma_con = 1.0                   # L_reg + gamma * L_ACCon, gamma = 1 (official).
  config.model.proj_dim = 512                   # Official --proj_dims default for the runs.
  config.model.regress_from = "projection"      # Predictor: Linear without bias on the
  config.model.head_bias = False                # L2-normalised projection (Fig. 2).
  return config
