r"""SupReMix: supervised contrastive regression with embedding-level mixup (Wu et al., 2023).

  python -m launch --config=configs/supremix.py --workdir=/tmp/supremix
Variants: `configs/supremix.py:digits_angle` (default), `:diabetes` (bundled; multi-task), and
`:agedb` on your copy of the DIR data (``data.root`` holds ``agedb.csv`` and ``AgeDB/``):

  python -m launch --config=configs/supremix.py:agedb --config.data.root=/data/dir --workdir=runs/supremix_agedb

`:agedb` follows the official code (Dingyijiang1/Mixup-Your-Own-Pairs), which is built on
Rank-N-Contrast's AgeDB pipeline: two stages (encoder by L_SupReMix alone, then a linear regressor on
frozen features, here the ridge probe), ResNet-18 at 224 x 224, SGD lr 0.5, batch 256, 400 epochs:
about 4-5 A100-GPU-hours. Mixture embeddings are never materialised (their similarities are linear
in the similarity matrix), so memory stays O(M^2) where the official code builds an M^3 x D tensor.
"""

from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import rnc_agedb_recipe

VARIANTS = ("digits_angle", "diabetes", "agedb")


def get_config(variant: str = "digits_angle"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r} of configs/supremix.py; expected one "
                     f"of {VARIANTS}.")
  config = base_config(variant if variant in ("digits_angle", "diabetes") else "digits_angle")
  config.method = "supremix"
  config.loss.contrastive.temperature = 0.5  # Official default tau = 0.5.
  config.loss.contrastive.window = 5.0       # Hard-positive label window n = 5 (label units).
  config.loss.contrastive.beta = (2.0, 8.0)  # alpha ~ Beta(2, 8) for hard negatives (official).
  config.loss.gamma_con = 0.1                # Both terms of similar size after the first epoch.
  if variant == "agedb":
    rnc_agedb_recipe(config)                     # the RNC AgeDB pipeline the official code reuses
    config.model.proj_dim = 128              # 128-d embedding (official `--feat_dim`)
    config.loss.features = "projection"      # the loss sees the L2-normalised 128-d projection
  return config
