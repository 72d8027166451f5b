"""MRNet pipelines on generated data (thesis Ch. 3 / Ch. 4): same-slice BCL pretraining, the
downstream task (``configs/mrnet.py``, ``projects/mrnet``) and the plane ensemble (Eq. 3.1-3.4,
4.19-4.20).

The default suite shares one fixture tree (14 tiny volumes, 5-8 slices of 8x8) and runs the thesis'
chains as their documented commands (``python -m launch`` processes on shrunk configs, written as
config files below): Ch. 4 = a BCL pretraining run, then a fine-tuning run from it, then the
ensemble; Ch. 3 = a jigsaw (SKID-v3) pretext run on the MRNet slices, then the SKID downstream run on
its frozen trunk. The slow suite adds a second Ch. 3 plane with the ensemble, SSLACL, and the
paper-size encoders.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
import launch.__main__ as launcher
from configs import bcl
from configs import jigsaw as jigsaw_config
from configs import mrnet as mrnet_config
from contrastive_jax import models
from contrastive_jax.evaluate import classification
from contrastive_jax.projects.mrnet import data as mrnet_data
from contrastive_jax.projects.mrnet import ensemble
from contrastive_jax.train import loop
from contrastive_jax.train import step as step_lib
from contrastive_jax.train import train_and_evaluate
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.state import TrainState
from tests.test_paper_configs import check_run
from tests.test_paper_configs import tiny
from tests.test_sources_media import _make_mrnet
from tests import launch_process
# pylint: enable=g-import-not-at-top,wrong-import-position

SIDE = 8  # the fixture's slices are 8 x 8
METRICS = ("auc", "sensitivity", "specificity", "accuracy")


@pytest.fixture(scope="module")
def mrnet_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("MRNet"))
  _make_mrnet(root)
  return root


# The shrunk configs, as the config files the launcher processes read (``--config=<file>[:variant]``).
TINY_BCL = """
import ml_collections
from configs import bcl
def get_config():
  c = bcl.get_config("mrnet")
  c.model.encoder, c.model.proj_dim, c.model.proj_hidden_dim = "small_cnn", 16, 16
  c.model.encoder_kwargs = ml_collections.ConfigDict(dict(widths=(4, 8), dense_dim=8))
  c.data.kwargs.update(slices=4, size=8)
  c.data.augment.size = 8
  c.batch_size = c.eval_batch_size = 4
  c.num_train_steps, c.log_every = 4, 2
  c.eval_every = c.checkpoint_every = 2
  c.eval.knn_k = 3
  c.optim.name, c.optim.lr, c.optim.warmup_steps = "sgd", 0.01, 0
  return c
"""

TINY_DOWNSTREAM = """
import ml_collections
from configs import mrnet
def get_config(variant):
  c = mrnet.get_config(variant)
  c.data.size, c.data.workers, c.augment.size = 8, 1, 8
  c.slices.train = c.slices.eval = 3
  c.slices.eval_draws = 2
  c.batch_size = c.eval_batch_size = 4
  c.num_train_steps = c.eval_every = c.checkpoint_every = 2
  c.log_every = 1
  c.optim.decay_boundaries = (0.5,)
  c.eval.bootstrap_resamples, c.eval.bootstrap_size = 20, None
  if variant.startswith("table3"):  # the pretext nets at 1/128 width, small heads
    c.model.width_factor = 1 / 128
    c.batch_size = c.eval_batch_size = 2
  if variant in ("table3_3_skid", "table3_13_skid_conv3d"):
    c.model.lstm_features = (4, 4)
  if variant.startswith("table3_10"):
    c.model.conv_features, c.model.fc_features = ("max", 4, 8), (8,)
    c.slices.train = c.slices.eval = 9
  if variant.startswith("table4"):  # the small CNN of TINY_BCL, whose run it starts from
    c.model.encoder = "small_cnn"
    c.model.encoder_kwargs = ml_collections.ConfigDict(dict(widths=(4, 8), dense_dim=8))
  return c
"""

TINY_PRETEXT = """
from configs import jigsaw
def get_config(variant):
  c = jigsaw.get_config(variant)
  c.data.kwargs.update(size=8, slices=4, workers=1)
  c.jigsaw.update(crop_size=2, num_classes=4)
  c.jigsaw.augment.translations = (0.0,)
  c.model.width_factor = 1 / 128
  c.batch_size = c.eval_batch_size = 4
  c.max_eval_examples = 4
  c.num_train_steps = c.eval_every = c.checkpoint_every = 2
  c.optim.decay_boundaries = (0.5,)
  return c
"""


def in_process(body, *args):
  """The config a file of the launcher's format returns, built here (the same code as the process)."""
  namespace = {}
  exec(body, namespace)  # pylint: disable=exec-used
  return namespace["get_config"](*args)


@pytest.fixture(scope="module")
def mrnet_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("MRNet"))
  _make_mrnet(root)
  return root


@pytest.fixture(scope="module")
def bcl_run(mrnet_root, tmp_path_factory):
  """``python -m launch --config=<configs/bcl.py:mrnet shrunk>`` (thesis Ch. 4 pretraining) on the
  fixture tree: (results.json, workdir, the config)."""
  base = tmp_path_factory.mktemp("bcl")
  workdir = str(base / "run")
  launch_process.launch(f"--config={launch_process.config_file(base / 'tiny_bcl.py', TINY_BCL)}",
                        f"--config.data.root={mrnet_root}", f"--workdir={workdir}")
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f), workdir, in_process(TINY_BCL)


def tiny_downstream(variant, root, **fields):
  """``configs/mrnet.py:<variant>`` shrunk as TINY_DOWNSTREAM (in process), with ``fields``."""
  c = in_process(TINY_DOWNSTREAM, variant)
  c.data.root = root
  for key, value in fields.items():
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value
  return c


def check_report(report, num_exams):
  """AUC / sensitivity / specificity / accuracy, each an estimate inside its bootstrap interval."""
  assert report["num_exams"] == num_exams and 0 < report["num_positive"] < num_exams
  for m in METRICS:
    r = report[m]
    assert 0.0 <= r["low"] <= r["estimate"] <= r["high"] <= 1.0, (m, r)


# --------------------------------------------------------------------------------------------------
# Ch. 4 pretraining: positives from one slice (Sec. 4.5.2.1)
# --------------------------------------------------------------------------------------------------

def test_same_slice_positives():
  """'same' (default): both views of a scan are its ONE random slice; 'different': each view draws
  its own. Checked with the identity augmentation inside the train step's view builder."""
  x = jnp.arange(6 * 5 * 2 * 2 * 1, dtype=jnp.float32).reshape(6, 5, 2, 2, 1)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
  identity = lambda key, images: images

  def views(config):
    select = loop.make_select_fn(config, "volume")
    augment = loop.random_slice(identity) if loop.slice_pairs(config, "volume") == "different" \
        else identity
    fn = lambda key, v: step_lib.augment_views(key, v, 2, augment, select)
    return np.asarray(jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(),
                                                                     jax.sharding.PartitionSpec("batch")),
                                            out_specs=jax.sharding.PartitionSpec("batch")))(
                                                jax.random.PRNGKey(3), x))

  config = bcl.get_config("mrnet")
  assert config.data.slice_pairs == "same"
  same = views(config)
  assert same.shape == (6, 2, 2, 2, 1)
  for b in range(6):
    np.testing.assert_array_equal(same[b, 0], same[b, 1])
    assert any(np.array_equal(same[b, 0], x[b, s]) for s in range(5))
  assert len({int(same[b, 0, 0, 0, 0]) % 20 for b in range(6)}) > 1  # slices differ across scans
  config.data.slice_pairs = "different"
  different = views(config)
  assert any(not np.array_equal(different[b, 0], different[b, 1]) for b in range(6))
  for b in range(6):
    for v in range(2):
      assert any(np.array_equal(different[b, v], x[b, s]) for s in range(5))
  config.data.slice_pairs = "both"
  with pytest.raises(ValueError, match="slice_pairs"):
    loop.make_select_fn(config, "volume")
  assert loop.make_select_fn(config, "image") is None


def test_bcl_mrnet_pretrains_and_writes_results(bcl_run):
  """configs/bcl.py:mrnet end to end on the fixture: same-slice pairs, the printed projector."""
  results, workdir, config = bcl_run
  check_run(results, workdir, config)
  assert not config.model.proj_batch_norm and config.data.slice_pairs == "same"


# --------------------------------------------------------------------------------------------------
# Ch. 4 downstream: the BCL encoder fine-tuned, one (plane, task) per run, then the ensemble
# --------------------------------------------------------------------------------------------------

def test_ch4_fine_tuning_from_the_bcl_run_writes_metrics_with_intervals(bcl_run, mrnet_root,
                                                                        tmp_path):
  """``python -m launch --config=configs/mrnet.py:table4_4 --config.data.root=... --config.model.
  init_from=<BCL workdir>`` (shrunk), then the ensemble command over it and a second "plane"."""
  _, bcl_workdir, _ = bcl_run
  config = launch_process.config_file(tmp_path / "tiny_mrnet.py", TINY_DOWNSTREAM)
  workdir = str(tmp_path / "coronal_acl")
  done = launch_process.launch(f"--config={config}:table4_4", f"--config.data.root={mrnet_root}",
                               f"--config.model.init_from={bcl_workdir}", f"--workdir={workdir}")
  log = done.stdout + done.stderr
  assert "Initialised from the checkpoint" in log and "0 head" in log
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert (saved["task"], saved["arch"], saved["tasks"], saved["plane"]) == (
      "mrnet", "slice_max", ["acl"], "sagittal")
  check_report(saved["test"]["acl"], 4)  # MRNet's 'valid' exams of the fixture
  assert saved["monte_carlo"] == {"draws": 2, "slices": 3, "sampling": "uniform"}
  with np.load(os.path.join(workdir, "predictions.npz")) as f:
    assert f["test_draws"].shape == (2, 4, 1) and f["val_probs"].shape == (2, 1)
    np.testing.assert_allclose(f["test_probs"], f["test_draws"].mean(0), rtol=1e-6)

  # A second "plane": the same exams, other probabilities; the ensemble CLI combines the two.
  other = tmp_path / "axial_acl"
  other.mkdir()
  with np.load(os.path.join(workdir, "predictions.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  arrays.update(plane="axial", val_probs=1.0 - arrays["val_probs"],
                test_probs=np.clip(arrays["test_probs"] + 0.3, 0, 1))
  np.savez(other / "predictions.npz", **arrays)
  out = tmp_path / "ensemble"
  ensemble.main(["--runs", workdir, str(other), "--out", str(out), "--resamples", "20",
                 "--resample_size", "0"])
  with open(out / "results.json", encoding="utf-8") as f:
    combined = json.load(f)
  acl = combined["tasks"]["acl"]
  assert [c["plane"] for c in acl["classifiers"]] == ["sagittal", "axial"]
  assert abs(sum(c["weight"] for c in acl["classifiers"]) - 1.0) < 1e-9
  check_report(acl["ensemble"]["test"], 4)


def _fake_run(path, plane, tasks, val_probs, val_labels, test_probs, test_labels):
  os.makedirs(path, exist_ok=True)
  np.savez(os.path.join(path, "predictions.npz"), plane=plane, tasks=np.array(tasks),
           val_ids=np.array([f"{i:04d}" for i in range(len(val_labels))]),
           test_ids=np.array([f"{1130 + i:04d}" for i in range(len(test_labels))]),
           val_labels=val_labels, val_probs=val_probs, test_labels=test_labels,
           test_probs=test_probs)
  return str(path)


def test_ensemble_of_planes_matches_eq_3_1_to_3_4(tmp_path):
  """Ch. 3: 3 plane runs of the 3 tasks; Ch. 4: 9 single-task runs. Weights = normalised positive
  log-odds of the val accuracy (Eq. 3.2 / 4.20, float64 reference), H = sum_i w_i f_i (Eq. 3.1 /
  4.19) on test; both layouts give the same ensemble."""
  rng = np.random.default_rng(0)
  tasks = list(mrnet_config.get_config("table3_3_skid").data.tasks)
  yv = rng.integers(0, 2, (40, 3)).astype(np.float32)
  yt = rng.integers(0, 2, (30, 3)).astype(np.float32)
  yv[:2], yt[:2] = [0, 0, 0], [1, 1, 1]  # both classes everywhere
  noise = {p: (rng.uniform(0.1, 0.9, (40, 3)), rng.uniform(0, 1, (30, 3))) for p in range(3)}
  # plane p is right with probability ~ 0.6 + 0.15 p on val
  val = {p: np.where(rng.uniform(size=(40, 3)) < 0.6 + 0.15 * p, yv, 1 - yv) * 0.6 + 0.2
         + 0.1 * (noise[p][0] - 0.5) for p in range(3)}
  test = {p: noise[p][1] for p in range(3)}
  planes = ("axial", "coronal", "sagittal")
  skid = [_fake_run(tmp_path / f"skid_{p}", planes[p], tasks, val[p], yv, test[p], yt)
          for p in range(3)]
  single = [_fake_run(tmp_path / f"{planes[p]}_{t}", planes[p], [t], val[p][:, [j]], yv[:, [j]],
                      test[p][:, [j]], yt[:, [j]]) for p in range(3) for j, t in enumerate(tasks)]
  a = ensemble.combine(skid, num_resamples=10, resample_size=None)
  b = ensemble.combine(single, num_resamples=10, resample_size=None)
  for j, task in enumerate(tasks):
    acc = np.array([np.mean((val[p][:, j] > 0.5) == (yv[:, j] == 1)) for p in range(3)],
                   np.float64)
    acc = np.clip(acc, 1e-3, 1 - 1e-3)
    logit = np.maximum(np.log(acc / (1 - acc)), 0.0)
    w = logit / logit.sum() if logit.sum() > 0 else np.full(3, 1 / 3)
    got = [c["weight"] for c in a["tasks"][task]["classifiers"]]
    np.testing.assert_allclose(got, w, rtol=1e-12)
    np.testing.assert_allclose([c["weight"] for c in b["tasks"][task]["classifiers"]], w,
                               rtol=1e-12)
    h = sum(w[p] * test[p][:, j] for p in range(3))
    assert a["tasks"][task]["ensemble"]["test"]["auc"]["estimate"] == pytest.approx(
        classification.roc_auc(h, yt[:, j]), rel=1e-12)
    assert a["tasks"][task]["ensemble"] == b["tasks"][task]["ensemble"]
  # Runs of one task on other exams cannot be combined; a workdir without predictions is named.
  bad = _fake_run(tmp_path / "bad", "axial", ["acl"], val[0][:, [1]], 1 - yv[:, [1]],
                  test[0][:, [1]], yt[:, [1]])
  with pytest.raises(ValueError, match="different val exams or acl labels"):
    ensemble.combine([single[1], bad])
  with pytest.raises(FileNotFoundError, match="predictions.npz"):
    ensemble.combine([str(tmp_path)])


# --------------------------------------------------------------------------------------------------
# data, configs
# --------------------------------------------------------------------------------------------------

def test_exams_slice_draws_and_balancing(mrnet_root):
  splits = mrnet_data.load_exams(mrnet_root, plane="axial", tasks=("abnormal", "acl"), size=SIDE)
  assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
  assert splits.train.labels.shape == (8, 2) and set(splits.val.ids) | set(splits.train.ids) == {
      f"{i:04d}" for i in range(10)}
  # the val exams do not depend on the plane (one ensemble over the planes)
  other = mrnet_data.load_exams(mrnet_root, plane="sagittal", tasks=("abnormal", "acl"), size=SIDE)
  np.testing.assert_array_equal(other.val.ids, splits.val.ids)
  rng = np.random.default_rng(0)
  drawn = mrnet_data.slice_draw(rng, 30, 16, "uniform")
  assert len(set(drawn)) == 16 and np.all(np.diff(drawn) > 0)
  normal = np.concatenate([mrnet_data.slice_draw(rng, 30, 16, "normal") for _ in range(400)])
  assert normal.min() >= 0 and normal.max() <= 29 and abs(normal.mean() - 15) < 0.5
  assert abs(np.std(normal) - 7.5) < 0.6  # N(N_S / 2, N_S / 4), clipped (Sec. 3.4.2.3)
  x = mrnet_data.exam_slices(splits.test, np.array([0, 0]), 3, "uniform", (1, 2), [5, 5])
  assert x.shape == (2, 3, SIDE, SIDE, 1) and x.dtype == np.uint8
  np.testing.assert_array_equal(x[0], x[1])  # the same key: the same draw
  labels = np.array([[1], [0], [0], [0], [0]], np.float32)
  rows = mrnet_data.oversample_rows(labels, 0)
  assert np.sum(labels[rows, 0]) == 4 and len(rows) == 8  # the minority drawn up to 4 + 4
  w_pos, w_neg = mrnet_data.class_weights(np.array([[1, 0], [0, 0], [0, 1], [1, 1.0]] * 2 +
                                                   [[1, 1]], np.float32), "minority")
  np.testing.assert_allclose(w_pos, [1.0, 1.0])
  np.testing.assert_allclose(w_neg, [5 / 4, 5 / 4])


def test_config_variants_follow_the_thesis():
  skid = mrnet_config.get_config("table3_3_skid")
  assert (skid.model.arch, skid.model.variant, skid.model.freeze, skid.model.lstm_features) == (
      "skid", "v3", True, (512, 512))
  assert (skid.slices.train, skid.slices.eval, skid.slices.eval_draws, skid.slices.eval_sampling) \
      == (16, 16, 8, "normal")  # Sec. 3.4.2.3 / Eq. 3.3
  assert (skid.optim.name, skid.optim.lr, skid.optim.decay_factor) == ("adam", 1e-5, 0.95)
  assert skid.num_train_steps == 20 * (1017 // 4) and skid.loss.class_weights == "minority"
  assert mrnet_config.get_config("table3_5_skid_noblocks").model.no_blocks
  conv3d = mrnet_config.get_config("table3_13_skid_conv3d")  # Tab. 3.13-3.14: the 3-D CNN head
  assert (conv3d.model.temporal, skid.model.temporal) == ("conv3d", "convlstm")
  assert conv3d.model.lstm_features == skid.model.lstm_features
  from contrastive_jax.train.run import config_identity  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  assert "temporal" not in config_identity(skid)["model"]  # older SKID runs keep their identity
  sslacl = mrnet_config.get_config("table3_10_sslacl")
  assert (sslacl.model.arch, sslacl.data.tasks, sslacl.data.plane, sslacl.batch_size) == (
      "sslacl", ("acl",), "sagittal", 1)
  assert sslacl.slices.train == 36 and sslacl.loss.oversample
  assert mrnet_config.get_config("table3_10_model1").model.conv_features == ("max", 512, 1024)
  ch4 = mrnet_config.get_config("table4_4")
  assert (ch4.model.arch, ch4.model.encoder, ch4.augment.kind, ch4.augment.size) == (
      "slice_max", "resnet50", "crop", 224)
  assert (ch4.optim.lr, ch4.optim.decay_factor, ch4.batch_size, ch4.num_train_steps) == (
      1e-5, 0.9, 4, 10 * (1017 // 4))  # Sec. 4.5.2.2
  assert mrnet_config.get_config("table4_6_model5").model.encoder == "resnet101"
  assert mrnet_config.get_config("table4_6_model5").slices.train == 16
  pretext = jigsaw_config.get_config("skid_v3_mrnet")  # the pretext runs they start from
  assert (pretext.method, pretext.data.name, pretext.jigsaw.num_classes, pretext.jigsaw.crop_size,
          pretext.model.width_factor, pretext.batch_size, pretext.optim.name) == (
              "skid_v3", "mrnet", 1000, 64, 1.0, 16, "rmsprop")
  assert jigsaw_config.get_config("sslacl_mrnet").batch_size == 32


def test_label_fraction_trains_on_a_seeded_subset(mrnet_root, caplog):
  """Fig. 3.14a: ``data.train_fraction`` keeps a seeded fraction of the training exams (val / test
  unchanged; the subset's class weights and oversampling); the batches come from it."""
  from contrastive_jax.projects.mrnet.task import mrnet_task  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from contrastive_jax.train.run import make_mesh  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  assert mrnet_config.get_config("table3_3_skid").data.train_fraction == 1.0
  config = tiny_downstream("table4_4", mrnet_root, **{"data.train_fraction": 0.5})
  with caplog.at_level("INFO", logger="contrastive_jax"):
    task = mrnet_task(config, make_mesh())
  assert "4 train (4 per epoch) / 2 val / 4 test exams" in caplog.text  # 8 training exams / 2
  batches = [task.host_batch(0)["y"]]  # one epoch = one batch of 4 = the subset
  splits = mrnet_data.load_exams(mrnet_root, plane="sagittal", tasks=("acl",), size=SIDE)
  kept = loop.training_fraction_rows(len(splits.train), 0.5, 0)
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)[:, 0]),
                                np.sort(splits.train.labels[kept, 0]))
  config = tiny_downstream("table4_4", mrnet_root, **{"data.train_fraction": 0.0})
  with pytest.raises(ValueError, match="data.train_fraction"):
    mrnet_task(config, make_mesh())


def test_bad_configs_are_one_clear_error(mrnet_root, tmp_path):
  train = launcher._trainer("mrnet")  # pylint: disable=protected-access
  config = tiny_downstream("table4_4", mrnet_root, **{"augment.kind": "flip"})
  with pytest.raises(ValueError, match="augment.kind"):
    train(config, str(tmp_path / "a"))
  config = tiny_downstream("table4_4", mrnet_root, **{"data.root": None})
  with pytest.raises(ValueError, match="data.root"):
    train(config, str(tmp_path / "b"))
  config = tiny_downstream("table4_4", mrnet_root, **{"data.tasks": ("tear",)})
  with pytest.raises(ValueError, match="data.tasks"):
    train(config, str(tmp_path / "c"))


# --------------------------------------------------------------------------------------------------
# Ch. 3 downstream: a pretext run, then the downstream runs on its frozen weights
# --------------------------------------------------------------------------------------------------

def pretext_workdir(path, variant, width_factor):
  """A jigsaw pretext run's workdir as configs/jigsaw.py writes it (its step-0 state)."""
  config = jigsaw_config.get_config(variant)
  config.model.width_factor = width_factor
  net = models.build_model(config.model, task="jigsaw", num_classes=4)
  variables = net.init(jax.random.PRNGKey(1), jnp.zeros((1, 9, 6, 6, 3)), train=False)
  state = TrainState.create(apply_fn=net.apply, params=variables["params"], tx=optax.adam(1e-3),
                            batch_stats=variables.get("batch_stats", {}),
                            rng=jax.random.PRNGKey(0))
  checkpointer = Checkpointer(os.path.join(path, "checkpoints"), 1)
  checkpointer.save(state, {"config": config.to_dict()}, force=True)
  checkpointer.wait()
  checkpointer.close()
  return str(path), variables


def jigsaw_mrnet_run(path, root, variant):
  """``python -m launch --config=<configs/jigsaw.py:<variant>_mrnet shrunk>`` (the pretext on the
  MRNet slices) on the fixture: (workdir, its final state)."""
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = launch_process.config_file(path.parent / "tiny_jigsaw.py", TINY_PRETEXT)
  launch_process.launch(f"--config={config}:{variant}_mrnet", f"--config.data.root={root}",
                        f"--config.jigsaw.cache_dir={path.parent / 'perms'}", f"--workdir={path}")
  with open(path / "results.json", encoding="utf-8") as f:
    results = json.load(f)
  assert results["dataset"] == "mrnet" and results["steps"] == 2
  state, _ = load_checkpoint(str(path / "checkpoints"))
  return str(path), state


def test_pretext_oversampling_balances_the_training_exams(mrnet_root, tmp_path, caplog):
  """Table 3.11 "with oversampling" (``configs/jigsaw.py:sslacl_mrnet_oversampled``): the pretext's
  training exams with the ACL minority drawn again until both classes are equally frequent, as a lazy
  view; val / test untouched; only binary labels; old configs keep their identity."""
  from contrastive_jax.data import load_dataset  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from contrastive_jax.data.sources.base import LazyArray  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from contrastive_jax.projects.jigsaw import task as jigsaw_task  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from contrastive_jax.train.run import config_identity  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from contrastive_jax.train.run import make_mesh  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  dataset = load_dataset("mrnet", seed=0, root=mrnet_root, size=SIDE, slices=4)
  y = np.asarray(dataset.train.y)
  over = jigsaw_task.oversampled_train(dataset, 0)
  counts = np.bincount(over.train.y.astype(int), minlength=2)
  assert counts[0] == counts[1] == np.bincount(y.astype(int)).max()
  assert isinstance(over.train.x, LazyArray) and len(over.train.x) == len(over.train.y)
  rows = mrnet_data.oversample_rows(y[:, None], 0)
  np.testing.assert_array_equal(over.train.y, y[rows])
  np.testing.assert_array_equal(over.train.x[np.arange(len(rows))], dataset.train.x[rows])
  assert over.val is dataset.val and over.test is dataset.test
  bad = dataset.__class__(**{**dataset.__dict__, "train": dataset.train.__class__(
      x=dataset.train.x, y=y + 0.5)})
  with pytest.raises(ValueError, match="data.oversample"):
    jigsaw_task.oversampled_train(bad, 0)
  c = jigsaw_config.get_config("sslacl_mrnet_oversampled")
  assert c.data.oversample and c.num_train_steps == 50 * (2 * 830 // 32)
  assert not jigsaw_config.get_config("sslacl_mrnet").data.oversample
  assert "oversample" not in config_identity(jigsaw_config.get_config("sslacl_mrnet"))["data"]
  # The task's training batches come from the balanced view.
  c = in_process(TINY_PRETEXT, "sslacl_mrnet_oversampled")
  c.data.root, c.jigsaw.cache_dir = mrnet_root, str(tmp_path / "perms")
  with caplog.at_level("INFO", logger="contrastive_jax"):
    task = jigsaw_task.jigsaw_task(c, make_mesh())
  assert f"{len(y)} -> {2 * counts[0]} examples" in caplog.text
  assert task.host_batch(0)["x"].shape == (c.batch_size, SIDE, SIDE, 1)


@pytest.mark.parametrize("variant,planes", [
    ("table3_3_skid", ("axial",)),
    pytest.param("table3_3_skid", ("axial", "sagittal"), marks=pytest.mark.slow),
    pytest.param("table3_10_sslacl", ("sagittal",), marks=pytest.mark.slow),
    pytest.param("table3_13_skid_conv3d", ("axial",), marks=pytest.mark.slow)])
def test_ch3_downstream_from_a_pretext_run(mrnet_root, tmp_path, variant, planes):
  """SKID: a jigsaw (SKID-v3) pretext run on the MRNet slices, then the ConvLSTM downstream run on
  its frozen trunk (3 tasks) per plane, each a `python -m launch` process; with two planes, their
  ensemble. SSLACL (slow): Divide-and-Teach for ACL from a generated pretext workdir. The pretext
  weights are copied and stay frozen."""
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  skid = variant in ("table3_3_skid", "table3_13_skid_conv3d")
  if skid:
    pretext, variables = jigsaw_mrnet_run(tmp_path / "pretext", mrnet_root, "skid_v3")
  else:
    pretext, variables = pretext_workdir(tmp_path / "pretext", "sslacl", 1 / 128)
  config = launch_process.config_file(tmp_path / "tiny_mrnet.py", TINY_DOWNSTREAM)
  tasks = mrnet_config.get_config(variant).data.tasks
  runs = []
  for plane in planes:
    workdir = str(tmp_path / plane)
    launch_process.launch(f"--config={config}:{variant}", f"--config.data.root={mrnet_root}",
                          f"--config.data.plane={plane}", f"--config.model.init_from={pretext}",
                          f"--workdir={workdir}")
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
      results = json.load(f)
    assert results["plane"] == plane and tuple(results["tasks"]) == tuple(tasks)
    for task in tasks:
      check_report(results["test"][task], 4)
    state, _ = load_checkpoint(os.path.join(workdir, "checkpoints"))
    sub = "trunk" if skid else "branches"
    for coll in ("params", "batch_stats"):  # copied and frozen
      jax.tree.map(np.testing.assert_array_equal, state[coll][sub], variables[coll][sub])
    runs.append(workdir)
  if len(runs) > 1:
    combined = ensemble.combine(runs, num_resamples=10, resample_size=None)
    assert set(combined["tasks"]) == {"abnormal", "acl", "meniscus"}
    for r in combined["tasks"].values():
      check_report(r["ensemble"]["test"], 4)


@pytest.mark.slow
def test_bcl_mrnet_starts_from_imagenet_format_weights(mrnet_root, tmp_path, caplog):
  """The thesis' ImageNet start (Sec. 4.6) by ``model.init_from``: a torchvision-format ResNet-18
  file (generated, 3 input channels) fits the 3-channel MRNet slices of configs/bcl.py:mrnet."""
  from tests.test_init_from import save_safetensors  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from tests.test_init_from import torch_resnet18_state_dict  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  path = save_safetensors(tmp_path / "resnet18.safetensors", torch_resnet18_state_dict(channels=3))
  config = tiny(bcl.get_config("mrnet"), steps=2)
  config.model.encoder = "resnet18"
  config.model.encoder_kwargs = ml_collections.ConfigDict(dict(stem="cifar", num_filters=4))
  config.model.proj_dim = 8
  config.model.init_from = path
  config.data.root = mrnet_root
  config.data.kwargs.update(slices=4, size=SIDE)
  config.data.augment.size = SIDE
  config.batch_size = config.eval_batch_size = 4
  config.eval.knn_k = 3
  config.optim.name, config.optim.lr = "sgd", 0.01
  with caplog.at_level("INFO", logger="contrastive_jax"):
    results = train_and_evaluate(config, str(tmp_path / "run"))
  assert "Initialised the encoder from" in caplog.text
  assert results["test"] and np.all(np.isfinite(list(results["test"].values())))


@pytest.mark.slow
def test_launch_command_line(mrnet_root, tmp_path):
  """The documented command on the paper config itself (its ResNet family at width 4), as a
  process: results.json with AUC / sens / spec intervals."""
  workdir = tmp_path / "run"
  overrides = ["--config.data.size=8", "--config.data.workers=1", "--config.slices.train=3",
               "--config.slices.eval=3", "--config.slices.eval_draws=2", "--config.batch_size=4",
               "--config.eval_batch_size=4", "--config.num_train_steps=2",
               "--config.eval_every=2", "--config.checkpoint_every=2",
               "--config.model.encoder=resnet18", "--config.model.encoder_kwargs.num_filters=4",
               "--config.augment.size=8",
               "--config.eval.bootstrap_resamples=10", "--config.data.tasks=('meniscus',)"]
  launch_process.launch("--config=configs/mrnet.py:table4_4", f"--config.data.root={mrnet_root}",
                        *overrides, f"--workdir={workdir}")
  with open(workdir / "results.json", encoding="utf-8") as f:
    check_report(json.load(f)["test"]["meniscus"], 4)
  shutil.rmtree(workdir)
