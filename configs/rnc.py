r"""Rank-N-Contrast (Zha et al., NeurIPS 2023) on the encoder features + regression branch.

  python -m launch --config=configs/rnc.py --workdir=/tmp/rnc
Variants: `configs/rnc.py:digits_angle` (default), `:diabetes` (bundled): both train jointly
(multi-task, as AdaCon Eq. 8); and `:agedb`, the paper's AgeDB-DIR recipe on your copy of the data:

  python -m launch --config=configs/rnc.py:agedb --config.data.root=/data/dir --workdir=runs/rnc_agedb

`:agedb` is the paper's two-stage recipe, checked against the official code
(kaiwenzha/Rank-N-Contrast, commit eca433b; file:line in `recipes.rnc_agedb`,
contrastive_jax/train/defaults.py): the encoder is trained by L_RNC alone (tau = 2, L1 label
distance, L2 feature distance on the 512-d pooled features; 400 epochs, 18,800 steps of batch 256
of ResNet-18 at 224 x 224, SGD lr 0.5 / momentum 0.9 / weight decay 1e-4, cosine to lr x 1e-3, no
warm-up; about 4 A100-GPU-hours), then a linear regressor on its frozen features -- here the
closed-form ridge probe on the training split's embeddings (`eval_with='ridge'`; the official second
stage, main_linear.py, trains Linear(512, 1) by SGD with L1 for 100 epochs on augmented images:
this trainer has no second stage), which also selects the best encoder checkpoint on the validation
split (the official code keeps the last). Random init, as the official code (its ResNet is built
from scratch); `--config.model.init_from=<torchvision .pth> --config.data.normalize=imagenet` starts
from ImageNet weights instead.
"""

from contrastive_jax.train import recipes
from contrastive_jax.train.defaults import run_config


VARIANTS = ("digits_angle", "diabetes", "agedb")


def get_config(variant: str = "digits_angle"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r} of configs/rnc.py; expected one of "
                     f"{VARIANTS}.")
  config = run_config()  # the neutral base; the variant's recipe sets data, model and budget
  if variant in recipes.BUNDLED_VARIANTS:
    recipes.bundled(config, variant)
  config.method = "rnc"
  config.loss.contrastive.temperature = 2.0     # Official `--temp 2` (main_rnc.py:38).
  config.loss.features = "embedding"            # Raw encoder features, L2 (main_rnc.py:40).
  config.loss.gamma_con = 1.0
  if variant == "agedb":
    recipes.rnc_agedb(config)
  return config
