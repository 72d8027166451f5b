"""Tests for contrastive_jax.data: demo datasets, resumable batching, on-device augmentation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import Ridge

from contrastive_jax import data
from contrastive_jax.data import demo


pytestmark = pytest.mark.usefixtures('fast_compile')


# --------------------------------------------------------------------------------------------------
# demo datasets
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def digits():
  return data.load_dataset('digits_angle', seed=0)


@pytest.fixture(scope='module')
def diabetes():
  return data.load_dataset('diabetes', seed=0)


def test_datasets_constant():
  assert data.DATASETS == ('digits_angle', 'diabetes', 'digits')


def test_digits_shapes_dtypes_and_ranges(digits):
  assert digits.name == 'digits_angle' and digits.kind == 'image'
  n_val = n_test = round(0.15 * 1797)  # source images; every one appears copies=2 times
  n_train = 1797 - n_val - n_test
  for split, n in ((digits.train, n_train), (digits.val, n_val), (digits.test, n_test)):
    chex.assert_shape(split.x, (2 * n, 16, 16, 1))
    chex.assert_shape(split.y, (2 * n,))
    chex.assert_type([split.x, split.y], np.float32)
    assert split.x.min() >= 0.0 and split.x.max() <= 1.0
    assert np.all(np.abs(split.y) <= 45.0)
  # The angles fill the range rather than sitting at a few values.
  assert digits.train.y.min() < -40 and digits.train.y.max() > 40
  assert len(np.unique(digits.train.y)) == len(digits.train.y)
  np.testing.assert_allclose(digits.label_range, digits.train.y.max() - digits.train.y.min())


def test_digits_options():
  ds = data.load_dataset('digits_angle', seed=3, max_angle=10.0, upsample=1, copies=3)
  chex.assert_shape(ds.train.x, (None, 8, 8, 1))
  assert len(ds.train.y) % 3 == 0
  assert np.all(np.abs(ds.train.y) <= 10.0)


def test_split_indices_partition():
  train, val, test = demo.split_indices(1797, seed=0)
  assert len(val) == len(test) == 270 and len(train) == 1257
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val, test])), np.arange(1797))


def test_digits_split_by_source_image():
  """With max_angle=0 every copy equals its source digit: check the splits hold whole sources."""
  copies = 2
  ds = data.load_dataset('digits_angle', seed=5, max_angle=0.0, upsample=1, copies=copies)
  images = load_digits().images.astype(np.float32) / 16.0
  for split, idx in zip((ds.train, ds.val, ds.test), demo.split_indices(len(images), seed=5)):
    x = split.x.reshape((len(idx), copies, 8, 8))
    np.testing.assert_allclose(x, np.repeat(images[idx][:, None], copies, axis=1), atol=1e-5)
    np.testing.assert_array_equal(split.y, 0.0)


def test_digits_deterministic_and_seed_dependent(digits):
  again = data.load_dataset('digits_angle', seed=0)
  for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
  other = data.load_dataset('digits_angle', seed=1)
  assert not np.array_equal(digits.train.y, other.train.y)
  assert not np.array_equal(digits.train.x, other.train.x)


def test_digits_angle_is_learnable(digits):
  """Ridge on raw pixels must beat predicting the training mean by a clear factor (measured ~6x)."""
  tr, te = digits.train, digits.test
  ridge = Ridge(alpha=1.0).fit(tr.x.reshape(len(tr.y), -1), tr.y)
  mae_ridge = np.abs(ridge.predict(te.x.reshape(len(te.y), -1)) - te.y).mean()
  mae_mean = np.abs(tr.y.mean() - te.y).mean()
  assert mae_mean > 15.0  # ~22.5 degrees for U(-45, 45)
  assert mae_ridge < mae_mean / 3, (mae_ridge, mae_mean)


def test_diabetes(diabetes):
  assert diabetes.name == 'diabetes' and diabetes.kind == 'tabular'
  sizes = [len(s.y) for s in (diabetes.train, diabetes.val, diabetes.test)]
  assert sizes == [310, 66, 66]
  for split in (diabetes.train, diabetes.val, diabetes.test):
    chex.assert_shape(split.x, (len(split.y), 10))
    chex.assert_type([split.x, split.y], np.float32)
    assert split.y.min() >= 25 and split.y.max() <= 346  # natural unit, not normalised
  np.testing.assert_allclose(diabetes.train.x.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(diabetes.train.x.std(axis=0), 1.0, atol=1e-4)
  # Val/test use the train statistics, so they are only roughly standardised.
  assert np.all(np.abs(diabetes.test.x.mean(axis=0)) < 0.5)
  other = data.load_dataset('diabetes', seed=1)
  assert not np.array_equal(diabetes.test.y, other.test.y)
  np.testing.assert_array_equal(diabetes.test.y, data.load_dataset('diabetes', seed=0).test.y)


def test_load_dataset_errors():
  with pytest.raises(ValueError, match=r"'mnist'.*digits_angle.*diabetes"):
    data.load_dataset('mnist')
  with pytest.raises(ValueError, match='copies'):
    data.load_dataset('digits_angle', copies=0)
  with pytest.raises(ValueError, match='upsample'):
    data.load_dataset('digits_angle', upsample=1.5)
  with pytest.raises(ValueError, match='max_angle'):
    data.load_dataset('digits_angle', max_angle=-1.0)


def test_validation_rejects_bad_labels_and_empty_splits():
  ok = data.Split(x=np.zeros((3, 2), np.float32), y=np.zeros(3, np.float32))
  bad = data.Split(x=np.zeros((3, 2), np.float32), y=np.array([0.0, np.nan, np.inf], np.float32))
  empty = data.Split(x=np.zeros((0, 2), np.float32), y=np.zeros(0, np.float32))
  with pytest.raises(ValueError, match=r"'toy'.*2 non-finite"):
    demo._validate(data.Dataset('toy', 'tabular', train=bad, val=ok, test=ok))
  with pytest.raises(ValueError, match=r"'toy'.*val.*empty"):
    demo._validate(data.Dataset('toy', 'tabular', train=ok, val=empty, test=ok))


# --------------------------------------------------------------------------------------------------
# pipeline
# --------------------------------------------------------------------------------------------------

def _id_split(n=103, feature_shape=(2,)):
  """x[i] is filled with i, so a batch tells which examples it holds."""
  x = np.broadcast_to(np.arange(n, dtype=np.float32).reshape((n,) + (1,) * len(feature_shape)),
                      (n,) + feature_shape).copy()
  return data.Split(x=x, y=np.arange(n, dtype=np.float32) * 0.5)


def test_steps_per_epoch():
  assert data.steps_per_epoch(103, 10) == 10
  assert data.steps_per_epoch(100, 10) == 10
  assert data.steps_per_epoch(10, 10) == 1
  with pytest.raises(ValueError, match='global_batch_size'):
    data.steps_per_epoch(9, 10)
  with pytest.raises(ValueError, match='global_batch_size'):
    data.steps_per_epoch(9, 0)


def test_train_batch_shapes_and_pure():
  split = _id_split()
  b = data.train_batch(split, 10, seed=0, step=7)
  assert set(b) == {'x', 'y'}
  chex.assert_shape([b['x'], b['y']], [(10, 2), (10,)])
  chex.assert_type([b['x'], b['y']], np.float32)
  np.testing.assert_array_equal(b['y'], b['x'][:, 0] * 0.5)  # rows stay paired with labels
  again = data.train_batch(split, 10, seed=0, step=7)
  chex.assert_trees_all_equal(b, again)
  # Resume: step 27 computed directly equals step 27 reached after drawing the earlier steps.
  for s in range(27):
    data.train_batch(split, 10, seed=0, step=s)
  chex.assert_trees_all_equal(data.train_batch(split, 10, seed=0, step=27),
                              data.train_batch(split, 10, seed=0, step=27))
  assert not np.array_equal(b['y'], data.train_batch(split, 10, seed=1, step=7)['y'])


def test_train_batch_epochs():
  split = _id_split(n=103)
  spe = data.steps_per_epoch(103, 10)
  epochs = []
  for epoch in range(3):
    ids = np.concatenate([data.train_batch(split, 10, seed=4, step=epoch * spe + s)['x'][:, 0]
                          for s in range(spe)]).astype(int)
    assert len(ids) == 100 and len(np.unique(ids)) == 100  # each example at most once, 3 dropped
    np.testing.assert_array_equal(ids, np.random.default_rng([4, epoch]).permutation(103)[:100])
    epochs.append(ids)
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_train_batch_process_slices(process_count):
  split = _id_split()
  full = data.train_batch(split, 16, seed=2, step=13)
  parts = [data.train_batch(split, 16, seed=2, step=13, process_index=i,
                            process_count=process_count)
           for i in range(process_count)]
  for p in parts:
    chex.assert_shape(p['y'], (16 // process_count,))
  for k in full:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])


def test_train_batch_holds_inputs_and_labels_only():
  """Values derived from the training labels (AdaCon's ECDF) are computed on device by the loss
  (losses/registry.py), not carried by the batch."""
  b = data.train_batch(_id_split(), 10, seed=0, step=3)
  assert set(b) == {'x', 'y'}
  chex.assert_type(b['y'], np.float32)


def test_train_batch_errors():
  split = _id_split(n=20)
  with pytest.raises(ValueError, match='global_batch_size'):
    data.train_batch(split, 0, seed=0, step=0)
  with pytest.raises(ValueError, match='global_batch_size'):
    data.train_batch(split, 21, seed=0, step=0)
  with pytest.raises(ValueError, match='process_count'):
    data.train_batch(split, 10, seed=0, step=0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match='process_index'):
    data.train_batch(split, 10, seed=0, step=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='process_index'):
    data.train_batch(split, 10, seed=0, step=0, process_index=-1, process_count=2)
  with pytest.raises(ValueError, match='step'):
    data.train_batch(split, 10, seed=0, step=-1)


@pytest.mark.parametrize('n,batch', [(103, 10), (100, 10), (7, 16), (1, 4)])
def test_eval_batches_cover_once(n, batch):
  split = _id_split(n=n, feature_shape=(3, 2))
  batches = list(data.eval_batches(split, batch))
  assert len(batches) == -(-n // batch)
  for b in batches:
    assert set(b) == {'x', 'y', 'mask'}
    chex.assert_shape([b['x'], b['y'], b['mask']], [(batch, 3, 2), (batch,), (batch,)])
    chex.assert_type([b['x'], b['y'], b['mask']], np.float32)
  ids = np.concatenate([b['x'][:, 0, 0] for b in batches]).astype(int)
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(ids[mask == 1], np.arange(n))  # in order, each exactly once
  np.testing.assert_array_equal(ids[mask == 0], 0)  # padding repeats row 0
  np.testing.assert_array_equal(mask, np.arange(len(mask)) < n)


@pytest.mark.parametrize('process_count', [2, 4])
def test_eval_batches_process_slices(process_count):
  split = _id_split(n=45)
  full = list(data.eval_batches(split, 16))
  parts = [list(data.eval_batches(split, 16, process_index=i, process_count=process_count))
           for i in range(process_count)]
  for step, whole in enumerate(full):
    for k in whole:
      np.testing.assert_array_equal(np.concatenate([p[step][k] for p in parts]), whole[k])
  total = sum(float(b['mask'].sum()) for p in parts for b in p)
  assert total == 45


def test_pipeline_lazy_uint8_split_matches_float_split():
  """A lazy uint8 split batches like the float32 split of the same images scaled by 1/255."""
  pixels = np.random.default_rng(0).integers(0, 256, (21, 4, 4, 1)).astype(np.uint8)
  y = np.arange(21, dtype=np.float32)
  lazy = data.LazyArray(lambda i: pixels[i], 21, (4, 4, 1), np.uint8)
  as_float = data.Split(x=pixels.astype(np.float32) / np.float32(255), y=y)
  as_lazy = data.Split(x=lazy, y=y)
  for step in (0, 5):
    chex.assert_trees_all_equal(data.train_batch(as_lazy, 8, seed=1, step=step),
                                data.train_batch(as_float, 8, seed=1, step=step))
  for a, b in zip(data.eval_batches(as_lazy, 8, process_index=1, process_count=2),
                  data.eval_batches(as_float, 8, process_index=1, process_count=2)):
    chex.assert_trees_all_equal(a, b)


def test_eval_batches_errors_are_eager():
  split = _id_split(n=10)
  with pytest.raises(ValueError, match='global_batch_size'):
    data.eval_batches(split, 0)
  with pytest.raises(ValueError, match='process_count'):
    data.eval_batches(split, 5, process_count=2)
  with pytest.raises(ValueError, match='process_index'):
    data.eval_batches(split, 4, process_index=2, process_count=2)


# --------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------

def _images(b=8, h=16, w=16, c=1, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(b, h, w, c)), jnp.float32)


def test_augment_images_shapes_jit_and_keys():
  x = _images()
  key = jax.random.key(0)
  out = data.augment_images(key, x)
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  jitted = jax.jit(
      functools.partial(data.augment_images, max_shift=1, noise_std=0.1, brightness=0.2))
  a = jitted(key, x)
  chex.assert_trees_all_close(a, data.augment_images(key, x, max_shift=1, noise_std=0.1,
                                                     brightness=0.2), atol=1e-6)
  chex.assert_trees_all_equal(a, jitted(key, x))
  assert not np.allclose(a, jitted(jax.random.key(1), x))
  # Old-style uint32 keys work too.
  chex.assert_shape(data.augment_images(jax.random.PRNGKey(0), x), x.shape)


def test_augment_images_clipped():
  x = jnp.concatenate([jnp.ones((4, 8, 8, 1)), jnp.zeros((4, 8, 8, 1))])
  out = data.augment_images(jax.random.key(3), x, max_shift=0, noise_std=0.5, brightness=0.5)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_augment_images_max_shift_respected():
  """A one-hot image moves by at most max_shift per axis, and every allowed offset occurs."""
  size, centre, m, b = 9, 4, 2, 512
  x = jnp.zeros((b, size, size, 1)).at[:, centre, centre, 0].set(1.0)
  out = np.asarray(data.augment_images(jax.random.key(0), x, max_shift=m, noise_std=0.0,
                                       brightness=0.0))
  np.testing.assert_array_equal(out.reshape(b, -1).sum(axis=1), 1.0)  # pixel moved, not blurred
  rows, cols = np.nonzero(out[..., 0].reshape(b, size, size))[1:]
  dy, dx = rows - centre, cols - centre
  assert np.all(np.abs(dy) <= m) and np.all(np.abs(dx) <= m)
  assert len(set(zip(dy.tolist(), dx.tolist()))) == (2 * m + 1) ** 2
  # Shifts differ between examples of one batch.
  assert len(np.unique(dy)) > 1


def test_augment_images_identity_when_disabled():
  x = _images()
  out = data.augment_images(jax.random.key(0), x, max_shift=0, noise_std=0.0, brightness=0.0)
  chex.assert_trees_all_equal(out, x)


def test_augment_tabular():
  key = jax.random.key(0)
  x = jnp.ones((2000, 10), jnp.float32)
  out = data.augment_tabular(key, x)
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  chex.assert_trees_all_close(out, jax.jit(data.augment_tabular)(key, x), atol=1e-6)
  assert not np.allclose(out, data.augment_tabular(jax.random.key(1), x))
  dropped = data.augment_tabular(key, x, noise_std=0.0, drop_prob=0.25)
  assert set(np.unique(np.asarray(dropped)).tolist()) == {0.0, 1.0}
  assert abs(float((dropped == 0).mean()) - 0.25) < 0.02
  noisy = data.augment_tabular(key, x, noise_std=0.3, drop_prob=0.0)
  assert abs(float(jnp.std(noisy - x)) - 0.3) < 0.02
  chex.assert_trees_all_equal(data.augment_tabular(key, x, noise_std=0.0, drop_prob=0.0), x)


@pytest.mark.parametrize('kind,shape', [('image', (4, 8, 8, 1)), ('tabular', (4, 10))])
def test_make_views(kind, shape):
  fn = data.get_augment_fn(kind, noise_std=0.1)
  x = jnp.full(shape, 0.5, jnp.float32)
  key = jax.random.key(7)
  views = jax.jit(lambda k, x: data.make_views(k, x, 3, fn))(key, x)
  chex.assert_shape(views, (shape[0], 3) + shape[1:])
  keys = jax.random.split(key, 3)
  for v in range(3):
    chex.assert_trees_all_close(views[:, v], fn(keys[v], x), atol=1e-6)
  assert not np.allclose(views[:, 0], views[:, 1])


def test_get_augment_fn():
  fn = data.get_augment_fn('image', max_shift=1, noise_std=0.0, brightness=0.0)
  assert isinstance(fn, functools.partial) and fn.func is data.augment_images
  assert fn.keywords == {'max_shift': 1, 'noise_std': 0.0, 'brightness': 0.0}
  assert data.get_augment_fn('tabular').func is data.augment_tabular
  with pytest.raises(ValueError, match=r"kind.*'video'"):
    data.get_augment_fn('video')
  with pytest.raises(ValueError, match='drop_prob'):
    data.get_augment_fn('image', drop_prob=0.1)


def test_augment_inside_shard_map():
  devices = np.array(jax.devices())
  mesh = jax.sharding.Mesh(devices, ('data',))
  spec = jax.sharding.PartitionSpec('data')
  x = _images(b=4 * len(devices))

  def per_shard(key, x):
    key = jax.random.fold_in(key, jax.lax.axis_index('data'))
    return data.make_views(key, x, 2, data.get_augment_fn('image'))

  f = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), spec),
                            out_specs=spec))
  out = f(jax.random.key(0), x)
  chex.assert_shape(out, (x.shape[0], 2) + x.shape[1:])
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize('kwargs,name', [
    (dict(max_shift=-1), 'max_shift'),
    (dict(max_shift=1.5), 'max_shift'),
    (dict(noise_std=-0.1), 'noise_std'),
    (dict(brightness=1.5), 'brightness'),
])
def test_augment_images_errors(kwargs, name):
  with pytest.raises(ValueError, match=name):
    data.augment_images(jax.random.key(0), _images(b=2), **kwargs)


def test_augment_other_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='images'):
    data.augment_images(key, jnp.zeros((8, 8, 1)))
  with pytest.raises(ValueError, match='images'):
    data.augment_images(key, jnp.zeros((1, 8, 8, 1), jnp.uint8))
  with pytest.raises(ValueError, match='drop_prob'):
    data.augment_tabular(key, jnp.zeros((2, 3)), drop_prob=1.0)
  with pytest.raises(ValueError, match='noise_std'):
    data.augment_tabular(key, jnp.zeros((2, 3)), noise_std=-1.0)
  with pytest.raises(ValueError, match='num_views'):
    data.make_views(key, jnp.zeros((2, 3)), 0, data.augment_tabular)
