"""AdaCon's two-stage ablation (Tables V / XII) and external validation (Tables VI, VII, XIII).

Fixture data: the BMD layout of tests/test_paper_configs.py (grey PNG crops + ``bmd.csv`` with four
folds, label = mean intensity) and a second "external" list (``external.csv``: path,label, no fold
column) of other crops. The external validation is checked against an independent computation: each
fold's best variables applied to the decoded external images, mapped back with that fold's own
training-label mean and std, then averaged.
"""

from __future__ import annotations

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import models
from contrastive_jax.data.sources import csv_images
from contrastive_jax.train import external
from contrastive_jax.train import loop
from contrastive_jax.train.checkpoint import restore_variables
from contrastive_jax.train.optim import make_optimizer
from contrastive_jax.train.run import make_mesh
from contrastive_jax.train.step import AXIS
from tests.test_paper_configs import adacon
from tests.test_paper_configs import tiny_config
from tests.test_paper_configs import write_bmd
from tests.test_sources import _csv
from tests.test_sources import _image
from tests.test_sources import _png
from tests import launch_process

pytestmark = pytest.mark.usefixtures("fast_compile")


def write_external(root, num=14, side=20):
  """Other crops (seeds 100..) listed as ``external.csv`` (path,label): no split, no fold."""
  os.makedirs(os.path.join(root, "external"), exist_ok=True)
  rows = []
  for i in range(num):
    image = _image(100 + i, size=(side, side))
    _png(os.path.join(root, "external", f"{i:02d}.png"), image)
    rows.append((f"external/{i:02d}.png", round(float(image.mean()) / 255, 4)))
  _csv(os.path.join(root, "external.csv"), ("path", "label"), rows)
  return str(root)


# --------------------------------------------------------------------------------------------------
# the two-stage variants
# --------------------------------------------------------------------------------------------------

def _lr(config, steps):
  _, schedule = make_optimizer(config.optim, config.num_train_steps)
  return [float(schedule(s)) for s in steps]


def test_two_stage_variants_follow_tables_v_and_xii():
  pre, fine = adacon.get_config("bmd_pretrain"), adacon.get_config("bmd_finetune")
  # Table V: AdaCon only, 3,000 iterations at 1e-2, x0.1 at 1,500 and 2,250; then L1 only, 3,000
  # iterations at 1e-3, x0.1 at 1,500 and 2,250; the BMD data settings unchanged.
  assert (pre.method, pre.loss.gamma_reg, pre.loss.gamma_con, pre.eval_with) == (
      "adacon", 0.0, 1.0, "ridge")
  assert (fine.method, fine.loss.gamma_reg, fine.loss.reg, fine.model.init_from) == (
      "none", 1.0, "l1", None)
  chex.assert_trees_all_close(_lr(pre, (0, 1499, 1500, 2249, 2250, 2999)),
                              [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)
  chex.assert_trees_all_close(_lr(fine, (0, 1499, 1500, 2250)), [1e-3, 1e-3, 1e-4, 1e-5],
                              rtol=1e-6)
  assert pre.num_train_steps == fine.num_train_steps == 3000
  for config in (pre, fine):
    assert (config.data.name, config.data.views, config.model.encoder) == (
        "csv_images", 8, "efficientnet_b1")
    loop.check_config_fields(config)
  # Table XII: 25 + 25 epochs at 1e-4 then 1e-5, x0.1 at epochs 10 and 20; MSE in stage 2.
  pre, fine = adacon.get_config("echonet_pretrain"), adacon.get_config("echonet_finetune")
  epoch = 7465 // 20
  assert pre.num_train_steps == fine.num_train_steps == 25 * epoch
  chex.assert_trees_all_close(_lr(pre, (0, 10 * epoch - 1, 10 * epoch, 20 * epoch)),
                              [1e-4, 1e-4, 1e-5, 1e-6], rtol=1e-6)
  chex.assert_trees_all_close(_lr(fine, (0, 10 * epoch, 20 * epoch)), [1e-5, 1e-6, 1e-7],
                              rtol=1e-6)
  assert (fine.method, fine.loss.reg, pre.loss.gamma_reg) == ("none", "mse", 0.0)


def test_finetune_stage_refuses_a_missing_init_from():
  config = adacon.get_config("bmd_finetune")
  with pytest.raises(ValueError, match="init_from"):
    loop.regression_task(config, make_mesh())  # refused before any data are read


# --------------------------------------------------------------------------------------------------
# external validation
# --------------------------------------------------------------------------------------------------

def fake_fold_run(config, workdir, seed, mean, std):
  """A finished fold run's workdir without the training: the model's init (``seed``) as its best
  state, with its recorded config, and ``target_normalization`` (mean, std) in results.json."""
  from contrastive_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.run import config_identity  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model, AXIS, task="regression",
                             input_normalization=((0.5,), (0.25,)))
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, 16, 16, 3)), train=False))(
      jax.random.PRNGKey(seed))
  tx, _ = make_optimizer(config.optim, config.num_train_steps)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables["batch_stats"], rng=jax.random.PRNGKey(0))
  best = Checkpointer(os.path.join(workdir, "best"), max_to_keep=None, async_save=False)
  best.save(state, {"config": config_identity(config)}, force=True)
  best.close()
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"target_normalization": {"mean": mean, "std": std}}, f)
  return str(workdir)


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory):
  """Two fold models (different weights and target statistics) and the external set."""
  base = tmp_path_factory.mktemp("adacon_external")
  root = write_external(base / "data")  # the fold models need no training data here
  config = tiny_config(adacon, "bmd", root)
  config.data.normalize = ((0.5,), (0.25,))  # input statistics inside the model, as :bmd's
  workdirs = [fake_fold_run(config, base / "fold0", 1, 0.4, 0.1),
              fake_fold_run(config, base / "fold1", 2, 0.6, 0.3)]
  return config, root, workdirs


def _reference_predictions(config, root, workdir):
  """A fold's best variables on every external image, in label units, by hand."""
  dataset = csv_images.load_csv_images(os.path.join(root, "external.csv"), root=root,
                                       image_size=16, channels=3)
  parts = [dataset.train, dataset.val, dataset.test]
  x = np.concatenate([np.asarray(p.x[np.arange(len(p.y))]) for p in parts])
  y = np.concatenate([p.y for p in parts])
  model = models.build_model(config.model, AXIS, task="regression",
                             input_normalization=((0.5,), (0.25,)))
  variables = restore_variables(os.path.join(workdir, "best"))
  apply = jax.jit(lambda v, x: model.apply(v, x / 255.0, train=False)["prediction"])
  out = apply(variables, jnp.asarray(x, jnp.float32))
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    norm = json.load(f)["target_normalization"]
  return np.asarray(out, np.float64) * norm["std"] + norm["mean"], y


def test_external_validation_is_the_fold_average(fold_runs, tmp_path):
  config, root, workdirs = fold_runs
  output = str(tmp_path / "external")
  results = external.external_validation(config, workdirs, root,
                                         external_kwargs={"csv_path": "external.csv"},
                                         output=output)
  per_fold, ys = zip(*(_reference_predictions(config, root, w) for w in workdirs))
  ensemble = np.mean(per_fold, axis=0)
  saved = np.load(os.path.join(output, "predictions.npz"))
  np.testing.assert_allclose(saved["y"], ys[0])  # every external row, in the source's order
  np.testing.assert_allclose(saved["ensemble"], ensemble, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(saved["per_fold"], np.stack(per_fold), rtol=1e-4, atol=1e-5)
  assert not np.allclose(per_fold[0], per_fold[1])  # two different fold models
  mae = float(np.mean(np.abs(ensemble - ys[0])))
  chex.assert_trees_all_close(results["ensemble"]["mae"], mae, rtol=1e-4)
  chex.assert_trees_all_close(results["per_fold_mean"]["mae"],
                              np.mean([np.mean(np.abs(p - ys[0])) for p in per_fold]), rtol=1e-4)
  assert results["num_examples"] == 14 and results["split"] == "all"
  with open(os.path.join(output, "results.json"), encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(results))
  dataset = loop.load_data(external.external_config(config, root, kwargs={"csv_path":
                                                                           "external.csv"}))
  assert [len(p.y) for p in external._splits(dataset, "test")] == [len(dataset.test.y)]
  assert sum(len(p.y) for p in external._splits(dataset, "all")) == 14
  with pytest.raises(ValueError, match="split"):
    external._splits(dataset, "holdout")


def test_external_validation_refuses_another_model(fold_runs):
  config, root, workdirs = fold_runs
  other = tiny_config(adacon, "bmd", root)
  other.model.proj_dim = 8
  with pytest.raises(ValueError, match="proj_dim"):
    external.external_validation(other, workdirs, root,
                                 external_kwargs={"csv_path": "external.csv"})
  with pytest.raises(FileNotFoundError, match="not finished"):
    external.external_validation(config, [root], root,
                                 external_kwargs={"csv_path": "external.csv"})


# --------------------------------------------------------------------------------------------------
# the command lines, end to end
# --------------------------------------------------------------------------------------------------

TINY_BMD = """
from configs import adacon
def get_config(variant):
  c = adacon.get_config(variant)
  c.num_train_steps = c.eval_every = c.checkpoint_every = c.log_every = 2
  c.eval_batch_size, c.batch_size, c.data.views, c.optim.warmup_steps = 8, 4, 2, 0
  c.data.kwargs.image_size = 16
  c.model.encoder, c.model.encoder_kwargs, c.model.proj_dim = "small_cnn", {}, 16
  c.model.proj_hidden_dim, c.knn_k = 16, 4  # stage 1 also reports a kNN probe of 12 examples
  return c
"""


@pytest.mark.parametrize("folds", [(0,), pytest.param((0, 1), marks=pytest.mark.slow)])
def test_two_stage_and_external_validation_from_the_command_line(tmp_path, folds):
  """`python -m launch` runs stage 1 (:bmd_pretrain) and stage 2 (:bmd_finetune, init_from stage 1)
  per fold, then `python -m contrastive_jax.train.external` ensembles the fine-tuned fold models on
  the external list. The default suite runs the two stages of one fold (its external validation is
  test_external_validation_is_the_fold_average, in process), the slow suite two folds and the
  command."""
  root = write_external(write_bmd(tmp_path / "data"))
  config = launch_process.config_file(tmp_path / "tiny_bmd.py", TINY_BMD)
  finetuned = []
  for fold in folds:
    stage1, stage2 = str(tmp_path / f"pretrain{fold}"), str(tmp_path / f"fold{fold}")
    common = [f"--config.data.root={root}", f"--config.data.kwargs.fold={fold}"]
    launch_process.launch(f"--config={config}:bmd_pretrain", f"--workdir={stage1}", *common)
    done = launch_process.launch(f"--config={config}:bmd_finetune", f"--workdir={stage2}",
                           f"--config.model.init_from={stage1}", *common)
    assert "Initialised from the checkpoint" in done.stdout + done.stderr
    with open(os.path.join(stage1, "results.json"), encoding="utf-8") as f:
      assert json.load(f)["eval_with"] == "ridge"  # stage 1: frozen-feature probe
    with open(os.path.join(stage2, "results.json"), encoding="utf-8") as f:
      saved = json.load(f)
    assert saved["method"] == "none" and np.isfinite(saved["test"]["mae"])
    finetuned.append(stage2)
  if len(folds) == 1:  # the default suite: the external step is checked in process above
    return
  output = str(tmp_path / "external")
  done = launch_process.run_module(
      "contrastive_jax.train.external", f"--config={config}:bmd",
      f"--workdirs={','.join(finetuned)}", f"--external_root={root}",
      '--external_kwargs={"csv_path": "external.csv"}', f"--output={output}")
  with open(os.path.join(output, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert results["num_examples"] == 14 and len(results["per_fold"]) == len(folds)
  assert np.isfinite(results["ensemble"]["mae"]) and "MAE" in done.stdout
