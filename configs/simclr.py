r"""SimCLR / NT-Xent self-supervised pretraining (Chen et al. 2020), the thesis' baseline.

The encoder is trained with NT-Xent alone (no labels); it is evaluated by kNN regression (and a ridge
linear probe, reported too) on its frozen embeddings of the training split. ~2 minutes on 2 CPU cores:
  python -m launch --config=configs/simclr.py --workdir=/tmp/simclr
Variants: `configs/simclr.py:digits_angle` (default), `configs/simclr.py:diabetes`.
"""

from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import self_supervised


def get_config(variant: str = "digits_angle"):
  config = self_supervised(base_config(variant))
  config.method = "simclr"
  config.loss.contrastive.temperature = 0.5  # SimCLR's NT-Xent default (Chen et al. 2020, B.9);
  return config                              # the thesis' small-scale baseline uses 0.1 (Ch. 5).
