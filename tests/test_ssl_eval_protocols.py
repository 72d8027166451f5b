"""Thesis Ch. 5/6 evaluation protocols: long-tailed splits + l2 kNN (Tables 6.2-6.6) and transfer
fine-tuning (Tables 5.6-5.7 / 6.11-6.12).

The pipelines run end to end on generated Fashion-MNIST-format IDX files and scikit-learn's bundled
digits: a long-tailed SimCLR pretraining (``configs/simclr.py:fashion_mnist_lt``) and the
fine-tuning of its encoder on the digits (``configs/transfer.py:digits`` with ``model.init_from``),
both tiny and both through ``python -m launch``: in the default suite with a small MLP encoder (config
files shrinking the variants), in the slow suite with the variants' own ResNet-18 (``--config.*``
overrides of the documented commands).
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from contrastive_jax import data as data_lib
from contrastive_jax.data.long_tail import long_tail
from contrastive_jax.data.long_tail import long_tail_counts
from contrastive_jax.data.long_tail import long_tail_rows
from contrastive_jax.evaluate.knn import l2_knn_classify
from contrastive_jax.train import finetune
from tests import launch_process
from tests.test_ssl_configs import _fake_fashion_mnist



def test_long_tail_counts_are_the_cifar_lt_profile():
  """CIFAR10-LT / CIFAR100-LT at ratio 100 (Cao et al. 2019; the thesis' code, imb_factor 0.01)."""
  np.testing.assert_array_equal(long_tail_counts(5000, 10, 100),
                                [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
  c100 = long_tail_counts(500, 100, 100)
  assert (c100[0], c100[1], c100[-1], c100.sum()) == (500, 477, 5, 10_847)
  np.testing.assert_array_equal(long_tail_counts(7, 3, 1), [7, 7, 7])
  for bad in (0.5, float("nan"), True):
    with pytest.raises(ValueError, match="long_tail_ratio"):
      long_tail_counts(10, 3, bad)


def test_long_tail_rows_seeded_and_capped():
  y = np.repeat(np.arange(4), [30, 10, 30, 30])  # class 1 has fewer than its share (25 -> 10)
  rows = long_tail_rows(y, 8.0, seed=3)
  np.testing.assert_array_equal(np.bincount(y[rows]), [25, 10, 6, 3])  # floor(25 * 8^(-c/3)), capped
  np.testing.assert_array_equal(rows, long_tail_rows(y, 8.0, seed=3))
  assert not np.array_equal(rows, long_tail_rows(y, 8.0, seed=4))
  with pytest.raises(ValueError, match="class ids"):
    long_tail_rows(y + 0.5, 8.0, seed=0)
  ds = data_lib.load_dataset("digits", seed=0, upsample=1)
  lt = long_tail(ds, 10.0, seed=0)
  assert lt.val is ds.val and lt.test is ds.test and len(lt.train) < len(ds.train)
  assert long_tail(ds, 1.0, 0) is ds


def test_defaults_keep_older_checkpoints_resumable():
  from configs import simclr  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from contrastive_jax.train import run  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  balanced = run.config_identity(simclr.get_config("cifar10"))
  assert "long_tail_ratio" not in balanced["data"] and "l2_knn_ks" not in balanced["eval"]
  lt = run.config_identity(simclr.get_config("cifar10_lt"))
  assert lt["data"]["long_tail_ratio"] == 100 and lt["eval"]["l2_knn_ks"] == [1, 10]


def test_l2_knn_is_scikit_learns_majority_vote():
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  rng = np.random.default_rng(0)
  train, query = rng.normal(size=(120, 6)), rng.normal(size=(80, 6))
  y = rng.integers(0, 4, 120)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  for k in (1, 10):
    expected = KNeighborsClassifier(n_neighbors=k).fit(unit(train), y).predict(unit(query))
    np.testing.assert_array_equal(l2_knn_classify(train, y, query, k=k), expected)
  with pytest.raises(ValueError, match="k"):
    l2_knn_classify(train, y, query, k=0)


def test_finetune_config_checks():
  from configs import transfer  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = transfer.get_config()
  finetune.check_config(config)
  config.finetune.class_wieghts = 1.0
  with pytest.raises(ValueError, match="class_wieghts"):
    finetune.check_config(config)
  np.testing.assert_allclose(finetune.class_weight_vector(4.24, 2), [1.0, 4.24])
  np.testing.assert_allclose(finetune.class_weight_vector(None, 3), [1, 1, 1])
  with pytest.raises(ValueError, match="class_weights"):
    finetune.class_weight_vector((1.0, -1.0), 2)
  with pytest.raises(ValueError, match="class ids"):
    finetune.class_ids(np.array([0.5, 1.0]), "train")
  assert transfer.get_config().optim.decay_boundaries == (0.6, 0.8)  # x0.1 at epochs 30 and 40
  assert transfer.get_config().num_train_steps == 50 * (1257 // 128)
  assert isinstance(transfer.get_config().finetune, ml_collections.ConfigDict)


# The variants shrunk to a one-layer MLP on the flattened 28x28 images (a CNN's compilation would take
# most of the default suite's budget for these tests; the slow test runs the variants' ResNet-18)
# and, for pretraining, the translation / noise augmentation instead of SimCLR's crop-and-jitter
# pipeline (a third of the compile time).
TINY_LT = """
import ml_collections
from configs import simclr
def get_config():
  c = simclr.get_config("fashion_mnist_lt")
  c.model.encoder = "mlp"
  c.model.encoder_kwargs = ml_collections.ConfigDict(dict(hidden_sizes=(32,)))
  c.model.proj_dim, c.model.proj_hidden_dim = 16, 16
  c.data.augment_kind, c.data.augment = "image", ml_collections.ConfigDict()
  c.data.long_tail_ratio = 4.0
  c.data.kwargs.val_size = 40
  c.batch_size, c.eval_batch_size, c.num_train_steps = 16, 40, 2
  c.optim.warmup_steps, c.eval.linear_probe_steps = 0, 5
  c.log_every = c.eval_every = c.checkpoint_every = 2
  return c
"""

TINY_TRANSFER = """
import ml_collections
from configs import transfer
def get_config():
  c = transfer.get_config("digits")  # digits zoomed to 28x28: the same 784 inputs
  c.model.encoder = "mlp"
  c.model.encoder_kwargs = ml_collections.ConfigDict(dict(hidden_sizes=(32,)))
  c.batch_size, c.eval_batch_size, c.num_train_steps = 32, 280, 2
  c.log_every = c.eval_every = c.checkpoint_every = 2
  return c
"""


def test_long_tailed_pretraining_then_transfer(tmp_path):
  """``python -m launch --config=<simclr.py:fashion_mnist_lt shrunk>`` writes l2 1-NN / 10-NN top-1
  (kNN bank: the long-tailed split); ``<transfer.py:digits shrunk> --config.model.init_from=<it>``
  copies its encoder and writes top-1 / top-5."""
  root = _fake_fashion_mnist(tmp_path / "data", num_train=200, num_test=40)
  pre = str(tmp_path / "pre")
  launch_process.launch(f"--config={launch_process.config_file(tmp_path / 'lt.py', TINY_LT)}",
                        f"--config.data.root={root}", f"--workdir={pre}")
  with open(os.path.join(pre, "results.json"), encoding="utf-8") as f:
    lt = json.load(f)
  assert {"knn_top1", "knn_top5", "linear_probe_top1", "linear_probe_top5", "l2_knn1_top1",
          "l2_knn10_top1"} <= set(lt["test"])
  assert all(0.0 <= v <= 1.0 for v in lt["test"].values())
  out = str(tmp_path / "transfer")
  config = launch_process.config_file(tmp_path / "transfer.py", TINY_TRANSFER)
  done = launch_process.launch(f"--config={config}", f"--config.model.init_from={pre}",
                               f"--workdir={out}")
  assert "Initialised from the checkpoint" in done.stdout + done.stderr
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert results["task"] == "finetune" and results["num_classes"] == 10
  assert results["init_from"] == pre and set(results["test"]) == {"top1", "top5"}
  assert 0.0 <= results["test"]["top1"] <= results["test"]["top5"] <= 1.0
  assert results["steps"] == 2 and results["train_examples"] == 1257


@pytest.mark.slow  # two launcher processes compiling ResNet-18: ~40-60 s on 2 CPU cores
def test_long_tailed_pretraining_then_transfer_with_the_variants_resnet18(tmp_path):
  """The documented commands themselves, with the variants' own ResNet-18 (width 4)."""
  root = _fake_fashion_mnist(tmp_path / "data", num_train=200, num_test=40)
  pre = str(tmp_path / "pre")
  tiny = ["--config.model.encoder_kwargs.num_filters=4", "--config.optim.warmup_steps=0",
          "--config.log_every=2", "--config.eval_every=2", "--config.checkpoint_every=2",
          "--config.num_train_steps=2"]
  launch_process.launch(
      "--config=configs/simclr.py:fashion_mnist_lt", f"--workdir={pre}",
      f"--config.data.root={root}", "--config.data.long_tail_ratio=4", "--config.batch_size=16",
      "--config.data.kwargs.val_size=40", "--config.eval_batch_size=40",
      "--config.eval.linear_probe_steps=5", *tiny)
  with open(os.path.join(pre, "results.json"), encoding="utf-8") as f:
    assert {"l2_knn1_top1", "l2_knn10_top1"} <= set(json.load(f)["test"])
  out = str(tmp_path / "transfer")
  proc = launch_process.launch("--config=configs/transfer.py:digits", f"--workdir={out}",
                               f"--config.model.init_from={pre}", "--config.data.kwargs.upsample=2",
                               "--config.batch_size=32", *tiny)
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert results["init_from"] == pre and set(results["test"]) == {"top1", "top5"}
  assert "Initialised from the checkpoint" in proc.stdout + proc.stderr


def test_medical_transfer_variants_carry_the_thesis_weights():
  from configs import transfer  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  for variant, weights, lr in (("mura", (0.7097,), 1.0), ("isic2016", (4.24,), 1.0),
                               ("mhist", (2.45,), 1.0),
                               ("chaoyang", (1.264, 1.667, 1.0, 2.114), 0.1)):
    c = transfer.get_config(variant)
    finetune.check_config(c)
    assert (tuple(c.finetune.class_weights), c.optim.lr, c.batch_size) == (weights, lr, 128)
    assert c.data.name == "csv_images" and c.data.kwargs.csv_path == f"{variant}.csv"
  assert transfer.get_config("isic2016").num_train_steps == 50 * (900 // 128)


@pytest.mark.slow  # a CSV of PNGs through the medical-target variant (small CNN), ~10 s
@pytest.mark.usefixtures("fast_compile")
def test_csv_transfer_variant_trains_with_class_weights(tmp_path):
  from configs import transfer  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from tests.test_ssl_tfds_configs import write_imagenet100  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = transfer.get_config("chaoyang")  # 4 classes, the thesis' 4 class weights
  config.model.encoder = "small_cnn"
  config.model.encoder_kwargs = ml_collections.ConfigDict()
  config.data.root = write_imagenet100(str(tmp_path / "data"))
  config.data.kwargs.csv_path = "imagenet100.csv"
  config.data.kwargs.image_size = 16
  config.data.augment.max_shift = 2
  config.batch_size, config.eval_batch_size, config.num_train_steps = 8, 8, 2
  config.log_every = config.eval_every = config.checkpoint_every = 2
  results = finetune.train_finetune(config, str(tmp_path / "run"))
  assert results["num_classes"] == 4 and set(results["test"]) == {"top1", "top5"}
  assert results["test"]["top5"] == 1.0  # 4 classes: every label is in the top 5
