"""Orbax checkpointing: the latest ``keep`` states for resuming, and the best state by validation MAE.

Each checkpoint holds two items: ``state`` (step, params, batch_stats, opt_state, rng; the data position
is the step, since batches are a pure function of (seed, step)) and ``meta`` (JSON: best validation
metrics so far and the config fingerprint). Orbax writes a step to a temporary directory and renames
it when complete, so a run killed mid-write never leaves a readable partial checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


def state_tree(state) -> dict:
  """The checkpointed part of a TrainState (no functions)."""
  return {name: getattr(state, name) for name in STATE_FIELDS}


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` for one directory."""

  def __init__(self, directory: str, max_to_keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, state, meta: dict, force: bool = False) -> None:
    step = int(jax.device_get(state.step))
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_tree(state)), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, template_state, step: Optional[int] = None) -> Tuple[Any, dict]:
    """Restores ``step`` (default: latest) into the structure and shardings of ``template_state``."""
    step = self._manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_tree(template_state))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return template_state.replace(**restored["state"]), dict(restored["meta"])

  def restore_tree(self, step: Optional[int] = None) -> Tuple[dict, dict]:
    """Restores ``step`` (default: latest) as plain arrays, without a template (for inspection)."""
    step = self._manager.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return dict(restored["state"]), dict(restored["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
