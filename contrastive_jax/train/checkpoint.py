"""Orbax checkpointing: the latest ``keep`` states for resuming, and the best state by validation MAE.

Each checkpoint holds two items: ``state`` (step, params, batch_stats, opt_state, rng; the data position
is the step, since batches are a pure function of (seed, step)) and ``meta`` (JSON: best validation
metrics so far and the config fingerprint).

Crash safety: Orbax writes step ``s`` into ``<s>.orbax-checkpoint-tmp`` and renames it to ``<s>`` only
once every file (and ``commit_success.txt``) is written, and only renamed steps are listed. A run killed
at any moment, also in the middle of an asynchronous write, therefore never reads a partial checkpoint:
it resumes from the last complete one, and the unfinished temporary directory is deleted when the next
run opens the directory.

Any checkpoint can be read back into the current process/device layout, whatever layout wrote it (e.g.
2 processes x 4 devices, read on a laptop): :func:`load_checkpoint`, :func:`restore_params` and
:func:`restore_variables` return host NumPy arrays.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


def state_tree(state) -> dict:
  """The checkpointed part of a TrainState (no functions)."""
  return {name: getattr(state, name) for name in STATE_FIELDS}


def _replicated_targets(metadata_tree) -> Any:
  """Restore targets for every array of a checkpoint: its shape and dtype, fully replicated over the
  devices of the current process layout (the writer's sharding is ignored, so any layout reads any
  checkpoint). Leaves saved as ``None`` (e.g. optax's ``EmptyState``) stay ``None``."""
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("replica",)), P())

  def target(leaf):
    if leaf is None:
      return None
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)

  return jax.tree.map(target, metadata_tree, is_leaf=lambda x: x is None)


def _to_host(tree) -> Any:
  """Replicated ``jax.Array`` leaves -> NumPy (this process's copy; works with several processes)."""
  def host(x):
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x
  return jax.tree.map(host, tree)


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` for one directory.

  Args:
    directory: where the step directories live (created unless ``read_only``).
    max_to_keep: the number of latest checkpoints kept.
    async_save: write in a background thread (``save`` returns once the arrays are copied).
    read_only: open an existing directory for reading only (nothing is created or deleted).
  """

  def __init__(self, directory: str, max_to_keep: int, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep, create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save,
        # Temporary directories of writes that a crash left unfinished are deleted on opening.
        cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    """The newest complete step (temporary, unfinished writes are never listed)."""
    return self._manager.latest_step()

  def all_steps(self) -> Tuple[int, ...]:
    return tuple(sorted(self._manager.all_steps()))

  def save(self, state, meta: dict, force: bool = False) -> None:
    """Saves ``state`` and a snapshot of ``meta`` (asynchronously: later changes to ``meta`` by the
    caller must not reach the files being written)."""
    step = int(jax.device_get(state.step))
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_tree(state)),
        meta=ocp.args.JsonSave(copy.deepcopy(meta))), force=force)

  def keep_only(self, steps) -> None:
    """Deletes every saved step not in ``steps`` (collectively, with several processes)."""
    steps = set(steps)
    for step in self.all_steps():
      if step not in steps:
        self._manager.delete(step)

  def _check_step(self, step: Optional[int]) -> int:
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ValueError(f"`step`={step} has no checkpoint in {self.directory}; available steps: "
                       f"{list(steps)}.")
    return int(step)

  def restore(self, template_state, step: Optional[int] = None) -> Tuple[Any, dict]:
    """Restores ``step`` (default: latest) into the structure and shardings of ``template_state``."""
    step = self._check_step(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_tree(template_state))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return template_state.replace(**restored["state"]), dict(restored["meta"])

  def restore_tree(self, step: Optional[int] = None) -> Tuple[dict, dict]:
    """Restores ``step`` (default: latest) without a template, as host NumPy arrays.

    Works in any process/device layout, whichever layout wrote the checkpoint: the arrays are read
    with their saved shapes and dtypes and replicated over the current devices. With several
    processes every process must call this (Orbax reads collectively).

    Returns:
      ``(state, meta)``: ``state`` maps :data:`STATE_FIELDS` to NumPy pytrees (the optimizer state's
      tuples come back as lists), ``meta`` is the JSON item.
    """
    step = self._check_step(step)
    metadata = self._manager.item_metadata(step)["state"]
    targets = _replicated_targets(metadata.tree)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(targets), meta=ocp.args.JsonRestore()))
    return _to_host(dict(restored["state"])), dict(restored["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def saved_shapes(self, step: Optional[int] = None) -> dict:
    """``{'params': ..., 'batch_stats': ...}`` of ``step`` (default: latest) as nested dicts of
    array shapes (tuples), from the checkpoint's metadata: no array is read."""
    tree = self._manager.item_metadata(self._check_step(step))["state"].tree
    shapes = lambda node: ({k: shapes(v) for k, v in node.items()} if isinstance(node, dict)
                           else tuple(getattr(node, "shape", ())))
    return {name: shapes(tree.get(name) or {}) for name in ("params", "batch_stats")}


def load_checkpoint(directory: str, step: Optional[int] = None) -> Tuple[dict, dict]:
  """Reads one checkpoint of a run as host NumPy arrays, in the current process/device layout.

  Args:
    directory: a checkpoint directory of a run: ``<workdir>/checkpoints`` (latest states) or
      ``<workdir>/best`` (best state by validation MAE).
    step: the step to read; default the newest complete one.

  Returns:
    ``(state, meta)`` as :meth:`Checkpointer.restore_tree`.

  Raises:
    FileNotFoundError: ``directory`` does not exist or holds no complete checkpoint.
    ValueError: ``step`` is not one of the saved steps (the available ones are listed).
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Checkpoint directory {directory} does not exist (expected "
                            "<workdir>/checkpoints or <workdir>/best).")
  checkpointer = Checkpointer(directory, max_to_keep=1, read_only=True)
  try:
    return checkpointer.restore_tree(step)
  finally:
    checkpointer.close()


def restore_params(directory: str, step: Optional[int] = None) -> dict:
  """The model parameters of a checkpoint as host NumPy arrays (see :func:`load_checkpoint`)."""
  return load_checkpoint(directory, step)[0]["params"]


def restore_variables(directory: str, step: Optional[int] = None) -> dict:
  """``{'params', 'batch_stats'}`` of a checkpoint as host NumPy arrays, ready for
  ``model.apply(variables, x, train=False)`` (see :func:`load_checkpoint`)."""
  state, _ = load_checkpoint(directory, step)
  return {"params": state["params"], "batch_stats": state["batch_stats"]}
