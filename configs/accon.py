r"""ACCon: angle-compensated contrastive regulariser (Zhao et al., AAAI 2025).

  python -m launch --config=configs/accon.py --workdir=/tmp/accon
Variants: `configs/accon.py:digits_angle` (default), `:diabetes` (bundled), and the paper's age
estimation benchmarks on your copy of the DIR data (``data.root`` holds ``agedb.csv`` /
``imdb_wiki.csv`` and the image folders they name, contrastive_jax/data/sources/dir_benchmark.py):

  python -m launch --config=configs/accon.py:agedb --config.data.root=/data/dir --workdir=runs/accon_agedb
  python -m launch --config=configs/accon.py:imdb_wiki --config.data.root=/data/dir --workdir=runs/accon_imdb

and STS-B (Tab. 1 / 2) on the DIR benchmark's STS-B files (``data.root`` holds ``train_new.tsv``,
``dev_new.tsv``, ``test_new.tsv`` from YyzHarry/imbalanced-regression sts-b-dir/glue_data/STS-B) with
your GloVe-format word vectors (glove.840B.300d.txt in the papers; contrastive_jax/data/sources/sts_b.py):

  python -m launch --config=configs/accon.py:sts_b --config.data.root=/data/STS-B \
      --config.data.kwargs.embeddings=/data/glove/glove.840B.300d.txt --workdir=runs/accon_sts_b

`:agedb` / `:imdb_wiki` train on the natural split (AgeDB-Natural / IMDB-WIKI-Natural, Table 1);
add `--config.data.kwargs.split_mode=balanced` for AgeDB-DIR / IMDB-WIKI-DIR (Table 2). Our natural
split is a seeded random partition of the benchmark's sizes, not the official file: for that, put
agedb_natural.csv from Haifengtao/ACCon (agedb/data/) in ``data.root`` and add
`--config.data.kwargs.csv_path=agedb_natural.csv --config.data.kwargs.split_mode=balanced` (the
'balanced' mode reads the file's split column). ResNet-50 at 224 x 224, batch 64, 90 epochs:
17,100 steps on AgeDB (~2.2 M ResNet-50 image passes, about 1-2 A100-GPU-hours) and 269,280 on
IMDB-WIKI (~34 M passes, ~16-20 GPU-hours). Random init, as the official code (its ResNet-50 is
built from scratch); to start from torchvision's ImageNet weights add
`--config.model.init_from=/weights/resnet50.pth` `--config.data.normalize=imagenet`.

Hyperparameters, checked against the official code (Haifengtao/ACCon, commit efd6610; agedb/ and
imdb-wiki/ agree unless named; the paper's Appendix B is not in our copy):
  batch 64, lr 2.5e-4, 90 epochs, proj_dims 512, temperature 0.05, regularization_weight 1:
    the README commands "Train a model with ACCon" (agedb/README.md, imdb-wiki/README.md);
  Adam without weight decay: train.py:213 (imdb-wiki :220) `Adam(model.parameters(), lr=args.lr)`;
  lr x0.1 at epochs 60 and 80: train.py:252 (imdb-wiki :259) `adjust_learning_rate(..., [60, 80])`;
  L1 on the predictions of both views: train.py:77 (`--loss l1`), :331;
  drop_last=True: train.py:164 (12,208 // 64 = 190 steps an epoch);
  best epoch by validation L1, then test: train.py:256-257, :273-276;
  R = `max_inernal` = 100: loss.py:206 (imdb-wiki :145). Ours: max - min of the training labels
    (paper Eq. 2), which is 100 on AgeDB (ages 1-101); on IMDB-WIKI set
    `--config.loss.contrastive.label_range=100` for the official value (its CSV is not in our copy
    of the repository, so we could not check its range);
  augmentation, AgeDB: two views of RandomResizedCrop(224, scale=(0.2, 1)), HFlip,
    ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8, RandomGrayscale p = 0.2 (agedb/datasets.py:124,
    :155-180: Rank-N-Contrast's recipe, not the DIR benchmark's); IMDB-WIKI: two views of the DIR
    benchmark's Resize + RandomCrop(224, padding=16) + HFlip (imdb-wiki/datasets.py:28-55); both
    Normalize(0.5, 0.5).
`:sts_b` trains on STS-B-Natural (Table 1: MAE, G-mean, Pearson); add
`--config.data.kwargs.split_mode=balanced` for STS-B-DIR (Table 2: MSE, shot-wise). results.json
has MAE, MSE, Pearson, Spearman, G-mean and R^2 (``test``) and the many / medium / few-shot MAE, MSE
and G-mean (``test_shots``: the official STS-B shot bins, recipes.sts_b_dir). The DIR benchmark's model and trainer
(recipes.sts_b_dir: BiLSTM + max pooling, [u, v, |u - v|, u * v], MSE, Adam 1e-4, batch 128, 400-step
validation interval, 100 checks = 40,000 steps; no augmentation, one view) with the official ACCon
STS-B run (Haifengtao/ACCon sts-b/, commit efd6610): README "Train a model using ACCON"
`--regularization_type accon --proj_dims 2000 --regularization_weight 10 --batch_size 128 --lr 1e-4
--loss mse`; trainer.py:176 builds `ACCon()` with its defaults, loss.py:425 `max_inernal=5`
(R = 5, the score range) and `temperature=1` (the README's `--temperature 0.05` does not reach it);
trainer.py:175-179 one view of each pair, positives = equal scores rounded to 0.1 (loss.py:448).
Ours for `:sts_b`: R = 5, tau = 1, gamma = 10, a 2000-d projection, positives = exactly equal scores
[not reproduced: the official rounding to 0.1. 88 % of the STS-B-DIR scores lie on a 0.2 grid, the
others not (0.25, 0.333, 0.5, ...): the 163 distinct scores form 51 rounded groups, so the official
loss has more positive pairs; the loss's `bin_width` floors y / w in float32, which splits scores
such as 2.6 from their bin, so it is not a substitute]. The official ACCon model (models.py:153-154 via train.py:193-194, :288-291) projects the 12,000-d pair
feature by one Linear(12000, 2000), L2-normalises it and regresses with Linear(2000, 1) with bias [ours:
Dense(2000)-ReLU-Dense(2000), then the bias-free predictor below]. Its MSE is on ``score / 5``
(models.py:305-317), ours on standardised scores, which makes L_reg 25 / std(y)^2 (~11 on
STS-B-DIR, std 1.48) times larger: at gamma = 10 the regulariser weighs ~11 times less against
L_reg than officially; `--config.loss.gamma_con=114` restores the official balance.

Not reproduced (this trainer's model and data pipeline cannot express them):
  * Heads: official contraNet_ada_emb (agedb/resnet.py:379-399): projection = one Linear(2048,
    512), as the paper's "single linear layer" ("Deep Regression Framework") [ours: a
    Dense-ReLU-Dense MLP]; predictor = Linear(512, 1) with bias, then ReLU, on the
    *un-normalised* projection (as Alg. 1 line 13, h(Z)) [ours: Linear without bias on the
    L2-normalised projection, as the paper's text says].
  * Targets: the official L1 is in years; ours is on standardised targets
    (``data.normalize_targets``, needed by the bias-free predictor of a unit vector), so at
    gamma = 1 the regulariser weighs ~std(y) (16-17 years on AgeDB) times more against L_reg than
    officially; gamma ~ 1 / std(y) gives the official balance (Adam is invariant to the overall
    scale).
  * Evaluation images: AgeDB Resize(256) + CenterCrop(224) (agedb/datasets.py:181-187), IMDB-WIKI
    Resize((224, 224)) [ours: centre crop to the aspect ratio, then 224 x 224].
"""

import ml_collections
from ml_collections.config_dict import placeholder

from contrastive_jax.train import recipes
from contrastive_jax.train.defaults import run_config

VARIANTS = ("digits_angle", "diabetes", "agedb", "imdb_wiki", "sts_b", "agedb_with_conr",
            "imdb_wiki_with_conr")


def get_config(variant: str = "digits_angle"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r} of configs/accon.py; expected one of "
                     f"{VARIANTS}.")
  if variant.endswith("_with_conr"):
    return _with_conr(get_config(variant[:-len("_with_conr")]))
  config = run_config()  # the neutral base; the variant's recipe sets data, model and budget
  if variant in recipes.BUNDLED_VARIANTS:
    recipes.bundled(config, variant)
  config.method = "accon"
  config.loss.contrastive.temperature = 0.05    # Official README runs: --temperature 0.05.
  config.loss.contrastive.label_range = placeholder(float)  # None: from the training labels.
  config.loss.contrastive.official = False      # True: the official code's quirks (METHODS.md).
  config.loss.gamma_con = 1.0                   # Eq. 8: L_reg + gamma * L_ACCon, gamma = 1 (official).
  config.model.proj_dim = 512                   # Official --proj_dims 512 of the README runs.
  config.model.regress_from = "projection"      # Predictor: Linear without bias on the
  config.model.head_bias = False                # L2-normalised projection (Fig. 2).
  if variant in ("agedb", "imdb_wiki"):
    # "ResNet-50 was utilized as the backbone for age estimation tasks", "consistent with those
    # outlined by (Yang et al. 2021)" (Baselines): the DIR benchmark's data, model, Adam (no weight
    # decay), L1 and x0.1 at epochs 60 / 80, with the official ACCon runs' batch and rate.
    recipes.dir_benchmark(config, variant, split_mode="natural")
    config.data.views = 2                       # two augmented views per image (Alg. 1, 2N rows)
    if variant == "agedb":                      # agedb/datasets.py:124, :155-180
      config.data.augment_kind = "simclr"
      config.data.augment = ml_collections.ConfigDict(dict(scale=(0.2, 1.0), blur_prob=0.0))
    config.batch_size = 64                      # README: --batch_size 64
    config.optim.lr = 2.5e-4                    # README: --lr 0.00025
    # README: --epoch 90 (drop_last=True); validation every epoch (train.py:254).
    recipes.epochs(config, recipes.DIR_TRAIN_SIZES[variant], 90)
  if variant == "sts_b":
    # The DIR benchmark's STS-B BiLSTM pipeline (recipes.sts_b_dir), one view (no augmentation),
    # with the official ACCon STS-B run's loss settings (module docstring).
    recipes.sts_b_dir(config, split_mode="natural")  # README: --datatype natural (Table 1)
    config.loss.contrastive.label_range = 5.0  # loss.py:425 max_inernal=5: scores 0-5
    config.loss.contrastive.temperature = 1.0  # trainer.py:176 ACCon() -> temperature=1
    config.loss.gamma_con = 10.0               # README: --regularization_weight 10
    config.model.proj_dim = 2000               # README: --proj_dims 2000
    config.model.proj_hidden_dim = 2000        # ours: hidden width 2000, not the 12,000-d input
  return config


def _with_conr(config):
  """Table 2's "+ACCon+ConR" rows on the same recipe: Haifengtao/ACCon ``agedb/loss.py::acConR``,
  ConR (window 1, its official t = 0.07 and denominator) whose confusing negatives carry ACCon's
  angle compensation over the label range 100 (``losses.conr``, ``angle_range``), with the
  regularisation weight gamma = 1 of the ACCon runs. Add ``+ data.kwargs.split_mode=balanced`` for
  the DIR splits and ``+ loss.lds.enabled=True`` for the "+LDS" rows."""
  config.method = "conr"
  config.loss.contrastive = ml_collections.ConfigDict(dict(
      window=1.0, temperature=0.07, e=0.01, official=True, angle_range=100.0))
  return config
