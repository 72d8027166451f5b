"""The immutable training state: a pytree of step, params, batch statistics, optimizer state and RNG."""

from __future__ import annotations

from typing import Any

import jax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """flax ``TrainState`` plus BatchNorm statistics and the run's base PRNG key.

  ``rng`` never changes: the key of step ``s`` is ``fold_in(rng, s)`` and that of sample ``i`` in it
  ``fold_in(fold_in(rng, s), i)``, so augmentation is a pure function of (seed, step, sample) and a
  resumed run (or one on a different number of devices) draws exactly the same augmentations.
  """
  batch_stats: Any
  rng: jax.Array
