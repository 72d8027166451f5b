"""The method registry (``contrastive_jax/losses/registry.py``, issue 12).

* A toy method registered from this test (its own loss, option and ``prepare`` hook) trains through
  the real trainer, then is unregistered.
* Every registered method declares exactly its loss's signature: ``features``, the batch inputs by
  position, then options and prepared arguments by name.
* AdaCon's ECDF applied on device (inside the jitted loss) gives the same float32 values, bit for
  bit, as the host-side ECDF the trainer used before, and so the same loss and gradient.
* Clear ValueErrors for bad registrations and unknown names.
"""

import inspect
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import contrastive_jax as cj
from contrastive_jax.losses import registry
from contrastive_jax.losses.registry import Method
from contrastive_jax.train import loop
from contrastive_jax.train import objectives
from contrastive_jax.train import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import regression  # pylint: disable=g-import-not-at-top,wrong-import-position

BUILT_IN = ("accon", "adacon", "adaptive_triplet", "binary_contrastive", "binary_contrastive_combo",
            "conr", "dcl", "dystress", "mio", "npair", "ranksim", "rnc", "simclr", "supcon", "supremix")


# ------------------------------------------------------------------------------------------------
# A toy method, registered from the test.


def toy_loss(features, labels, *, offset, scale=1.0, axis_name=None):
  """Squared error of the first feature against ``tanh(y / scale)``, plus the prepared ``offset``
  (so the logged ``loss_con`` shows that the hook's value reached the loss)."""
  target = jnp.tanh(labels / scale)[:, None]
  loss = jnp.mean((features[..., 0] - target) ** 2)
  if axis_name is not None:
    loss = jax.lax.pmean(loss, axis_name)
  return loss + offset


@pytest.fixture
def toy_method():
  calls = []

  def prepare(train_labels, loss_cfg):
    calls.append((np.array(train_labels), loss_cfg.contrastive.get("scale")))
    return {"offset": np.float32(np.max(train_labels))}

  registry.register("toy", Method(toy_loss, inputs=("labels",), options=("scale",),
                                  prepare=prepare))
  try:
    yield calls
  finally:
    registry.unregister("toy")


def toy_config(steps=4):
  config = regression.get_config("diabetes")
  config.method = "toy"
  config.loss.gamma_con = 0.5
  config.loss.contrastive = ml_collections.ConfigDict({"scale": 50.0})
  config.model.encoder_kwargs.hidden_sizes = (32,)
  config.model.proj_dim = 16
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = steps
  config.log_every = 1
  config.eval_every = steps
  config.checkpoint_every = steps
  config.optim.warmup_steps = 1
  return config


def test_toy_method_trains_through_the_trainer(tmp_path, toy_method):  # pylint: disable=redefined-outer-name
  assert "toy" in cj.losses.CONTRASTIVE_LOSSES and "toy" in objectives.methods()
  assert cj.losses.get_contrastive_loss("toy") is toy_loss
  results = train_and_evaluate(toy_config(), str(tmp_path))
  assert results["method"] == "toy" and np.isfinite(results["test"]["mae"])
  # The hook ran once, on the training labels, with the config's loss section.
  train_y = cj.data.load_dataset("diabetes", seed=0).train.y
  assert len(toy_method) == 1
  np.testing.assert_array_equal(toy_method[0][0], train_y)
  assert toy_method[0][1] == 50.0
  # Its value reached the loss inside the jitted step: L_con = mse + max(train labels).
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  loss_con = [l["train/loss_con"] for l in lines if "train/loss_con" in l]
  offset = float(np.float32(np.max(train_y)))
  assert len(loss_con) == 4 and all(offset <= v <= offset + 4.0 for v in loss_con), loss_con


@pytest.mark.usefixtures("toy_method")
def test_toy_method_options_are_checked():
  config = toy_config()
  loop.check_config_fields(config)
  config.loss.contrastive.scal = 2.0
  with pytest.raises(ValueError, match=r"loss.contrastive.scal \(did you mean "
                                       r"loss.contrastive.scale\?\)"):
    loop.check_config_fields(config)


@pytest.mark.usefixtures("toy_method")
def test_unregistered_toy_method_is_unknown():
  registry.unregister("toy")
  try:
    with pytest.raises(ValueError, match="Unknown `method`='toy'"):
      objectives.check_method("toy")
    assert "toy" not in cj.losses.CONTRASTIVE_LOSSES
  finally:
    registry.register("toy", Method(toy_loss, options=("scale",)))  # for the fixture's unregister


# ------------------------------------------------------------------------------------------------
# Every registered method against its loss's signature.

_LOSS_CFG = ml_collections.ConfigDict({"contrastive": {"label_range": None}})
_TRAIN_LABELS = np.array([0.0, 1.0, 1.0, 2.5, 4.0], np.float32)


def test_built_in_methods():
  assert registry.names() == BUILT_IN
  assert tuple(cj.losses.CONTRASTIVE_LOSSES) == BUILT_IN
  assert objectives.methods() == ("none",) + BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_declared_inputs_and_options_match_the_loss_signature(name):
  method = registry.get_method(name)
  method.check_signature()
  params = inspect.signature(method.loss).parameters
  names = list(params)
  assert names[0] == "features"
  assert names[1:1 + len(method.inputs)] == list(method.inputs)
  prepared = (set() if method.prepare is None
              else set(method.prepare(_TRAIN_LABELS, _LOSS_CFG)) - set(method.options))
  rest = set(names[1 + len(method.inputs):]) - {"axis_name"}
  # Everything else the loss takes is either a config option or computed by the hook; nothing both.
  assert rest == set(method.options) | prepared, (name, rest ^ (set(method.options) | prepared))
  assert not prepared & set(method.options)


def test_pairwise_options_follow_the_declared_options():
  loss_cfg = ml_collections.ConfigDict({"contrastive": {}, "impl": "blockwise", "tile": [8, 16],
                                        "matmul_dtype": None})
  assert objectives.loss_kwargs("rnc", loss_cfg) == {"impl": "blockwise", "tile": (8, 16)}
  with pytest.raises(ValueError, match="the 'ranksim' loss has no such option"):
    objectives.loss_kwargs("ranksim", loss_cfg)


# ------------------------------------------------------------------------------------------------
# AdaCon: the ECDF on device equals the host-side one.


@pytest.mark.parametrize("n", [7, 12208, 191500])
def test_ecdf_on_device_equals_the_former_host_formula(n):
  """Every count ``k / N`` (distinct labels): the device ECDF against the trainer's former host-side
  ``(searchsorted(sorted, y, 'right') / N).astype(float32)``; a float32 division ``k / N`` on the
  device is off by one ulp for some k (XLA multiplies by 1 / N), the ECDF's gathered table is not."""
  train = np.random.default_rng(n).permutation(n).astype(np.float32) * np.float32(0.5)
  y = np.concatenate([train, [-1.0, n + 1.0]]).astype(np.float32)
  former = (np.searchsorted(np.sort(train), y, side="right") / n).astype(np.float32)
  ecdf = cj.losses.fit_ecdf(train)
  np.testing.assert_array_equal(ecdf(y), former)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda e, v: e(v))(ecdf, y)), former)
  as_constant = jax.jit(lambda v: ecdf(v))  # pylint: disable=unnecessary-lambda
  np.testing.assert_array_equal(np.asarray(as_constant(y)), former)


@pytest.mark.parametrize("optimized", [False, True])
def test_adacon_ecdf_on_device_equals_host_side(optimized):
  rng = np.random.default_rng(12)
  train = np.concatenate([rng.normal(40.0, 12.0, size=5000), rng.integers(0, 90, size=3000)])
  ecdf = cj.losses.fit_ecdf(train)
  y = np.concatenate([train[:200], rng.normal(40.0, 30.0, size=200), [-1e6, 1e6, 0.0]])
  y = y.astype(np.float32)
  host = ecdf(y)  # the trainer's former host-side path (NumPy in, NumPy out)
  assert host.dtype == np.float32
  former = (np.searchsorted(np.sort(train.astype(np.float32)), y, side="right")
            / train.size).astype(np.float32)
  np.testing.assert_array_equal(host, former)
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", not optimized)
  try:
    device = np.asarray(jax.jit(lambda e, v: e(v))(ecdf, y))
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)
  np.testing.assert_array_equal(device, host)
  # And so the same loss and gradient, whether adacon gets the values or the ECDF itself.
  f = rng.normal(size=(y.shape[0], 2, 8)).astype(np.float32)
  value_and_grad = lambda cdf: jax.jit(jax.value_and_grad(
      lambda x, labels, c: cj.losses.adacon(x, labels, c, 0.2)))(f, y, cdf)
  (v_host, g_host), (v_device, g_device) = value_and_grad(host), value_and_grad(ecdf)
  np.testing.assert_array_equal(v_device, v_host)
  np.testing.assert_array_equal(g_device, g_host)


def test_adacon_prepare_gives_the_ecdf_of_the_training_labels():
  config = ml_collections.ConfigDict({"method": "adacon", "loss": {"contrastive": {}}})
  same, prepared = objectives.prepare(config, _TRAIN_LABELS)
  assert same.to_dict() == config.to_dict() and set(prepared) == {"cdf"}
  np.testing.assert_array_equal(prepared["cdf"].sorted_labels, np.unique(_TRAIN_LABELS))
  np.testing.assert_array_equal(prepared["cdf"].values, np.float32([0, 0.2, 0.6, 0.8, 1.0]))
  config.loss.contrastive.cdf = 0.5
  with pytest.raises(ValueError, match=r"sets \['cdf'\], which the 'adacon' method computes"):
    objectives.prepare(config, _TRAIN_LABELS)


# ------------------------------------------------------------------------------------------------
# ValueErrors.


def test_unknown_names_raise():
  with pytest.raises(ValueError, match=r"Unknown contrastive method 'nope'; expected one of"):
    registry.get_method("nope")
  with pytest.raises(ValueError, match="Unknown contrastive method 'nope'"):
    cj.losses.get_contrastive_loss("nope")
  with pytest.raises(ValueError, match="No method named 'nope' is registered"):
    registry.unregister("nope")


@pytest.mark.parametrize("name,method,message", [
    ("supcon", Method(toy_loss, options=("scale",)), "'supcon' is already registered"),
    ("none", Method(toy_loss, options=("scale",)), "'none' is reserved"),
    ("", Method(toy_loss), "non-empty string"),
    ("toy2", toy_loss, "takes a Method"),
    ("toy2", Method(toy_loss, inputs=("preds",)), r"toy_loss takes \['labels'\] after `features`"),
    ("toy2", Method(toy_loss, options=("scale", "temperature")),
     r"no keyword argument\(s\) \['temperature'\]"),
    ("toy2", Method(lambda features, labels: 0.0), r"no keyword argument\(s\) \['axis_name'\]"),
])
def test_bad_registrations_raise(name, method, message):
  with pytest.raises(ValueError, match=message):
    registry.register(name, method)
  assert "toy2" not in registry.names()


@pytest.mark.parametrize("kwargs,message", [
    ({"inputs": ("labels", "cdf")}, r"Method.inputs \['cdf'\] are not batch inputs"),
    ({"inputs": "labels"}, "Method.inputs must be a tuple of names"),
    ({"options": ("labels",)}, r"\['labels'\] named both"),
    ({"prepare": 3}, "Method.prepare must be None or callable"),
])
def test_bad_methods_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    Method(toy_loss, **kwargs)
  with pytest.raises(ValueError, match="Method.loss must be callable"):
    Method("toy_loss")


def test_prepare_never_overrides_a_configured_option():
  def prepare(train_labels, loss_cfg):  # a faulty hook: ignores the configured value
    del loss_cfg
    return {"scale": float(np.ptp(train_labels))}

  registry.register("toy3", Method(toy_loss, options=("scale",), prepare=prepare))
  try:
    config = ml_collections.ConfigDict({"method": "toy3", "loss": {"contrastive": {}}})
    resolved, prepared = objectives.prepare(config, _TRAIN_LABELS)
    assert resolved.loss.contrastive.scale == 4.0 and prepared == {}
    config.loss.contrastive.scale = 2.0
    with pytest.raises(ValueError, match="computed `loss.contrastive.scale`, which the config"):
      objectives.prepare(config, _TRAIN_LABELS)
  finally:
    registry.unregister("toy3")
