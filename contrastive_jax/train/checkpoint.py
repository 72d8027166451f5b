"""Orbax checkpointing: the latest ``keep`` states for resuming, and the best state by validation MAE.

Each checkpoint holds two items: ``state`` (step, params, batch_stats, opt_state, rng; the data position
is the step, since batches are a pure function of (seed, step)) and ``meta`` (JSON: best validation
metrics so far and the config fingerprint).

Crash safety: Orbax writes step ``s`` into ``<s>.orbax-checkpoint-tmp`` and renames it to ``<s>`` only
once every file (and ``commit_success.txt``) is written, and only renamed steps are listed. A run killed
at any moment, also in the middle of an asynchronous write, therefore never reads a partial checkpoint:
it resumes from the last complete one, and the unfinished temporary directory is deleted when the next
run opens the directory.

Integrity: Orbax checks no checksum of the array data, so each save also stores a SHA-256 digest of
every array (computed from the host copy before writing) in the ``meta`` item, and every restore
checks the arrays it read against them. A checkpoint whose arrays do not match (a flipped bit) or
that cannot be read at all (a truncated file, a missing ``_METADATA``, bad JSON) is reported with a
warning naming it and the older complete checkpoint used instead; a writable directory renames it
to ``<step>.corrupt-<time>`` (kept for inspection, no longer listed, so it neither rotates good
checkpoints away nor blocks a later save of that step). Checkpoints written before digests were
stored are read unchecked.

Any checkpoint can be read back into the current process/device layout, whatever layout wrote it (e.g.
2 processes x 4 devices, read on a laptop): :func:`load_checkpoint`, :func:`restore_params` and
:func:`restore_variables` return host NumPy arrays.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import logging
import os
import sys
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")
# The ``meta`` key holding the digests of the ``state`` arrays (removed from the meta restore returns).
DIGESTS_KEY = "state_sha256"

log = logging.getLogger("contrastive_jax")


def _silence_orphaned_reads() -> None:
  """After a failed read, TensorStore may complete the read's other futures once Orbax's asyncio
  loop has closed; Python then prints "Exception ignored ... RuntimeError: Event loop is closed"
  tracebacks after our one warning or error line. Drops exactly those (other unraisable exceptions
  reach the previous hook); installed once, only after a read failed."""
  previous = sys.unraisablehook
  if getattr(previous, "_contrastive_jax", False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  hook._contrastive_jax = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


class CorruptCheckpointError(ValueError):
  """A checkpoint's arrays do not match the digests stored with them."""


def _path_name(path) -> str:
  """``opt_state/1/0/mu/Dense_0/kernel`` for a key path, the same whether the tree holds named tuples
  (a template) or dicts and lists (read without one)."""
  def name(key):
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return "/".join(name(k) for k in path)


def _host_array(leaf) -> Optional[np.ndarray]:
  """The whole array on the host, or ``None`` when this process does not hold all of it."""
  if isinstance(leaf, jax.Array):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if not leaf.is_fully_replicated:
      return np.asarray(leaf) if leaf.is_fully_addressable else None
    return np.asarray(leaf.addressable_data(0))
  return np.asarray(leaf)


def _host_arrays(tree) -> dict:
  """``{path name: host array}`` of the arrays of ``tree`` this process holds whole."""
  arrays = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = _host_array(leaf)
    if array is not None:
      arrays[_path_name(path)] = np.ascontiguousarray(array)
  return arrays


def _digest(array: np.ndarray) -> str:
  """``'<dtype>:<sha256 of dtype, shape and bytes>'``."""
  digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  digest.update(array.reshape(-1).view(np.uint8))
  return f"{array.dtype.name}:{digest.hexdigest()}"


def state_digests(tree) -> dict:
  """SHA-256 of every array of ``tree`` (its dtype, shape and bytes), keyed by its path. Arrays that
  this process holds only part of are left out (the trainers' states are replicated)."""
  return {name: _digest(array) for name, array in _host_arrays(tree).items()}


def verify_digests(tree, digests: Optional[dict]) -> None:
  """Raises :class:`CorruptCheckpointError` naming the arrays of ``tree`` that differ from ``digests``
  (``None``: a checkpoint written without digests, not checked).

  An array restored into another dtype than it was saved with (e.g. a template's Python int step)
  is compared in the saved dtype when that conversion is exact, else not checked."""
  if digests is None:
    return
  arrays = _host_arrays(tree)
  bad = []
  for name, digest in sorted(digests.items()):
    array = arrays.get(name)
    if array is None:
      continue
    dtype = jnp.dtype(digest.partition(":")[0])
    if array.dtype != dtype:
      converted = array.astype(dtype)
      if not np.array_equal(converted.astype(array.dtype), array):
        continue
      array = converted
    if _digest(array) != digest:
      bad.append(name)
  if bad or (digests and not set(digests) & set(arrays)):
    names = bad or sorted(digests)
    raise CorruptCheckpointError(
        f"{len(names)} array(s) do not match their stored SHA-256 digests: "
        + ", ".join(names[:3]) + (", ..." if len(names) > 3 else ""))


def _one_line(error: BaseException, limit: int = 300) -> str:
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit] + "..."


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
    self.read_only = read_only
    self._good = set()  # Steps saved by this object or read back and verified.
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
    tree = state_tree(state)
    meta = {**copy.deepcopy(meta), DIGESTS_KEY: state_digests(tree)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=force)
    self._good.add(step)

  def last_good_step(self) -> Optional[int]:
    """The newest complete step that this object saved or read back verified (``None``: none)."""
    good = [step for step in self.all_steps() if step in self._good]
    return good[-1] if good else None

  def describe_last_good(self) -> str:
    """For error messages: the checkpoint a re-run would resume from, or that there is none."""
    step = self.last_good_step()
    if step is None:
      return (f"no checkpoint has been written to {self.directory} yet, so a re-run starts from "
              "the beginning")
    return f"the last good checkpoint (step {step}) in {self.directory} is intact"

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

  def _quarantine(self, step: int) -> str:
    """Renames a corrupt step directory out of Orbax's listing (collectively: process 0 renames)."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    target = os.path.join(self.directory, f"{step}.corrupt-{stamp}")
    if jax.process_index() == 0:
      os.rename(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint_quarantine_{step}")
    self._manager.reload()
    return target

  def _verified(self, step: Optional[int], read: Callable[[int], Tuple[dict, dict]]):
    """``read(step)`` checked against its digests; with ``step=None`` the newest step that reads and
    checks, moving corrupt or unreadable newer ones aside (see the module docstring)."""
    candidates = [self._check_step(step)] if step is not None else list(reversed(self.all_steps()))
    if not candidates:
      self._check_step(None)  # raises FileNotFoundError
    failures = []
    for candidate in candidates:
      try:
        tree, meta = read(candidate)
        meta = dict(meta)
        verify_digests(tree, meta.pop(DIGESTS_KEY, None))
      except Exception as e:  # pylint: disable=broad-except
        # Anything Orbax or TensorStore raise on bad files (ValueError, OSError, KeyError, ...).
        _silence_orphaned_reads()
        failures.append((candidate, e))
        continue
      if failures:
        bad = ", ".join(f"step {s} ({_one_line(e)})" for s, e in failures)
        moved = "" if self.read_only else " Moved aside: " + ", ".join(
            self._quarantine(s) for s, _ in failures) + "."
        log.warning("Corrupt or unreadable checkpoint(s) in %s: %s. Using the previous complete "
                    "checkpoint, step %d, instead.%s", self.directory, bad, candidate, moved)
      self._good.add(candidate)
      return tree, meta
    if step is not None:
      raise ValueError(f"The checkpoint of step {step} in {self.directory} is corrupt or "
                       f"unreadable: {_one_line(failures[0][1])}.")
    raise ValueError(
        f"No readable checkpoint in {self.directory}: " + "; ".join(
            f"step {s}: {_one_line(e)}" for s, e in failures)
        + ". Move the directory aside to start afresh (or pass another --workdir).")

  def read_meta(self) -> dict:
    """The JSON ``meta`` item alone (no arrays are read) of the newest step whose meta reads (see
    :meth:`restore` for the checks of the arrays); ``{}`` if there is none."""
    for step in reversed(self.all_steps()):
      try:
        meta = dict(self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])
      except Exception:  # pylint: disable=broad-except  # restore() reports and moves it aside.
        continue
      meta.pop(DIGESTS_KEY, None)
      return meta
    return {}

  def restore(self, template_state, step: Optional[int] = None) -> Tuple[Any, dict]:
    """Restores ``step`` (default: the newest that reads and verifies) into the structure and
    shardings of ``template_state``.

    Raises:
      ValueError: no candidate step reads and matches its digests (each reason is named).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_tree(template_state))

    def read(step):
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      return dict(restored["state"]), restored["meta"]

    tree, meta = self._verified(step, read)
    return template_state.replace(**tree), meta

  def restore_tree(self, step: Optional[int] = None) -> Tuple[dict, dict]:
    """Restores ``step`` (default: the newest that reads and verifies, as :meth:`restore`) without
    a template, as host NumPy arrays.

    Works in any process/device layout, whichever layout wrote the checkpoint: the arrays are read
    with their saved shapes and dtypes and replicated over the current devices. With several
    processes every process must call this (Orbax reads collectively).

    Returns:
      ``(state, meta)``: ``state`` maps :data:`STATE_FIELDS` to NumPy pytrees (the optimizer state's
      tuples come back as lists), ``meta`` is the JSON item.
    """
    def read(step):
      metadata = self._manager.item_metadata(step)["state"]
      targets = _replicated_targets(metadata.tree)
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(targets), meta=ocp.args.JsonRestore()))
      return _to_host(dict(restored["state"])), restored["meta"]

    return self._verified(step, read)

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
    ValueError: ``step`` is not one of the saved steps (the available ones are listed), or no
      checkpoint reads and matches its digests (with ``step=None`` a corrupt newest one is skipped
      with a warning).
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
