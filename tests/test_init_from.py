"""``model.init_from`` (pretrained starts) and ``data.normalize`` (input normalisation).

Torchvision-format weights are written without torchvision: the float64 NumPy torchvision ResNet
of tests/test_backbones.py fills a torch-layout state dict, saved as ``.safetensors`` (no torch).
Runs use the bundled 16x16 digits with a width-4 ResNet-18 or the small CNN, 1-3 steps each.
"""

from __future__ import annotations

import logging
import os
import sys

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import models
from contrastive_jax.data.normalization import IMAGENET_MEAN
from contrastive_jax.data.normalization import IMAGENET_STD
from contrastive_jax.data.normalization import input_normalization
from contrastive_jax.data.normalization import normalize
from contrastive_jax.models import torch_weights
from contrastive_jax.train import init_from as init_lib
from contrastive_jax.train import loop
from contrastive_jax.train import train_and_evaluate
from contrastive_jax.train.checkpoint import restore_variables
from tests.test_backbones import _np_resnet
from tests.test_backbones import _TorchStyleWeights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import adacon  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.usefixtures("fast_compile")

WIDTH = 4  # ResNet-18 at 4 filters: torchvision's key names and depth, a few thousand parameters


def torch_resnet18_state_dict(channels=1, width=WIDTH, seed=0) -> dict:
  """A torchvision-format ResNet-18 (CIFAR stem, ``width`` filters) state dict of NumPy arrays."""
  weights = _TorchStyleWeights(seed)
  _np_resnet(weights, np.zeros((1, 8, 8, channels)), (2, 2, 2, 2), False, "cifar",
             (False, False, False), width)
  return {k: np.asarray(v, np.int64 if k.endswith("num_batches_tracked") else np.float32)
          for k, v in weights.state_dict.items()}


def save_safetensors(path, state_dict) -> str:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path))
  return str(path)


def tiny_config(encoder="resnet18", steps=2):
  """AdaCon on the bundled digits (16x16x1), tiny: a handful of steps of batch 16."""
  config = adacon.get_config("digits_angle")
  config.model.encoder = encoder
  config.model.encoder_kwargs.update(dict(num_filters=WIDTH) if encoder == "resnet18"
                                     else dict(widths=(8, 16), dense_dim=16))
  config.model.proj_dim = 8
  config.batch_size = 16
  config.eval_batch_size = 128
  config.num_train_steps = steps
  config.log_every = config.eval_every = config.checkpoint_every = 1
  config.optim.warmup_steps = 0
  return config


class Spy:
  """Records the arguments / results of the trainer's functions that a test replaces."""

  def __init__(self, monkeypatch):
    self.calls = {}
    self.monkeypatch = monkeypatch

  def wrap(self, owner, name, record_result=False):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
      result = original(*args, **kwargs)
      # Host copies: the train step donates the state's buffers.
      host = lambda tree: jax.tree.map(
          lambda v: np.array(v) if isinstance(v, jax.Array) else v, tree)
      self.calls.setdefault(name, []).append(
          (host(args), host(kwargs), host(result) if record_result else None))
      return result

    self.monkeypatch.setattr(owner, name, wrapper)


def _sub(tree, key="encoder"):
  return {k: v for k, v in tree.items() if k != key}


# --------------------------------------------------------------------------------------------------
# (a) a torchvision file
# --------------------------------------------------------------------------------------------------

def test_safetensors_initialises_the_encoder_and_keeps_random_heads(tmp_path, monkeypatch, caplog):
  state_dict = torch_resnet18_state_dict()
  path = save_safetensors(tmp_path / "resnet18.safetensors", state_dict)
  config = tiny_config(steps=1)
  config.model.init_from = path
  spy = Spy(monkeypatch)
  spy.wrap(init_lib, "load_init_variables", record_result=True)
  spy.wrap(loop.TrainState, "create")
  with caplog.at_level(logging.INFO, logger="contrastive_jax"):
    results = train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(results["test"]["mae"])
  (args, _, (loaded, summary)), = spy.calls["load_init_variables"]
  random_init = args[2]
  created = spy.calls["create"][0][1]
  # The state starts from the file's weights, converted exactly as torch_weights does it ...
  expected = torch_weights.convert_resnet(state_dict, models.ResNet18(num_filters=WIDTH))
  chex.assert_trees_all_equal(created["params"]["encoder"], expected["params"])
  chex.assert_trees_all_equal(created["batch_stats"]["encoder"], expected["batch_stats"])
  np.testing.assert_array_equal(created["params"]["encoder"]["conv_init"]["kernel"],
                                state_dict["conv1.weight"].transpose(2, 3, 1, 0))
  # ... the heads keep the random init, and the random init itself was not modified.
  chex.assert_trees_all_equal(_sub(created["params"]), _sub(random_init["params"]))
  assert not np.array_equal(random_init["params"]["encoder"]["conv_init"]["kernel"],
                            expected["params"]["conv_init"]["kernel"])
  chex.assert_trees_all_equal_structs(loaded, random_init)
  n = len(jax.tree.leaves(expected))
  assert f"{n} arrays" in summary and path in summary
  assert any(summary in r.getMessage() for r in caplog.records)


def _zeros_like_init(model, shape):
  """Variables of ``model`` as zeros (shapes from ``eval_shape``: no compilation)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@pytest.fixture(scope="module")
def resnet_variables():
  model = models.build_model(tiny_config().model)
  return model, _zeros_like_init(model, (2, 16, 16, 1))


@pytest.mark.slow  # needs torch: the slow suite installs it (README "Tests"), the default one not
def test_pth_file_loads_like_safetensors(tmp_path, resnet_variables):
  torch = pytest.importorskip("torch")
  state_dict = torch_resnet18_state_dict(seed=1)
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, tmp_path / "w.pth")
  model, variables = resnet_variables
  loaded, _ = init_lib.load_init_variables(str(tmp_path / "w.pth"), model, variables)
  expected = torch_weights.convert_resnet(state_dict, models.ResNet18(num_filters=WIDTH))
  chex.assert_trees_all_equal(loaded["params"]["encoder"], expected["params"])
  assert not np.any(variables["params"]["encoder"]["conv_init"]["kernel"])  # input not modified


def test_deeplab_backbone_prefix_into_a_cowpro_encoder(tmp_path):
  """CoWPro's encoder from a torchvision segmentation state dict (``backbone.*``, heads dropped)."""
  from contrastive_jax.projects.cowpro import model as cowpro_model  # pylint: disable=g-import-not-at-top
  state_dict = torch_resnet18_state_dict(seed=2)
  deeplab = {f"backbone.{k}": v for k, v in state_dict.items()}
  deeplab["classifier.4.weight"] = np.zeros((21, 8, 1, 1), np.float32)
  path = save_safetensors(tmp_path / "deeplab.safetensors", deeplab)
  model = cowpro_model.CoWPro(encoder=models.ResNet18(num_filters=WIDTH, global_pool=False),
                              feature_dim=8, in_channels=1)
  variables = _zeros_like_init(model, (2, 16, 16))
  loaded, _ = init_lib.load_init_variables(path, model, variables)
  expected = torch_weights.convert_resnet(state_dict, models.ResNet18(num_filters=WIDTH))
  chex.assert_trees_all_equal(loaded["params"]["encoder"], expected["params"])
  chex.assert_trees_all_equal(_sub(loaded["params"]), _sub(variables["params"]))


# --------------------------------------------------------------------------------------------------
# (b) a previous run's checkpoint, (d) resuming wins
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
  """A finished 2-step small-CNN run (its workdir)."""
  workdir = str(tmp_path_factory.mktemp("previous"))
  train_and_evaluate(tiny_config("small_cnn"), workdir)
  return workdir


def test_checkpoint_init_then_resume_ignores_init_from(previous_run, tmp_path, monkeypatch,
                                                       caplog):
  """(b) init from a workdir copies its params; (d) re-running resumes and ignores init_from; and
  the trainer hands one input-normalising model to the train step and the evaluator (e)."""
  workdir = str(tmp_path / "run")
  config = tiny_config("small_cnn", steps=2)
  config.model.proj_dim = 4  # another projector: its last layer keeps the random init
  config.model.init_from = previous_run
  config.data.normalize = ((0.5,), (0.25,))
  config.stop_at_step = 1
  spy = Spy(monkeypatch)
  spy.wrap(init_lib, "load_init_variables", record_result=True)
  for name in ("make_train_step", "Evaluator"):
    spy.wrap(loop, name)
  spy.wrap(loop.TrainState, "create")
  assert train_and_evaluate(config, workdir)["status"] == "stopped"
  saved = restore_variables(os.path.join(previous_run, "checkpoints"))
  created = spy.calls["create"][0][1]
  random_init = spy.calls["load_init_variables"][0][0][2]
  chex.assert_trees_all_equal(created["params"]["encoder"], saved["params"]["encoder"])
  chex.assert_trees_all_equal(created["batch_stats"], saved["batch_stats"])
  # Matching head arrays are copied; the mis-shaped ones keep the random init.
  chex.assert_trees_all_equal(created["params"]["regressor"], saved["params"]["regressor"])
  projector = flax.traverse_util.flatten_dict(created["params"]["projector"])
  old = flax.traverse_util.flatten_dict(saved["params"]["projector"])
  new = flax.traverse_util.flatten_dict(random_init["params"]["projector"])
  for key, value in projector.items():
    np.testing.assert_array_equal(value, old[key] if old[key].shape == value.shape else new[key])
  assert any(old[k].shape != v.shape for k, v in projector.items())
  assert "head array(s) keep their random init" in spy.calls["load_init_variables"][0][2][1]
  # (e) One model, normalising its inputs, for training and evaluation.
  train_model = spy.calls["make_train_step"][0][0][0]
  assert train_model is spy.calls["Evaluator"][0][0][0]
  assert (train_model.input_mean, train_model.input_std) == ((0.5,), (0.25,))
  # (d) The same command again, now with an init_from that no longer exists: resumed, not read.
  config.stop_at_step = -1
  config.model.init_from = str(tmp_path / "gone.safetensors")
  with caplog.at_level(logging.INFO, logger="contrastive_jax"):
    results = train_and_evaluate(config, workdir)
  assert results["steps"] == 2 and np.isfinite(results["test"]["mae"])
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert "Resumed from step 1" in messages and "is ignored" in messages
  assert "Initialised" not in messages and len(spy.calls["load_init_variables"]) == 1


def test_best_directory_and_checkpoint_dir_resolution(previous_run):
  model = models.build_model(tiny_config("small_cnn").model)
  variables = _zeros_like_init(model, (2, 16, 16, 1))
  best = os.path.join(previous_run, "best")
  loaded, summary = init_lib.load_init_variables(best, model, variables)
  chex.assert_trees_all_equal(loaded["params"], restore_variables(best)["params"])
  assert best in summary and "0 head array(s)" in summary
  assert init_lib.checkpoint_directory(previous_run) == os.path.join(previous_run, "checkpoints")
  assert init_lib.checkpoint_directory(best) == best


# --------------------------------------------------------------------------------------------------
# (c) errors
# --------------------------------------------------------------------------------------------------

def test_missing_path_raises_file_not_found(tmp_path):
  config = tiny_config("small_cnn", steps=1)
  config.model.init_from = str(tmp_path / "nope.safetensors")
  with pytest.raises(FileNotFoundError, match=r"model\.init_from.*nope\.safetensors"):
    train_and_evaluate(config, str(tmp_path / "run"))
  empty = tmp_path / "empty"
  empty.mkdir()
  config.model.init_from = str(empty)
  with pytest.raises(FileNotFoundError, match=r"model\.init_from.*No complete checkpoint"):
    train_and_evaluate(config, str(tmp_path / "run2"))


def test_checkpoint_mismatch_and_unconvertible_encoder(previous_run, tmp_path):
  config = tiny_config("small_cnn", steps=1)
  config.model.encoder_kwargs.widths = (8, 32)
  config.model.init_from = previous_run
  with pytest.raises(ValueError, match=r"`model.init_from`=.*does not fit the model: "
                     r"params/encoder/bn_1/bias has shape \(16,\) there but \(32,\)"):
    train_and_evaluate(config, str(tmp_path / "run"))
  path = save_safetensors(tmp_path / "w.safetensors", torch_resnet18_state_dict())
  config = tiny_config("small_cnn", steps=1)
  config.model.init_from = path
  with pytest.raises(ValueError, match=r"`model.init_from`=.*No torch converter for SmallCNN"):
    train_and_evaluate(config, str(tmp_path / "run2"))


def test_file_shape_mismatch_names_init_from_file_and_parameter(tmp_path, resnet_variables):
  model, variables = resnet_variables
  rgb = save_safetensors(tmp_path / "rgb.safetensors", torch_resnet18_state_dict(channels=3))
  with pytest.raises(ValueError) as err:  # digits: 1 channel
    init_lib.load_init_variables(rgb, model, variables)
  message = str(err.value)
  assert "`model.init_from`" in message and "rgb.safetensors" in message
  assert "params/encoder/conv_init/kernel has shape (3, 3, 3, 4) there but (3, 3, 1, 4)" in message
  # Another width: the converter's listing of mis-shaped keys, prefixed the same way.
  wide = save_safetensors(tmp_path / "wide.safetensors", torch_resnet18_state_dict(width=8))
  with pytest.raises(ValueError, match=r"`model.init_from`=.*wide\.safetensors.*100 mis-shaped"
                     r"(.|\n)*layer1\.0\.bn1\.running_mean: torch \(8,\) -> \(8,\), model "
                     r"expects \(4,\)"):
    init_lib.load_init_variables(wide, model, variables)


# --------------------------------------------------------------------------------------------------
# (e) input normalisation
# --------------------------------------------------------------------------------------------------

def test_normalize_matches_float64_reference():
  x = np.random.default_rng(0).uniform(size=(2, 5, 6, 3))
  mean, std = input_normalization("imagenet", 3)
  assert (mean, std) == (IMAGENET_MEAN, IMAGENET_STD)
  expected = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
  np.testing.assert_allclose(normalize(jnp.asarray(x, jnp.float32), mean, std), expected,
                             rtol=1e-6, atol=1e-6)
  # Explicit statistics: one value is broadcast; also on videos [b, T, H, W, C].
  video = np.random.default_rng(1).uniform(size=(1, 2, 3, 3, 1))
  mean, std = input_normalization(((0.5,), 0.25), 1)
  assert (mean, std) == ((0.5,), (0.25,))
  np.testing.assert_allclose(normalize(video, mean, std), (video - 0.5) / 0.25, rtol=1e-6)
  assert input_normalization("", 3) is None and input_normalization(None, 1) is None


@pytest.mark.parametrize("spec,channels,message", [
    ("imagenet", 1, "needs 3-channel"),
    ("cifar", 3, "Unknown `data.normalize`"),
    (((0.5, 0.5), (0.2, 0.2)), 3, "has 2 values but the inputs have 3"),
    ((0.5, 0.0), 1, "std must be positive"),
    ((0.5,), 1, "must be ''"),
])
def test_normalize_bad_specs(spec, channels, message):
  with pytest.raises(ValueError, match=message):
    input_normalization(spec, channels)


class _SpyEncoder(flax.linen.Module):
  """Records the input it receives (``intermediates``) and returns pooled features."""

  @flax.linen.compact
  def __call__(self, x, train):
    self.sow("intermediates", "input", x)
    return flax.linen.Dense(3)(x.mean(axis=(1, 2)))


def test_model_normalises_inputs_identically_in_train_and_eval():
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
  model = models.ContrastiveRegressor(encoder=_SpyEncoder(), proj_dim=4, input_mean=mean,
                                      input_std=std)
  x = np.random.default_rng(2).uniform(size=(2, 4, 4, 3))
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32), train=False)
  expected = (x - np.array(mean)) / np.array(std)  # float64 reference
  for train in (True, False):
    _, state = model.apply(variables, jnp.asarray(x, jnp.float32), train=train,
                           mutable=["intermediates"])
    seen = state["intermediates"]["encoder"]["input"][0]
    np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-6)


def test_trainer_refuses_normalize_that_does_not_fit_the_data(tmp_path):
  """'imagenet' on the 1-channel digits, and any normalisation of tabular data, before training."""
  config = tiny_config("small_cnn", steps=1)
  config.data.normalize = "imagenet"
  with pytest.raises(ValueError, match="needs 3-channel"):
    train_and_evaluate(config, str(tmp_path / "run"))
  tabular = adacon.get_config("diabetes")
  tabular.data.normalize = ((0.0,), (1.0,))
  with pytest.raises(ValueError, match="tabular"):
    train_and_evaluate(tabular, str(tmp_path / "run2"))


def test_config_defaults_and_paper_settings():
  default = adacon.get_config()
  assert default.data.normalize == "" and default.model.init_from == ""
  assert adacon.get_config("bmd").data.normalize == "imagenet"
  loop.check_config_fields(default)  # the new fields are known
  default.model.init_form = "x"
  with pytest.raises(ValueError, match="did you mean model.init_from"):
    loop.check_config_fields(default)
