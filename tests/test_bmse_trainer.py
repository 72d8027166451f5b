"""Balanced MSE as the trainer's regression loss (``loss.reg='bmse'``, contrastive_jax/train/bmse.py).

References are float64 NumPy from the paper's likelihood (Ren et al., CVPR 2022): per example
``-log N(y_i; yhat_i, s2) + log B_i`` with ``B_i = sum_k pi_k N(yhat_i; mu_k, v_k + s2)`` (GAI: the
integral of ``N(yhat; y', s2)`` against the label GMM) or ``B_i = sum_j N(y_j; yhat_i, s2)`` (BMC: the
batch's targets as samples; the paper's 1/N is a constant the official cross-entropy leaves out),
averaged (weighted: sum w l / sum w) and scaled by 2 s2.
"""

import json
import os
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from contrastive_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import bmse  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import run  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.test_train import final_params  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.optim import make_optimizer  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.train.step import AXIS, make_train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

_GMM = {"means": np.array([-1.0, 0.2, 1.5]), "variances": np.array([0.3, 0.5, 0.8]),
        "weights": np.array([0.25, 0.5, 0.25])}


def normal_pdf(x, mean, var):
  return np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * np.pi * var)


def paper_bmse(pred, target, sigma, kind, gmm=None, weights=None):
  """Balanced MSE in float64 from the paper's densities (module docstring)."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  s2 = float(sigma) ** 2
  nll = -np.log(normal_pdf(target, pred, s2))
  if kind == "gai":
    m, v, pi = gmm["means"], gmm["variances"], gmm["weights"]
    balance = np.log(normal_pdf(pred[:, None], m[None, :], v[None, :] + s2) @ pi)
  else:
    balance = np.log(normal_pdf(target[None, :], pred[:, None], s2).sum(axis=1))
  per = nll + balance
  w = np.ones_like(per) if weights is None else np.asarray(weights, np.float64)
  return float(np.sum(w * per) / np.sum(w) * 2 * s2)


def _step_setup(kind, fix):
  config = defaults.base_config("diabetes")
  config.method, config.loss.reg, config.loss.gamma_con = "none", "bmse", 0.0
  config.loss.bmse.kind, config.loss.bmse.fix_noise_sigma = kind, fix
  config.loss.bmse.init_noise_sigma, config.loss.bmse.sigma_lr = 0.7, 0.05
  config.optim.warmup_steps = 5  # the model's lr is 0 at step 0; sigma's is constant
  config.data.augment = ml_collections.ConfigDict({})  # no augmentation noise: exact comparison
  config.data.augment_kind = "tabular"
  config.model.encoder_kwargs.hidden_sizes = (16,)
  return config


def test_trainer_loss_matches_paper_reference_and_sigma_has_its_own_lr():
  """One train step on a fixed batch: GAI (weighted, sigma learned) and BMC (sigma frozen)."""
  config = _step_setup("gai", False)
  mesh = run.make_mesh()
  model = models.build_model(config.model, axis_name=AXIS)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 10)).astype(np.float32)
  y = np.linspace(40.0, 300.0, 8).astype(np.float32)
  mean, std = 150.0, 70.0
  w = np.linspace(0.5, 2.0, 8).astype(np.float32)
  # jitted: one compilation each, not one per operation
  variables = jax.jit(lambda k, v: model.init(k, v, train=False))(jax.random.PRNGKey(0), x[:2])
  views = config.data.views
  plain = models.build_model(config.model)  # the same network, BatchNorm over this one batch
  out, _ = jax.jit(lambda v, a: plain.apply(v, a, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.PRNGKey(2)}))(
                                                variables, np.repeat(x, views, axis=0))
  pred = np.asarray(out["prediction"], np.float64)
  target = np.repeat((y.astype(np.float64) - mean) / std, views)
  sigma0 = 0.7

  for kind, fix, weighted in (("gai", False, True), ("bmc", True, False)):
    config = _step_setup(kind, fix)
    weights = np.repeat(w, views) if weighted else None
    gmm = _GMM if kind == "gai" else None
    tx, schedule = make_optimizer(config.optim, 10)
    state = jax.jit(lambda v, c=config, t=tx: TrainState.create(
        apply_fn=model.apply, params=bmse.add_sigma(v["params"], c), tx=bmse.optimizer(t, c),
        batch_stats=v.get("batch_stats", {}), rng=jax.random.PRNGKey(1)))(variables)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(model, config, mesh, lambda k, v: v, schedule, mean, std, gmm=gmm)
    batch = {"x": x, "y": y, "y_norm": (y - mean) / std}
    if weighted:
      batch["weight"] = w
    new_state, metrics = step(state, run.shard_batch(batch, mesh))

    np.testing.assert_allclose(float(metrics["loss_reg"]),
                               paper_bmse(pred, target, sigma0, kind, gmm, weights), rtol=2e-5)
    assert float(metrics["noise_sigma"]) == np.float32(sigma0)
    after = jax.tree.map(np.asarray, new_state.params)
    chex.assert_trees_all_equal(bmse.model_params(after), bmse.model_params(before))  # model lr 0
    sigma1 = float(after[bmse.SIGMA_KEY])
    if fix:
      assert sigma1 == np.float32(sigma0)
      continue
    # SGD (momentum: the first step is the gradient) at the constant sigma_lr, coupled weight
    # decay; d loss / d sigma = 2 s2 d(mean l)/d sigma (the 2 s2 scale is a stop-gradient).
    unscaled = lambda s, g=gmm, ww=weights: paper_bmse(pred, target, s, "gai", g, ww) / (2 * s * s)
    h = 1e-6
    grad = 2 * sigma0 ** 2 * (unscaled(sigma0 + h) - unscaled(sigma0 - h)) / (2 * h)
    expected = sigma0 - 0.05 * (grad + config.optim.weight_decay * sigma0)
    assert abs(sigma1 - sigma0) > 1e-3
    np.testing.assert_allclose(sigma1, expected, rtol=1e-5, atol=1e-6)


def _tiny(steps=10, stop=-1):
  from configs import regression  # pylint: disable=g-import-not-at-top
  config = regression.get_config("diabetes")
  config.model.encoder_kwargs.hidden_sizes = (32,)
  config.batch_size, config.eval_batch_size, config.num_train_steps = 32, 64, steps
  config.log_every = 5
  config.eval_every = config.checkpoint_every = 10  # stop_at_step checkpoints step 5 too
  config.optim.warmup_steps = 2
  config.loss.reg = "bmse"
  config.stop_at_step = stop
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One uninterrupted 10-step GAI run and one stopped at step 5 then resumed."""
  root = tmp_path_factory.mktemp("bmse")
  straight, interrupted = str(root / "straight"), str(root / "interrupted")
  expected = train_and_evaluate(_tiny(), straight)
  stopped = train_and_evaluate(_tiny(stop=5), interrupted)
  resumed = train_and_evaluate(_tiny(), interrupted)
  return {"straight": straight, "interrupted": interrupted, "expected": expected,
          "stopped": stopped, "resumed": resumed}


def test_bmse_run_trains_checkpoints_resumes_exactly(runs):  # pylint: disable=redefined-outer-name
  assert runs["stopped"] == {"status": "stopped", "steps": 5}
  assert runs["resumed"] == runs["expected"]
  with open(os.path.join(runs["straight"], "results.json")) as f:
    saved = json.load(f)
  assert np.isfinite(saved["test"]["mae"])
  step_a, params_a = final_params(runs["straight"])
  step_b, params_b = final_params(runs["interrupted"])
  assert step_a == step_b == 10
  chex.assert_trees_all_equal(params_a, params_b)  # the noise scale included
  lines = [json.loads(l) for l in open(os.path.join(runs["straight"], "metrics.jsonl"))]
  sigmas = [l["train/noise_sigma"] for l in lines if "train/noise_sigma" in l]
  assert len(sigmas) == 2 and sigmas[0] != 1.0 and sigmas[1] != sigmas[0]
  assert float(params_a[bmse.SIGMA_KEY]) not in (1.0, sigmas[-1])  # learned through step 10


@pytest.mark.parametrize("field,value,match", [
    ("kind", "bni", "loss.bmse.kind"),
    ("init_noise_sigma", 0.0, "loss.bmse.init_noise_sigma"),
    ("init_noise_sigma", -1.0, "loss.bmse.init_noise_sigma"),
    ("sigma_lr", 0.0, "loss.bmse.sigma_lr"),
    ("gmm_components", 0, "loss.bmse.gmm_components"),
])
def test_bad_bmse_options_name_the_field(field, value, match):
  config = _tiny()
  config.loss.bmse[field] = value
  with pytest.raises(ValueError, match=match):
    bmse.check_config(config)


def test_bad_bmse_settings_name_the_field(tmp_path):
  config = _tiny()
  with pytest.raises(ValueError, match=r"loss.bmse.gmm_components.*3 distinct"):
    bmse.label_gmm(config, np.array([1.0, 2.0, 3.0, 2.0]), 2.0, 1.0)
  with pytest.raises(ValueError, match="scalar labels"):
    bmse.label_gmm(config, np.ones((4, 2)), 0.0, 1.0)
  config.micro_batch = 16
  with pytest.raises(ValueError, match="micro_batch"):
    bmse.check_config(config)
  config = _tiny()
  config.loss.reg_kwargs = ml_collections.ConfigDict({"focal_beta": 0.2})
  with pytest.raises(ValueError, match="loss.reg_kwargs"):
    bmse.check_config(config)
  config = _tiny(steps=2)
  config.loss.bmse.gmm_components = 500  # more than the distinct diabetes targets: before training
  with pytest.raises(ValueError, match="loss.bmse.gmm_components"):
    train_and_evaluate(config, str(tmp_path / "a"))
  from contrastive_jax.losses import balanced_mse  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="bmc_sample"):
    balanced_mse(np.zeros(3), np.zeros(3), 1.0, "gai", _GMM, bmc_sample=np.zeros(3))
  config = _tiny(steps=2)
  config.loss.bmse.sigma_lrr = 0.1
  with pytest.raises(ValueError, match="did you mean loss.bmse.sigma_lr"):
    loop.check_config_fields(config)


def test_gmm_is_fitted_in_the_units_the_loss_sees():
  y = np.random.default_rng(3).normal(50.0, 10.0, size=200).round()
  config = _tiny()
  normalized = bmse.label_gmm(config, y, float(y.mean()), float(y.std()))
  config.loss.reg_units = "label"
  label = bmse.label_gmm(config, y, float(y.mean()), float(y.std()))
  np.testing.assert_allclose(label["means"], normalized["means"] * y.std() + y.mean(), rtol=1e-3)
  config.loss.bmse.kind = "bmc"
  assert bmse.label_gmm(config, y, 0.0, 1.0) is None


def test_old_configs_keep_their_identity():
  config = _tiny()
  config.loss.reg = "l1"
  current = run.config_identity(config)
  assert "bmse" not in current["loss"]
  stored = json.loads(json.dumps(current))  # a checkpoint from before loss.bmse existed
  assert run.refuse_changed_config("ckpt", stored, current) == []
  config.loss.bmse.kind = "bmc"  # a non-default option is part of the identity
  with pytest.raises(ValueError, match="loss.bmse"):
    run.refuse_changed_config("ckpt", stored, run.config_identity(config))


@pytest.mark.parametrize("kind", ["gai", "bmc"])
def test_loss_of_a_split_batch_is_that_of_the_whole_batch(kind):
  """``bmse.global_loss`` on 2 shards (``vmap`` with a named axis stands in for the devices) equals
  the loss of the whole batch, weighted too: BMC's sample is every shard's targets."""
  rng = np.random.default_rng(5)
  pred, target = rng.normal(size=12), rng.normal(size=12)
  w = rng.uniform(0.5, 2.0, size=12)
  gmm = _GMM if kind == "gai" else None
  split = lambda a: jnp.asarray(a.reshape(2, 6), jnp.float32)
  fn = lambda p, t, ww: bmse.global_loss(p, t, jnp.float32(0.8), kind, gmm, ww, "shards")
  both = jax.jit(lambda p, t, ww: (jax.vmap(lambda a, b: fn(a, b, None), axis_name="shards")(p, t),
                                   jax.vmap(fn, axis_name="shards")(p, t, ww)))
  for got, weights in zip(both(split(pred), split(target), split(w)), (None, w)):
    np.testing.assert_allclose(np.asarray(got), paper_bmse(pred, target, 0.8, kind, gmm, weights),
                               rtol=2e-5)
