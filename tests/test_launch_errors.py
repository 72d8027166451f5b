"""Bad data through the launcher: one clear error line naming the file, no traceback (issue 7).

Each case writes a tiny CSV image-regression data set (real PNG files) with one defect, points a
config at it and runs ``python -m launch`` in a subprocess: missing CSV, missing image, corrupt image,
images of inconsistent shape, NaN label, an empty split, a truncated test image (found when loading).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
from contrastive_jax.train.defaults import base_config

def get_config():
  c = base_config('digits_angle')
  c.data.name = 'csv_images'
  c.data.kwargs.csv_path = {csv!r}
  c.data.kwargs.channels = 1
  c.model.encoder = 'small_cnn'
  c.batch_size = 8
  c.num_train_steps = 2
  return c
"""


def _write_png(path, shape=(16, 16), value=None):
  rng = np.random.default_rng(len(path))
  pixels = rng.integers(0, 256, size=shape, dtype=np.uint8) if value is None else value
  Image.fromarray(pixels).save(path)


def _dataset(tmp_path, n=40, labels=None, splits=None):
  """Writes n PNGs and a CSV ``path,label,split``; returns (csv path, image paths)."""
  rows, paths = [], []
  for i in range(n):
    path = tmp_path / f"img{i:03d}.png"
    _write_png(str(path))
    paths.append(path)
    label = float(i) if labels is None else labels[i]
    split = splits[i] if splits is not None else ("train" if i < 24 else "val" if i < 32 else "test")
    rows.append(f"{path.name},{label},{split}")
  csv = tmp_path / "data.csv"
  csv.write_text("path,label,split\n" + "\n".join(rows) + "\n")
  return csv, paths


def _launch(tmp_path, csv):
  config = tmp_path / "bad_data_config.py"
  config.write_text(textwrap.dedent(CONFIG.format(csv=str(csv))))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "launch", f"--config={config}", f"--workdir={tmp_path / 'run'}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  return proc


def _assert_clean_error(proc, *needles):
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error:"), proc.stderr[-2000:]
  for needle in needles:
    assert needle in last, (needle, last)


def test_missing_csv(tmp_path):
  _assert_clean_error(_launch(tmp_path, tmp_path / "nowhere.csv"), "nowhere.csv")


def test_missing_image(tmp_path):
  csv, paths = _dataset(tmp_path)
  os.remove(paths[5])
  _assert_clean_error(_launch(tmp_path, csv), paths[5].name)


def test_corrupt_image(tmp_path):
  csv, paths = _dataset(tmp_path)
  for path in paths[:24]:  # every training image, so the first batch reads one
    path.write_bytes(b"this is not a PNG")
  _assert_clean_error(_launch(tmp_path, csv), ".png")


def test_inconsistent_image_shapes(tmp_path):
  csv, paths = _dataset(tmp_path)
  for path in paths[1:24]:
    _write_png(str(path), shape=(20, 16))
  _assert_clean_error(_launch(tmp_path, csv), ".png", "(20, 16")


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_label(tmp_path, bad):
  labels = [str(float(i)) for i in range(40)]
  labels[3] = bad
  csv, _ = _dataset(tmp_path, labels=labels)
  _assert_clean_error(_launch(tmp_path, csv), "label")


def test_empty_split(tmp_path):
  splits = ["train"] * 32 + ["val"] * 8  # no test rows
  csv, _ = _dataset(tmp_path, splits=splits)
  _assert_clean_error(_launch(tmp_path, csv), "test")


@pytest.mark.parametrize("override, needles", [
    ("--config.num_train_stepz=2", ("num_train_stepz", 'Did you mean "num_train_steps"')),
    ("--config.loss.contrastive.impl=ring", ("'impl'", "--config.loss.contrastive.impl")),
])
def test_override_of_a_missing_config_field(tmp_path, override, needles):
  """``--config.<field>`` naming no field: one error line (ml_collections raises a bare KeyError
  while absl parses the flags, before any data is read)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "launch", "--config=configs/simclr.py", override,
       f"--workdir={tmp_path / 'run'}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  _assert_clean_error(proc, *needles)
  assert not (tmp_path / "run").exists()


def test_truncated_test_image_fails_before_training(tmp_path):
  """issue 16 item 17: a truncated image in the test split is reported when the data are loaded
  (one `error:` line naming the split and the file), not after all training."""
  csv, paths = _dataset(tmp_path)
  data = paths[35].read_bytes()  # rows 32.. are the test split
  paths[35].write_bytes(data[:len(data) // 2])
  proc = _launch(tmp_path, csv)
  _assert_clean_error(proc, "test split", paths[35].name, "truncated")
  assert "step " not in proc.stdout and "Model " not in proc.stdout, proc.stdout[-2000:]
  assert not (tmp_path / "run" / "checkpoints").exists()
