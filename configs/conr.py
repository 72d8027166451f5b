r"""ConR: contrastive regularizer for imbalanced regression (Keramati et al., ICLR 2024).

  python -m launch --config=configs/conr.py --workdir=/tmp/conr
Negatives are only the "confusing" pairs (labels farther than w apart, predictions within w), so the
loss needs the model's predictions: the train step passes them stop-gradient, in label units.
"""

from contrastive_jax.train.defaults import base_config


# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes")


def get_config(variant: str = "digits_angle"):
  config = base_config(variant)
  config.method = "conr"
  config.loss.contrastive.window = 1.0       # w = 1 (label units), official default.
  config.loss.contrastive.temperature = 0.07  # tau = 0.07 (hard-coded in the official code).
  config.loss.contrastive.e = 0.01           # pushing weight exp(e |dy|).
  config.loss.gamma_con = 4.0                # beta = 4, the official loss weight.
  config.loss.features = "embedding"         # ConR contrasts the encoder features.
  return config
