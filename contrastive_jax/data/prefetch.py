"""A background producer of training batches, so that the host's data work overlaps the device's steps.

:class:`Prefetcher` runs ``make(step)`` (a task's ``host_batch`` followed by its placement on the
devices, ``run.shard_batch``) for the steps ``start, start + 1, ...`` in one daemon thread, at most
``depth`` batches ahead of the loop. Each ready batch is already on the devices: the placement
(``jax.make_array_from_process_local_data`` / ``jax.device_put``) is issued by the producer right
after the batch is built, and is asynchronous, so the host-to-device copy of step ``s + 1`` overlaps
step ``s``. ``depth`` therefore bounds both the host and the device memory held by ready batches.

The batches stay a pure function of ``(seed, step)``: the producer only changes *when* ``make(step)``
runs, never what it computes, so resuming (the producer starts at the checkpoint's step) and the
multi-process slicing of a global batch are exactly those of the synchronous loop. ``depth = 0``
builds each batch in the calling thread (no thread at all).

An exception raised by ``make(step)`` is re-raised in the consumer's thread by :meth:`get` of that
step, the same exception object (its type and message kept) with a note naming the step. The
producer is stopped by :meth:`close` (or leaving the ``with`` block): it finishes at most the batch
it is building, which is dropped, and is joined.

Why a thread and not grain's or ``tf.data``'s iterators: the batch functions are already pure
functions of the step (their own checkpointable state is the step number), their decoding releases
the GIL (PIL, numpy) and is spread over the source's own decode threads, and what is left to overlap
is one call per step; a thread needs no pickling of the task and no extra processes.
Measured side by side (docs/benchmarks.md, ``benchmarks/input_pipeline.py``, quiet 2-core VM, 1,024
JPEGs -> batches of 128 uint8 224 x 224 x 3, two workers each): this thread over the sources' decode
threads 936 img/s at 1.98 CPU ms per image; grain's DataLoader 768 img/s (2.57 ms), grain's
MapDataset with ``mp_prefetch`` 925 img/s (2.16 ms). Both are at the two cores' decode + resize
ceiling (~1,020 img/s), so grain would not be faster, and this keeps one process.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional

_POLL_S = 0.05  # how often a blocked producer checks for close()


class Prefetcher:
  """``get(step)`` returns ``make(step)``, computed up to ``depth`` steps ahead in a thread.

  Args:
    make: ``step -> batch``, a pure function of the step (thread-safe: it runs in the producer).
    start: the first step that :meth:`get` will be asked for; later calls ask for the steps in
      order, ``start, start + 1, ...``.
    stop: one past the last step to build.
    depth: batches built ahead of the consumer (>= 0; 0: :meth:`get` calls ``make`` itself).
  """

  def __init__(self, make: Callable[[int], Any], start: int, stop: int, depth: int = 2):
    if isinstance(depth, bool) or int(depth) != depth or depth < 0:
      raise ValueError(f"prefetch depth must be an integer >= 0, got {depth!r}.")
    self._make, self._next, self._stop = make, int(start), int(stop)
    self._closed = threading.Event()
    self._queue: Optional[queue.Queue] = None
    self._thread: Optional[threading.Thread] = None
    if depth > 0 and self._next < self._stop:
      self._queue = queue.Queue(maxsize=int(depth))
      self._thread = threading.Thread(target=self._produce, name="contrastive_jax-prefetch",
                                      daemon=True)
      self._thread.start()

  def _put(self, item) -> bool:
    while not self._closed.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    for step in range(self._next, self._stop):
      if self._closed.is_set():
        return
      try:
        item = (step, self._make(step), None)
      except BaseException as exc:  # pylint: disable=broad-except  # re-raised by get(step)
        self._put((step, None, exc))
        return
      if not self._put(item):
        return

  def get(self, step: int) -> Any:
    """The batch of ``step`` (the next one in order); waits while the producer is behind.

    Raises:
      ValueError: ``step`` is not the next step in order, or the producer is closed.
      Exception: whatever ``make(step)`` raised, with a note naming the step.
    """
    if step != self._next:
      raise ValueError(f"Prefetcher: asked for step {step}, expected step {self._next}.")
    if self._closed.is_set():
      raise ValueError("Prefetcher: get() after close().")
    self._next += 1
    if self._queue is None:  # depth 0: in this thread, exceptions unchanged
      return self._make(step)
    got, batch, exc = self._queue.get()
    if got != step:  # pragma: no cover - the producer runs the steps in order
      raise RuntimeError(f"Prefetcher: got the batch of step {got} for step {step}.")
    if exc is not None:
      exc.add_note(f"(raised while building the training batch of step {step})")
      raise exc
    return batch

  def close(self) -> None:
    """Stops the producer (dropping any batch it holds) and joins it; idempotent."""
    self._closed.set()
    if self._thread is not None:
      while self._thread.is_alive():
        self._drain()
        self._thread.join(timeout=_POLL_S)
      self._drain()
      self._thread = None

  def _drain(self) -> None:
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
