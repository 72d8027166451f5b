"""Tests for contrastive_jax.models: shapes, dtypes, heads, builder, synced BatchNorm."""

import functools
import os
import subprocess
import sys

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import models

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (encoder module, tiny input shape, expected feature size)
_ENCODER_CASES = {
    'mlp': (lambda **kw: models.MLPEncoder(hidden_sizes=(16, 8), **kw),
            (4, 5), 8),
    'small_cnn': (lambda **kw: models.SmallCNN(widths=(8, 16), dense_dim=12,
                                               **kw), (4, 8, 8, 1), 12),
    'resnet18_cifar': (lambda **kw: models.ResNet18(num_filters=8, **kw),
                       (4, 32, 32, 3), 64),
    'resnet18_imagenet': (lambda **kw: models.ResNet18(
        num_filters=8, stem='imagenet', **kw), (4, 64, 64, 3), 64),
}


pytestmark = pytest.mark.usefixtures('fast_compile')


def _init(module, x, train=False):
  return jax.jit(functools.partial(module.init, train=train))(
      jax.random.key(0), x)


def _init_and_apply(module, x):
  """One compile: init, eval-mode output, train-mode batch_stats."""

  def run(x):
    variables = module.init(jax.random.key(0), x, train=False)
    y = module.apply(variables, x, train=False)
    _, state = module.apply(variables, x, train=True, mutable=['batch_stats'])
    return variables, y, state

  return jax.jit(run)(x)


def _num_params(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize('name,dtype', [
    ('mlp', jnp.float32), ('mlp', jnp.bfloat16),
    ('small_cnn', jnp.float32), ('small_cnn', jnp.bfloat16),
    ('resnet18_cifar', jnp.float32),
    ('resnet18_imagenet', jnp.float32),
])
def test_encoder(name, dtype):
  """Output shape/dtype, float32 params, train mode updates batch_stats."""
  make, shape, dim = _ENCODER_CASES[name]
  model = make(dtype=dtype)
  x = 3.0 + jax.random.normal(jax.random.key(1), shape)
  variables, y, state = _init_and_apply(model, x)
  chex.assert_shape(y, (shape[0], dim))
  assert y.dtype == dtype
  chex.assert_tree_all_finite(y)
  assert all(p.dtype == jnp.float32
             for p in jax.tree.leaves(variables['params']))
  old = jax.tree.leaves(variables['batch_stats'])
  new = jax.tree.leaves(state['batch_stats'])
  assert len(old) == len(new) > 0
  assert any(not np.allclose(a, b) for a, b in zip(old, new))
  if name.startswith('resnet'):
    # The last BN of every block starts at zero scale (identity blocks).
    blocks = [v for k, v in variables['params'].items()
              if k.startswith('BasicBlock')]
    assert len(blocks) == 8
    for block in blocks:
      np.testing.assert_array_equal(block['BatchNorm_1']['scale'], 0.0)


def test_eval_mode_needs_no_mutable_collections():
  model = models.MLPEncoder(hidden_sizes=(4,))
  x = jnp.arange(6.0).reshape(2, 3)
  variables = model.init(jax.random.key(0), x, train=False)
  y1 = model.apply(variables, x, train=False)
  y2 = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(y1, y2)
  with pytest.raises(flax.errors.ModifyScopeVariableError):  # train writes
    model.apply(variables, x, train=True)


def test_default_encoders_output_sizes():
  x = jnp.zeros((2, 8, 8, 1))
  for model in (models.MLPEncoder(), models.SmallCNN()):
    shapes = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), x)
    out = jax.eval_shape(functools.partial(model.apply, train=False),
                         shapes, x)
    chex.assert_shape(out, (2, 256))


def test_small_cnn_pools_down_to_two():
  # 8x8 -> 4x4 -> 2x2 and no pool after the last block.
  model = models.SmallCNN(widths=(4, 4, 4, 4), dense_dim=3)
  x = jnp.ones((2, 8, 8, 1))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  _, state = jax.eval_shape(
      functools.partial(model.apply, train=False, capture_intermediates=True,
                        mutable=['intermediates']), variables, x)
  shapes = [v['__call__'][0].shape
            for k, v in state['intermediates'].items() if k.startswith('bn_')]
  assert shapes == [(2, 8, 8, 4), (2, 4, 4, 4), (2, 2, 2, 4), (2, 2, 2, 4)]


def test_mlp_without_batch_norm_has_no_batch_stats():
  model = models.MLPEncoder(hidden_sizes=(4,), use_batch_norm=False)
  variables = _init(model, jnp.ones((2, 3)))
  assert 'batch_stats' not in variables


def test_resnet18_cifar_param_count():
  # torchvision resnet18 has 11,689,512 params: minus fc (512*1000 + 1000) is
  # 11,176,512; replacing the 7x7x3x64 stem (9,408) by a 3x3x3x64 one (1,728)
  # gives 11,168,832 for the CIFAR variant (BN running stats are buffers, not
  # params, in torch, and live in 'batch_stats' here). The Flax model matches
  # exactly; allow 1% in case of harmless layout changes.
  model = models.ResNet18()
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  count = _num_params(shapes['params'])
  assert abs(count - 11_168_832) <= 0.01 * 11_168_832, count
  imagenet = models.ResNet18(stem='imagenet')
  shapes = jax.eval_shape(functools.partial(imagenet.init, train=False),
                          jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert _num_params(shapes['params']) == 11_176_512
  out = jax.eval_shape(functools.partial(imagenet.apply, train=False), shapes,
                       jnp.zeros((1, 64, 64, 3)))
  chex.assert_shape(out, (1, 512))


def test_unknown_stem_raises():
  with pytest.raises(ValueError, match='stem'):
    _init(models.ResNet18(stem='vgg'), jnp.ones((1, 8, 8, 3)))


def test_l2_normalize_zero_is_finite():
  x = jnp.zeros((3, 5))
  chex.assert_tree_all_finite(models.l2_normalize(x))
  grad = jax.grad(lambda v: jnp.sum(models.l2_normalize(v) * 0.5))(x)
  chex.assert_tree_all_finite(grad)
  y = models.l2_normalize(jnp.array([[3.0, 4.0]]))
  np.testing.assert_allclose(y, [[0.6, 0.8]], rtol=1e-6)


def test_projection_head_zero_input_finite():
  head = models.ProjectionHead(out_dim=4)
  x = jnp.zeros((2, 6))

  @jax.jit
  def run(x):
    params = head.init(jax.random.key(0), x)
    params = jax.tree.map(jnp.zeros_like, params)  # forces a zero projection
    loss = lambda p: jnp.sum(head.apply(p, x))
    return head.apply(params, x), jax.grad(loss)(params)

  out, grads = run(x)
  chex.assert_shape(out, (2, 4))
  chex.assert_tree_all_finite((out, grads))


def test_linear_head():
  head = models.LinearHead(use_bias=False)
  x = jnp.ones((4, 3))
  params = head.init(jax.random.key(0), x)
  chex.assert_shape(head.apply(params, x), (4,))
  assert 'bias' not in params['params']['dense']


@pytest.mark.parametrize('regress_from', ['backbone', 'projection'])
def test_contrastive_regressor(regress_from):
  model = models.ContrastiveRegressor(
      encoder=models.SmallCNN(widths=(8, 16), dense_dim=12),
      proj_hidden_dim=10, proj_dim=6, regress_from=regress_from)
  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
  variables, out, state = _init_and_apply(model, x)
  assert set(out) == {'embedding', 'projection', 'prediction'}
  chex.assert_shape(out['embedding'], (4, 12))
  chex.assert_shape(out['projection'], (4, 6))
  chex.assert_shape(out['prediction'], (4,))
  chex.assert_type([out['embedding'], out['projection'], out['prediction']],
                   jnp.float32)
  np.testing.assert_allclose(
      jnp.linalg.norm(out['projection'], axis=-1), 1.0, rtol=1e-5)
  regressor = variables['params']['regressor']['dense']
  expected_in = 12 if regress_from == 'backbone' else 6
  assert regressor['kernel'].shape == (expected_in, 1)
  assert ('bias' in regressor) == (regress_from == 'backbone')
  # The train flag reaches the encoder's BatchNorm.
  chex.assert_trees_all_equal_shapes(state['batch_stats'],
                                     variables['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(state['batch_stats']),
      jax.tree.leaves(variables['batch_stats'])))


def test_unknown_regress_from_raises():
  model = models.ContrastiveRegressor(encoder=models.MLPEncoder((4,)),
                                      regress_from='head')
  with pytest.raises(ValueError, match='regress_from'):
    _init(model, jnp.ones((2, 3)))


def _model_config(encoder, **encoder_kwargs):
  return ml_collections.ConfigDict(dict(
      encoder=encoder, encoder_kwargs=encoder_kwargs, proj_hidden_dim=None,
      proj_dim=8, regress_from='backbone', head_bias=True))


@pytest.mark.parametrize('name,kwargs,shape,dim', [
    ('mlp', dict(hidden_sizes=[16, 8]), (2, 3), 8),
    ('small_cnn', dict(widths=[4, 8], dense_dim=6), (2, 8, 8, 1), 6),
    ('resnet18', dict(num_filters=4, stem='imagenet'), (2, 64, 64, 3), 32),
    ('resnet18', {}, (2, 32, 32, 3), 512),
])
def test_build_model(name, kwargs, shape, dim):
  config = _model_config(name, **kwargs)
  synced = models.build_model(config, axis_name='batch')
  assert isinstance(synced, models.ContrastiveRegressor)
  expected_cls = models.ResNet if name == 'resnet18' else models.ENCODERS[name]
  assert type(synced.encoder) is expected_cls  # pylint: disable=unidiomatic-typecheck
  assert synced.encoder.bn_axis_name == 'batch'
  assert synced.encoder.dtype == jnp.float32
  for key, value in kwargs.items():  # lists became tuples
    assert getattr(synced.encoder, key) == (
        tuple(value) if isinstance(value, list) else value)
  model = models.build_model(config)  # no axis name outside shard_map
  assert model.encoder.bn_axis_name is None
  x = jnp.zeros(shape)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), x)
  out = jax.eval_shape(functools.partial(model.apply, train=False), shapes, x)
  chex.assert_shape(out['embedding'], (shape[0], dim))
  chex.assert_shape(out['projection'], (shape[0], 8))
  chex.assert_shape(out['prediction'], (shape[0],))


def test_build_model_bfloat16_and_plain_mapping():
  config = dict(encoder='mlp', encoder_kwargs={'hidden_sizes': [4]},
                proj_hidden_dim=3, proj_dim=2, regress_from='projection',
                head_bias=False, dtype='bfloat16')
  model = models.build_model(config)
  assert model.encoder.dtype == jnp.bfloat16
  assert model.encoder.hidden_sizes == (4,)
  x = jnp.ones((2, 3))
  out = model.apply(_init(model, x), x, train=False)
  assert out['embedding'].dtype == jnp.float32


def test_build_model_unknown_encoder_raises():
  with pytest.raises(ValueError, match=r'model\.encoder.*mlp'):
    models.build_model(_model_config('vit'))


def test_build_model_is_the_one_factory_of_every_task():
  """``build_model(config.model, axis, task=config.task)`` builds the jigsaw and CoWPro nets too,
  exactly as their own constructors do, with the BatchNorm axis passed on."""
  import importlib  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.cowpro import model as cowpro_model  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.jigsaw import model as jigsaw_model  # pylint: disable=g-import-not-at-top
  jigsaw_configs = importlib.import_module('configs.jigsaw')
  for variant in jigsaw_configs.VARIANTS:
    c = jigsaw_configs.get_config(variant)
    m = c.model
    built = models.build_model(m, 'batch', task=c.task, num_classes=c.jigsaw.num_classes)
    assert built == jigsaw_model.make_pretext_model(
        m.arch, c.jigsaw.num_classes, variant=m.variant, width_factor=m.width_factor,
        use_bn=m.use_bn, skip_scale=m.skip_scale, no_blocks=m.no_blocks, kernel_init=m.kernel_init,
        branch_conv_impl=m.branch_conv_impl, axis_name='batch'), variant
  c = importlib.import_module('configs.cowpro').get_config()
  built = models.build_model(c.model, 'batch', task=c.task)
  assert built == cowpro_model.CoWPro(
      encoder=cowpro_model.ConvEncoder(bn_axis_name='batch', **c.model.encoder_kwargs),
      feature_dim=c.model.feature_dim, in_channels=c.model.in_channels)
  x = jnp.zeros((2, 32, 32, 1))
  variables = jax.eval_shape(functools.partial(built.init, train=False), jax.random.key(0), x)
  out = jax.eval_shape(functools.partial(models.build_model(c.model, task='cowpro').apply,
                                         train=False), variables, x)
  chex.assert_shape(out, (2, 8, 8, c.model.feature_dim))
  assert set(models.MODELS) == {'regression', 'finetune', 'jigsaw', 'cowpro', 'mrnet'}
  regression = models.build_model(_model_config('mlp', hidden_sizes=[4]), task='regression')
  assert regression == models.build_model(_model_config('mlp', hidden_sizes=[4]))


def test_build_model_unknown_task_or_argument_raises():
  with pytest.raises(ValueError, match=r"task='segment'.*cowpro.*jigsaw.*regression"):
    models.build_model(_model_config('mlp'), task='segment')
  with pytest.raises(TypeError, match='num_classes'):
    models.build_model(_model_config('mlp'), task='jigsaw')


def _sync_bn_matches_full_batch():
  """shard_map + bn_axis_name gives the whole-batch BatchNorm statistics."""
  devices = jax.devices()
  n = len(devices)
  mesh = jax.sharding.Mesh(np.array(devices), ('batch',))
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
  x = 2.0 + 3.0 * jax.random.normal(jax.random.key(4), (2 * n, 8, 8, 1))
  ref_model = models.SmallCNN(widths=(4, 8), dense_dim=5)
  sync_model = ref_model.clone(bn_axis_name='batch')
  variables = _init(ref_model, x)
  params = {'params': variables['params'],
            'batch_stats': variables['batch_stats']}

  def step(model, v, xs):
    return model.apply(v, xs, train=True, mutable=['batch_stats'])

  ref_y, ref_state = jax.jit(functools.partial(step, ref_model))(params, x)
  sharded = jax.jit(jax.shard_map(
      functools.partial(step, sync_model), mesh=mesh,
      in_specs=(P(), P('batch')), out_specs=(P('batch'), P())))
  y, state = sharded(params, x)
  np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state, ref_state, rtol=1e-4, atol=1e-6)
  if n > 1:  # without the axis name each shard uses its own statistics
    unsynced = jax.jit(jax.shard_map(
        functools.partial(step, ref_model), mesh=mesh,
        in_specs=(P(), P('batch')), out_specs=(P('batch'), P('batch'))))
    y_local, _ = unsynced(params, x)
    assert not np.allclose(y_local, ref_y, rtol=1e-4, atol=1e-5)
  return n


def test_sync_batch_norm_shard_map_local_devices():
  _sync_bn_matches_full_batch()


def test_sync_batch_norm_shard_map_four_devices():
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=4').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  env['PYTHONPATH'] = os.pathsep.join(
      [_REPO_ROOT] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)],
                        env=env, cwd=_REPO_ROOT, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'sync-bn ok on 4 devices' in proc.stdout, proc.stdout


if __name__ == '__main__':
  print(f'sync-bn ok on {_sync_bn_matches_full_batch()} devices')


def test_projection_head_with_batch_norm():
  """The thesis projector Dense -> BN -> ReLU -> Dense -> BN (-> L2): unit outputs, BN statistics
  updated in training, no Dense biases; a closed form in eval mode with fresh statistics."""
  from contrastive_jax.models.heads import ProjectionHead  # pylint: disable=import-outside-toplevel
  head = ProjectionHead(hidden_dim=8, out_dim=4, batch_norm=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  variables = head.init(jax.random.PRNGKey(1), x)
  assert set(variables['params']) == {'dense_hidden', 'bn_hidden', 'dense_out', 'bn_out'}
  assert 'bias' not in variables['params']['dense_hidden']
  out, updates = head.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  assert not np.allclose(updates['batch_stats']['bn_hidden']['mean'], 0.0)
  # eval mode with initial statistics (mean 0, var 1): BN is x / sqrt(1 + eps)
  p = variables['params']
  h = np.maximum(np.asarray(x) @ np.asarray(p['dense_hidden']['kernel']) / np.sqrt(1 + 1e-5), 0)
  z = h @ np.asarray(p['dense_out']['kernel']) / np.sqrt(1 + 1e-5)
  np.testing.assert_allclose(head.apply(variables, x), z / np.linalg.norm(z, axis=1, keepdims=True),
                             rtol=1e-5, atol=1e-6)


def test_resnet9_is_the_thesis_table_5_11_encoder():
  """ResNet-9 of thesis Table 5.11: basic blocks [1, 1, 1, 1], 64 base channels, ~5 M parameters
  (ResNet-18: [2, 2, 2, 2], ~11 M); 512-d features like ResNet-18."""
  x = jnp.zeros((1, 32, 32, 3))
  def count(name):
    encoder = models.ENCODERS[name]()
    shapes = jax.eval_shape(functools.partial(encoder.init, train=False), jax.random.key(0), x)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params'])), jax.eval_shape(
        functools.partial(encoder.apply, train=False), shapes, x).shape
  n9, out9 = count('resnet9')
  n18, out18 = count('resnet18')
  assert models.ENCODERS['resnet9'].keywords['stage_sizes'] == (1, 1, 1, 1)
  assert 4.5e6 < n9 < 5.5e6 and 10.5e6 < n18 < 11.5e6, (n9, n18)
  assert out9 == out18 == (1, 512)
