r"""SupReMix: supervised contrastive regression with embedding-level mixup (Wu et al., 2023).

  python -m launch --config=configs/supremix.py --workdir=/tmp/supremix
Variants: `configs/supremix.py:digits_angle` (default), `:diabetes` (bundled; multi-task), and
`:agedb` / `:imdb_wiki` on your copy of the DIR data (``data.root`` holds ``agedb.csv`` and
``AgeDB/``, or ``imdb_wiki.csv`` and ``imdb_crop/`` / ``wiki_crop/``):

  python -m launch --config=configs/supremix.py:agedb --config.data.root=/data/dir --workdir=runs/supremix_agedb
  python -m launch --config=configs/supremix.py:imdb_wiki --config.data.root=/data/dir --workdir=runs/supremix_imdb

and `:sts_b` on the DIR benchmark's STS-B files with your GloVe-format word vectors (the `sts_b`
source, recipes.sts_b_dir):

  python -m launch --config=configs/supremix.py:sts_b --config.data.root=/data/STS-B \
      --config.data.kwargs.embeddings=/data/glove/glove.840B.300d.txt --workdir=runs/supremix_sts_b

The paper's data sets. Our copy of the paper (shared/papers) is a summary: it names six data sets
"spanning MRI, X-ray, ultrasound, and PET" (the arXiv v4 keywords: brain age, bone age, ejection
fraction, amyloid SUVR) without listing them; the official repository's README lists the six data
sets its code covers: IMDB-WIKI, AgeDB-DIR, STS-B-DIR, UCI-airfoil, UK Biobank, HCP-Aging. What runs
here:
  * AgeDB-DIR (public; images from the AgeDB authors on request, the split CSV in the repository):
    `:agedb`, the `dir_benchmark` source.
  * IMDB-WIKI-DIR (public download; the DIR benchmark's imdb_wiki.csv): `:imdb_wiki`, the same
    source.
  * STS-B-DIR (public: the split files ship in the DIR repository; GloVe is a separate download):
    `:sts_b`, the `sts_b` source (below).
  * UCI-airfoil (public, UCI repository: 1,503 rows, 5 numeric features, sound pressure in dB):
    not runnable: no source reads a numeric CSV table (csv_images reads images; tfds has no
    airfoil).
  * UK Biobank brain MRI and HCP-Aging brain MRI (brain age): access by application / data-use
    agreement only, 3-D T1 volumes; not public, no configs.
  * The medical version's other modalities (bone age X-ray, echocardiogram ejection fraction,
    amyloid PET SUVR): RSNA Bone Age (PNG + CSV; a ``path,label,split`` CSV fits the `csv_images`
    source) and EchoNet-Dynamic (AVI + FileList.csv; the `echonet` source, as
    configs/adacon.py:echonet) are public formats, amyloid PET (ADNI) is access-controlled; the
    official code has no runs of them and our copy of the paper no settings, so there are no
    variants for them.

`:agedb` follows the official code's AgeDB-DIR run (Dingyijiang1/Mixup-Your-Own-Pairs, agedb-dir/,
commit d6152e0; its data/agedb.csv is the DIR benchmark's balanced split), whose pipeline is the
DIR benchmark's (YyzHarry/imbalanced-regression) with contrastive views, not Rank-N-Contrast's:
ResNet-50 at 224 x 224, Adam lr 1e-3, batch 128, 100 epochs with the rate x0.1 at epoch 80 (9,500
steps: about 2.4 M ResNet-50 image passes, ~1 A100-GPU-hour), then a linear regressor on the frozen
backbone features (here the ridge probe). Mixture embeddings are never materialised (their
similarities are linear in the similarity matrix), so memory stays O(M^2) where the official code
builds an M^3 x D tensor.

Official values (agedb-dir/train_supremix.py unless named; ours in brackets where different):
  :46 / :123 resnet50 (from scratch);  :56 batch 128;  :52 100 epochs;  :49, :51, :127 Adam lr 1e-3
  without weight decay (`--weight_decay` only reaches SGD);  :55 + utils.py:81-86 lr x0.1 from
  epoch 80;  :112 drop_last=True (12,208 // 128 = 95 steps an epoch);  :32 tau 0.5;  :35 dim 128;
  :38 + :206-207 `--beta 0` = Beta(2, 8);  :39 n = 5;  :30-31 distance magnifying 'L1_inv';
  resnet.py:147, :169-184 projection Linear(2048, 2048)-BN-ReLU-Linear(2048, 128)-BN, then L2
  (`proj_batch_norm=True`);  datasets.py:32-53 two views of RandomResizedCrop(224, scale=(0.2, 1)),
  HFlip, ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8, RandomGrayscale p = 0.2, Normalize(0.5, 0.5).
Not reproduced:
  * :268 mixed precision (torch autocast, float16) [float32].
  * Stage 2 (train_linear.py): Linear(2048, 1) on the frozen backbone features (resnet.py:152-153)
    trained with MSE (:60) by Adam lr 0.1 (:59, :61), batch 16 (:66), 100 epochs (:62), x0.1 at
    epochs 60 and 80 (:65), on un-augmented images (split 'train_linear' falls to the evaluation
    transform, datasets.py:62-67), keeping the epoch with the lowest validation MSE (:223) [the
    closed-form ridge probe on the same frozen 2048-d features, squared loss: no second stage].
  * The official stage 1 has no validation and stage 2 loads the last encoder (train_linear.py:167)
    [the encoder checkpoint, every 10 epochs, with the lowest validation MAE of the ridge probe;
    `--config.eval_every=9500` scores only the last].
  * Images are Resize((224, 224))-stretched before cropping / for evaluation [centre crop to the
    aspect ratio, then 224 x 224].
`:imdb_wiki` (imdb-wiki/train_supremix.py, same commit): the values above with tau 0.3 (:34) and
batch 64 (:58) (191,500 // 64 = 2,992 steps an epoch, 299,200 steps); resnet50 (:125), Adam 1e-3
(:53, :132), x0.1 at epoch 80 (:57), Beta(2, 8) for `--beta 0` (:194-195), n = 5 (:41), L1_inv
(:33), dim 128 (:37), the same projection head (resnet.py:147, :172-175) and two views of the
same augmentation (datasets.py:41-51); its README command is the same.
`:sts_b` (sts-b-dir/, same commit): README command `train_cl.py --contrastive_method supremix
--use_weight --use_proj --projector_dim 128 --temperature 0.1 --beta 0 --n 1.0 --batch_size 128`;
the DIR benchmark's BiLSTM encoder, data and trainer otherwise (train_cl.py:74-98: max_seq_len 40,
300-d frozen vectors, d_hid 1500, 2 layers, dropout 0.2, Adam lr 1e-4, 400-step validation
interval, 100 checks; recipes.sts_b_dir); one view of each pair, no augmentation (trainer.py:184-
186 `embs.unsqueeze(1)`); projector Linear(12000, 128)-ReLU-Linear(128, 128), then L2
(models.py:80-84, :107-109: ours the same, `proj_hidden_dim=128`, no BN); Beta(2, 8) for `--beta 0`
(myop.py:43-44); stage 2 train_linear.py: a linear regressor (MSE, Adam 1e-4, batch 128) on the
frozen encoder [ours: the ridge probe of the frozen 12,000-d pair features].
Official-code quirk, not reproduced: trainer.py:178 passes `mix_neg` / `mix_pos` only for the
method names 'myop_neg' / 'myop_pos' / 'myop', so `--contrastive_method supremix` builds no mixtures
there (plain SupCon with distance magnifying); ours builds them (the paper's method).
The paper's appendix is not in our copy (shared/papers has a summary only), so these values are the
official code's defaults and README command (`python train_supremix.py --contrastive_method
supremix`), not cross-checked against the paper's text.
"""

import ml_collections

from contrastive_jax.train import recipes
from contrastive_jax.train.defaults import run_config

VARIANTS = ("digits_angle", "diabetes", "agedb", "imdb_wiki", "sts_b")

# The official runs' values that differ between agedb-dir/ and imdb-wiki/ train_supremix.py:
# temperature (:32 / :34), batch (:56 / :58).
_DIR_RUNS = {"agedb": dict(temperature=0.5, batch_size=128),
             "imdb_wiki": dict(temperature=0.3, batch_size=64)}


def get_config(variant: str = "digits_angle"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r} of configs/supremix.py; expected one "
                     f"of {VARIANTS}.")
  config = run_config()  # the neutral base; the variant's recipe sets data, model and budget
  if variant in recipes.BUNDLED_VARIANTS:
    recipes.bundled(config, variant)
  config.method = "supremix"
  config.loss.contrastive.temperature = 0.5  # Official default tau = 0.5 (train_supremix.py:32).
  config.loss.contrastive.window = 5.0       # Hard-positive label window n = 5 (label units, :39).
  config.loss.contrastive.beta = (2.0, 8.0)  # alpha ~ Beta(2, 8) for hard negatives (:206-207).
  config.loss.gamma_con = 0.1                # Both terms of similar size after the first epoch.
  if variant in _DIR_RUNS:
    # Data: AgeDB-DIR / IMDB-WIKI-DIR (balanced split), 224 x 224, Normalize(0.5, 0.5).
    recipes.dir_benchmark(config, variant, split_mode="balanced")
    config.loss.contrastive.temperature = _DIR_RUNS[variant]["temperature"]
    # Two SimCLR-style views without blur (datasets.py:43-53, 'train_cl').
    config.data.augment_kind = "simclr"
    config.data.augment = ml_collections.ConfigDict(dict(scale=(0.2, 1.0), blur_prob=0.0))
    config.data.views = 2
    # Model: ResNet-50 (from dir_benchmark) + BN projector to a 128-d unit embedding.
    config.model.proj_dim = 128              # `--dim 128`
    config.model.proj_batch_norm = True      # Linear-BN-ReLU-Linear-BN (resnet.py:169-184)
    config.loss.features = "projection"      # the loss sees the L2-normalised 128-d projection
    # Optimiser and schedule: Adam lr 1e-3, no weight decay, x0.1 at epoch 80 of 100.
    config.batch_size = _DIR_RUNS[variant]["batch_size"]  # `--batch_size`
    config.optim.name = "adam"
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.0
    config.optim.schedule = "step"
    config.optim.decay_boundaries = (80 / 100,)
    config.optim.decay_factor = 0.1
    config.optim.warmup_steps = 0
    # `--epoch 100` (drop_last=True): 95 steps an epoch on AgeDB, 2,992 on IMDB-WIKI.
    recipes.epochs(config, recipes.DIR_TRAIN_SIZES[variant], 100, eval_epochs=10)
    # Two stages: the encoder by L_SupReMix alone, then a linear regressor on the frozen backbone
    # features (train_linear.py), here the ridge probe.
    recipes.self_supervised(config, probe="ridge")
  if variant == "sts_b":
    # The DIR benchmark's STS-B BiLSTM pipeline (one view, no augmentation) with the official
    # SupReMix STS-B command (module docstring).
    recipes.sts_b_dir(config, split_mode="balanced")  # STS-B-DIR
    config.loss.contrastive.temperature = 0.1  # `--temperature 0.1`
    config.loss.contrastive.window = 1.0       # `--n 1.0` (scores 0-5)
    config.model.proj_dim = 128                # `--use_proj --projector_dim 128`:
    config.model.proj_hidden_dim = 128         # Linear(12000, 128)-ReLU-Linear(128, 128), then L2
    config.loss.features = "projection"
    # Two stages: L_SupReMix alone, then a linear regressor on the frozen pair features
    # (train_linear.py), here the ridge probe.
    recipes.self_supervised(config, probe="ridge")
  return config
