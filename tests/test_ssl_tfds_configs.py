"""Self-supervised image configs on TFDS / CSV data: each (method, variant) starts, trains, checkpoints
and evaluates on fixture data.

``configs/{simclr,mio,dystress}.py:{cifar10,cifar100,stl10,imagenet,imagenet100}`` (built by
``contrastive_jax.train.recipes.ssl_image``) run end to end through ``train_and_evaluate`` with their own
data path, loss, optimizer and evaluation protocol (weighted kNN top-1 + linear probe), shrunk to a
small CNN, 16-pixel crops, batch 8 and 2 steps:

* ``cifar10`` / ``imagenet``: the ``tfds`` source (``tfds.data_source``, no TensorFlow) under
  ``tfds.testing.mock_data`` (random records generated from the builders' feature specs, so
  ``imagenet2012``'s manual download is not needed; its images have random sizes and are resized by
  ``data.kwargs.image_size``). ``data.root`` is set as the TFDS folder (the trainer passes it as
  ``root=``, taken as ``data_dir``), and a spy checks it reaches ``tfds.data_source``.
* ``imagenet100``: the ``csv_images`` source on a tiny PNG tree with ``imagenet100.csv``
  (``path,label,split``, class indices) under ``data.root``, as the config expects.

The default suite runs one pair per method, covering the three data paths; the others (with
``cifar100`` and ``stl10``) are @slow.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

from contrastive_jax.train import loop
from contrastive_jax.train import train_and_evaluate
from tests.test_paper_configs import check_run
from tests.test_paper_configs import small_cnn
from tests.test_paper_configs import tiny
from tests.test_sources import _csv
from tests.test_sources import _png

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_EXAMPLES = 16   # records per mocked TFDS split
NUM_CLASSES = 4     # imagenet100 fixture classes
SIZE = 16           # crop / resize side

# One pair per method in the default suite (together: the cifar10, imagenet100 and imagenet paths).
DEFAULT = [("simclr", "cifar10"), ("mio", "imagenet100"), ("dystress", "imagenet")]
SLOW = [("simclr", "imagenet"), ("simclr", "imagenet100"), ("mio", "cifar10"),
        ("mio", "imagenet"), ("dystress", "cifar10"), ("dystress", "imagenet100"),
        # CIFAR-100 / STL-10 (thesis Table 5.2 / 6.1). The long-tailed cifar10_lt / cifar100_lt
        # need more records per class than a mocked split holds; their protocol runs end to end on
        # Fashion-MNIST fixtures (test_ssl_eval_protocols.py).
        ("simclr", "cifar100"), ("simclr", "stl10"), ("mio", "cifar100"), ("mio", "stl10"),
        ("dystress", "cifar100"), ("dystress", "stl10")]


def write_imagenet100(root, per_split=(16, 8, 8)):
  """RGB PNGs of varying size (as ImageNet's), colour-coded by class, and ``imagenet100.csv``."""
  rng = np.random.default_rng(0)
  rows = []
  for split, num in zip(("train", "val", "test"), per_split):
    for i in range(num):
      label = i % NUM_CLASSES
      folder = os.path.join(root, split, f"n{label:08d}")
      os.makedirs(folder, exist_ok=True)
      side_h, side_w = 18 + (i % 3) * 4, 20 + (i % 2) * 6
      image = rng.integers(0, 60, size=(side_h, side_w, 3)).astype(np.uint8)
      image[..., label % 3] += 120 + 40 * (label // 3)
      name = f"{split}/n{label:08d}/{split}_{i:03d}.png"
      _png(os.path.join(root, name), image)
      rows.append((name, label, split))
  _csv(os.path.join(root, "imagenet100.csv"), ("path", "label", "split"), rows)
  return str(root)


def shrink(config):
  """2 steps, batch 8, small CNN, 16-pixel views, small kNN / probe: the config's own data path,
  loss, optimizer and protocol are kept."""
  config = small_cnn(tiny(config, steps=2))
  config.batch_size = 8
  config.eval_batch_size = 8
  config.data.augment.size = SIZE
  if "image_size" in config.data.kwargs:   # imagenet / imagenet100: resize the stored images
    config.data.kwargs.image_size = SIZE
  config.eval.knn_k = 3
  config.eval.linear_probe_steps = 20
  return config


@pytest.fixture
def tfds_spy(monkeypatch):
  """``tfds.testing.mock_data`` with ``tfds.data_source`` wrapped to record its ``data_dir``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    calls = []
    real = tfds.data_source

    def spy(name, **kwargs):
      calls.append((name, kwargs.get("data_dir")))
      return real(name, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    yield calls


def run_pair(method, variant, tmp_path, request):
  config = shrink(importlib.import_module(f"configs.{method}").get_config(variant))
  root = str(tmp_path / "data")
  calls = None
  if variant == "imagenet100":
    assert config.data.name == "csv_images"
    config.data.root = write_imagenet100(root)
  else:
    assert config.data.name == "tfds"
    calls = request.getfixturevalue("tfds_spy")
    config.data.root = root  # --config.data.root= as the TFDS data_dir (mocked: never read)
  workdir = str(tmp_path / "run")
  saved = check_run(train_and_evaluate(config, workdir), workdir, config)
  assert saved["protocol"] == "knn_top1" and saved["metric"] == "knn_top1"
  assert set(saved["test"]) == {"knn_top1", "knn_top5", "linear_probe_top1", "linear_probe_top5"}
  assert all(0.0 <= v <= 1.0 for v in saved["test"].values())
  if calls is not None:
    tfds_name = config.data.kwargs.tfds_name
    assert calls and {c for c in calls} == {(tfds_name, root)}, calls
  return saved


@pytest.mark.parametrize("method,variant", DEFAULT, ids=[f"{m}_{v}" for m, v in DEFAULT])
def test_ssl_config_trains_checkpoints_and_evaluates(method, variant, tmp_path, request):
  run_pair(method, variant, tmp_path, request)


@pytest.mark.slow
@pytest.mark.parametrize("method,variant", SLOW, ids=[f"{m}_{v}" for m, v in SLOW])
def test_more_ssl_configs_train(method, variant, tmp_path, request):
  run_pair(method, variant, tmp_path, request)


def test_tfds_data_root_is_the_data_dir(tfds_spy, tmp_path):
  """``data.root`` reaches ``tfds.data_source`` as ``data_dir``; equal to ``data.kwargs.data_dir``
  is accepted, a different one is an error naming both."""
  from configs import simclr  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = shrink(simclr.get_config("cifar10"))
  config.data.root = str(tmp_path / "tfds")
  dataset = loop.load_data(config)
  assert len(dataset.train.y) == NUM_EXAMPLES and dataset.train.x.shape[1:] == (32, 32, 3)
  assert {d for _, d in tfds_spy} == {str(tmp_path / "tfds")}
  config.data.kwargs.data_dir = str(tmp_path / "tfds") + "/"
  loop.load_data(config)
  config.data.kwargs.data_dir = str(tmp_path / "other")
  with pytest.raises(ValueError, match=r"root=.*tfds.*data_dir=.*other"):
    loop.load_data(config)
  config.data.root = None  # data.kwargs.data_dir alone still works
  tfds_spy.clear()
  loop.load_data(config)
  assert {d for _, d in tfds_spy} == {str(tmp_path / "other")}
