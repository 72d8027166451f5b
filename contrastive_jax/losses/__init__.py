"""Contrastive and regression losses: pure, jit-able functions returning a float32 scalar.

Calling convention (METHODS.md): ``features [batch, views, dim]``, ``labels [batch]``; every row is an
anchor. Each contrastive loss also runs per shard inside ``jax.shard_map`` when given ``axis_name``:
it all-gathers features and labels, computes its own anchors' rows, and returns the global mean.
"""

from contrastive_jax.losses.accon import accon
from contrastive_jax.losses.binary import binary_contrastive
from contrastive_jax.losses.binary import binary_contrastive_combo
from contrastive_jax.losses.conr import conr
from contrastive_jax.losses.dystress import dystress
from contrastive_jax.losses.dystress import dystress_temperature
from contrastive_jax.losses.adacon import ECDF
from contrastive_jax.losses.adacon import adacon
from contrastive_jax.losses.adacon import fit_ecdf
from contrastive_jax.losses.imbalance import balanced_mse
from contrastive_jax.losses.imbalance import bin_counts
from contrastive_jax.losses.imbalance import fit_label_gmm
from contrastive_jax.losses.imbalance import lds_weights
from contrastive_jax.losses.metric_learning import adaptive_triplet
from contrastive_jax.losses.metric_learning import npair
from contrastive_jax.losses.mio import mio
from contrastive_jax.losses.ranksim import ranksim
from contrastive_jax.losses.regression import REGRESSION_LOSSES
from contrastive_jax.losses.regression import regression_loss
from contrastive_jax.losses.rnc import rnc
from contrastive_jax.losses.supcon import simclr
from contrastive_jax.losses.supcon import supcon
from contrastive_jax.losses.supremix import supremix
from contrastive_jax.losses.supremix import supremix_alphas

# Registry used by the trainer: config.method -> loss function.
CONTRASTIVE_LOSSES = {
    "simclr": simclr,
    "supcon": supcon,
    "adacon": adacon,
    "accon": accon,
    "rnc": rnc,
    "supremix": supremix,
    "conr": conr,
    "ranksim": ranksim,
    "npair": npair,
    "adaptive_triplet": adaptive_triplet,
    "binary_contrastive": binary_contrastive,
    "binary_contrastive_combo": binary_contrastive_combo,
    "mio": mio,
    "dystress": dystress,
}


def get_contrastive_loss(name: str):
  """The contrastive loss registered under ``name`` (ValueError listing the known names)."""
  if name not in CONTRASTIVE_LOSSES:
    raise ValueError(f"Unknown contrastive method {name!r}; expected one of "
                     f"{sorted(CONTRASTIVE_LOSSES)}.")
  return CONTRASTIVE_LOSSES[name]
