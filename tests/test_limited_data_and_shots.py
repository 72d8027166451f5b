"""`data.train_fraction` (ACCon Fig. 4's limited-data curve) and the many / medium / few-shot metrics
in every regression run's results.json (issue 13 item 7)."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import adacon, simclr  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.evaluate import shot_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import run  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_train_fraction_keeps_a_seeded_subset_of_train_only():
  full = data_lib.load_dataset("diabetes", seed=0)
  half = loop.limit_training_data(full, 0.5, seed=3)
  assert len(half.train) == round(0.5 * len(full.train))
  rows = [int(np.flatnonzero(np.all(full.train.x == x, axis=1))[0]) for x in half.train.x]
  assert rows == sorted(set(rows))  # distinct training rows, in their order
  np.testing.assert_array_equal(half.train.y, full.train.y[rows])
  assert half.val is full.val and half.test is full.test
  again = loop.limit_training_data(full, 0.5, seed=3)
  np.testing.assert_array_equal(again.train.y, half.train.y)
  other = loop.limit_training_data(full, 0.5, seed=4)
  assert not np.array_equal(other.train.y, half.train.y)
  assert loop.limit_training_data(full, 1.0, seed=3) is full


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), True, "0.5", 1e-9])
def test_bad_train_fraction_names_the_field(bad):
  full = data_lib.load_dataset("diabetes", seed=0)
  with pytest.raises(ValueError, match="train_fraction"):
    loop.limit_training_data(full, bad, seed=0)


def test_default_fraction_keeps_older_checkpoints_resumable():
  config = adacon.get_config()
  assert config.data.train_fraction == 1.0
  assert "train_fraction" not in run.config_identity(config)["data"]
  config.data.train_fraction = 0.25
  assert run.config_identity(config)["data"]["train_fraction"] == 0.25


def _tiny(config, steps=10):
  config.model.encoder_kwargs.hidden_sizes = (16,)
  config.model.proj_dim = 8
  config.batch_size, config.eval_batch_size = 32, 64
  config.num_train_steps, config.log_every, config.eval_every = steps, 5, steps
  config.checkpoint_every, config.optim.warmup_steps = steps, 1
  return config


@pytest.mark.parametrize("module", [adacon, simclr], ids=["head", "knn"])
def test_limited_run_writes_shot_metrics(tmp_path, module):
  config = _tiny(module.get_config("diabetes"))
  config.data.train_fraction = 0.5
  results = loop.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  shots = saved["test_shots"]
  assert set(shots) == {"many", "medium", "few", "all"}
  assert shots["all"]["n"] == len(data_lib.load_dataset("diabetes", seed=0).test)
  assert shots["all"]["mae"] == pytest.approx(results["test"]["mae"], rel=1e-6)
  assert sum(shots[g]["n"] for g in ("many", "medium", "few")) == shots["all"]["n"]


def test_shots_match_the_definition_on_predictions():
  """The results' grouping is evaluate.shot_metrics (tested against the official code elsewhere)."""
  train = np.array([1.0] * 120 + [2.0] * 50 + [3.0] * 5)
  targets = np.array([1.0, 2.0, 3.0, 4.0])
  preds = targets + np.array([1.0, -2.0, 3.0, 4.0])
  out = shot_metrics(preds, targets, train)
  assert (out["many"]["n"], out["medium"]["n"], out["few"]["n"]) == (1, 1, 2)
  assert out["few"]["mae"] == pytest.approx(3.5)
