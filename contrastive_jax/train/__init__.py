"""Training: immutable TrainState, data-parallel train step, loop and Orbax checkpointing."""

from contrastive_jax.train.loop import train_and_evaluate
from contrastive_jax.train.state import TrainState
