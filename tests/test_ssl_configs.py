"""Self-supervised image configs (thesis Ch. 4-6) and the Fashion-MNIST benchmark script.

End-to-end runs use small generated Fashion-MNIST-format IDX files (the real source reads them from
``data.root``), so they need neither the Debian package nor minutes of CPU; the kNN scores are checked
against a float64 NumPy weighted kNN written from InstDisc's vote (Wu et al. 2018, Sec. 3.4).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys

import jax
import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "benchmarks"))

import ssl_fashion_mnist as bench  # pylint: disable=g-import-not-at-top,wrong-import-position

from contrastive_jax.data.sources.idx import read_idx  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.defaults import base_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.recipes import self_supervised  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.loop import check_config_fields  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.usefixtures("fast_compile")

METHODS = ("simclr", "mio", "dystress", "bcl", "dcl")
VARIANTS = {"simclr": ("fashion_mnist", "fashion_mnist_lt", "cifar10", "cifar100", "stl10",
                       "cifar10_lt", "cifar100_lt", "imagenet", "imagenet100"),
            "mio": ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagenet100", "imagenet"),
            "dystress": ("fashion_mnist", "fashion_mnist_lt", "cifar10", "cifar100", "stl10",
                         "cifar10_lt", "cifar100_lt", "imagenet100", "imagenet"),
            "bcl": ("fashion_mnist", "mrnet"),
            "dcl": ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagenet100", "imagenet")}


def _config(method: str, variant: str):
  return importlib.import_module(f"configs.{method}").get_config(variant)


def _fake_fashion_mnist(root, num_train: int = 160, num_test: int = 40) -> str:
  """IDX files in Fashion-MNIST's layout: class-dependent brightness + noise, labels cycling 0..9."""
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  for part, n in (("train", num_train), ("test", num_test)):
    y = (np.arange(n) % 10).astype(np.uint8)
    x = (rng.random((n, 28, 28)) * 60 + 20.0 * y[:, None, None]).astype(np.uint8)
    bench.write_idx(os.path.join(root, bench.IDX_FILES[part][0]), x)
    bench.write_idx(os.path.join(root, bench.IDX_FILES[part][1]), y)
  return str(root)


def _tiny(method: str, root: str):
  config = bench.make_config(method, steps=2, batch_size=16, width=4, data_root=root, lr=0.03,
                             warmup=1, val_size=32, eval_batch_size=64)
  config.eval.linear_probe_steps = 20
  return config


def _weighted_knn_top1(train, train_y, query, query_y, k: int, temperature: float) -> float:
  """float64 InstDisc kNN: cosine similarities, top-k, class votes exp(s / T), argmax."""
  unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  sims = unit(np.asarray(train, np.float64)) @ unit(np.asarray(query, np.float64)).T  # [N, Q]
  correct = 0
  for q in range(sims.shape[1]):
    idx = np.argsort(-sims[:, q], kind="stable")[:k]
    votes = np.zeros(10)
    np.add.at(votes, np.asarray(train_y)[idx].astype(int), np.exp(sims[idx, q] / temperature))
    correct += int(np.argmax(votes) == query_y[q])
  return correct / sims.shape[1]


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_every_variant_builds_and_names_known_fields(method):
  for variant in ("digits_angle", "diabetes") + VARIANTS[method]:
    config = _config(method, variant)
    check_config_fields(config)  # no typo'd field
    assert config.method == ("binary_contrastive" if method == "bcl" else method)
  with pytest.raises(ValueError, match="variant"):
    _config(method, "no_such_variant")


@pytest.mark.parametrize("method", METHODS)
def test_default_variants_unchanged(method):
  """The bundled-data variants are self_supervised(base_config) plus the method's loss only."""
  for variant in ("digits_angle", "diabetes"):
    config = _config(method, variant).to_dict()
    expected = self_supervised(base_config(variant)).to_dict()
    for tree in (config, expected):
      tree.pop("method")
      tree["loss"].pop("contrastive")
    assert config == expected
    assert _config(method, variant).eval_with == "knn"
  assert _config("simclr", "digits_angle").loss.contrastive.temperature == 0.5


def test_fashion_mnist_variants_share_backbone_budget_and_augmentation():
  shared = ("data", "model", "optim", "eval", "batch_size", "num_train_steps", "eval_every")
  ref = _config("simclr", "fashion_mnist")
  for method in METHODS[1:]:
    config = _config(method, "fashion_mnist")
    for key in shared:
      value, expected = config[key], ref[key]
      if hasattr(value, "to_dict"):
        value, expected = value.to_dict(), expected.to_dict()
      assert value == expected, (method, key)
  assert ref.data.name == "fashion_mnist" and ref.data.root == "/usr/share/datasets/fashion-mnist"
  assert ref.data.kwargs.target == "class" and ref.data.augment_kind == "simclr"
  assert ref.model.encoder == "resnet18" and ref.model.encoder_kwargs.stem == "cifar"
  assert ref.eval.protocol == "knn_top1" and ref.eval.knn_k == 200
  assert ref.data.augment.jitter[2:] == (0.0, 0.0) and ref.data.augment.gray_prob == 0.0
  assert ref.num_train_steps <= 100 and ref.loss.gamma_reg == 0.0


def test_thesis_hyperparameters():
  """Values of THESIS_CH5_7.md / THESIS_CH3_4.md (Ch. 4 C5-C8, Ch. 5 and 6 hyperparameters)."""
  for method in ("simclr", "mio", "dystress"):
    c = _config(method, "cifar10")
    assert (c.batch_size, c.optim.name, c.optim.lr, c.optim.weight_decay) == (128, "sgd", 0.06, 5e-4)
    assert c.num_train_steps == 200 * (50_000 // 128)  # 200 epochs
    assert c.model.encoder_kwargs.stem == "cifar" and c.model.proj_hidden_dim == 512
    assert c.data.kwargs.tfds_name == "cifar10" and c.data.augment.blur_prob == 0.0
    big = _config(method, "imagenet100")
    assert (big.batch_size, big.optim.name, big.model.encoder) == (256, "lars", "resnet50")
    np.testing.assert_allclose(big.optim.lr, 0.075 * np.sqrt(256))
    assert big.optim.weight_decay == 1e-6 and big.optim.warmup_steps == 10 * (126_689 // 256)
    assert big.num_train_steps == 200 * (126_689 // 256)
    assert _config(method, "imagenet").num_train_steps == 100 * (1_281_167 // 256)
  assert _config("mio", "cifar10").loss.contrastive.to_dict() == {"temperature": 0.2, "version": 3}
  assert _config("simclr", "cifar10").loss.contrastive.temperature == 0.1
  d = _config("dystress", "cifar10").loss.contrastive
  assert (d.tau_min, d.tau_max, d.profile) == (0.07, 0.2, "cosine")
  assert _config("dystress", "imagenet100").loss.contrastive.tau_min == 0.1
  for method in ("simclr", "mio", "dystress"):  # Sec. 5.5.2: lr 0.06 CIFAR-100, 0.03 STL-10
    c100, stl = _config(method, "cifar100"), _config(method, "stl10")
    assert (c100.data.kwargs.tfds_name, c100.optim.lr, c100.num_train_steps) == (
        "cifar100", 0.06, 200 * (50_000 // 128))
    assert (stl.data.kwargs.tfds_name, stl.optim.lr, stl.num_train_steps) == (
        "stl10", 0.03, 200 * (5_000 // 128))
    assert stl.data.augment.size == 96 and c100.data.long_tail_ratio == 1.0
  for method in ("simclr", "dystress"):  # Sec. 6.5.2.1: ratio 100, 500 epochs, k = 1 and 10
    for variant, name, size in (("cifar10_lt", "cifar10", 12_406), ("cifar100_lt", "cifar100", 10_847)):
      lt = _config(method, variant)
      assert (lt.data.kwargs.tfds_name, lt.data.long_tail_ratio, tuple(lt.eval.l2_knn_ks)) == (
          name, 100, (1, 10))
      assert lt.num_train_steps == 500 * (size // 128) and lt.optim.lr == 0.06
  m = _config("bcl", "mrnet")
  assert (m.loss.contrastive.temperature, m.loss.contrastive.nu) == (0.25, 1.0)
  assert (m.batch_size, m.optim.name, m.optim.lr, m.optim.warmup_steps) == (64, "lars", 0.1, 0)
  assert (m.model.encoder, m.model.proj_hidden_dim, m.model.proj_dim) == ("resnet50", 2048, 512)
  assert m.data.name == "mrnet" and m.data.augment.size == 224
  # Sec. 4.4.3 as printed: Linear 2048 -> 2048, ReLU, Linear -> 512, no BatchNorm; Sec. 4.5.2.1: both
  # views from one random slice; 3 channels so that ImageNet weights (model.init_from) fit.
  assert not m.model.proj_batch_norm and m.data.slice_pairs == "same" and m.data.kwargs.channels == 3


# --------------------------------------------------------------------------------------------------
# benchmark pieces
# --------------------------------------------------------------------------------------------------

def test_write_idx_round_trips_through_the_source_reader(tmp_path):
  x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  bench.write_idx(str(tmp_path / "a"), x)
  raw = (tmp_path / "a").read_bytes()
  assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
  np.testing.assert_array_equal(read_idx(str(tmp_path / "a")), x)


def test_bad_cli_arguments_are_rejected():
  for argv in (["--methods", "simclr,nope"], ["--width", "huge"], ["--steps", "0"],
               ["--subset", "10", "--batch-size", "64"]):
    with pytest.raises(SystemExit):
      bench.parse_args(argv)
  assert bench.parse_args(["--width", "12"]).width == 12
  with pytest.raises(ValueError, match="method"):
    bench.make_config("byol", steps=1, batch_size=2, width=4, data_root="x", lr=0.1, warmup=0)
  with pytest.raises(FileNotFoundError, match="t10k|train"):
    bench.write_subset("/nonexistent_fashion_mnist", "/tmp/unused_subset", 10, 2)


def test_random_baseline_knn_matches_numpy_reference(tmp_path):
  config = _tiny("simclr", _fake_fashion_mnist(tmp_path / "data"))
  dataset = bench.load_data(config)
  model = bench.build_classifier(config)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((2, 28, 28, 1), np.float32), train=False)
  scores = bench.frozen_scores(model, variables, dataset, config)
  apply = jax.jit(functools.partial(model.apply, train=False))
  train_f, _ = bench.embed(apply, variables, dataset.train, 64)
  test_f, _ = bench.embed(apply, variables, dataset.test, 64)
  assert train_f.shape == (128, 32) and test_f.shape == (40, 32)  # 4 * 8 filters, padding removed
  expected = _weighted_knn_top1(train_f, dataset.train.y, test_f, dataset.test.y, k=128,
                                temperature=0.1)
  assert scores["knn_top1"] == pytest.approx(expected, abs=1e-12)
  assert 0.0 <= scores["linear_probe_top1"] <= 1.0


@pytest.mark.slow  # the whole benchmark script end to end, ~16 s; its configs train in the tests above
def test_benchmark_main_tiny_budget(tmp_path):
  """CLI end to end: simclr through the trainer, both baselines; table and JSON written."""
  root = _fake_fashion_mnist(tmp_path / "data", num_train=200, num_test=50)
  out = tmp_path / "result.json"
  rc = bench.main(["--steps", "2", "--batch-size", "16", "--width", "tiny", "--data-root", root,
                   "--subset", "160", "--methods", "simclr,supervised,random", "--workdir",
                   str(tmp_path / "runs"), "--json", str(out), "--eval-batch-size", "64"])
  assert rc == 0
  report = json.loads(out.read_text())
  assert [r["method"] for r in report["rows"]] == ["simclr", "supervised", "random"]
  for row in report["rows"]:
    assert np.isfinite(row["test"]["knn_top1"]) and 0.0 <= row["test"]["knn_top1"] <= 1.0
  assert report["settings"]["subset"] == 160 and report["settings"]["lr"] == pytest.approx(0.06 / 8)
  assert "| SimCLR" in report["table"] and report["device"] and report["command"]
  assert os.path.isfile(tmp_path / "runs" / "simclr" / "results.json")


# --------------------------------------------------------------------------------------------------
# slow: every fashion_mnist variant end to end, the whole benchmark
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_fashion_mnist_variant_end_to_end(method, tmp_path):
  root = _fake_fashion_mnist(tmp_path / "data")
  config = _config(method, "fashion_mnist")  # the variant itself, shrunk to a tiny budget
  config.data.root = root
  config.data.kwargs.val_size = 32
  config.model.encoder_kwargs.num_filters = 4
  config.batch_size, config.num_train_steps, config.eval_batch_size = 16, 3, 64
  config.optim.warmup_steps, config.eval.linear_probe_steps = 1, 20
  config.eval_every = config.checkpoint_every = config.log_every = 3
  results = train_and_evaluate(config, str(tmp_path / "run"))
  assert results["protocol"] == "knn_top1" and results["steps"] == 3
  for key in ("knn_top1", "linear_probe_top1"):
    assert np.isfinite(results["test"][key]) and 0.0 <= results["test"][key] <= 1.0


@pytest.mark.slow
def test_benchmark_all_methods_tiny_budget(tmp_path):
  root = _fake_fashion_mnist(tmp_path / "data")
  out = tmp_path / "result.json"
  assert bench.main(["--steps", "2", "--batch-size", "16", "--width", "tiny", "--data-root", root,
                     "--subset", "160", "--workdir", str(tmp_path / "runs"), "--json", str(out),
                     "--eval-batch-size", "64"]) == 0
  report = json.loads(out.read_text())
  assert [r["method"] for r in report["rows"]] == list(bench.METHODS)
  for row in report["rows"]:
    assert "error" not in row, row
    assert np.isfinite(row["test"]["knn_top1"])
