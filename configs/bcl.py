r"""Binary contrastive learning (thesis Ch. 4, Eq. 4.14; the Combo loss of Eq. 4.18 as a variant flag).

  python -m launch --config=configs/bcl.py --workdir=/tmp/bcl
  python -m launch --config=configs/bcl.py --workdir=/tmp/bcl_combo --config.method=binary_contrastive_combo
  python -m launch --config=configs/bcl.py:fashion_mnist --workdir=/tmp/bcl_fm   # real data, CPU
  python -m launch --config=configs/bcl.py:mrnet --config.data.root=/data/MRNet --workdir=runs/bcl
Variants: ``digits_angle`` (default), ``diabetes`` (kNN regression); ``fashion_mnist`` (kNN top-1, the
shared set-up of ``contrastive_jax.train.recipes.ssl_image``); ``mrnet`` (Sec. C5-C8: ResNet-50,
projector 2048 -> ReLU -> 512 without BatchNorm as printed, batch 64, LARS lr 0.1, 100 epochs: Table
4.2 model 1; positives are one random slice per scan augmented twice, ``data.slice_pairs='same'``).
ImageNet start as the thesis credits it (Sec. 4.6), from torchvision's file:
  python -m launch --config=configs/bcl.py:mrnet --config.data.root=/data/MRNet \
      --config.model.init_from=/weights/resnet50-0676ba61.pth --workdir=runs/bcl_sagittal
Table 4.2's other pretraining models by overrides: 2 ``--config.model.proj_dim=1024``; 3
``--config.method=binary_contrastive_combo`` (tau_c = 0.33 is the loss default); 4 both; 5 both and
``--config.model.encoder=resnet101 --config.batch_size=32 --config.num_train_steps=3100`` (100
epochs). Fine-tuning on the 9 (plane, task) pairs and their ensemble: ``configs/mrnet.py:table4_4``.
"""

from contrastive_jax.train import recipes
from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.defaults import DATASET_VARIANTS
from contrastive_jax.train.defaults import run_config

IMAGE_VARIANTS = ("fashion_mnist", "mrnet")


# The launcher reads this literal (python -m launch --help; an unknown :variant is refused).
VARIANTS = ("digits_angle", "diabetes", "fashion_mnist", "mrnet")


def get_config(variant: str = "digits_angle"):
  if variant in DATASET_VARIANTS:
    config = recipes.self_supervised(base_config(variant))
  elif variant in IMAGE_VARIANTS:
    config = recipes.ssl_image(run_config(), variant)
  else:
    raise ValueError(f"Unknown bcl variant {variant!r}; expected one of "
                     f"{DATASET_VARIANTS + IMAGE_VARIANTS}.")
  config.method = "binary_contrastive"
  config.loss.contrastive.temperature = 0.25  # Eq. 4.14: tau = 0.25.
  config.loss.contrastive.nu = 1.0            # The thesis trains with nu = 1 (Sec. 5.4.1.1).
  return config
