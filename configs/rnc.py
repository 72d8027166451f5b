r"""Rank-N-Contrast (Zha et al., NeurIPS 2023) on the encoder features + regression branch.

  python -m launch --config=configs/rnc.py --workdir=/tmp/rnc
Variants: `configs/rnc.py:digits_angle` (default), `:diabetes` (bundled): both train jointly
(multi-task, as AdaCon Eq. 8); and `:agedb`, the paper's AgeDB-DIR recipe on your copy of the data:

  python -m launch --config=configs/rnc.py:agedb --config.data.root=/data/dir --workdir=runs/rnc_agedb

`:agedb` is the paper's two-stage recipe: the encoder is trained by L_RNC alone (400 epochs, 18,800
steps of batch 256 of ResNet-18 at 224 x 224, about 4 A100-GPU-hours), then a linear regressor on
its frozen features -- here the closed-form ridge probe on the training split's embeddings
(`eval_with='ridge'`; the official second stage trains it by SGD with L1), which also selects the
best checkpoint on the validation split. The ImageNet initialisation is not reproduced.
"""

from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import rnc_agedb_recipe


VARIANTS = ("digits_angle", "diabetes", "agedb")


def get_config(variant: str = "digits_angle"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r} of configs/rnc.py; expected one of "
                     f"{VARIANTS}.")
  config = base_config(variant if variant in ("digits_angle", "diabetes") else "digits_angle")
  config.method = "rnc"
  config.loss.contrastive.temperature = 2.0     # Paper / official default tau = 2.
  config.loss.features = "embedding"            # RNC contrasts raw encoder features (L2 distance).
  config.loss.gamma_con = 1.0
  if variant == "agedb":
    rnc_agedb_recipe(config)
  return config
