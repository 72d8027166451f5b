"""The papers' experiments as configs (issue 5): each variant trains end to end on tiny real-format data.

Fixture data is written on the fly in each source's real format (PNG + CSV for BMD, AVI +
``FileList.csv`` for EchoNet, PNG + ``agedb.csv`` / ``imdb_wiki.csv`` for the DIR benchmark), with
the writers of tests/test_sources.py and tests/test_sources_media.py. Each config is shrunk to a tiny
model, resolution and a few steps (its real backbone is exercised separately by one forward pass);
the run must write checkpoints, ``results.json`` with finite metrics, and pick the best state by the
protocol's metric. The kNN top-1 protocol is checked against a float64 NumPy InstDisc reference.
"""

from __future__ import annotations

import json
import os
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import models
from contrastive_jax.train import loop
from contrastive_jax.train import train_and_evaluate
from contrastive_jax.train.checkpoint import restore_variables
from contrastive_jax.train.defaults import base_config
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.state import TrainState
from contrastive_jax.train.step import make_train_step
from tests.test_sources import _csv
from tests.test_sources import _image
from tests.test_sources import _png
from tests.test_sources_media import _make_echonet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import accon, adacon, rnc, simclr, supremix  # pylint: disable=g-import-not-at-top,wrong-import-position,line-too-long

pytestmark = pytest.mark.usefixtures("fast_compile")

# (config module, variant): every paper variant added for issue 5.
PAPER_VARIANTS = [(adacon, "bmd"), (adacon, "echonet"), (accon, "agedb"), (accon, "imdb_wiki"),
                  (rnc, "agedb"), (supremix, "agedb"), (supremix, "imdb_wiki")]


# --------------------------------------------------------------------------------------------------
# fixture data in the sources' real formats
# --------------------------------------------------------------------------------------------------

def write_bmd(root, num=24, side=20):
  """Grey PNG crops + ``bmd.csv`` (path,label,fold) with 4 folds; label = mean intensity."""
  os.makedirs(os.path.join(root, "crops"), exist_ok=True)
  rows = []
  for i in range(num):
    image = _image(i, size=(side, side))
    _png(os.path.join(root, "crops", f"{i:03d}.png"), image)
    rows.append((f"crops/{i:03d}.png", round(float(image.mean()) / 255, 4), i % 4))
  _csv(os.path.join(root, "bmd.csv"), ("path", "label", "fold"), rows)
  return str(root)


def write_dir_benchmark(root, dataset="agedb", num=40, side=20):
  """RGB face stand-ins + the DIR meta file ``<dataset>.csv`` (age,path,split), 24/8/8 split."""
  folder = "AgeDB" if dataset == "agedb" else "imdb_crop"
  os.makedirs(os.path.join(root, folder), exist_ok=True)
  rows = []
  for i in range(num):
    name = f"{folder}/{i}_person_{20 + i}.png"
    _png(os.path.join(root, name), _image(i, size=(side, side), channels=3))
    split = "train" if i < 24 else ("val" if i < 32 else "test")
    rows.append((20 + (i * 7) % 40, name, split))
  _csv(os.path.join(root, f"{dataset}.csv"), ("age", "path", "split"), rows)
  return str(root)


def write_classes(root, num=36, side=12):
  """RGB PNGs of three classes (colour-coded) + a CSV with integer class labels and splits."""
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  rng = np.random.default_rng(0)
  rows = []
  for i in range(num):
    label = i % 3
    image = rng.integers(0, 60, size=(side, side, 3)).astype(np.uint8)
    image[..., label] += 150
    _png(os.path.join(root, "img", f"{i:02d}.png"), image)
    split = "train" if i < 24 else ("val" if i < 30 else "test")
    rows.append((f"img/{i:02d}.png", label, split))
  _csv(os.path.join(root, "classes.csv"), ("path", "label", "split"), rows)
  return str(root)


def tiny(config, steps=4):
  """Shrinks a paper config's run control (the model is shrunk per variant)."""
  config.num_train_steps = steps
  config.log_every = 2
  config.eval_every = 2
  config.checkpoint_every = 2
  config.eval_batch_size = 8
  config.optim.warmup_steps = 0
  config.model.proj_hidden_dim = 16
  if config.optim.name == "sgd":
    config.optim.lr = min(config.optim.lr, 0.05)
  return config


def small_cnn(config):
  config.model.encoder = "small_cnn"
  config.model.encoder_kwargs = ml_collections.ConfigDict()
  config.model.proj_dim = 16
  return config


def tiny_config(module, variant, root):
  """``module.get_config(variant)`` on the fixture data under ``root``, tiny and fast."""
  config = tiny(module.get_config(variant))
  config.data.root = str(root)
  if variant == "bmd":
    config.data.kwargs.image_size = 16
    config.batch_size = 4
    config.data.views = 2
  elif variant == "echonet":
    config.data.kwargs.update(frames=4, period=2, size=16, train_window=5)
    config.data.augment.length = 4
    config.data.augment.pad = 2
    config.batch_size = 2
    config.eval_batch_size = 2
    config.model.encoder_kwargs = ml_collections.ConfigDict(
        dict(stage_sizes=(1, 1), num_filters=4, stem_mid=4))
    config.model.proj_dim = 8
    return config
  else:  # the DIR benchmark
    config.data.kwargs.update(image_size=16, workers=1)
    config.batch_size = 8
    if config.data.augment_kind == "bmd":
      config.data.augment.translate = 2 / 16
  return small_cnn(config)


def fixture_root(tmp_path, variant):
  if variant == "bmd":
    return write_bmd(tmp_path)
  if variant == "echonet":
    return _make_echonet(str(tmp_path))
  return write_dir_benchmark(tmp_path, variant)


def check_run(results, workdir, config):
  """Checkpoints, results.json and finite metrics of a finished run."""
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(config.num_train_steps)))
  assert os.listdir(os.path.join(workdir, "best"))
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved["steps"] == config.num_train_steps
  values = [v for v in saved["test"].values()] + [v for v in saved["val_best"].values()]
  assert values and np.all(np.isfinite(values)), saved
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    train_losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert train_losses and np.all(np.isfinite(train_losses))
  return saved


# --------------------------------------------------------------------------------------------------
# the configs' hyperparameters
# --------------------------------------------------------------------------------------------------

def test_adacon_bmd_and_echonet_hyperparameters():
  bmd = adacon.get_config("bmd")
  assert (bmd.model.encoder, bmd.data.kwargs.image_size, bmd.batch_size, bmd.data.views) == (
      "efficientnet_b1", 128, 8, 8)  # Sec. IV-A: EfficientNet-B1, 128x128, batch 8 x 8 augments
  assert (bmd.optim.name, bmd.optim.lr, bmd.optim.momentum, bmd.optim.weight_decay) == (
      "sgd", 1e-2, 0.9, 1e-4)
  _, schedule = make_optimizer(bmd.optim, bmd.num_train_steps)
  chex.assert_trees_all_close([float(schedule(s)) for s in (0, 2999, 3000, 4499, 4500, 5999)],
                              [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)  # decay at 3k, 4.5k
  assert (bmd.loss.reg, bmd.loss.gamma_con, bmd.data.kwargs.fold) == ("l1", 0.005, 0)
  echo = adacon.get_config("echonet")
  assert (echo.model.encoder, echo.data.kwargs.frames, echo.data.kwargs.period,
          echo.data.kwargs.size, echo.batch_size) == ("r2plus1d_18", 32, 2, 112, 20)
  assert (echo.loss.reg, echo.optim.lr, echo.optim.momentum) == ("mse", 1e-4, 0.9)
  _, schedule = make_optimizer(echo.optim, echo.num_train_steps)
  epoch = echo.num_train_steps // 45  # 45 epochs, x0.1 every 15
  chex.assert_trees_all_close([float(schedule(s * epoch)) for s in (14, 15, 30)],
                              [1e-4, 1e-5, 1e-6], rtol=1e-6)
  assert (echo.data.augment_kind, echo.eval.clip_mode) == ("echonet", "first")


def test_age_configs_hyperparameters():
  # ACCon README command: batch 64, lr 2.5e-4, 90 epochs (Haifengtao/ACCon train.py).
  for variant, steps in (("agedb", 90 * (12208 // 64)), ("imdb_wiki", 90 * (191500 // 64))):
    config = accon.get_config(variant)
    assert (config.model.encoder, config.model.encoder_kwargs.stem) == ("resnet50", "imagenet")
    assert (config.data.name, config.data.kwargs.dataset, config.data.kwargs.image_size) == (
        "dir_benchmark", variant, 224)
    assert (config.loss.contrastive.temperature, config.loss.gamma_con, config.model.proj_dim,
            config.model.regress_from) == (0.05, 1.0, 512, "projection")
    assert (config.num_train_steps, config.batch_size, config.optim.name, config.optim.lr,
            config.optim.weight_decay) == (steps, 64, "adam", 2.5e-4, 0.0)
  config = rnc.get_config("agedb")  # kaiwenzha/Rank-N-Contrast main_rnc.py
  assert (config.model.encoder, config.batch_size, config.optim.lr) == ("resnet18", 256, 0.5)
  assert (config.loss.gamma_reg, config.eval_with, config.num_train_steps) == (0.0, "ridge", 400 * 47)
  config = supremix.get_config("agedb")  # Mixup-Your-Own-Pairs agedb-dir/train_supremix.py
  assert (config.model.encoder, config.batch_size, config.optim.name, config.optim.lr) == (
      "resnet50", 128, "adam", 1e-3)
  assert (config.loss.gamma_reg, config.eval_with, config.num_train_steps) == (0.0, "ridge", 9500)
  assert rnc.get_config("agedb").loss.contrastive.temperature == 2.0
  assert supremix.get_config("agedb").loss.contrastive.temperature == 0.5
  config = supremix.get_config("imdb_wiki")  # Mixup-Your-Own-Pairs imdb-wiki/train_supremix.py
  assert (config.data.name, config.data.kwargs.dataset, config.data.kwargs.split_mode) == (
      "dir_benchmark", "imdb_wiki", "balanced")
  assert (config.model.encoder, config.batch_size, config.optim.lr, config.num_train_steps) == (
      "resnet50", 64, 1e-3, 100 * (191500 // 64))
  assert (config.loss.contrastive.temperature, config.model.proj_dim, config.eval_with) == (
      0.3, 128, "ridge")
  loop.check_config_fields(config)


def test_accon_with_conr_variants_are_the_accon_recipe_with_acconr():
  """Table 2's "+ACCon+ConR": the :agedb / :imdb_wiki recipe, method conr with ACCon's angle
  compensation as the official acConR (window 1, t = 0.07 official, R = 100, gamma 1)."""
  from contrastive_jax.train import objectives  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  for variant in ("agedb", "imdb_wiki"):
    base, both = accon.get_config(variant), accon.get_config(f"{variant}_with_conr")
    assert both.method == "conr" and both.loss.contrastive.to_dict() == dict(
        window=1.0, temperature=0.07, e=0.01, official=True, angle_range=100.0)
    for tree in (base, both):
      tree.method = "x"
      tree.loss.contrastive = {}
    assert both.to_dict() == base.to_dict()
    loop.check_config_fields(accon.get_config(f"{variant}_with_conr"))
    assert objectives.loss_kwargs("conr", accon.get_config(f"{variant}_with_conr").loss)[
        "angle_range"] == 100.0


def test_existing_variants_unchanged_and_bad_variant():
  for module in (adacon, accon, rnc, supremix):
    for variant in ("digits_angle", "diabetes"):
      config = module.get_config(variant)
      assert config.data.name == variant and config.data.root is None
      assert config.data.augment_kind is None and config.eval.protocol == "regression"
      loop.check_config_fields(config)
    with pytest.raises(ValueError, match="variant"):
      module.get_config("agedbb")


# --------------------------------------------------------------------------------------------------
# end-to-end runs on fixture data
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module,variant", [(adacon, "bmd"), (adacon, "echonet"), (rnc, "agedb")],
                         ids=["adacon_bmd", "adacon_echonet", "rnc_agedb"])
def test_paper_variant_trains_checkpoints_and_evaluates(tmp_path, module, variant):
  root = fixture_root(tmp_path / "data", variant)
  config = tiny_config(module, variant, root)
  workdir = str(tmp_path / "run")
  saved = check_run(train_and_evaluate(config, workdir), workdir, config)
  assert saved["protocol"] == "regression" and saved["best_step"] in (2, 4)
  if config.eval_with == "head":
    predictions = np.load(os.path.join(workdir, "test_predictions.npz"))
    assert np.all(np.isfinite(predictions["prediction"]))
    chex.assert_trees_all_close(np.mean(np.abs(predictions["prediction"] - predictions["y"])),
                                saved["test"]["mae"], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("module,variant", [(accon, "agedb"), (accon, "imdb_wiki"),
                                            (supremix, "agedb"), (supremix, "imdb_wiki")],
                         ids=["accon_agedb", "accon_imdb_wiki", "supremix_agedb",
                              "supremix_imdb_wiki"])
def test_more_paper_variants_train(tmp_path, module, variant):
  """ACCon's DIR runs share the data path of `:bmd` (head evaluation) and SupReMix RNC's pipeline."""
  root = fixture_root(tmp_path / "data", variant)
  config = tiny_config(module, variant, root)
  workdir = str(tmp_path / "run")
  check_run(train_and_evaluate(config, workdir), workdir, config)


def test_bmd_fold_is_passed_to_the_source(tmp_path):
  root = write_bmd(tmp_path / "data")
  config = tiny_config(adacon, "bmd", root)
  config.data.kwargs.fold = 2
  dataset = loop.load_data(config)
  # Fold 2 is the test set, fold 3 the validation set (base.fold_indices); rows are i % 4 folds.
  assert len(dataset.test.y) == len(dataset.val.y) == 6 and len(dataset.train.y) == 12
  labels = {round(float(_image(i, size=(20, 20)).mean()) / 255, 4) for i in range(2, 24, 4)}
  chex.assert_trees_all_close(np.sort(dataset.test.y), np.sort(np.float32(sorted(labels))))


# --------------------------------------------------------------------------------------------------
# the real backbones
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("module,variant,shape", [
    (adacon, "bmd", (2, 32, 32, 3)), (adacon, "echonet", (2, 4, 32, 32, 3)),
    (accon, "agedb", (2, 32, 32, 3)), (rnc, "agedb", (2, 32, 32, 3))],
    ids=["efficientnet_b1", "r2plus1d_18", "resnet50", "resnet18"])
def test_real_backbone_forward_pass(module, variant, shape):
  config = module.get_config(variant)
  model = models.build_model(config.model)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=shape), jnp.float32)
  variables = jax.jit(lambda k, v: model.init(k, v, train=False))(jax.random.PRNGKey(0), x)
  out = jax.jit(lambda v, xx: model.apply(v, xx, train=False))(variables, x)
  width = {"efficientnet_b1": 1280, "r2plus1d_18": 512, "resnet50": 2048, "resnet18": 512}
  chex.assert_shape(out["embedding"], (2, width[config.model.encoder]))
  chex.assert_shape(out["projection"], (2, config.model.proj_dim))
  chex.assert_shape(out["prediction"], (2,))
  chex.assert_tree_all_finite(out)


def test_real_resnet18_backbone_forward_pass():
  """The default suite's real-backbone check (the others are @slow): RNC / SupReMix's ResNet-18."""
  config = rnc.get_config("agedb")
  model = models.build_model(config.model)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(lambda k, v: model.init(k, v, train=False))(jax.random.PRNGKey(0), x)
  out = jax.jit(lambda v, xx: model.apply(v, xx, train=False))(variables, x)
  chex.assert_shape(out["embedding"], (2, 512))
  chex.assert_tree_all_finite(out)


# --------------------------------------------------------------------------------------------------
# the knn_top1 protocol, the video evaluation clip, the dropout stream, errors
# --------------------------------------------------------------------------------------------------

def numpy_knn_top1(train, train_y, query, query_y, k, temperature):
  """InstDisc weighted kNN (Wu et al. 2018, Sec. 3.4) in float64: votes exp(cos / T), top-k."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  query = query / np.linalg.norm(query, axis=1, keepdims=True)
  sims = query @ train.T
  correct = 0
  for i in range(len(query)):
    top = np.argsort(-sims[i], kind="stable")[:k]
    scores = np.zeros(int(train_y.max()) + 1)
    np.add.at(scores, train_y[top].astype(int), np.exp(sims[i, top] / temperature))
    correct += int(np.argmax(scores) == query_y[i])
  return correct / len(query)


def test_knn_top1_protocol_matches_numpy_reference(tmp_path):
  root = write_classes(tmp_path / "data")
  config = tiny(simclr.get_config("digits_angle"), steps=4)
  config.data.name = "csv_images"
  config.data.root = root
  config.data.kwargs = ml_collections.ConfigDict(dict(csv_path="classes.csv"))
  config.data.augment_kind = "simclr"
  config.data.augment = ml_collections.ConfigDict(dict(blur_prob=0.0))
  config.eval.protocol = "knn_top1"
  config.eval.knn_k = 5
  config.eval.linear_probe_steps = 50
  config.batch_size = 8
  small_cnn(config)
  workdir = str(tmp_path / "run")
  saved = check_run(train_and_evaluate(config, workdir), workdir, config)
  assert saved["metric"] == "knn_top1" and set(saved["test"]) == {"knn_top1", "knn_top5", "linear_probe_top1", "linear_probe_top5"}
  assert "test_train_mean_predictor" not in saved
  assert 0.0 <= saved["test"]["linear_probe_top1"] <= 1.0

  dataset = loop.load_data(config)
  model = models.build_model(config.model)
  variables = restore_variables(os.path.join(workdir, "best"), saved["best_step"])

  def embed(split):
    x = np.stack([np.asarray(split.x[i], np.float32) / 255 for i in range(len(split.y))])
    return np.asarray(model.apply(variables, x, train=False)["embedding"], np.float64)

  expected = numpy_knn_top1(embed(dataset.train), dataset.train.y, embed(dataset.test),
                            dataset.test.y, k=5, temperature=0.1)
  assert saved["test"]["knn_top1"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("mode", ["first", "center"])
def test_video_eval_clip(mode):
  config = base_config()
  config.data.augment = ml_collections.ConfigDict(dict(length=3))
  config.eval.clip_mode = mode
  preprocess = loop.video_eval_preprocess(config)
  video = np.arange(2 * 8, dtype=np.float32).reshape(2, 8, 1, 1, 1) / 16
  start = 0 if mode == "first" else (8 - 3) // 2  # EchoNet's centre: floor of the middle start
  chex.assert_trees_all_close(np.asarray(preprocess(video)), video[:, start:start + 3])
  clips = video[:, :3]
  chex.assert_trees_all_close(np.asarray(preprocess(clips)), clips)  # already clips: unchanged


class _DropoutEncoder(nn.Module):
  bn_axis_name: str | None = None
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    return nn.Dropout(0.5, deterministic=not train)(x)


def test_train_step_feeds_a_dropout_stream():
  config = base_config("diabetes")
  config.method = "none"
  model = models.ContrastiveRegressor(encoder=_DropoutEncoder(), proj_dim=4)
  mesh = loop.make_mesh()
  x = jnp.ones((4, 10), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  tx, schedule = make_optimizer(config.optim, 10)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats={},
                            rng=jax.random.PRNGKey(1))
  step = make_train_step(model, config, mesh, lambda k, v: v, schedule)
  batch = {"x": x, "y": jnp.arange(4.0), "y_norm": jnp.arange(4.0)}
  losses = []
  for _ in range(3):  # the same batch: only the dropout masks (one per step) change the loss
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and len(set(losses)) == 3


def test_data_errors(tmp_path):
  config = tiny_config(accon, "agedb", tmp_path)
  config.data.root = None
  with pytest.raises(ValueError, match="data.root"):
    loop.load_data(config)
  config.data.root = str(tmp_path)
  config.data.kwargs.root = str(tmp_path)
  with pytest.raises(ValueError, match="data.kwargs.root"):
    loop.load_data(config)
  with pytest.raises(FileNotFoundError):
    loop.load_data(tiny_config(accon, "agedb", tmp_path / "missing"))
  bad_kind = base_config()
  bad_kind.data.augment_kind = "sharpen"
  with pytest.raises(ValueError, match="sharpen"):
    loop.make_augment_fn(bad_kind, "image")
  with pytest.raises(ValueError, match="no default augmentation"):
    loop.make_augment_fn(base_config(), "volume")
  bad_protocol = base_config("diabetes")
  bad_protocol.eval.protocol = "top5"
  with pytest.raises(ValueError, match="eval.protocol"):
    train_and_evaluate(bad_protocol, str(tmp_path / "run"))
  bad_clip = base_config()
  bad_clip.eval.clip_mode = "last"
  with pytest.raises(ValueError, match="clip_mode"):
    loop.video_eval_preprocess(bad_clip)


def test_volume_slicing_helpers():
  x = jnp.arange(2 * 5 * 3 * 3 * 1, dtype=jnp.float32).reshape(2, 5, 3, 3, 1)
  chex.assert_trees_all_equal(loop.middle_slice(x), x[:, 2])
  # (The views of 'same' / 'different' slice pairs: tests/test_mrnet.py.)
  picked = loop.random_slice(lambda key, images: images)(jax.random.PRNGKey(0), x)
  assert picked.shape == (2, 3, 3, 1)
  for b in range(2):  # every output is one whole slice of its own volume
    assert any(np.array_equal(picked[b], x[b, s]) for s in range(5))
