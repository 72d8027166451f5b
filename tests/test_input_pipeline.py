"""The host side of the input pipeline (issue 14), every change output-preserving: uint8 image batches
travel to the device as uint8 and are scaled there (the same float32 values as the host's ``v / 255``,
bit for bit, so runs are unchanged); ``images.fit_image`` resizes all channels at once (equal to the
per-channel resizes); a lazy array's decode threads persist across batches."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "benchmarks"))

import ssl_fashion_mnist as bench  # pylint: disable=g-import-not-at-top,wrong-import-position

from contrastive_jax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.data.sources import base  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.data.sources import images  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.step import unit_float  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_unit_float_on_device_is_the_hosts_scaling_bit_for_bit():
  values = np.arange(256, dtype=np.uint8).reshape(16, 4, 4, 1)
  host = pipeline.take_rows(values, np.arange(16))
  raw = pipeline.take_rows(values, np.arange(16), scale=False)
  assert raw.dtype == np.uint8 and host.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(jax.jit(unit_float)(raw)).view(np.uint32),
                                host.view(np.uint32))
  # XLA's own x / 255 is not (a multiplication by 1/255): the reason for the table.
  assert not np.array_equal(np.asarray(jax.jit(lambda v: v.astype(jnp.float32) / 255)(raw)), host)
  floats = np.ones((2, 3), np.float32)
  assert unit_float(jnp.asarray(floats)).dtype == jnp.float32


def test_train_batch_keeps_uint8_only_when_asked():
  x = (np.arange(24, dtype=np.uint8) * 10).reshape(6, 2, 2)
  split = data_lib.Split(x=x, y=np.arange(6, dtype=np.float32))
  raw = data_lib.train_batch(split, 6, seed=0, step=1, scale=False)
  scaled = data_lib.train_batch(split, 6, seed=0, step=1)
  assert raw["x"].dtype == np.uint8
  np.testing.assert_array_equal(pipeline.UINT8_UNIT[raw["x"]], scaled["x"])
  floats = data_lib.Split(x=x.astype(np.float32), y=split.y)
  assert data_lib.train_batch(floats, 6, seed=0, step=1, scale=False)["x"].dtype == np.float32


def _fake_fashion_mnist(root, n_train=160, n_test=40) -> str:
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  for part, n in (("train", n_train), ("test", n_test)):
    y = (np.arange(n) % 10).astype(np.uint8)
    x = (rng.random((n, 28, 28)) * 60 + 20.0 * y[:, None, None]).astype(np.uint8)
    bench.write_idx(os.path.join(root, bench.IDX_FILES[part][0]), x)
    bench.write_idx(os.path.join(root, bench.IDX_FILES[part][1]), y)
  return str(root)


def test_a_uint8_run_is_unchanged_by_scaling_on_device(tmp_path, monkeypatch):
  root = _fake_fashion_mnist(tmp_path / "data")

  def run(name):
    config = bench.make_config("simclr", steps=3, batch_size=16, width=4, data_root=root, lr=0.03,
                               warmup=1, val_size=32, eval_batch_size=64)
    config.eval.linear_probe_steps = 5
    config.log_every = 1
    # The small CNN: what is checked is the input's dtype path, and it compiles in a fraction of the
    # ResNet's time.
    config.model.encoder = "small_cnn"
    config.model.encoder_kwargs = type(config.model.encoder_kwargs)({})
    results = loop.train_and_evaluate(config, str(tmp_path / name))
    with open(tmp_path / name / "metrics.jsonl", encoding="utf-8") as f:
      losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    return results, losses

  train_batch, dtypes = data_lib.train_batch, set()

  def spy(*args, **kwargs):
    batch = train_batch(*args, **kwargs)
    dtypes.add(batch["x"].dtype)
    return batch

  monkeypatch.setattr(loop.data_lib, "train_batch", spy)
  on_device = run("device")
  assert dtypes == {np.dtype(np.uint8)}
  monkeypatch.setattr(loop.data_lib, "train_batch",  # the earlier behaviour: floats from the host
                      lambda *a, scale=True, **k: spy(*a, **k))
  dtypes.clear()
  on_host = run("host")
  assert dtypes == {np.dtype(np.float32)}
  assert len(on_device[1]) == 3
  assert on_device == on_host


def _per_channel_fit(image, size):
  """The earlier ``fit_image`` resize: a centre crop, then each channel resized on its own."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width = size
  h, w = image.shape[:2]
  crop_h, crop_w = min(h, int(round(w * height / width))), min(w, int(round(h * width / height)))
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  image = image[top:top + crop_h, left:left + crop_w]
  return np.stack([np.asarray(Image.fromarray(image[..., c]).resize((width, height), Image.BILINEAR))
                   for c in range(image.shape[-1])], axis=-1)


def test_fit_image_resizes_all_channels_at_once_as_each_on_its_own():
  rng = np.random.default_rng(0)
  for _ in range(12):
    shape = (int(rng.integers(3, 300)), int(rng.integers(3, 300)), int(rng.choice([1, 3])))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    for size in ((224, 224), (32, 32), (48, 20), (400, 350)):
      np.testing.assert_array_equal(images.fit_image(image, size, None), _per_channel_fit(image, size))


def test_lazy_array_keeps_its_decode_threads_across_batches():
  import pickle  # pylint: disable=g-import-not-at-top
  x = base.LazyArray(lambda i: np.full((2,), i, np.uint8), 20, (2,), np.uint8, workers=3)
  view = x.subset(np.arange(10, 20))
  first = x[np.arange(8)]
  pool = x._pool._pool  # pylint: disable=protected-access
  assert pool is not None
  np.testing.assert_array_equal(view[[3, 1, 1]][:, 0], [13, 11, 11])
  np.testing.assert_array_equal(first[:, 0], np.arange(8))
  assert x._pool._pool is pool and view._pool is x._pool  # pylint: disable=protected-access
  copy = pickle.loads(pickle.dumps(base.LazyArray(np.zeros(3, np.uint8).__getitem__, 3, (),
                                                  np.uint8, workers=2)))
  np.testing.assert_array_equal(copy[[2, 0]], [0, 0])
