"""contrastive_jax: contrastive learning for regression and self-supervised pretraining in JAX/Flax.

Importing the package has no side effects. Sub-packages:

* ``contrastive_jax.losses``   pure loss functions (dense or per-shard with ``axis_name``)
* ``contrastive_jax.pairwise`` the row-sharded similarity engine shared by the losses
* ``contrastive_jax.models``   Flax linen encoders and heads
* ``contrastive_jax.data``     bundled demo data, batching, on-device augmentation
* ``contrastive_jax.train``    TrainState, train step, loop, Orbax checkpointing
* ``contrastive_jax.evaluate`` regression metrics
* ``contrastive_jax.projects`` research projects (jigsaw pretext, CoWPro): data, model, task together
"""

import importlib

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that ``import contrastive_jax.train.defaults`` (every config
# file) does not import JAX: the launcher reports a bad config or flag in a fraction of a second.
_SUBPACKAGES = ("data", "evaluate", "losses", "models", "pairwise", "projects")


def __getattr__(name):
  if name in _SUBPACKAGES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SUBPACKAGES))
