"""The benchmark scripts run end to end on CPU at tiny sizes and write their JSON (CI never runs
them at full size; this keeps them working)."""

import json
import os
import subprocess
import sys

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
