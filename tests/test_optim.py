"""Tests for contrastive_jax.train.optim: the bias / norm mask of weight decay and LARS."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import models
from contrastive_jax.train import defaults
from contrastive_jax.train.loop import check_config_fields
from contrastive_jax.train.optim import decay_mask
from contrastive_jax.train.optim import make_optimizer

_UNSET = object()


def _optim(name, exclude=_UNSET, **kw):
  cfg = dict(name=name, lr=0.5, momentum=0.9, weight_decay=0.1, schedule="constant",
             warmup_steps=0)
  if exclude is not _UNSET:
    cfg["exclude_bias_and_norm"] = exclude
  return ml_collections.ConfigDict({**cfg, **kw})


def _name(key):
  return str(getattr(key, "key", getattr(key, "name", key)))


def _params_shapes(encoder, x_shape):
  model = models.build_model(dict(encoder=encoder, proj_dim=8, proj_hidden_dim=16,
                                  proj_batch_norm=True))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x_shape),
                                           train=False))["params"]


@pytest.mark.parametrize("encoder, x_shape", [("resnet18", (2, 32, 32, 3)), ("mlp", (2, 10)),
                                              ("small_cnn", (2, 16, 16, 1)),
                                              ("efficientnet_b0", (2, 32, 32, 3))])
def test_decay_mask_on_real_models(encoder, x_shape):
  params = _params_shapes(encoder, x_shape)
  mask = decay_mask(params)
  chex.assert_trees_all_equal_structs(mask, params)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  shapes = dict((tuple(map(_name, p)), x.shape) for p, x in
                jax.tree_util.tree_flatten_with_path(params)[0])
  kinds = {"kernel": 0, "scale": 0, "bias": 0}
  for path, keep in flat:
    names = tuple(map(_name, path))
    leaf = names[-1]
    assert leaf in kinds, names  # the models have only kernels, norm scales and biases
    kinds[leaf] += 1
    assert keep == (leaf == "kernel"), names
    assert keep == (len(shapes[names]) > 1), names
  assert min(kinds.values()) > 0, kinds
  # Norm layers under their various names and dense biases (encoder and heads) are all excluded.
  excluded = {"/".join(map(_name, p[:-1])) for p, keep in flat if not keep}
  assert any("bn_hidden" in m for m in excluded) and any("bn_out" in m for m in excluded)
  if encoder == "resnet18":
    assert any("BatchNorm_" in m for m in excluded) and any("bn_init" in m for m in excluded)
    assert any("Dense" in m or "dense" in m for m in excluded), excluded


def test_decay_mask_rule_on_other_names():
  tree = {"LayerNorm_0": {"scale": jnp.ones(3), "bias": jnp.zeros(3)},
          "conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.zeros(2)},
          "gain": jnp.ones(4), "temperature": jnp.ones(()), "embedding": jnp.ones((5, 2))}
  assert decay_mask(tree) == {"LayerNorm_0": {"scale": False, "bias": False},
                              "conv": {"kernel": True, "bias": False},
                              "gain": False, "temperature": False, "embedding": True}


def _tiny_tree(seed):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
          "bn": {"scale": 1.0 + 0.1 * rng.normal(size=4), "bias": rng.normal(size=4)},
          "conv": {"kernel": rng.normal(size=(2, 2, 1, 3))}}


def _lars_reference(params, grads_seq, mask, lr, wd, momentum, eta=0.001, eps=0.0):
  """float64 NumPy LARS as optax.lars chains it: u = g + wd w (masked: g); u *= eta ||w|| /
  (||u|| + eps) (masked: unchanged; 1 where a norm is 0); m = -lr u + momentum m; w += m."""
  w = {k: dict(v) for k, v in params.items()}
  m = {k: {n: np.zeros_like(x) for n, x in v.items()} for k, v in params.items()}
  updates = []
  for grads in grads_seq:
    step = {}
    for k in w:
      step[k] = {}
      for n in w[k]:
        g, p = grads[k][n], w[k][n]
        if mask[k][n]:
          u = g + wd * p
          pn, un = np.linalg.norm(p), np.linalg.norm(u)
          u = u * (eta * pn / (un + eps) if pn > 0 and un > 0 else 1.0)
        else:
          u = g  # plain momentum SGD: no decay, no trust ratio
        m[k][n] = -lr * u + momentum * m[k][n]
        step[k][n] = m[k][n]
        w[k][n] = p + m[k][n]
    updates.append(step)
  return updates


@pytest.mark.parametrize("exclude", [_UNSET, None, True, False],
                         ids=["unset", "None", "True", "False"])
def test_lars_update_matches_reference(exclude):
  cfg = _optim("lars", exclude)
  tx, _ = make_optimizer(cfg, num_train_steps=10)
  params64 = _tiny_tree(0)
  grads64 = [_tiny_tree(1), _tiny_tree(2)]
  masked = exclude is not False  # unset / None: LARS' convention, exclude
  mask = jax.tree.map(lambda x: True, params64)
  if masked:
    mask = {"dense": {"kernel": True, "bias": False}, "bn": {"scale": False, "bias": False},
            "conv": {"kernel": True}}
  want = _lars_reference(params64, grads64, mask, lr=0.5, wd=0.1, momentum=0.9)
  to32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  params = to32(params64)
  state = tx.init(params)
  got = []
  for grads, expected in zip(grads64, want):
    updates, state = tx.update(to32(grads), state, params)
    chex.assert_trees_all_close(updates, to32(expected), rtol=2e-5, atol=1e-7)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    got.append(updates)
  # Masked leaves: the first step is -lr * g (no decay, no trust ratio); LARS leaves: scaled by ~eta.
  first, g = got[0], to32(grads64[0])
  if masked:
    chex.assert_trees_all_close(first["bn"], jax.tree.map(lambda x: -0.5 * x, g["bn"]))
    chex.assert_trees_all_close(first["dense"]["bias"], -0.5 * g["dense"]["bias"])
  assert float(jnp.max(jnp.abs(first["dense"]["kernel"]))) < 0.01


def _decay_step(name, exclude=_UNSET):
  """One update at zero gradient: only weight decay moves the parameters."""
  tx, _ = make_optimizer(_optim(name, exclude), 10)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tiny_tree(0))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  return params, updates


def test_sgd_exclude_bias_and_norm():
  params, updates = _decay_step("sgd", True)
  mask = decay_mask(params)
  for keep, p, u in zip(*(jax.tree.leaves(t) for t in (mask, params, updates))):
    chex.assert_trees_all_close(u, -0.5 * 0.1 * p if keep else jnp.zeros_like(p))
  assert not all(jax.tree.leaves(mask)) and any(jax.tree.leaves(mask))


@pytest.mark.parametrize("exclude", [_UNSET, None, False], ids=["unset", "None", "False"])
def test_sgd_default_decays_everything(exclude):
  params, updates = _decay_step("sgd", exclude)
  chex.assert_trees_all_close(updates, jax.tree.map(lambda p: -0.5 * 0.1 * p, params))


def test_adam_exclude_bias_and_norm():
  _, updates = _decay_step("adam", True)
  chex.assert_trees_all_equal(updates["bn"], {"scale": jnp.zeros(4), "bias": jnp.zeros(4)})
  assert float(jnp.min(jnp.abs(updates["dense"]["kernel"]))) > 0
  _, updates = _decay_step("adam")  # default: decays (so moves) every parameter
  assert float(jnp.min(jnp.abs(updates["bn"]["bias"]))) > 0


@pytest.mark.parametrize("name", ["sgd", "adam", "lars"])
@pytest.mark.parametrize("value", ["yes", "True", 1, 0, 1.0])
def test_invalid_exclude_bias_and_norm(name, value):
  with pytest.raises(ValueError, match=r"optim\.exclude_bias_and_norm"):
    make_optimizer(_optim(name, value), 10)


def test_config_field_is_known():
  config = defaults.base_config("digits_angle")
  assert config.optim.exclude_bias_and_norm is None
  config.optim.name = "lars"
  config.optim.exclude_bias_and_norm = False
  check_config_fields(config)
  make_optimizer(config.optim, 10)
  config.optim.exclude_bias_and_nrom = True
  with pytest.raises(ValueError, match="did you mean optim.exclude_bias_and_norm"):
    check_config_fields(config)


def test_lars_on_resnet18_tree():
  params = _params_shapes("resnet18", (2, 32, 32, 3))
  tx, _ = make_optimizer(_optim("lars"), 10)
  state = jax.eval_shape(tx.init, params)
  updates, _ = jax.eval_shape(tx.update, params, state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
