"""Contrastive and regression losses: pure, jit-able functions returning a float32 scalar.

Calling convention (METHODS.md): ``features [batch, views, dim]``, ``labels [batch]``; every row is an
anchor. Each contrastive loss also runs per shard inside ``jax.shard_map`` when given ``axis_name``:
it all-gathers features and labels, computes its own anchors' rows, and returns the global mean.
The trainer finds a method's loss, inputs and options in :mod:`contrastive_jax.losses.registry`.
"""

from contrastive_jax.losses.accon import accon
from contrastive_jax.losses.binary import binary_contrastive
from contrastive_jax.losses.binary import binary_contrastive_combo
from contrastive_jax.losses.conr import conr
from contrastive_jax.losses.dcl import dcl
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

from contrastive_jax.losses import registry
from contrastive_jax.losses.registry import Method
from contrastive_jax.losses.registry import get_method
from contrastive_jax.losses.registry import register
from contrastive_jax.losses.registry import unregister

# config.method -> loss function: a read-only, live view of the method registry (registry.py).
CONTRASTIVE_LOSSES = registry.LossView()


def get_contrastive_loss(name: str):
  """The contrastive loss registered under ``name`` (ValueError listing the known names)."""
  return get_method(name).loss
