r"""Self-supervised pretraining on the real Fashion-MNIST: SimCLR, BCL, MIOv3 and DySTreSS, kNN-scored.

    python benchmarks/ssl_fashion_mnist.py --json /tmp/ssl_fashion_mnist.json        # GPU defaults
    python benchmarks/ssl_fashion_mnist.py --steps 5 --batch-size 64 --width small \
        --subset 2000 --json /tmp/ssl_fm_cpu.json                                    # CPU smoke run

Each self-supervised row is ``configs/<method>.py:fashion_mnist`` (thesis Ch. 4-6) with the SAME
backbone (ResNet-18, CIFAR stem, ``--width`` filters in the first stage, on 28x28x1), budget
(``--steps`` x ``--batch-size`` images, two views each), optimizer (SGD momentum 0.9, wd 5e-4, warm-up
then cosine; lr 0.06 at batch 128, scaled linearly with the batch) and SimCLR augmentations for grey
images (``contrastive_jax.train.recipes.ssl_image``), trained by the library's trainer
(``contrastive_jax.train.train_and_evaluate``). It reports, on the Fashion-MNIST test set, the
weighted-kNN top-1 (InstDisc vote, k = 200, T = 0.1: thesis Ch. 5 "Evaluation") of the frozen backbone
features against the training split, and the trainer's linear-probe top-1.

Defaults (600 steps of 512 images, about 6 epochs; full-width ResNet-18) are sized for one GPU: at
~35 ms per two-view step on an H100 plus ~1 minute of compilation and evaluation per row, the six
rows take about 6 minutes.

Two baselines share the backbone and the kNN protocol:

* ``supervised``: the backbone + a linear classifier trained with cross-entropy on the labels for the
  same steps, batch, optimizer and augmentation (one view per image), then scored like the others
  (kNN on its backbone features); its own softmax accuracy is reported too;
* ``random``: the untrained (initialised, seed 0) backbone's features.

The data are the Debian ``dataset-fashion-mnist`` IDX files (``--data-root``); nothing is downloaded.
``--subset N`` trains on the first N training images and scores on the first N // 5 test images
(written as IDX files under the workdir) for quick CPU runs. Prints a markdown table and writes every
number, the device, the date and the command to ``--json`` (rewritten after every row).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from configs import bcl as bcl_config  # pylint: disable=wrong-import-position
from configs import dystress as dystress_config  # pylint: disable=wrong-import-position
from configs import mio as mio_config  # pylint: disable=wrong-import-position
from configs import simclr as simclr_config  # pylint: disable=wrong-import-position
from contrastive_jax import data as data_lib  # pylint: disable=wrong-import-position
from contrastive_jax import models  # pylint: disable=wrong-import-position
from contrastive_jax.evaluate.knn import knn_top1  # pylint: disable=wrong-import-position
from contrastive_jax.evaluate.linear_probe import linear_probe_accuracy  # pylint: disable=wrong-import-position
from contrastive_jax.train import train_and_evaluate  # pylint: disable=wrong-import-position
from contrastive_jax.train.optim import make_optimizer  # pylint: disable=wrong-import-position

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
SSL_METHODS = {"simclr": simclr_config, "bcl": bcl_config, "mio": mio_config,
               "dystress": dystress_config}
BASELINES = ("supervised", "random")
METHODS = tuple(SSL_METHODS) + BASELINES
LABELS = {"simclr": "SimCLR (NT-Xent, tau 0.1)", "bcl": "BCL (Eq. 4.14, tau 0.25)",
          "mio": "MIOv3 (Eq. 5.21, tau 0.2)", "dystress": "DySTreSS (Eq. 6.16, tau 0.07-0.2)",
          "supervised": "supervised (cross-entropy)", "random": "random init (untrained)"}
WIDTHS = {"tiny": 4, "small": 8, "half": 32, "full": 64}
NUM_CLASSES = 10
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------

def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an (uncompressed) IDX file: magic ``0 0 0x08 ndim``, big-endian dims."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with open(path, "wb") as f:
    f.write(header + array.tobytes())


def write_subset(source_root: str, target_root: str, num_train: int, num_test: int) -> str:
  """The first ``num_train`` training and ``num_test`` test images of ``source_root`` as IDX files."""
  from contrastive_jax.data.sources.idx import read_idx  # pylint: disable=g-import-not-at-top
  os.makedirs(target_root, exist_ok=True)
  for part, count in (("train", num_train), ("test", num_test)):
    for stem in IDX_FILES[part]:
      found = [os.path.join(source_root, stem + ext) for ext in (".gz", "")]
      found = [p for p in found if os.path.isfile(p)]
      if not found:
        raise FileNotFoundError(f"Fashion-MNIST file not found: {os.path.join(source_root, stem)}"
                                "[.gz] (Debian: apt-get install dataset-fashion-mnist).")
      values = read_idx(found[0])
      if count > len(values):
        raise ValueError(f"--subset asks for {count} {part} images but {found[0]} holds "
                         f"{len(values)}.")
      write_idx(os.path.join(target_root, stem), values[:count])
  return target_root


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------

def parse_width(width: str) -> int:
  """``--width``: a name of :data:`WIDTHS` or a positive integer (first-stage filters)."""
  if width in WIDTHS:
    return WIDTHS[width]
  try:
    value = int(width)
  except ValueError:
    value = 0
  if value < 1:
    raise ValueError(f"--width must be one of {sorted(WIDTHS)} or a positive integer, got "
                     f"{width!r}.")
  return value


def make_config(method: str, *, steps: int, batch_size: int, width: int, data_root: str,
                lr: float, warmup: int, val_size: int | None = None, seed: int = 0,
                eval_batch_size: int = 1000):
  """``configs/<method>.py:fashion_mnist`` with the benchmark's shared budget and backbone."""
  if method not in SSL_METHODS:
    raise ValueError(f"Unknown method {method!r}; expected one of {tuple(SSL_METHODS)}.")
  config = SSL_METHODS[method].get_config("fashion_mnist")
  config.seed = seed
  config.data.root = data_root
  if val_size is not None:
    config.data.kwargs.val_size = val_size
  config.model.encoder_kwargs.num_filters = width
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  config.num_train_steps = steps
  config.optim.lr = lr
  config.optim.warmup_steps = warmup
  config.log_every = max(steps // 10, 1)
  config.eval_every = steps          # one kNN evaluation, at the end (no model selection)
  config.checkpoint_every = steps
  return config


# --------------------------------------------------------------------------------------------------
# baselines: the same backbone, supervised or untrained
# --------------------------------------------------------------------------------------------------

class Classifier(nn.Module):
  """The benchmark's backbone followed by a linear classifier; returns ``(features, logits)``."""
  encoder: nn.Module
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool):
    features = self.encoder(x, train=train).astype(jnp.float32)
    return features, nn.Dense(self.num_classes, name="classifier")(features)


def build_classifier(config) -> Classifier:
  """The config's encoder (ResNet-18 of ``model.encoder_kwargs``) under a linear classifier."""
  encoder = models.ENCODERS[config.model.encoder](**config.model.encoder_kwargs.to_dict())
  return Classifier(encoder)


def embed(apply, variables, split, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Backbone features and logits of a whole split, in order, padding removed.

  ``apply``: ``jax.jit(functools.partial(model.apply, train=False))`` (eval-mode BatchNorm).
  """
  features, logits, masks = [], [], []
  for batch in data_lib.eval_batches(split, batch_size):
    f, l = apply(variables, batch["x"])
    features.append(np.asarray(f))
    logits.append(np.asarray(l))
    masks.append(batch["mask"] > 0)
  keep = np.concatenate(masks)
  return np.concatenate(features)[keep], np.concatenate(logits)[keep]


def frozen_scores(model, variables, dataset, config) -> dict:
  """kNN top-1 and linear-probe top-1 of the backbone features on the test split (the trainer's
  ``knn_top1`` protocol), plus the classifier's own softmax accuracy."""
  bs = config.eval_batch_size
  apply = jax.jit(functools.partial(model.apply, train=False))
  train_f, _ = embed(apply, variables, dataset.train, bs)
  test_f, test_logits = embed(apply, variables, dataset.test, bs)
  k = min(int(config.eval.knn_k), train_f.shape[0])
  return {
      "knn_top1": knn_top1(train_f, dataset.train.y, test_f, dataset.test.y, k=k,
                           temperature=float(config.eval.knn_temperature)),
      "linear_probe_top1": linear_probe_accuracy(
          train_f, dataset.train.y, test_f, dataset.test.y,
          steps=int(config.eval.linear_probe_steps), learning_rate=float(config.eval.linear_probe_lr)),
      "softmax_top1": float(np.mean(np.argmax(test_logits, 1) == dataset.test.y)),
  }


def load_data(config):
  return data_lib.load_dataset("fashion_mnist", seed=config.data.seed, root=config.data.root,
                               **config.data.kwargs)


def run_random(config) -> dict:
  """kNN of the untrained backbone (initialised with ``config.seed``)."""
  dataset = load_data(config)
  model = build_classifier(config)
  variables = model.init(jax.random.PRNGKey(config.seed),
                         jnp.zeros((2,) + dataset.train.x.shape[1:]), train=False)
  return {"test": frozen_scores(model, variables, dataset, config), "steps": 0}


def run_supervised(config) -> dict:
  """Cross-entropy training of the backbone + linear classifier on the labels, same budget, batches
  (``data.train_batch``), optimizer and augmentation (one view) as the self-supervised rows."""
  dataset = load_data(config)
  model = build_classifier(config)
  init_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = model.init(init_key, jnp.zeros((2,) + dataset.train.x.shape[1:]), train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx, _ = make_optimizer(config.optim, config.num_train_steps)
  opt_state = tx.init(params)
  augment = data_lib.get_augment_fn(config.data.augment_kind, **config.data.augment)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, batch_stats, opt_state, x, y, key):
    x = augment(key, x)

    def loss_fn(p):
      (_, logits), updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                         mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  loss = None
  for s in range(config.num_train_steps):
    batch = data_lib.train_batch(dataset.train, config.batch_size, config.seed, s)
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, batch["x"],
                                                batch["y"].astype(np.int32),
                                                jax.random.fold_in(aug_key, s))
  final_loss = float(loss) if loss is not None else float("nan")
  if not np.isfinite(final_loss):
    raise FloatingPointError(f"Supervised baseline: non-finite loss {final_loss} at the last step.")
  scores = frozen_scores(model, {"params": params, "batch_stats": batch_stats}, dataset, config)
  return {"test": scores, "steps": config.num_train_steps, "final_train_loss": final_loss}


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------

def markdown_table(rows: list[dict]) -> str:
  lines = ["| method | kNN top-1 (test, k=200) | linear probe top-1 | wall (s) |",
           "|---|---|---|---|"]
  for row in rows:
    if "error" in row:
      lines.append(f"| {LABELS[row['method']]} | failed: {row['error']} | | {row['wall_s']:.0f} |")
      continue
    test = row["test"]
    probe = test.get("linear_probe_top1")
    lines.append(f"| {LABELS[row['method']]} | {100 * test['knn_top1']:.2f} % | "
                 f"{'' if probe is None else f'{100 * probe:.2f} %'} | {row['wall_s']:.0f} |")
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=600, help="training steps of every trained row")
  p.add_argument("--batch-size", type=int, default=512, help="images per step (x2 views for SSL)")
  p.add_argument("--width", default="full",
                 help=f"ResNet-18 first-stage filters: {WIDTHS} or an integer")
  p.add_argument("--lr", type=float, default=None,
                 help="peak SGD learning rate (default: 0.06 * batch / 128, thesis Ch. 5)")
  p.add_argument("--warmup-fraction", type=float, default=0.1,
                 help="linear warm-up as a fraction of --steps, then cosine to 0")
  p.add_argument("--methods", default=",".join(METHODS),
                 help=f"comma-separated subset of {','.join(METHODS)}")
  p.add_argument("--data-root", default=DEFAULT_ROOT, help="folder with the Fashion-MNIST IDX files")
  p.add_argument("--subset", type=int, default=0,
                 help="if > 0: train on the first N training images, test on the first N // 5")
  p.add_argument("--workdir", default=None, help="run folders (default: a new temporary folder)")
  p.add_argument("--json", default=None, help="write the results here")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval-batch-size", type=int, default=1000)
  args = p.parse_args(argv)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    p.error(f"--methods: unknown {unknown}; expected a comma-separated subset of {METHODS}.")
  args.methods = methods
  try:
    args.width = parse_width(args.width)
  except ValueError as exc:
    p.error(str(exc))
  if args.steps < 1 or args.batch_size < 2:
    p.error("--steps must be >= 1 and --batch-size >= 2.")
  if not 0.0 <= args.warmup_fraction < 1.0:
    p.error("--warmup-fraction must be in [0, 1).")
  if args.subset < 0 or 0 < args.subset < 2 * args.batch_size:
    p.error("--subset must be 0 (all data) or at least twice --batch-size.")
  return args


def _show_trainer_log() -> None:
  """The trainer's progress lines (logger 'contrastive_jax') on stdout, once."""
  log = logging.getLogger("contrastive_jax")
  if not any(getattr(h, "_ssl_benchmark", False) for h in log.handlers):
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler._ssl_benchmark = True  # pylint: disable=protected-access
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv=None) -> int:
  args = parse_args(argv)
  _show_trainer_log()
  workdir = args.workdir or tempfile.mkdtemp(prefix="ssl_fashion_mnist_")
  os.makedirs(workdir, exist_ok=True)
  data_root, val_size = args.data_root, None
  if args.subset:
    data_root = write_subset(args.data_root, os.path.join(workdir, "data"), args.subset,
                             max(args.subset // 5, 1))
    val_size = max(args.subset // 10, 1)
  lr = args.lr if args.lr is not None else 0.06 * args.batch_size / 128
  shared = dict(steps=args.steps, batch_size=args.batch_size, width=args.width, data_root=data_root,
                lr=lr, warmup=int(args.warmup_fraction * args.steps), val_size=val_size,
                seed=args.seed, eval_batch_size=args.eval_batch_size)
  device = jax.devices()[0]
  report = {
      "benchmark": "ssl_fashion_mnist",
      "command": "python " + " ".join([os.path.relpath(__file__, _ROOT)] + sys.argv[1:]),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device": f"{device.platform}: {device.device_kind} x{jax.device_count()}",
      "host": platform.node(), "jax": jax.__version__,
      "settings": {**shared, "methods": args.methods, "subset": args.subset,
                   "backbone": f"resnet18 (cifar stem, {args.width} filters)",
                   "knn": "weighted kNN top-1, k=200, T=0.1, backbone features, train vs test"},
      "rows": [],
  }
  print(f"# {report['command']}\n# {report['device']}, jax {jax.__version__}, {report['date']}",
        flush=True)
  failed = False
  for method in args.methods:
    start = time.time()
    config = make_config("simclr" if method in BASELINES else method, **shared)
    row = {"method": method}
    try:
      if method == "random":
        result = run_random(config)
      elif method == "supervised":
        result = run_supervised(config)
      else:
        result = train_and_evaluate(config, os.path.join(workdir, method))
      row.update(test=result["test"], steps=result["steps"])
    except Exception as exc:  # pylint: disable=broad-except
      failed = True
      traceback.print_exc()
      row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    row["wall_s"] = time.time() - start
    report["rows"].append(row)
    print(f"{method}: {row.get('test', row.get('error'))} ({row['wall_s']:.0f} s)", flush=True)
    if args.json:
      with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
  report["total_wall_s"] = sum(r["wall_s"] for r in report["rows"])
  report["table"] = markdown_table(report["rows"])
  print(f"\n{report['table']}\n\nTotal wall time {report['total_wall_s']:.0f} s on "
        f"{report['device']}.")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
