"""An exclusive lock on a run's workdir, so that two runs never write the same checkpoints.

Two runs on one workdir would both write ``checkpoints/<step>`` (Orbax then hangs or crashes on the
other run's temporary directories) and interleave their metrics. :func:`workdir_lock` takes
``<workdir>/.lock``: an ``fcntl.flock`` on the open file, which the kernel releases when the owning
process dies however it dies, plus the owner's ``{host, pid, started}`` in the file for the message
that refuses a second run.

* Held by a live run: the second run is refused with a ``ValueError`` (one ``error:`` line from the
  launcher) naming the workdir and the owner.
* Left behind by a run that died (SIGKILL, a lost machine): on the same host the ``flock`` is free,
  so the lock is stale and is taken over with a warning. A file naming another host (a workdir on a
  network filesystem) cannot be checked from here: the run is refused, saying to delete the file if
  no run is alive there.
* Released (and the file deleted) on every exit of the trainer: return, exception, SIGTERM stop.

With several processes (one run over several hosts or processes), process 0 takes the lock alone
and tells the others whether it got it, so that they all stop together.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import json
import logging
import os
import socket
from typing import Callable, Optional

import jax
import numpy as np

LOCK_NAME = ".lock"

log = logging.getLogger("contrastive_jax")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by another user.
    return True
  return True


def _read_owner(fd: int) -> Optional[dict]:
  """The JSON in the lock file, ``None`` if empty, ``{}`` if unreadable."""
  try:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
  except OSError:
    return {}
  if not text:
    return None
  try:
    owner = json.loads(text)
  except ValueError:
    return {}
  return owner if isinstance(owner, dict) else {}


def _describe(owner: Optional[dict]) -> str:
  if not owner:
    return "an unknown owner"
  return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started "
          f"{owner.get('started', '?')})")


def _acquire(path: str, workdir: str) -> int:
  """Takes the lock; returns the open file descriptor that holds it."""
  host, pid = socket.gethostname(), os.getpid()
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      flock_works = True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        owner = _read_owner(fd)
        os.close(fd)
        raise ValueError(
            f"The workdir {workdir} is in use by another run: {_describe(owner)} holds {path}. "
            "Wait for that run to finish or stop it, or use another --workdir.") from None
      flock_works = False  # e.g. a filesystem without flock: only the file's contents tell.
    # A releasing owner deletes the file while still holding it: if ours was deleted, start over.
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      same = False
    if not same:
      os.close(fd)
      continue
    owner = _read_owner(fd)
    if owner is not None:
      owner_host, owner_pid = owner.get("host"), owner.get("pid")
      if owner_host == host and isinstance(owner_pid, int) and (
          flock_works or owner_pid == pid or not _pid_alive(owner_pid)):
        log.warning("Taking over the stale lock %s of a run that is gone (%s).", path,
                    _describe(owner))
      else:
        os.close(fd)
        if owner_host == host:  # Without flock, a live pid on this host is trusted.
          raise ValueError(f"The workdir {workdir} is in use by another run: {_describe(owner)} "
                           f"holds {path}. Wait for that run to finish or stop it, or use another "
                           "--workdir.")
        raise ValueError(
            f"The workdir {workdir} is locked by {_describe(owner)} ({path}), which cannot be "
            f"checked from host {host}. If no run is alive there, delete {path}; otherwise wait for "
            "it or use another --workdir.")
    os.ftruncate(fd, 0)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.pwrite(fd, json.dumps({"host": host, "pid": pid, "started": started}).encode(), 0)
    os.fsync(fd)
    return fd


def _release(path: str, fd: int) -> None:
  """Deletes the lock file while still holding it (see the check in :func:`_acquire`), then unlocks."""
  try:
    os.unlink(path)
  except FileNotFoundError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds ``<workdir>/.lock`` for the duration of the ``with`` block (creating ``workdir``).

  Raises:
    ValueError: another live run holds the lock, or a lock written on another host is present.
  """
  workdir = os.path.abspath(workdir)
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  fd, error = None, None
  if jax.process_index() == 0:
    try:
      fd = _acquire(path, workdir)
    except ValueError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    locked = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not locked and error is None:
      error = ValueError(f"The workdir {workdir} is in use by another run (see process 0's error).")
  if error is not None:
    if created and not os.listdir(workdir):
      os.rmdir(workdir)
    raise error
  try:
    yield
  finally:
    if fd is not None:
      _release(path, fd)
    if created and jax.process_index() == 0:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # Only if the run wrote nothing (e.g. refused a bad config).


def locked_workdir(trainer: Callable) -> Callable:
  """Decorates ``trainer(config, workdir, ...)`` to run under :func:`workdir_lock` of ``workdir``."""

  @functools.wraps(trainer)
  def locked(config, workdir, *args, **kwargs):
    with workdir_lock(workdir):
      return trainer(config, workdir, *args, **kwargs)

  return locked
