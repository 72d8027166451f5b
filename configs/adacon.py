r"""AdaCon: adaptive-margin contrastive loss + regression branch, trained multi-task (Dai et al. 2023).

Default run (bundled digits, real images, exact angle labels), ~2-3 minutes on a 2-core CPU:
  python -m launch --config=configs/adacon.py --workdir=/tmp/adacon
Variants: `configs/adacon.py:digits_angle` (default), `:diabetes` (bundled), and the paper's
experiments on your copy of the data (paths via `--config.data.root=`):

* `:bmd` -- hip X-ray bone mineral density (Sec. IV-A; private data): a CSV ``bmd.csv`` in
  ``data.root`` with columns ``path,label,fold`` (``fold`` in 0..3; paths relative to the root), see
  ``contrastive_jax/data/sources/csv_images.py``. EfficientNet-B1, 128 x 128 crops, batch 8 x 8
  augmentations, 6,000 SGD iterations: about 20 minutes per fold on one V100-class GPU. The paper
  reports the mean over four-fold cross-validation (Sec. IV-A "four-fold cross-validation ...
  averaged performance across folds"); run every fold and average::

    for k in 0 1 2 3; do
      python -m launch --config=configs/adacon.py:bmd --config.data.root=/data/bmd \
        --config.data.kwargs.fold=$k --workdir=runs/adacon_bmd/fold$k
    done
    python -c "import json,numpy as np; r=[json.load(open(f'runs/adacon_bmd/fold{k}/results.json'))
      ['test'] for k in range(4)]; print({m: float(np.mean([x[m] for x in r])) for m in r[0]})"

  Fold ``k`` is the test set and fold ``k+1 mod 4`` the validation set (``base.fold_indices``). Each
  fold's workdir also holds ``test_predictions.npz`` (``y``, ``prediction``); the predictions of the
  four fold models on one common (external) set are combined with
  ``contrastive_jax.evaluate.crossval.fold_ensemble`` (Sec. IV-A4).

* `:echonet` -- EchoNet-Dynamic LVEF (Sec. IV-B; public release: ``FileList.csv`` + ``Videos/``)::

    python -m launch --config=configs/adacon.py:echonet --config.data.root=/data/EchoNet-Dynamic \
      --workdir=runs/adacon_echonet

  R(2+1)D-18, 32-frame clips (every 2nd frame, 112 x 112), batch 20, 45 epochs (16,785 steps):
  the paper reports ~12 hours on three V100 GPUs.

Loss balance: the paper tuned gamma_con against L_reg in the label's units ("weighted loss values within
similar magnitudes"). The paper variants regress normalised targets (the head learns (y - mean) / std)
but compute L_reg in label units (``loss.reg_units='label'``: L_reg of mean + std * output against y),
so L1 / MSE / Huber delta and the gamma balance are the paper's; with 'normalized' L1 would shrink by
1/std and MSE by 1/std^2.

Two-stage training (Sec. IV-A6 Table V, Sec. IV-B6 Table XII: the paper's ablation against its
multi-task scheme): `:bmd_pretrain` / `:echonet_pretrain` train the network with the AdaCon loss
only (gamma_reg = 0, gamma_con = 1; validated by a ridge probe of the frozen features), then
`:bmd_finetune` / `:echonet_finetune` fine-tune the WHOLE network with the regression loss only
(``method='none'``; the paper fine-tunes, it does not freeze the encoder), starting from the stage-1
run's weights through ``model.init_from`` (required; its encoder and heads are copied from the
stage-1 run's latest checkpoint, optimizer state and step start afresh; the regression head has not
been trained in stage 1). Schedules as printed: BMD 3,000 + 3,000 iterations at 1e-2 then 1e-3 (x0.1
at 1,500 and 2,250 each); EchoNet 25 + 25 epochs at 1e-4 then 1e-5 (x0.1 at epochs 10 and 20)::

    python -m launch --config=configs/adacon.py:bmd_pretrain --config.data.root=/data/bmd \
      --config.data.kwargs.fold=$k --workdir=runs/adacon_bmd_2stage/pretrain$k
    python -m launch --config=configs/adacon.py:bmd_finetune --config.data.root=/data/bmd \
      --config.data.kwargs.fold=$k --config.model.init_from=runs/adacon_bmd_2stage/pretrain$k \
      --workdir=runs/adacon_bmd_2stage/fold$k

Two runs joined by ``model.init_from`` rather than a stage switch inside one run: each stage is an
ordinary run (its own schedule, optimizer state, checkpoints, resume and results.json), and the
paper's second stage restarts both the learning rate and the optimizer.

External validation (Tables VI, VII and XIII): the fold models' average prediction on a second data
set (Sec. IV-A7 "taking the average output of the four models as our final prediction"), by
``python -m contrastive_jax.train.external`` with the fold runs' config and workdirs::

    python -m contrastive_jax.train.external --config=configs/adacon.py:bmd \
      --workdirs=runs/adacon_bmd/fold0,runs/adacon_bmd/fold1,runs/adacon_bmd/fold2,runs/adacon_bmd/fold3 \
      --external_root=/data/fujifilm --external_kwargs='{"csv_path": "fujifilm.csv"}' \
      --output=runs/adacon_bmd/fujifilm

It writes results.json (MAE, RMSE, R2, Pearson of the ensemble and of each fold model) and the
predictions; see ``contrastive_jax/train/external.py``.

phi (the margin's label CDF) is Eq. 5's ECDF of the training labels; the official code's bucketed
mid-rank phi is ``contrastive_jax.losses.fit_ecdf(train_labels, bucket=0.05)`` (library only).

Initialisation: the paper starts from ImageNet (BMD) / Kinetics-400 (EchoNet) weights; the configs
start from random weights unless given torchvision's checkpoint, e.g.
``--config.model.init_from=/weights/efficientnet_b1.pth`` (``.pth`` or ``.safetensors``, converted
by ``contrastive_jax.models.torch_weights``; the heads stay random). ``:bmd`` normalises its inputs
with the ImageNet statistics that those weights expect (``data.normalize='imagenet'``); for
torchvision's Kinetics-400 ``r2plus1d_18`` weights add
``--config.data.normalize='((0.43216,0.394666,0.37645),(0.22803,0.22145,0.216989))'``.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from contrastive_jax.train import recipes
from contrastive_jax.train.defaults import run_config

VARIANTS = ("digits_angle", "diabetes", "bmd", "echonet", "bmd_pretrain", "bmd_finetune",
            "echonet_pretrain", "echonet_finetune")


def _bmd(config):
  """Sec. IV-A (BMD estimation from hip X-ray crops), Training Details."""
  config.data.name = "csv_images"
  config.data.kwargs = ml_collections.ConfigDict(dict(
      csv_path="bmd.csv",  # relative to data.root
      fold=0,              # the test fold of the 4-fold CV (Sec. IV-A); run 0..3 and average
      image_size=128,      # "The crops are resized to 128x128 pixels"
      channels=3,          # grey X-rays replicated to RGB, the input of an ImageNet backbone
  ))
  config.data.normalize = "imagenet"  # the input statistics of the ImageNet-pretrained EfficientNet
  # "random data augmentations including horizontal flips, rotations, and frame jitters"; the
  # paper gives no magnitudes (rotation 15 deg, 5 % jitter are ours, see data/augment.py).
  config.data.augment_kind = "bmd"
  config.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, degrees=15.0,
                                                       translate=0.05))
  config.data.views = 8    # batch augmentation (Hoffer et al. 2019): "augmentation multiple of 8"
  config.batch_size = 8    # "original batch size of 8"
  config.model.encoder = "efficientnet_b1"  # "EfficientNet-B1 [70] as our backbone"
  config.loss.reg = "l1"   # "we use L1 loss for supervision" (Table III: the best baseline)
  config.loss.gamma_con = 0.005  # Table IV: gamma_con in {0.0025, 0.005, 0.0075}; 0.005 reported
  config.loss.reg_units = "label"  # L1 in g/cm^2 as the paper's, so gamma_con keeps its balance
  config.optim.name = "sgd"      # "SGD ... learning rate of 10^-2, momentum of 0.9,
  config.optim.lr = 1e-2         #  and weight decay of 10^-4"
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.num_train_steps = 6000  # "trained for 6,000 iterations
  config.optim.schedule = "step"  # with learning rate decay of factor 0.1 at 3,000 and 4,500"
  config.optim.decay_boundaries = (0.5, 0.75)
  config.optim.decay_factor = 0.1
  config.optim.warmup_steps = 0
  config.eval_batch_size = 64
  config.log_every = 50
  config.eval_every = 250
  config.checkpoint_every = 500
  return config


def _echonet(config):
  """Sec. IV-B (LVEF from EchoNet-Dynamic videos), Training Details (after Ouyang et al. 2020)."""
  config.data.name = "echonet"
  config.data.kwargs = ml_collections.ConfigDict(dict(
      frames=32,           # "Clips of 32 frames,
      period=2,            #  sampled from the video at a rate of 1 in every 2 frames"
      size=112,            # "re-scaled to 112x112 pixels"
      train_window=64,     # frames (every 2nd) a training clip's random start is drawn from
  ))
  # "Frame jitter is applied as part of the augmentation process": a random 32-frame clip of the
  # decoded window, then one shift (EchoNet's pad = 12) for the whole clip; eval: the first clip.
  config.data.augment_kind = "echonet"
  config.data.augment = ml_collections.ConfigDict(dict(length=32, period=1, mode="random", pad=12))
  config.data.views = 2    # "we do not add additional batch augmentation operations": x_i, x'_i
  config.batch_size = 20   # "with a batch size of 20"
  config.model.encoder = "r2plus1d_18"  # "R2+1D ResNet [19]" (torchvision r2plus1d_18)
  config.loss.reg = "mse"  # "MSE is used as the regression loss function"
  config.loss.gamma_con = 0.75   # Table XI: 0.50 / 0.75 / 1.00 within noise; 0.75 the best MAE
  config.loss.reg_units = "label"  # MSE in EF points^2 as the paper's, so gamma_con keeps its balance
  config.optim.name = "sgd"      # "trained with SGD using a learning rate of 10^-4
  config.optim.lr = 1e-4         #  and momentum of 0.9"
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4  # EchoNet-Dynamic's reference code (Ouyang et al. 2020)
  # "over 45 epochs" of the release's 7,465 training videos; "use the validation set to choose the
  # best trained model over all epochs": validation and checkpoints every epoch.
  recipes.epochs(config, 7465, 45)
  config.optim.schedule = "step"                 #  with decay of factor 0.1 every 15 epochs"
  config.optim.decay_boundaries = (1 / 3, 2 / 3)
  config.optim.decay_factor = 0.1
  config.optim.warmup_steps = 0
  config.eval.clip_mode = "first"  # validation/test: the first clip (EchoNet's evaluation clip)
  config.eval_batch_size = 20
  config.log_every = 50
  return config


def _pretrain(config, bmd: bool):
  """Stage 1 of the two-stage scheme (Tables V / XII): "pretraining with only AdaCon loss"."""
  config.loss.gamma_reg = 0.0  # the regression branch is not trained in stage 1
  config.loss.gamma_con = 1.0  # "only AdaCon loss" [reading: unweighted]
  config.eval_with = "ridge"   # validation: a ridge probe of the frozen features (the head is idle)
  config.optim.schedule = "step"
  config.optim.decay_factor = 0.1
  if bmd:  # "SGD with a learning rate of 10^-2 for a total of 3,000 iterations and learning rate
    config.optim.lr = 1e-2     #  decay of factor 0.1 at 1,500 and 2,250 iterations"
    config.num_train_steps = 3000
    config.optim.decay_boundaries = (0.5, 0.75)
  else:    # "only AdaCon loss for 25 epochs, using a learning rate of 10^-4, momentum of 0.9,
    config.optim.lr = 1e-4     #  and decay of factor 0.1 at epochs 10 and 20"
    recipes.epochs(config, 7465, 25)
    config.optim.decay_boundaries = (10 / 25, 20 / 25)
  return config


def _finetune(config, bmd: bool):
  """Stage 2 (Tables V / XII): "fine-tuning with regression" of the whole network from stage 1."""
  config.method = "none"       # L_reg only: "Fine-tuning using L1 loss" / "fine-tuned with MSE loss"
  config.loss.gamma_reg = 1.0
  config.loss.gamma_con = 0.0
  # The stage-1 workdir (required: None is refused by the trainer), e.g.
  # --config.model.init_from=runs/adacon_bmd_pretrain/fold0: encoder and heads from its latest state.
  config.model.init_from = placeholder(str)
  config.optim.schedule = "step"
  config.optim.decay_factor = 0.1
  if bmd:  # "Fine-tuning using L1 loss was done with a learning rate of 10^-3 for a total of 3,000
    config.optim.lr = 1e-3     #  iterations and learning rate decay of 0.1 at 1,500 and 2,250"
    config.num_train_steps = 3000
    config.optim.decay_boundaries = (0.5, 0.75)
  else:    # "fine-tuned with MSE loss by training for 25 additional epochs, starting with a
    config.optim.lr = 1e-5     #  learning rate of 10^-5 and decaying with factor 0.1 at epochs 10 and 20"
    recipes.epochs(config, 7465, 25)
    config.optim.decay_boundaries = (10 / 25, 20 / 25)
  return config


def get_config(variant: str = "digits_angle"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r} of configs/adacon.py; expected one of "
                     f"{VARIANTS}.")
  config = run_config()  # the neutral base; the variant's recipe sets data, model and budget
  if variant in recipes.BUNDLED_VARIANTS:
    recipes.bundled(config, variant)
  config.method = "adacon"
  config.loss.contrastive.temperature = 1 / 150  # s = 150 (official SupConLoss_admargin scale_s).
  config.loss.reg = "l1"           # BMD: L1 (Sec. IV-A); EchoNet LVEF uses MSE (Sec. V-A).
  config.loss.gamma_reg = 1.0      # Eq. 8: gamma_reg fixed to 1,
  config.loss.gamma_con = 0.005    # gamma_con so both terms have similar size (Table IV: 0.005).
  config.loss.features = "projection"
  config.model.proj_dim = 128      # Sec. III-B: Dense -> ReLU -> Dense(128) -> L2 normalisation.
  data_set, _, stage = variant.partition("_")
  if data_set == "bmd":
    config = _bmd(config)
  elif data_set == "echonet":
    config = _echonet(config)
  if stage == "pretrain":
    return _pretrain(config, data_set == "bmd")
  if stage == "finetune":
    return _finetune(config, data_set == "bmd")
  return config
