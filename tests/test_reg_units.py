"""`loss.reg_units`: L_reg in the label's units for the paper configs (issue 13 item 6)."""

import sys
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import adacon  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import run  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.optim import make_optimizer  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.step import AXIS, make_train_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_paper_variants_use_label_units_and_old_runs_keep_their_identity():
  assert adacon.get_config("bmd").loss.reg_units == "label"
  assert adacon.get_config("echonet").loss.reg_units == "label"
  default = adacon.get_config()
  assert default.loss.reg_units == "normalized"
  assert "reg_units" not in run.config_identity(default)["loss"]  # older checkpoints still resume


@pytest.mark.parametrize("reg", ["l1", "mse"])
def test_label_units_scale_l_reg_by_std_or_its_square(reg):
  """With targets normalised by (mean, std), L1 in label units is std x the normalised L1 and MSE is
  std^2 x the normalised MSE (a float64 reference from the definitions)."""
  config = defaults.base_config("diabetes")
  config.method, config.loss.reg, config.loss.gamma_con = "none", reg, 0.0
  config.data.augment = type(config.data.augment)({})  # no augmentation noise: exact comparison
  config.data.augment_kind = "tabular"
  mesh = run.make_mesh()
  model = models.build_model(config.model, axis_name=AXIS)
  x = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
  y = np.linspace(40.0, 300.0, 8).astype(np.float32)
  mean, std = 150.0, 70.0
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]), train=False)
  tx, schedule = make_optimizer(config.optim, 10)
  identity = lambda key, v: v
  plain = models.build_model(config.model)  # the same network, BatchNorm over this one batch
  out, _ = plain.apply(variables, jnp.asarray(np.repeat(x, config.data.views, axis=0)), train=True,
                       mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(2)})
  pred = np.asarray(out["prediction"], np.float64)  # training mode, as the step sees it
  losses = {}
  for units in ("normalized", "label"):
    config.loss.reg_units = units
    fresh = jax.tree.map(jnp.array, variables)  # the step donates its input state
    state = TrainState.create(apply_fn=model.apply, params=fresh["params"], tx=tx,
                              batch_stats=fresh.get("batch_stats", {}), rng=jax.random.PRNGKey(1))
    step = make_train_step(model, config, mesh, identity, schedule, mean, std)
    batch = run.shard_batch({"x": x, "y": y, "y_norm": (y - mean) / std}, mesh)
    _, metrics = step(state, batch)
    losses[units] = float(metrics["loss_reg"])
  err = pred * std + mean - np.repeat(y, config.data.views).astype(np.float64)
  ref = np.mean(np.abs(err)) if reg == "l1" else np.mean(err ** 2)
  np.testing.assert_allclose(losses["label"], ref, rtol=1e-4)
  np.testing.assert_allclose(losses["label"], losses["normalized"] * (std if reg == "l1" else std ** 2),
                             rtol=1e-4)


def test_unknown_units_name_the_field():
  config = defaults.base_config("diabetes")
  config.loss.reg_units = "percent"
  model = models.build_model(config.model, axis_name=AXIS)
  tx, schedule = make_optimizer(config.optim, 10)
  with pytest.raises(ValueError, match="loss.reg_units"):
    make_train_step(model, config, run.make_mesh(), lambda k, v: v, schedule, 0.0, 1.0)
