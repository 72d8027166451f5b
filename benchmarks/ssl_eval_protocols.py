r"""Thesis Ch. 5/6 evaluation protocols on the real Fashion-MNIST: long-tailed kNN and transfer.

    python benchmarks/ssl_eval_protocols.py --json /tmp/ssl_eval.json              # both protocols
    python benchmarks/ssl_eval_protocols.py --protocols lt --lt-methods simclr,dystress --steps 200

Every run is one ``python -m launch`` command of the library's configs (printed and stored in the
JSON with its ``results.json``), on Debian's ``dataset-fashion-mnist`` IDX files (``--data-root``):

* ``lt`` (Tables 6.5 / 6.6's protocol): ``configs/<method>.py:fashion_mnist_lt`` pretrains on the
  long-tailed training split (imbalance ratio 100: 12,370 images, 4,964 of class 0 down to 50 of
  class 9)
  and scores the balanced 10,000-image test set by the unweighted l2 1-NN and 10-NN of the frozen
  backbone features against that split (plus the weighted 200-NN and the linear probe);
* ``transfer`` (Tables 5.6-5.7 / 6.11-6.12's protocol): ``configs/simclr.py:fashion_mnist``
  pretrains on the 50,000 training images; ``configs/transfer.py:digits`` fine-tunes that encoder
  end to end with a new linear classifier on scikit-learn's digits (1,257 training images zoomed to
  28x28; 50 epochs, SGD lr 0.1, x0.1 at epochs 30 and 40), and the same fine-tuning from a random
  init is the reference. Test top-1 / top-5 of the best validation state. ``--transfer-fractions``
  adds fine-tunings on seeded subsets of the digits' training split (ours, not the thesis': batch
  32, 150 steps), where a pretrained encoder has more to give.

``--steps`` is the pretraining budget (the variants' own is 50 steps of 64 images); the encoder is
the variants' ResNet-18 (CIFAR stem, width 8). Writes a markdown table and the JSON (rewritten after
every run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
PROTOCOLS = ("lt", "transfer")


def launch_command(config: str, workdir: str, overrides: dict) -> list:
  """``python -m launch --config=configs/<config> --workdir=... --config.<k>=<v> ...``."""
  return [sys.executable, "-m", "launch", f"--config=configs/{config}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def run(command: list) -> dict:
  """Runs one launcher command from the repository root; returns its results.json and wall time."""
  workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
  shown = " ".join(["python"] + command[1:])
  print(f"$ {shown}", flush=True)
  start = time.time()
  proc = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, check=False)
  wall = time.time() - start
  if proc.returncode != 0:
    return {"command": shown, "error": proc.stderr[-2000:], "wall_s": wall}
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return {"command": shown, "results": json.load(f), "wall_s": round(wall, 1)}


def plan(args) -> list:
  """``(name, command)`` of every run, in order (the transfer runs after their pretraining)."""
  data = {"data.root": args.data_root}
  pre = {**data, "num_train_steps": args.steps, "eval_every": args.steps,
         "checkpoint_every": args.steps}
  runs = []
  if "lt" in args.protocols:
    for method in args.lt_methods:
      runs.append((f"lt/{method}", launch_command(f"{method}.py:fashion_mnist_lt",
                                                  os.path.join(args.workdir, f"lt_{method}"), pre)))
  if "transfer" in args.protocols:
    source = os.path.join(args.workdir, "pretrain_simclr")
    runs.append(("transfer/pretrain", launch_command("simclr.py:fashion_mnist", source, pre)))
    for fraction, seed in ((f, s) for f in args.transfer_fractions for s in args.transfer_seeds):
      tune = {"num_train_steps": args.finetune_steps} if args.finetune_steps else {}
      tag = ("" if fraction == 1 else f"_{fraction:g}") + (f"_seed{seed}" if seed else "")
      if seed:  # the classifier's init, the batches and (below 1) the subset of the digits
        tune.update({"seed": seed, "data.seed": seed})
      if fraction != 1:  # a seeded subset of the digits' training split: batch 32, 150 steps
        tune = {"data.train_fraction": fraction, "batch_size": 32, "num_train_steps": 150,
                "eval_every": 15, "checkpoint_every": 15, "log_every": 15, **tune}
      runs.append((f"transfer/simclr_to_digits{tag}", launch_command(
          "transfer.py:digits", os.path.join(args.workdir, f"digits_from_simclr{tag}"),
          {"model.init_from": source, **tune})))
      runs.append((f"transfer/scratch_digits{tag}", launch_command(
          "transfer.py:digits", os.path.join(args.workdir, f"digits_from_scratch{tag}"), tune)))
  return runs


def markdown_table(rows: dict) -> str:
  lines = []
  lt = {k: v for k, v in rows.items() if k.startswith("lt/") and "results" in v}
  if lt:
    lines += ["| pretraining (long-tailed, ratio 100) | l2 1-NN top-1 | l2 10-NN top-1 | "
              "200-NN top-1 | linear probe top-1 | train images |", "|---|---|---|---|---|---|"]
    for name, row in lt.items():
      t = row["results"]["test"]
      lines.append(f"| {name[3:]} | {100 * t['l2_knn1_top1']:.2f} % | "
                   f"{100 * t['l2_knn10_top1']:.2f} % | {100 * t['knn_top1']:.2f} % | "
                   f"{100 * t['linear_probe_top1']:.2f} % | {row.get('train_examples', '')} |")
  tr = {k: v for k, v in rows.items() if k.startswith("transfer/") and "results" in v
        and v["results"].get("task") == "finetune"}
  if tr:
    lines += ["", "| digits fine-tuning | train images | test top-1 | test top-5 | best step |",
              "|---|---|---|---|---|"]
    for name, row in tr.items():
      r = row["results"]
      lines.append(f"| {name[9:]} | {r['train_examples']} | {100 * r['test']['top1']:.2f} % | "
                   f"{100 * r['test']['top5']:.2f} % | {r['best_step']} |")
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data-root", default=DEFAULT_ROOT)
  p.add_argument("--workdir", default="/tmp/ssl_eval_protocols")
  p.add_argument("--protocols", default="lt,transfer")
  p.add_argument("--lt-methods", default="simclr")
  p.add_argument("--steps", type=int, default=200, help="pretraining steps (batch 64)")
  p.add_argument("--finetune-steps", type=int, default=0, help="0: the config's 50 epochs")
  p.add_argument("--transfer-fractions", default="1",
                 help="fractions of the digits' training split to fine-tune on (data.train_fraction;"
                      " below 1: batch 32, 150 steps)")
  p.add_argument("--transfer-seeds", default="0", help="seed and data.seed of the fine-tunings")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  args.protocols = tuple(s for s in args.protocols.split(",") if s)
  args.lt_methods = tuple(s for s in args.lt_methods.split(",") if s)
  args.transfer_fractions = tuple(float(s) for s in args.transfer_fractions.split(",") if s)
  args.transfer_seeds = tuple(int(s) for s in args.transfer_seeds.split(",") if s)
  unknown = set(args.protocols) - set(PROTOCOLS)
  if unknown or args.steps < 1:
    p.error(f"--protocols from {PROTOCOLS}; --steps >= 1 (got {sorted(unknown)}, {args.steps}).")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  report = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.platform()})",
            "command": " ".join(["python", "benchmarks/ssl_eval_protocols.py"] + (argv or sys.argv[1:])),
            "settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": {}}
  failed = False
  for name, command in plan(args):
    row = run(command)
    if "results" in row and name.startswith("lt/"):
      row["train_examples"] = _train_examples(command)
    report["rows"][name] = row
    failed |= "error" in row
    if "error" in row:
      print(f"{name} failed:\n{row['error']}", file=sys.stderr)
    if args.json:
      with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
  report["table"] = markdown_table(report["rows"])
  print(report["table"])
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  return 1 if failed else 0


def _train_examples(command: list) -> int:
  """The size of the long-tailed training split the run trained on (rebuilt from its data root:
  the split is a pure function of the data and ``data.seed``)."""
  sys.path.insert(0, _ROOT)
  from configs import simclr  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from contrastive_jax.train import loop  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = simclr.get_config("fashion_mnist_lt")
  config.data.root = next(a.split("=", 1)[1] for a in command if a.startswith("--config.data.root="))
  return len(loop.load_data(config).train)


if __name__ == "__main__":
  sys.exit(main())
