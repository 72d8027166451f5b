r"""Training throughput in images/s: the trainer's whole SimCLR step, and the same step in PyTorch.

    python benchmarks/train_throughput.py --dtype bfloat16 --json train_throughput.json
    python benchmarks/train_throughput.py --quick          # CPU smoke run: tiny widths and sizes

Models (``--models``):

* ``resnet18_cifar``: ``configs/simclr.py:cifar10`` (ResNet-18, CIFAR stem, projector
  512 -> 512 -> 128 with BN), batch ``--cifar-batch`` (512), 32 x 32 x 3;
* ``resnet50_224``: ``configs/simclr.py:imagenet100`` (ResNet-50, projector 2048 -> 2048 -> 128 with
  BN, LARS, SimCLR's ImageNet augmentation with blur), batch ``--imagenet-batch`` (256), 224 x 224.

The JAX step is the trainer's own (``train.step.make_train_step`` with ``loop.make_augment_fn``,
``models.build_model``, ``train.optim.make_optimizer``): the uint8 batch on the devices, the on-device
SimCLR augmentation of two views, the encoder, NT-Xent (``method='simclr'``) and the optimizer
update, data-parallel over every local device. ``--dtype`` sets ``config.model.dtype`` (the
encoder's compute dtype; the heads and the loss stay float32).

The PyTorch step (when torch and torchvision are importable; skipped with a note otherwise):
torchvision's ``resnet18`` (CIFAR stem: 3x3 stride-1 conv, no max-pool) / ``resnet50`` with the same
projector, SupContrast's ``SupConLoss`` without labels (= NT-Xent, temperature 0.1 as
``configs/simclr.py``), SGD with momentum (the JAX configs use SGD / LARS: one more norm per
layer), autocast bf16 when ``--dtype bfloat16``, channels_last,
``torch.compile`` off and on (``--torch-compile``). Its two views arrive on the device already
augmented (the reference recipe augments on the host in its DataLoader): the PyTorch row does *not*
include augmentation, the JAX row does.

Each row: compile / warm-up steps (``--warmup``), then the median of ``--reps`` timings of one step
each, with ``block_until_ready`` (``torch.cuda.synchronize``). img/s = batch / median (a sample's two
views count once, as SimCLR papers count). Prints a markdown table and writes ``--json``.
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
import numpy as np  # pylint: disable=wrong-import-position

from configs import simclr  # pylint: disable=wrong-import-position
from contrastive_jax import models  # pylint: disable=wrong-import-position
from contrastive_jax.train import loop  # pylint: disable=wrong-import-position
from contrastive_jax.train import run as run_lib  # pylint: disable=wrong-import-position
from contrastive_jax.train.optim import make_optimizer  # pylint: disable=wrong-import-position
from contrastive_jax.train.state import TrainState  # pylint: disable=wrong-import-position
from contrastive_jax.train.step import make_train_step  # pylint: disable=wrong-import-position

MODELS = {"resnet18_cifar": ("cifar10", 32), "resnet50_224": ("imagenet100", 224)}


def jax_config(name: str, dtype: str, width: int | None, size: int, micro_batch: int | None = None):
  variant, _ = MODELS[name]
  config = simclr.get_config(variant)
  config.model.dtype = dtype
  config.micro_batch = micro_batch  # None: one pass; N: GradCache micro-batches of N rows
  if width is not None:
    config.model.encoder_kwargs.num_filters = width
  if name == "resnet50_224" and size != 224:
    config.data.kwargs.image_size = size
  return config


def time_jax(name: str, batch: int, size: int, dtype: str, width, warmup: int, reps: int,
             micro_batch: int | None = None) -> dict:
  config = jax_config(name, dtype, width, size, micro_batch)
  mesh = run_lib.make_mesh()
  model = models.build_model(config.model, axis_name=loop.AXIS)
  rng = np.random.default_rng(0)
  host = {"x": rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8),
          "y": np.zeros((batch,), np.float32), "y_norm": np.zeros((batch,), np.float32)}
  augment = loop.make_augment_fn(config, "image")
  example = augment(jax.random.PRNGKey(0), host["x"][:2])
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(0), example)
  tx, schedule = make_optimizer(config.optim, 1000)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}), rng=jax.random.PRNGKey(1))
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  step = make_train_step(model, config, mesh, augment, schedule)
  data = run_lib.shard_batch(host, mesh)
  start = time.perf_counter()
  for _ in range(max(warmup, 1)):
    state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return {"framework": "jax", "model": name, "batch": batch, "size": size, "dtype": dtype,
          "micro_batch": micro_batch, "compile": None, "warmup_s": first, "median_s": median,
          "img_per_s": batch / median,
          "loss": float(metrics["loss"]), "status": "ok"}


def time_torch(name: str, batch: int, size: int, dtype: str, width, warmup: int, reps: int,
               compile_model: bool) -> dict:
  """The PyTorch step of the module docstring (torch and torchvision imported by the caller)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  device = "cuda" if torch.cuda.is_available() else "cpu"
  del width  # torchvision's ResNets have the full width (64 stem filters)
  if name == "resnet18_cifar":
    net = torchvision.models.resnet18(num_classes=1)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    hidden, out = 512, 128
  else:
    net = torchvision.models.resnet50(num_classes=1)
    hidden, out = 2048, 128
  feat = net.fc.in_features
  net.fc = torch.nn.Identity()
  head = torch.nn.Sequential(torch.nn.Linear(feat, hidden), torch.nn.BatchNorm1d(hidden),
                             torch.nn.ReLU(), torch.nn.Linear(hidden, out), torch.nn.BatchNorm1d(out))
  model = torch.nn.Sequential(net, head).to(device).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
  temperature = 0.1

  def supcon_loss(features):  # SupContrast's SupConLoss(features [b, 2, d], labels=None)
    b = features.shape[0]
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True)[0].detach()
    mask = torch.eye(b, device=features.device).repeat(2, 2)
    self_mask = 1 - torch.eye(2 * b, device=features.device)
    mask = mask * self_mask
    exp = torch.exp(logits) * self_mask
    log_prob = logits - torch.log(exp.sum(1, keepdim=True))
    return -((mask * log_prob).sum(1) / mask.sum(1)).mean()

  def train_step(views):
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      z = model(views)
    z = F.normalize(z.float(), dim=1)
    loss = supcon_loss(torch.stack(torch.chunk(z, 2), dim=1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  step = torch.compile(train_step) if compile_model else train_step
  views = torch.rand(2 * batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  start = time.perf_counter()
  for _ in range(max(warmup, 1)):
    loss = step(views)
  sync()
  first = time.perf_counter() - start
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    loss = step(views)
    sync()
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return {"framework": "torch", "model": name, "batch": batch, "size": size, "dtype": dtype,
          "compile": compile_model, "warmup_s": first, "median_s": median,
          "img_per_s": batch / median, "loss": float(loss.detach()), "status": "ok"}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="resnet18_cifar,resnet50_224")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--cifar-batch", type=int, default=512)
  parser.add_argument("--imagenet-batch", type=int, default=256)
  parser.add_argument("--imagenet-size", type=int, default=224)
  parser.add_argument("--width", type=int, default=None,
                      help="encoder num_filters (default: the config's, 64)")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--torch-compile", default="off,on")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--quick", action="store_true",
                      help="CPU smoke run: width 8, batches 8 / 4, ImageNet size 64, 1 + 2 steps")
  parser.add_argument("--micro-batches", default="",
                      help="comma-separated config.micro_batch values (rows of the 2 views) timed "
                           "beside the one-pass step, e.g. 256,128 (lax.scan on accelerators)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  if args.quick:
    args.cifar_batch, args.imagenet_batch, args.imagenet_size = 8, 4, 64
    args.width, args.warmup, args.reps = 8, 1, 2
  device = jax.devices()[0]
  header = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {device.platform}: "
            f"{device.device_kind} x {jax.device_count()}, jax {jax.__version__}, dtype {args.dtype}")
  print("#", header, flush=True)
  shapes = {"resnet18_cifar": (args.cifar_batch, 32),
            "resnet50_224": (args.imagenet_batch, args.imagenet_size)}
  rows, notes = [], []
  have_torch = False
  if not args.no_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
      import torchvision  # pylint: disable=g-import-not-at-top,unused-import
      have_torch = True
    except ImportError:
      notes.append("torch / torchvision are not installed: the PyTorch rows are skipped.")
  for name in args.models.split(","):
    if name not in MODELS:
      raise SystemExit(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    batch, size = shapes[name]
    rows.append(time_jax(name, batch, size, args.dtype, args.width, args.warmup, args.reps))
    for micro in filter(None, args.micro_batches.split(",")):
      rows.append(time_jax(name, batch, size, args.dtype, args.width, args.warmup, args.reps,
                           int(micro)))
    if have_torch:
      for flag in args.torch_compile.split(","):
        try:
          rows.append(time_torch(name, batch, size, args.dtype, args.width, args.warmup, args.reps,
                                 flag == "on"))
        except Exception as exc:  # pylint: disable=broad-except  # recorded, the run goes on
          rows.append({"framework": "torch", "model": name, "compile": flag == "on",
                       "status": f"{type(exc).__name__}: {exc}"[:300]})
  print("| framework | model | batch | size | dtype | torch.compile / micro-batch | step | img/s |")
  print("|---|---|---:|---:|---|---|---:|---:|")
  for r in rows:
    if r["status"] != "ok":
      print(f"| {r['framework']} | {r['model']} | | | | {r['compile']} | {r['status']} | |")
      continue
    comp = "" if r["compile"] is None else ("on" if r["compile"] else "off")
    if r.get("micro_batch"):
      comp = f"micro_batch {r['micro_batch']}"
    print(f"| {r['framework']} | {r['model']} | {r['batch']} | {r['size']} | {r['dtype']} | {comp} | "
          f"{r['median_s'] * 1e3:.1f} ms | {r['img_per_s']:,.0f} |")
  for note in notes:
    print("note:", note)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"command": " ".join(["python"] + sys.argv), "header": header, "rows": rows,
                 "notes": notes, "device": device.device_kind, "platform": device.platform,
                 "devices": jax.device_count(), "jax": jax.__version__,
                 "python": platform.python_version(), "args": vars(args)}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
