"""The benchmark scripts run end to end on CPU at tiny sizes and write their JSON (CI never runs
them at full size; this keeps them working)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, devices=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  out = tmp_path / "out.json"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "losses.py"), *args,
                         "--rate-size", "256", "--reps", "1", "--json", str(out)],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_losses_benchmark_one_device(tmp_path):
  result, stdout = _run(["--losses", "supcon,rnc", "--modes", "dense,blockwise", "--sizes", "256",
                         "--tile", "64,128"], tmp_path)
  rows = {(r["loss"], r["impl"]): r for r in result["rows"]}
  assert set(rows) == {(l, m) for l in ("supcon", "rnc") for m in ("dense", "blockwise")}
  assert all(r["status"] == "ok" and r["median_s"] > 0 and r["devices"] == 1 for r in rows.values())
  # dense and blockwise compute the same loss
  assert abs(rows["supcon", "dense"]["value"] - rows["supcon", "blockwise"]["value"]) < 1e-4
  assert "| supcon | blockwise | 256 |" in stdout and result["tile"] == [64, 128]


def test_losses_benchmark_sharded_ring(tmp_path):
  result, _ = _run(["--shard", "--losses", "adacon,rnc", "--modes", "blockwise,ring", "--sizes",
                    "512"], tmp_path, devices=8)
  rows = {(r["loss"], r["impl"]): r for r in result["rows"]}
  assert result["devices"] == 8
  for impl in ("blockwise", "ring"):
    assert rows["adacon", impl]["status"] == "ok" and rows["adacon", impl]["devices"] == 8
  assert abs(rows["adacon", "blockwise"]["value"] - rows["adacon", "ring"]["value"]) < 1e-4
  assert rows["adacon", "ring"]["temp_bytes"] < rows["adacon", "blockwise"]["temp_bytes"]
  assert "does not support impl='ring'" in rows["rnc", "ring"]["status"]


def test_losses_benchmark_fused_mode(tmp_path):
  """--modes fused (Pallas interpret mode on CPU): accon (the angle-compensated kernel) equals
  dense. (A loss without a kernel records its ValueError as its status, like rnc's under 'ring'.)"""
  result, _ = _run(["--losses", "accon", "--modes", "dense,fused", "--sizes", "128",
                    "--fused-tile", "32,32"], tmp_path)
  rows = {(r["loss"], r["impl"]): r for r in result["rows"]}
  assert rows["accon", "fused"]["status"] == "ok" and result["fused_tile"] == [32, 32]
  assert abs(rows["accon", "dense"]["value"] - rows["accon", "fused"]["value"]) < 1e-4


def _run_script(script, args, tmp_path, block=("grain", "torch", "torchvision"), **env):
  """``benchmarks/<script> args --json out`` in a fresh interpreter in which ``block`` cannot be
  imported (as on a machine without them), on CPU."""
  out = tmp_path / "out.json"
  path = os.path.join(REPO, "benchmarks", script)
  code = ("import runpy, sys\n"
          "class Block:\n"
          "  def find_spec(self, name, path=None, target=None):\n"
          f"    if name.split('.')[0] in {tuple(block)!r}:\n"
          "      raise ImportError(f'{name} is blocked by the test')\n"
          "sys.meta_path.insert(0, Block())\n"
          f"sys.argv = [{path!r}] + {list(args) + ['--json', str(out)]!r}\n"
          f"runpy.run_path({path!r}, run_name='__main__')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True,
                        text=True, timeout=600, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_input_pipeline_benchmark_quick_without_grain_or_torch(tmp_path):
  result, stdout = _run_script("input_pipeline.py", ["--quick"], tmp_path)
  rows = {(r["pipeline"], r["workers"]): r for r in result["rows"]}
  assert {("project", 1), ("project + prefetch", 2), ("project full-image crop, 2 views", 2),
          ("PIL decode alone, one thread", 1)} <= set(rows)
  assert not any(name.startswith(("grain", "torch")) for name, _ in rows)
  assert rows["project", 2]["shape"] == [4, 32, 32, 3] and rows["project", 2]["dtype"] == "uint8"
  assert rows["project full-image crop, 2 views", 2]["shape"] == [4, 2, 32, 32, 3]
  assert all(r["img_per_s"] > 0 for r in result["rows"])
  assert any("grain" in n for n in result["notes"]) and any("torch" in n for n in result["notes"])
  assert "| project + prefetch | 2 |" in stdout and "note: grain is not installed" in stdout


@pytest.mark.slow
def test_train_throughput_benchmark_quick_bf16_without_torch(tmp_path):
  """Slow: compiling the ResNet-18 train step takes ~20-30 s on the 2-core CI machine."""
  result, stdout = _run_script("train_throughput.py", ["--quick", "--models", "resnet18_cifar",
                                                       "--dtype", "bfloat16"], tmp_path,
                               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  (row,) = result["rows"]
  assert row["framework"] == "jax" and row["status"] == "ok" and row["dtype"] == "bfloat16"
  assert row["batch"] == 8 and row["img_per_s"] > 0 and row["loss"] == row["loss"]  # finite
  assert "PyTorch rows are skipped" in stdout
