"""Metric writing: console progress, TensorBoard event files (tensorboardX) and a JSON-lines log.

``clu.metric_writers`` would be the usual choice, but it imports TensorFlow for its summary writer and
TensorFlow must not be required to train; tensorboardX writes the same event files with protobuf only.
Only process 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import jax


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class MetricWriter:
  """Writes scalars to ``workdir/tensorboard`` and ``workdir/metrics.jsonl``; prints progress."""

  def __init__(self, workdir: str, enabled: bool = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # pragma: no cover - tensorboardX is a declared dependency
        logging.getLogger("contrastive_jax").warning("tensorboardX is not installed: no TensorBoard event files.")
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


class Progress:
  """Step, loss, throughput and ETA on the console every ``every`` steps.

  The clock starts at :meth:`restart_clock` (called after the first step, which includes
  compilation; :meth:`compiling` and it log how long compiling took). The throughput is that of the
  steps since the previous line, without the time spent inside :meth:`paused` (evaluation,
  checkpoints), so a change of speed shows at once instead of being averaged into the whole run. The
  ETA is the remaining steps at that recent step time plus the evaluation / checkpoint time per step
  measured so far. A line with no timed step since the clock started shows ``-- ex/s | ETA --``.
  The time spent inside :meth:`waiting` (the loop waiting for its next batch) is shown as its share
  of that interval's time, ``| data 3%``: near 0 while the host keeps ahead of the device, large when
  the input pipeline is the bottleneck.

  The line shows the loss, then in parentheses the task's ``terms`` (``(label, metric key)``; by
  default the regression and contrastive terms of AdaCon Eq. 8), then its ``shown`` metrics
  (``(label, metric key, format)``, e.g. a pretext task's accuracy), the learning rate and the rate.
  """

  DEFAULT_TERMS = (("reg", "loss_reg"), ("con", "loss_con"))

  def __init__(self, total_steps: int, first_step: int, examples_per_step: int,
               terms=DEFAULT_TERMS, shown=()):
    self.total, self.examples = total_steps, examples_per_step
    self.terms, self.shown = tuple(terms), tuple(shown)
    self._t0, self._s0 = time.perf_counter(), first_step
    self._paused = 0.0  # seconds inside paused() since the clock started
    self._waited = 0.0  # seconds inside waiting() since the clock started
    self._last = (self._t0, first_step, 0.0, 0.0)  # (time, step, paused, waited) at the previous line
    self._compile_t0 = None

  def compiling(self) -> None:
    """Logs that the first step (which compiles the train step) starts; :meth:`restart_clock` then
    logs how long it took."""
    self._compile_t0 = time.perf_counter()
    logging.getLogger("contrastive_jax").info("Compiling the train step...")

  def restart_clock(self, step: int) -> None:
    """Restart the throughput clock (after compilation, so it does not count in the ETA)."""
    now = time.perf_counter()
    if self._compile_t0 is not None:
      logging.getLogger("contrastive_jax").info("Compiled in %.1f s (the first step included).",
                                                now - self._compile_t0)
      self._compile_t0 = None
    self._t0, self._s0 = now, step
    self._paused = self._waited = 0.0
    self._last = (now, step, 0.0, 0.0)

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside (evaluation, checkpoint saves) is left out of the throughput."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - start

  @contextlib.contextmanager
  def waiting(self):
    """Time spent inside (waiting for the next batch) is reported as the ``data`` share."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._waited += time.perf_counter() - start

  def line(self, step: int, metrics: dict) -> str:
    now = time.perf_counter()
    last_time, last_step, last_paused, last_waited = self._last
    if step > last_step:  # The steps since the previous line, evaluation and checkpoints excluded.
      elapsed = max(now - last_time - (self._paused - last_paused), 1e-9)
      per_step = elapsed / (step - last_step)
      data = min(max((self._waited - last_waited) / elapsed, 0.0), 1.0)
      self._last = (now, step, self._paused, self._waited)
      overhead = self._paused / max(step - self._s0, 1)  # evaluation + checkpoint seconds per step
      rate = (f"{self.examples / per_step:,.0f} ex/s | "
              f"ETA {_format_seconds((per_step + overhead) * (self.total - step))} | "
              f"data {100 * data:.0f}%")
    else:  # nothing timed since compilation yet
      rate = "-- ex/s | ETA --"
    text = f"step {step}/{self.total} | loss {metrics['loss']:.4f}"
    if self.terms:
      text += " (" + ", ".join(f"{label} {metrics[key]:.4f}" for label, key in self.terms) + ")"
    for label, key, fmt in self.shown:
      text += f" | {label} {metrics[key]:{fmt}}"
    return f"{text} | lr {metrics['lr']:.3g} | {rate}"
