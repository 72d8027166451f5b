"""contrastive_jax: contrastive learning for regression and self-supervised pretraining in JAX/Flax.

Importing the package has no side effects. Sub-packages:

* ``contrastive_jax.losses``   pure loss functions (dense or per-shard with ``axis_name``)
* ``contrastive_jax.pairwise`` the row-sharded similarity engine shared by the losses
* ``contrastive_jax.models``   Flax linen encoders and heads
* ``contrastive_jax.data``     bundled demo data, batching, on-device augmentation
* ``contrastive_jax.train``    TrainState, train step, loop, Orbax checkpointing
* ``contrastive_jax.evaluate`` regression metrics
"""

from contrastive_jax import data
from contrastive_jax import evaluate
from contrastive_jax import losses
from contrastive_jax import models
from contrastive_jax import pairwise

__version__ = "0.1.0"
