r"""Forward+backward time and memory of the contrastive losses, dense vs blockwise, M = 2^11 .. 2^20.

    python benchmarks/losses.py --json /tmp/losses.json            # every loss, both modes
    python benchmarks/losses.py --losses supcon,adacon --modes blockwise --min-log2 15 --max-log2 20
    python benchmarks/losses.py --shard --modes blockwise,ring --sizes 16384   # over all devices
    python benchmarks/losses.py --losses supcon,adacon,accon --modes dense,blockwise,fused \
        --sizes 2048,32768,1048576 --reps 3                                    # the Pallas kernel

``--modes fused`` runs ``impl='fused'`` (the Pallas kernel of ``pairwise.fused``: every loss of the
SupCon family, simclr, supcon, adacon, accon, dystress, mio, bcl; rnc records the ValueError as its
status) with ``--fused-tile`` (default: the library's ``DEFAULT_FUSED_TILE``), not ``--tile``; with
``--shard``, ``fused_ring`` runs it on each step of the ring. Off GPU it runs in Pallas interpret
mode: its times there say nothing about the kernel.

For each loss, mode (``impl``) and number of rows ``M = batch * views`` (two views, ``d = 128``) it
jit-compiles ``jax.value_and_grad`` of the loss w.r.t. the features, runs it once to warm up, then
times ``--reps`` runs with ``block_until_ready`` and reports the median. Memory is XLA's own account
of the compiled program (``memory_analysis()``): the temporaries it allocates beyond the inputs and
outputs, i.e. the peak device memory the loss adds. A configuration that runs out of memory (or
exceeds ``--max-seconds`` per run) is recorded and the larger sizes of that loss/mode are skipped.

The floor of each run is ``max(matmul FLOPs / measured matmul rate, exps / measured exp rate)`` with
``6 n N d`` FLOPs (the forward similarity matmul and the two of the backward pass) and ``2 n N`` exps
(the forward log-sum-exp and the backward softmax) for the ``n x N`` pair matrix; the rates are
measured at the start on the same device (a large square matmul in the loss' precision and a fused
chain of exps). Each time is also reported as a multiple of that floor.

``--shard`` runs each loss per shard inside ``jax.shard_map`` over all local devices (the batch
split evenly, as the trainer does): ``blockwise`` all-gathers the columns, ``ring`` passes them around
the devices with ``ppermute`` (``impl='ring'``). Memory is then per device, and the floor is the
per-device share of the work. (On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
splits one host into 8 devices that share its cores: their memory accounts are real, their times
are not those of 8 accelerators.)

Prints a table (markdown) and writes every number, the device and the command to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import contrastive_jax as cj  # pylint: disable=wrong-import-position

L = cj.losses
DIM = 128


def _labels(rng, batch):
  """Integer-valued labels with ~8 samples per value (supcon/accon positives, rnc ties)."""
  return rng.integers(0, max(batch // 8, 2), size=batch).astype(np.float32)


def make_loss(name: str, impl: str, tile, matmul_dtype, axis_name=None, rnc_options=None):
  """``loss(features, labels, cdf)`` for ``name`` (per shard when ``axis_name`` is set);
  ``rnc_options``: rnc's ``variant`` / ``search_method`` / ``search_radix_bits``."""
  mode = dict(impl=impl, matmul_dtype=matmul_dtype, axis_name=axis_name)
  if tile is not None:
    mode["tile"] = tile
  if name == "rnc":
    mode.pop("matmul_dtype")
    mode.update(rnc_options or {})
    if tile is not None:
      mode["tile"] = tile[0] if isinstance(tile, tuple) else tile
  table = {
      "simclr": lambda f, y, c: L.simclr(f, **mode),
      "supcon": lambda f, y, c: L.supcon(f, y, **mode),
      "adacon": lambda f, y, c: L.adacon(f, y, c, **mode),
      "accon": lambda f, y, c: L.accon(f, y, label_range=float(f.shape[0] // 8), **mode),
      "dystress": lambda f, y, c: L.dystress(f, 0.07, 0.2, **mode),
      "mio": lambda f, y, c: L.mio(f, version=3, **mode),
      "bcl": lambda f, y, c: L.binary_contrastive(f, **mode),
      "rnc": lambda f, y, c: L.rnc(f, y, **mode),
      "supremix": lambda f, y, c: L.supremix(f, y, jax.random.PRNGKey(0),  # dense only
                                             axis_name=axis_name),
  }
  if name not in table:
    raise ValueError(f"unknown loss {name!r}; expected one of {sorted(table)}")
  return table[name]


def measure_rates(matmul_dtype, size=8192, chain=64, elements=1 << 26, reps=5):
  """Measured peak rates on this device: (matmul FLOP/s, exp/s, copy bytes/s)."""
  key = jax.random.PRNGKey(0)
  dtype = jnp.float32 if matmul_dtype is None else matmul_dtype
  a = jax.random.normal(key, (size, size), dtype)
  mm = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  t_mm = _median_time(mm, (a,), reps)
  x = jax.random.uniform(key, (elements,), jnp.float32)

  def exps(v):
    for _ in range(chain):
      v = jnp.exp(-v)  # stays in (0, 1]: no overflow, fused into one kernel
    return v

  t_exp = _median_time(jax.jit(exps), (x,), reps)
  t_copy = _median_time(jax.jit(lambda v: v * 1.0001), (x,), reps)
  return {"matmul_flops_per_s": 2 * size ** 3 / t_mm, "exp_per_s": chain * elements / t_exp,
          "copy_bytes_per_s": 2 * 4 * elements / t_copy}


def _median_time(fn, args, reps):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _sharded(name, impl, tile, matmul_dtype, mesh, rnc_options=None):
  """The loss per shard inside ``shard_map`` over ``mesh`` (axis 'batch'), as the trainer runs it."""
  loss = make_loss(name, impl, tile, matmul_dtype, axis_name="batch", rnc_options=rnc_options)
  spec = jax.sharding.PartitionSpec("batch")
  return jax.shard_map(loss, mesh=mesh, in_specs=(spec,) * 3, out_specs=jax.sharding.PartitionSpec())


def run_one(name, impl, m, tile, matmul_dtype, reps, rates, seed=0, mesh=None, rnc_options=None):
  rng = np.random.default_rng(seed)
  batch = m // 2
  feats = jnp.asarray(rng.normal(size=(batch, 2, DIM)).astype(np.float32))
  labels = jnp.asarray(_labels(rng, batch))
  cdf = jnp.asarray(L.fit_ecdf(np.asarray(labels))(np.asarray(labels)))
  if mesh is None:
    loss, shards = make_loss(name, impl, tile, matmul_dtype, rnc_options=rnc_options), 1
  else:
    loss, shards = _sharded(name, impl, tile, matmul_dtype, mesh, rnc_options), mesh.size
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    feats, labels, cdf = (jax.device_put(x, split) for x in (feats, labels, cdf))
  fn = jax.jit(jax.value_and_grad(lambda f: loss(f, labels, cdf)))
  start = time.perf_counter()
  compiled = fn.lower(feats).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
  start = time.perf_counter()
  value, grad = jax.block_until_ready(compiled(feats))
  first_s = time.perf_counter() - start
  if not (np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))):
    raise FloatingPointError(f"{name}/{impl}/M={m}: non-finite value or gradient")
  times = [first_s] if reps == 0 else []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(feats))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  pairs = float(m) * float(m) / shards
  floor = max(6 * pairs * DIM / rates["matmul_flops_per_s"], 2 * pairs / rates["exp_per_s"])
  return {"loss": name, "impl": impl, "M": m, "dim": DIM, "devices": shards, "median_s": median,
          "times_s": times,
          "compile_s": compile_s, "temp_bytes": temp, "floor_s": floor,
          "x_floor": median / floor, "value": float(value), "status": "ok"}


def _fmt_bytes(n):
  if n is None:
    return "?"
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024


def markdown(rows):
  out = ["| loss | impl | M | median time | x floor | XLA temporaries | compile |",
         "|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    if r["status"] == "ok":
      out.append(f"| {r['loss']} | {r['impl']} | {r['M']:,} | {r['median_s'] * 1e3:.1f} ms | "
                 f"{r['x_floor']:.1f} | {_fmt_bytes(r['temp_bytes'])} | {r['compile_s']:.1f} s |")
    else:
      out.append(f"| {r['loss']} | {r['impl']} | {r['M']:,} | {r['status']} | | | |")
  return "\n".join(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--losses", default="supcon,adacon,accon,simclr,dystress,mio,bcl,rnc")
  parser.add_argument("--modes", default="dense,blockwise")
  parser.add_argument("--min-log2", type=int, default=11)
  parser.add_argument("--max-log2", type=int, default=20)
  parser.add_argument("--sizes", default=None, help="explicit comma-separated M values")
  parser.add_argument("--tile", default=None, help="ROWS,COLS of the blockwise tiles")
  parser.add_argument("--fused-tile", default=None,
                      help="ROWS,COLS of the impl='fused' kernel's blocks (powers of two >= 16 "
                           "on GPU)")
  parser.add_argument("--matmul-dtype", default=None, help="e.g. bfloat16")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--max-seconds", type=float, default=60.0,
                      help="skip larger sizes of a loss/mode once one run takes longer")
  parser.add_argument("--rnc-search", default=None,
                      help="jnp.searchsorted method of rnc's blockwise search (scan|sort|...)")
  parser.add_argument("--rnc-variant", default=None,
                      help="rnc's scalar-label implementation (rnc.VARIANTS; default: by backend)")
  parser.add_argument("--rnc-radix-bits", type=int, default=None,
                      help="probes per level of rnc's shared label search: 2^bits - 1")
  parser.add_argument("--rate-size", type=int, default=8192,
                      help="side of the square matmul (and sqrt of the exp count) that measures "
                           "the device's rates for the floor")
  parser.add_argument("--shard", action="store_true",
                      help="run per shard inside shard_map over all local devices")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  tile = tuple(int(t) for t in args.tile.split(",")) if args.tile else None
  fused_tile = tuple(int(t) for t in args.fused_tile.split(",")) if args.fused_tile else None
  rnc_options = {k: v for k, v in (("search_method", args.rnc_search),
                                    ("variant", args.rnc_variant),
                                    ("search_radix_bits", args.rnc_radix_bits)) if v is not None}
  matmul_dtype = jnp.dtype(args.matmul_dtype) if args.matmul_dtype else None
  sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes else
           [2 ** k for k in range(args.min_log2, args.max_log2 + 1)])
  device = jax.devices()[0]
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",)) if args.shard else None
  rates = measure_rates(matmul_dtype, size=args.rate_size, elements=args.rate_size ** 2)
  print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{device.platform}: {device.device_kind}, jax {jax.__version__}; rates: "
        f"matmul {rates['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s, "
        f"exp {rates['exp_per_s'] / 1e9:.0f} G/s, copy {rates['copy_bytes_per_s'] / 1e9:.0f} GB/s"
        + (f"; sharded over {mesh.size} devices" if mesh is not None else ""),
        flush=True)
  rows = []
  for name in args.losses.split(","):
    for impl in args.modes.split(","):
      stop = None
      for m in sizes:
        if stop is not None:
          rows.append({"loss": name, "impl": impl, "M": m, "status": f"skipped ({stop})"})
          continue
        try:
          fused = impl in ("fused", "fused_ring")
          row = run_one(name, impl, m, fused_tile if fused else tile, matmul_dtype,
                        args.reps, rates, mesh=mesh, rnc_options=rnc_options)
          if row["median_s"] > args.max_seconds:
            stop = f"M={m} took {row['median_s']:.0f} s"
        except Exception as e:  # pylint: disable=broad-except  (OOM is an XlaRuntimeError)
          text = str(e).split("\n")[0][:160]
          status = "out of memory" if "RESOURCE_EXHAUSTED" in text or "memory" in text.lower() else f"error: {text}"
          row = {"loss": name, "impl": impl, "M": m, "status": status}
          stop = status
        rows.append(row)
        print(markdown([row]).split("\n")[-1], flush=True)
  print()
  print(markdown(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"command": " ".join(["python"] + sys.argv), "device": device.device_kind,
                 "platform": device.platform, "jax": jax.__version__, "python": platform.python_version(),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "rates": rates,
                 "devices": mesh.size if mesh is not None else 1, "tile": tile,
                 "fused_tile": fused_tile,
                 "matmul_dtype": args.matmul_dtype, "rnc_options": rnc_options, "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()
