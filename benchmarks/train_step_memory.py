r"""Activation memory and time of one SimCLR train step, one encoder pass vs ``config.micro_batch``.

    python benchmarks/train_step_memory.py --batches 256,1024,4096 --micro 128 --time-up-to 256
    python benchmarks/train_step_memory.py --batches 256 --micro 64 --unroll false --time-up-to 0

Builds the trainer's own step (``configs/simclr.py:cifar10``: ResNet-18 with the CIFAR stem, 32x32x3
inputs, two views, the blockwise NT-Xent) over all local devices and compiles it for each global
batch, with the encoder run on all rows at once and, by gradient caching, ``--micro`` rows at a time
per device. Memory is XLA's account of the compiled step (``memory_analysis()``): the temporaries
beyond its inputs and outputs, i.e. the activations and the loss' working set. For batches up to
``--time-up-to`` it also times the step (median of ``--reps`` after a warm-up, ``block_until_ready``).
Prints a markdown table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import simclr  # pylint: disable=wrong-import-position
from contrastive_jax import models  # pylint: disable=wrong-import-position
from contrastive_jax.train import loop  # pylint: disable=wrong-import-position
from contrastive_jax.train.optim import make_optimizer  # pylint: disable=wrong-import-position
from contrastive_jax.train.state import TrainState  # pylint: disable=wrong-import-position
from contrastive_jax.train.step import make_train_step  # pylint: disable=wrong-import-position


def build(batch: int, micro_batch, image=32, unroll=None):
  """(compiled step, state, batch) of ``simclr:cifar10`` at global ``batch`` samples;
  ``unroll``: ``config.micro_batch_unroll``."""
  config = simclr.get_config("cifar10")
  config.micro_batch = micro_batch
  config.micro_batch_unroll = unroll
  model = models.build_model(config.model, axis_name=loop.AXIS)
  mesh = loop.make_mesh()
  x = np.random.default_rng(0).integers(0, 256, size=(batch, image, image, 3), dtype=np.uint8)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, image, image, 3)), train=False)
  tx, schedule = make_optimizer(config.optim, 100)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}), rng=jax.random.PRNGKey(1))
  augment = loop.make_augment_fn(config, "image")
  step = make_train_step(model, config, mesh, augment, schedule)
  data = {"x": jnp.asarray(x), "y": jnp.zeros((batch,)), "y_norm": jnp.zeros((batch,))}
  return step.lower(state, data).compile(), state, data


def measure(batch: int, micro_batch, timed: bool, reps: int, unroll=None) -> dict:
  start = time.perf_counter()
  compiled, state, data = build(batch, micro_batch, unroll=unroll)
  row = {"batch": batch, "rows_per_device": 2 * batch // jax.device_count(),
         "micro_batch": micro_batch, "compile_s": time.perf_counter() - start,
         "temp_bytes": compiled.memory_analysis().temp_size_in_bytes, "median_s": None}
  if timed:
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, data)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    row["median_s"], row["loss"] = statistics.median(times), float(metrics["loss"])
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="256,1024,4096", help="global batch sizes (samples)")
  parser.add_argument("--micro", type=int, default=128, help="rows per device per encoder pass")
  parser.add_argument("--time-up-to", type=int, default=256, help="time batches up to this size")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--unroll", default="auto", choices=("auto", "true", "false"),
                      help="micro-batch loop: unrolled or lax.scan (auto: unrolled on CPU only)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  unroll = {"auto": None, "true": True, "false": False}[args.unroll]
  device = jax.devices()[0]
  print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {device.platform}: "
        f"{device.device_kind} x {jax.device_count()}, jax {jax.__version__}; micro-batch loop: "
        f"{args.unroll}", flush=True)
  print("| global batch | rows per device | micro_batch | XLA temporaries | step time |")
  print("|---:|---:|---:|---:|---:|")
  rows = []
  for batch in (int(b) for b in args.batches.split(",")):
    for micro in (None, args.micro):
      row = measure(batch, micro, batch <= args.time_up_to, args.reps, unroll)
      rows.append(row)
      step = "" if row["median_s"] is None else f"{row['median_s'] * 1e3:.0f} ms"
      print(f"| {batch:,} | {row['rows_per_device']:,} | {micro or 'all'} | "
            f"{row['temp_bytes'] / 2 ** 20:.1f} MiB | {step} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"command": " ".join(["python"] + sys.argv), "device": device.device_kind,
                 "unroll": args.unroll,
                 "platform": device.platform, "devices": jax.device_count(),
                 "jax": jax.__version__, "python": platform.python_version(),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "rows": rows},
                f, indent=1)


if __name__ == "__main__":
  main()
