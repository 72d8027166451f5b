"""Training: immutable TrainState, data-parallel train step, loop and Orbax checkpointing."""

import importlib

# Imported on first use (PEP 562): ``contrastive_jax.train.defaults`` and ``run_checks`` (read by
# the config files and the launcher) must not import JAX.
_EXPORTS = {"train_and_evaluate": "contrastive_jax.train.loop",
            "TrainState": "contrastive_jax.train.state"}


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
