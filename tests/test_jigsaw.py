"""Tests for the jigsaw pretext task of thesis Ch. 3: permutation sets, patches, nets, ensemble, trainer.

References are independent float64 NumPy / itertools code written from the thesis (Alg. 3.1-3.3,
Eq. 3.1-3.4, Tables 3.1, 3.9, 3.12), not from the JAX code under test.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax.projects.jigsaw import data as jd
from contrastive_jax.evaluate import ensemble
from contrastive_jax.projects.jigsaw import model as jm

pytestmark = pytest.mark.usefixtures('fast_compile')

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- references


def _greedy_reference(n: int, threshold: int) -> np.ndarray:
  """Alg. 3.1 literally: lexicographic scan, keep if Hamming distance to all kept > threshold."""
  kept = []
  for perm in itertools.permutations(range(n)):
    if all(sum(a != b for a, b in zip(perm, k)) > threshold for k in kept):
      kept.append(perm)
  return np.array(kept)


def _conv_same_ref(x, kernel, bias, stride=1):
  """float64 SAME cross-correlation, NHWC / HWIO, as TF/Keras define it."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  n, h, w, _ = x.shape
  kh, kw, _, o = kernel.shape
  oh, ow = -(-h // stride), -(-w // stride)
  ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - w, 0)
  xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  out = np.zeros((n, oh, ow, o))
  for y in range(oh):
    for z in range(ow):
      window = xp[:, y * stride:y * stride + kh, z * stride:z * stride + kw, :]
      out[:, y, z] = np.einsum('nijc,ijco->no', window, kernel)
  return out + np.asarray(bias, np.float64)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _load_config(variant='sslacl'):
  spec = importlib.util.spec_from_file_location('jigsaw_config', os.path.join(_REPO, 'configs',
                                                                             'jigsaw.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


# ----------------------------------------------------------------------------- permutation sets


@pytest.fixture(scope='module')
def perm_cache(tmp_path_factory):
  """One cache directory for the module: the 9! greedy scan is computed once."""
  return tmp_path_factory.mktemp('perm_cache')


def test_rank_unrank_roundtrip_matches_itertools_order():
  perms = np.array(list(itertools.permutations(range(5))))
  np.testing.assert_array_equal(jd.permutation_rank(perms), np.arange(120))
  np.testing.assert_array_equal(jd.permutation_unrank(np.arange(120), 5), perms)
  with pytest.raises(ValueError, match='ranks'):
    jd.permutation_unrank(np.array([120]), 5)


@pytest.mark.parametrize('n,threshold', [(5, 2), (6, 3), (7, 3)])
def test_greedy_scan_matches_literal_algorithm(n, threshold):
  np.testing.assert_array_equal(jd.greedy_hamming_scan(n, threshold), _greedy_reference(n, threshold))


def test_greedy_scan_n9_keeps_1887_pairwise_far_permutations(perm_cache):
  perms = jd.permutation_set('hamming', 1887, cache_dir=str(perm_cache))
  scan = np.load(perm_cache / 'jigsaw_hamming_scan_n9_d4.npy')
  assert scan.shape == (1887, 9) and jd.GREEDY_SCAN_SIZE == 1887
  np.testing.assert_array_equal(scan[0], np.arange(9))
  assert np.all(np.diff(jd.permutation_rank(scan)) > 0)  # lexicographic order
  dist = (scan[:, None, :] != scan[None, :, :]).sum(-1)
  assert np.all(dist[~np.eye(len(scan), dtype=bool)] > 4)
  np.testing.assert_array_equal(np.sort(jd.permutation_rank(perms)), jd.permutation_rank(scan))


def test_permutation_sets_deterministic_cached_and_valid(perm_cache):
  tmp_path = perm_cache
  a = jd.permutation_set('hamming', 100, seed=3, cache_dir=str(tmp_path))
  path = tmp_path / 'jigsaw_hamming_c100_seed3.npy'
  mtime = os.path.getmtime(path)
  b = jd.permutation_set('hamming', 100, seed=3, cache_dir=str(tmp_path))
  assert os.path.getmtime(path) == mtime  # read from the cache, not rebuilt
  np.testing.assert_array_equal(a, b)
  os.remove(path)  # rebuilt from scratch: the same set
  np.testing.assert_array_equal(a, jd.permutation_set('hamming', 100, seed=3, cache_dir=str(tmp_path)))
  assert not np.array_equal(a, jd.permutation_set('hamming', 100, seed=4, cache_dir=str(tmp_path)))
  scan = set(map(tuple, np.load(tmp_path / 'jigsaw_hamming_scan_n9_d4.npy')))
  assert set(map(tuple, a)) <= scan and len(set(map(tuple, a))) == 100
  np.testing.assert_array_equal(a[0], np.arange(9))

  u = jd.permutation_set('uniform', 1000, seed=0, cache_dir=str(tmp_path))
  assert u.shape == (1000, 9) and len(set(map(tuple, u))) == 1000
  np.testing.assert_array_equal(u[0], np.arange(9))
  np.testing.assert_array_equal(np.sort(u, axis=1), np.broadcast_to(np.arange(9), u.shape))
  # A uniform draw ignores the Hamming criterion: some pair is within distance 4.
  dist = (u[:, None, :] != u[None, :, :]).sum(-1)
  assert np.min(dist[~np.eye(1000, dtype=bool)]) <= 4

  np.save(path, np.zeros((100, 9), np.int64))  # a corrupt cache file is rebuilt
  np.testing.assert_array_equal(jd.permutation_set('hamming', 100, seed=3, cache_dir=str(tmp_path)), a)


@pytest.mark.parametrize('kind,num', [('bogus', 10), ('hamming', 1888), ('hamming', 0),
                                      ('uniform', 2.5), ('uniform', True)])
def test_permutation_set_bad_arguments(kind, num, tmp_path):
  with pytest.raises(ValueError):
    jd.permutation_set(kind, num, cache_dir=str(tmp_path))


# ----------------------------------------------------------------------------- patches


def test_augmentation_set_is_the_thesis_product():
  aug = jd.PatchAugment()
  assert aug.size == 54
  expected = {(r, ty, tx, s) for r in (-15, 0, 15) for ty in (-6, 0, 6) for tx in (-6, 0, 6)
              for s in (1, 1.2)}
  got = {tuple(np.round(e, 4)) for e in aug.elements().astype(np.float64)}
  assert got == {tuple(np.round(np.array(e, np.float64), 4)) for e in expected}
  for bad in (dict(scales=(0.0,)), dict(rotations=()), dict(noise_std=-1.0), dict(noise_clip=0.0)):
    with pytest.raises(ValueError):
      jd.PatchAugment(**bad)


def test_grid_patches_row_major():
  image = np.arange(10 * 11 * 2, dtype=np.float32).reshape(10, 11, 2)
  patches = np.asarray(jd.grid_patches(jnp.asarray(image)))
  for i in range(9):
    r, c = divmod(i, 3)
    np.testing.assert_array_equal(patches[i], image[r * 3:(r + 1) * 3, c * 3:(c + 1) * 3])


def test_affine_patch_against_float64_bilinear_reference():
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  patch = rng.uniform(size=(9, 9, 1)).astype(np.float32)
  angle, ty, tx, scale = 15.0, 1.0, -2.0, 1.2
  out = np.asarray(jd.affine_patch(jnp.asarray(patch), angle, ty, tx, scale, fill_value=-1.0))
  # Inverse map written from the definition: input point = c + M (q - c - t) / s, M the inverse of a
  # counter-clockwise (as displayed, rows down) rotation by a.
  c = 4.0
  th = np.deg2rad(angle)
  inv = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]]) / scale
  q = np.stack(np.meshgrid(np.arange(9.0), np.arange(9.0), indexing='ij'), 0).reshape(2, -1)
  src = c + inv @ (q - c - np.array([[ty], [tx]]))
  ref = ndimage.map_coordinates(patch[..., 0].astype(np.float64), src, order=1, mode='grid-constant',
                                cval=-1.0).reshape(9, 9)
  np.testing.assert_allclose(out[..., 0], ref, atol=1e-5)
  # Closed forms: identity; an integer shift moves content by +t; 90 degrees is np.rot90.
  np.testing.assert_allclose(np.asarray(jd.affine_patch(jnp.asarray(patch), 0., 0., 0., 1.)), patch,
                             atol=1e-6)
  shifted = np.asarray(jd.affine_patch(jnp.asarray(patch), 0., 2., 1., 1.))
  np.testing.assert_allclose(shifted[2:, 1:], patch[:-2, :-1], atol=1e-6)
  np.testing.assert_allclose(shifted[:2], 0.0)
  rot = np.asarray(jd.affine_patch(jnp.asarray(patch), 90., 0., 0., 1.))
  np.testing.assert_allclose(rot, np.rot90(patch, k=1, axes=(0, 1)), atol=1e-5)


def test_jigsaw_example_crops_are_jumbled_grid_patches():
  rng = np.random.default_rng(1)
  image = rng.uniform(size=(30, 30, 1)).astype(np.float32)
  perms = jnp.asarray(jd.permutation_unrank(np.array([0, 1000, 200000, 362879])), jnp.int32)
  grid = np.asarray(jd.grid_patches(jnp.asarray(image)))
  f = jax.jit(lambda k: jd.jigsaw_example(k, jnp.asarray(image), perms, 7, None))
  labels = set()
  for seed in range(6):
    patches, label = jax.device_get(f(jax.random.PRNGKey(seed)))
    assert patches.shape == (9, 7, 7, 1) and 0 <= label < 4
    labels.add(int(label))
    tau = np.asarray(perms)[label]
    for k in range(9):  # patch k must be a 7x7 window (offset in [0, 3]) of grid patch tau[k]
      windows = [grid[tau[k], y:y + 7, x:x + 7] for y in range(4) for x in range(4)]
      assert any(np.array_equal(patches[k], w) for w in windows)
  assert len(labels) > 1
  # max_crop_offset=0 ([CODE]-style offset limit): every crop is the top-left window.
  patches, label = jd.jigsaw_example(jax.random.PRNGKey(9), jnp.asarray(image), perms, 7, None,
                                     max_crop_offset=0)
  np.testing.assert_array_equal(patches, grid[np.asarray(perms)[label], :7, :7])
  a = jax.device_get(f(jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(a[0], jax.device_get(f(jax.random.PRNGKey(0)))[0])


def test_awgn_has_the_thesis_variance():  # pylint: disable=missing-function-docstring
  image = jnp.asarray(np.random.default_rng(2).uniform(size=(48, 48, 1)), jnp.float32)
  perms = jnp.asarray(jd.permutation_unrank(np.arange(5)), jnp.int32)
  noisy_identity = jd.PatchAugment(rotations=(0.0,), translations=(0.0,), scales=(1.0,),
                                   noise_std=0.1)
  key = jax.random.PRNGKey(3)
  both = jax.jit(lambda k: (jd.jigsaw_example(k, image, perms, 12, None),
                            jd.jigsaw_example(k, image, perms, 12, noisy_identity)))
  (clean, l0), (noisy, l1) = both(key)
  assert int(l0) == int(l1)
  noise = np.asarray(noisy - clean, np.float64)
  assert abs(noise.mean()) < 0.01 and abs(noise.var() - 0.01) < 0.001


def test_jigsaw_batch_shapes_and_bad_inputs():
  perms = jnp.asarray(jd.permutation_unrank(np.arange(4)), jnp.int32)
  images = jnp.zeros((3, 24, 24, 1))
  patches, labels = jax.jit(lambda k: jd.jigsaw_batch(k, images, perms, 6, jd.PatchAugment(
      translations=(-1.0, 0.0, 1.0))))(jax.random.PRNGKey(0))
  chex.assert_shape(patches, (3, 9, 6, 6, 1))
  chex.assert_shape(labels, (3,))
  with pytest.raises(ValueError, match='crop_size'):
    jd.jigsaw_example(jax.random.PRNGKey(0), images[0], perms, 9)
  with pytest.raises(ValueError, match='images'):
    jd.jigsaw_batch(jax.random.PRNGKey(0), images[0], perms, 6)


def test_divide_slices_alg_3_3():
  assert jd.divide_slices(36) == [(4 * i, 4 * i + 4) for i in range(9)]
  for n in (5, 9, 17, 30, 35):
    groups = jd.divide_slices(n)
    sizes = [e - s for s, e in groups]
    assert sum(sizes) == n and groups[0][0] == 0 and groups[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))  # contiguous
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
    # n = ceil(remaining / (9 - i + 1)), written independently
    remaining, expected = n, []
    for i in range(1, 10):
      expected.append(math.ceil(remaining / (10 - i)))
      remaining -= expected[-1]
    assert sizes == expected
  index, mask = jd.divide_slices_index(30)
  assert index.shape == (9, 4) and mask.sum() == 30
  np.testing.assert_array_equal(np.sort(index[mask]), np.arange(30))
  with pytest.raises(ValueError):
    jd.divide_slices(0)


def test_sample_eval_slices():
  idx = np.asarray(jd.sample_eval_slices(jax.random.PRNGKey(0), 30, 200, 16))
  assert idx.shape == (200, 16) and idx.min() >= 0 and idx.max() <= 29
  assert np.all(np.diff(idx, axis=1) >= 0)
  assert abs(idx.mean() - 15) < 0.5 and abs(idx.std() - 7.5) < 1.0  # N(N/2, N/4), lightly clipped


# ----------------------------------------------------------------------------- networks


def _conv_count(k, cin, cout, bn=True):
  """Keras count of conv k x k (+ bias) + BatchNorm (gamma, beta, moving mean, moving var)."""
  return k * k * cin * cout + cout + (4 * cout if bn else 0)


def _skid_count_reference(v, classes, channels=3):
  """Table 3.1 widths, counted by hand: branches, 1x1, Skip, DimRed (paths of out/2), FC."""
  w = {'v1': (512, 1024, 1024, 512, 1024, 4096), 'v2': (512, 1024, 2048, 1024, 2048, 4096),
       'v3': (1024, 1024, 2048, 2048, 2048, 4096)}[v]
  s1f, s1o, d1, s2f, s2o, d2 = w
  branch = (_conv_count(3, channels, 256) + 3 * _conv_count(3, 256, 256)) * 9
  total = branch + _conv_count(1, 2304, 1024)
  total += _conv_count(3, 1024, s1f) + _conv_count(3, s1f, s1o)
  total += _conv_count(3, s1o, d1 // 2) + _conv_count(3, d1 // 2, d1 // 2) + _conv_count(1, s1o, d1 // 2)
  total += _conv_count(3, d1, s2f) + _conv_count(3, s2f, s2o)
  total += _conv_count(3, s2o, d2 // 2) + _conv_count(3, d2 // 2, d2 // 2) + _conv_count(1, s2o, d2 // 2)
  return total + 4096 * 1024 + 1024 + 1025 * classes


@pytest.mark.parametrize('arch,variant,classes', list(jm.expected_counts()))
def test_parameter_counts_match_thesis_tables(arch, variant, classes):
  model = jm.make_pretext_model(arch, classes, variant=variant or 'v3')
  count = jm.pretext_parameter_count(model, crop_size=64, channels=3)
  printed = jm.expected_counts()[(arch, variant, classes)]
  assert abs(count / printed - 1) < 0.005, (count, printed)
  if arch == 'skid':
    assert count == _skid_count_reference(variant, classes)
  else:  # Fig. 3.4 by hand, 3x3 convs everywhere, BN after each conv
    ref = 9 * (_conv_count(3, 3, 256) + _conv_count(3, 256, 256) + _conv_count(3, 256, 512)
               + _conv_count(3, 512, 512))
    ref += _conv_count(3, 4608, 2048) + 2 * _conv_count(3, 2048, 1024) + _conv_count(3, 1024, 1024)
    ref += 2048 * 1024 + 1024 + 1024 * 1024 + 1024 + 1025 * classes
    assert count == ref
  if (arch, variant) == ('skid', 'v3'):  # Table 3.12 prints 217.17 M / 217.68 M
    assert round(count / 1e6, 2) == printed / 1e6


def test_downstream_parameter_counts():
  dt = jax.eval_shape(lambda k: jm.DivideAndTeachClassifier(use_bn=False).init(
      k, jnp.zeros((1, 9, 256, 256, 1))), jax.random.PRNGKey(0))
  # Sec. 3.5.3: 77 M; spec [CHECK] 77.05 M for grayscale input without BN.
  assert jm.count_parameters(dt) == 77047553
  sk = jax.eval_shape(lambda k: jm.SKIDDownstream().init(k, jnp.zeros((1, 2, 64, 64, 3))),
                      jax.random.PRNGKey(0))
  classifier = {k: v for k, v in sk['params'].items() if k != 'trunk'}
  lstm = 9 * (4096 + 512) * 2048 + 2048 + 9 * (512 + 512) * 2048 + 2048 + 512 * 3 + 3
  assert jm.count_parameters({'params': classifier}) == lstm  # "approximately 103 Million" trained


def test_shifted_matmul_conv_matches_float64_conv():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  for stride, k in ((1, 3), (2, 3), (1, 1)):
    conv = jm.ShiftedMatmulConv(4, k, stride)
    params = {'kernel': jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32),
              'bias': jnp.asarray(rng.normal(size=4), jnp.float32)}
    out = jax.jit(conv.apply)({'params': params}, x)
    ref = _conv_same_ref(x, params['kernel'], params['bias'], stride)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_branches_are_unshared_and_vectorised():
  branches = jm.JigsawBranches((4, 6), use_bn=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 8, 2)), jnp.float32)
  single = jm.Branch((4, 6), use_bn=False)
  xla = jm.JigsawBranches((4, 6), use_bn=False, conv_impl='xla')

  @jax.jit
  def run(x):
    variables = branches.init(jax.random.PRNGKey(0), x, train=False)
    out = branches.apply(variables, x, train=False)
    # Branch k as the single-branch module with the k-th slice of the stacked parameters.
    per_branch = [single.apply({'params': jax.tree.map(lambda p, k=k: p[k],
                                                       variables['params']['branch'])}, x[:, k])
                  for k in (0, 8)]
    return variables, out, jnp.stack(per_branch, 1), xla.apply(variables, x, train=False)

  variables, out, per_branch, out_xla = run(x)
  kernels = variables['params']['branch']['block0_conv0']['conv']['kernel']
  assert kernels.shape == (9, 3, 3, 2, 4)
  assert not np.allclose(kernels[0], kernels[1])  # independently initialised
  chex.assert_shape(out, (2, 9, 2, 2, 6))
  np.testing.assert_allclose(per_branch, out[:, ::8], rtol=1e-5, atol=1e-6)
  # The xla implementation reads the same parameters and gives the same outputs.
  np.testing.assert_allclose(out_xla, out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('arch,variant,no_blocks', [
    pytest.param('skid', 'v1', False, marks=pytest.mark.slow), ('skid', 'v3', False)])
def test_pretext_nets_small_forward(arch, variant, no_blocks):
  # SSLACL runs end to end in the trainer tests.
  model = jm.make_pretext_model(arch, 5, variant=variant, width_factor=1 / 128, no_blocks=no_blocks)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 9, 16, 16, 3)), jnp.float32)

  @jax.jit
  def run(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    return variables, model.apply(variables, x, train=True, mutable=['batch_stats'])

  variables, (logits, updates) = run(x)
  chex.assert_shape(logits, (3, 5))
  chex.assert_tree_all_finite((logits, updates))
  assert 'dimred2' in variables['params']['trunk'] or no_blocks
  with pytest.raises(ValueError, match='patches'):
    jax.eval_shape(lambda x: model.apply(variables, x, train=False), x[:, :8])


def test_make_pretext_model_bad_arguments():
  with pytest.raises(ValueError, match='architecture'):
    jm.make_pretext_model('alexnet', 10)
  with pytest.raises(ValueError, match='variant'):
    jm.make_pretext_model('skid', 10, variant='v4')
  with pytest.raises(ValueError, match='num_classes'):
    jm.make_pretext_model('skid', 1)
  with pytest.raises(ValueError, match='branch_conv_impl'):
    jm.make_pretext_model('skid', 10, branch_conv_impl='fft')


def test_conv_lstm_matches_float64_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 4, 2)).astype(np.float32)  # [N, T, H, W, C]
  layer = jm.ConvLSTM(3)
  variables = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
  gates = variables['params']['cell']['gates']
  np.testing.assert_array_equal(np.asarray(gates['bias']), [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
  gates = {'kernel': gates['kernel'], 'bias': jnp.asarray(rng.normal(size=12), jnp.float32)}
  out = np.asarray(jax.jit(layer.apply)({'params': {'cell': {'gates': gates}}}, x))
  c = h = np.zeros((2, 4, 4, 3))
  for t in range(3):
    z = _conv_same_ref(np.concatenate([x[:, t], h], -1), gates['kernel'], gates['bias'])
    i, f, g, o = z[..., 0:3], z[..., 3:6], z[..., 6:9], z[..., 9:12]
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    np.testing.assert_allclose(out[:, t], h, rtol=1e-5, atol=1e-5)


def test_divide_and_teach_groups_slices_by_branch():
  model = jm.DivideAndTeachClassifier(branch_features=(4, 6), conv_features=(6, 6, 6),
                                      fc_features=(8,), num_outputs=2)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 11, 8, 8, 1)), jnp.float32)  # groups of 2,2,1,1,1,1,1,1,1
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  f = jax.jit(lambda x: model.apply(variables, x))
  out = f(x)
  chex.assert_shape(out, (2, 2))
  # Max over slices: swapping two slices of the same group changes nothing ...
  np.testing.assert_allclose(f(x[:, [1, 0] + list(range(2, 11))]), out, rtol=1e-5, atol=1e-6)
  # ... swapping slices of different groups (different branches) does.
  assert not np.allclose(f(x[:, [4] + list(range(1, 4)) + [0] + list(range(5, 11))]), out)
  # Frozen branches get no gradient.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({**variables, 'params': p}, x))))(
      variables['params'])
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads['branches']))


def _conv3d_same_ref(x, kernel, bias):
  """3x3x3 'SAME' convolution of ``x [b, t, h, w, c]`` (float64 NumPy, offset by offset)."""
  b, t, h, w, _ = x.shape
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, t, h, w, kernel.shape[-1])) + bias
  for i in range(3):
    for j in range(3):
      for k in range(3):
        out += pad[:, i:i + t, j:j + h, k:k + w] @ kernel[i, j, k]
  return out


@pytest.mark.parametrize('temporal', ['convlstm', 'conv3d'])
def test_skid_downstream_forward_and_frozen_trunk(temporal):
  trunk = dict(jm.scale_widths(jm.SKID_VARIANTS['v3'], 1 / 256), no_blocks=True)  # blocks: above
  model = jm.SKIDDownstream(trunk=trunk, lstm_features=(3, 3), temporal=temporal)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 16, 16, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  out, grads = jax.jit(lambda p: jax.value_and_grad(
      lambda p: jnp.sum(model.apply({**variables, 'params': p}, x)))(p))(variables['params'])
  out, inter = jax.jit(lambda x: model.apply(variables, x, capture_intermediates=True))(x)
  chex.assert_shape(out, (2, 3))
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads['trunk']))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads[f'{temporal}1']))
  assert 'skip1' not in variables['params']['trunk']  # the NoBlocks ablation
  if temporal == 'conv3d':  # Tab. 3.13's head against a float64 reference on the trunk's features
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
    f = np.asarray(inter['intermediates']['trunk']['__call__'][0], np.float64)
    f = f.reshape((2, 3) + f.shape[1:])
    for i in range(2):
      f = np.maximum(_conv3d_same_ref(f, p[f'conv3d{i}']['kernel'], p[f'conv3d{i}']['bias']), 0)
    ref = f.mean(axis=(1, 2, 3)) @ p['logits']['kernel'] + p['logits']['bias']
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='temporal'):
    jm.SKIDDownstream(trunk=trunk, lstm_features=(3,), temporal='gru').init(jax.random.PRNGKey(0),
                                                                            x)


# ----------------------------------------------------------------------------- ensemble


def _ensemble_reference(heldout, labels, probs, eps=1e-3):
  """Eq. 3.1-3.4 in float64, loop by loop."""
  t, _, j = heldout.shape
  w = np.zeros((t, j))
  for c in range(j):
    for i in range(t):
      acc = np.mean([(heldout[i, n, c] > 0.5) == bool(labels[n, c]) for n in range(labels.shape[0])])
      acc = min(max(acc, eps), 1 - eps)
      w[i, c] = max(math.log(acc / (1 - acc)), 0.0)
    w[:, c] = w[:, c] / w[:, c].sum() if w[:, c].sum() > 0 else 1.0 / t
  h = np.zeros(probs.shape[1:])
  for n in range(probs.shape[1]):
    for c in range(j):
      h[n, c] = sum(w[i, c] * probs[i, n, c] for i in range(t))
  return w, h, (h > 0.5).astype(int)


def test_ensemble_matches_float64_reference():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, size=(40, 3))
  # Three "planes" of decreasing quality on held-out data.
  heldout = np.stack([np.clip(labels + rng.normal(scale=s, size=labels.shape), 0, 1)
                      for s in (0.3, 0.5, 0.9)])
  test_probs = rng.uniform(size=(3, 7, 3))
  w = ensemble.fit_vote_weights(heldout, labels)
  scores, hard = ensemble.ensemble_predict(test_probs, w)
  w_ref, h_ref, y_ref = _ensemble_reference(heldout, labels, test_probs)
  np.testing.assert_allclose(w, w_ref, rtol=1e-12)
  np.testing.assert_allclose(scores, h_ref, rtol=1e-12)
  np.testing.assert_array_equal(hard, y_ref)
  np.testing.assert_allclose(w.sum(0), 1.0)
  assert np.all(w >= 0)


def test_ensemble_closed_forms():
  # acc 0.9 and 0.6 -> weights ln 9 : ln 1.5; acc <= 0.5 -> weight 0 (w >= 0, Eq. 3.1).
  w = ensemble.vote_weights(np.array([[0.9], [0.6], [0.4]]))
  np.testing.assert_allclose(w[:, 0], [math.log(9) / math.log(13.5), math.log(1.5) / math.log(13.5), 0])
  assert np.isfinite(ensemble.vote_weights(np.array([[1.0], [0.7]]))).all()
  with pytest.warns(RuntimeWarning, match='chance'):
    np.testing.assert_allclose(ensemble.vote_weights(np.array([[0.5], [0.2]])), [[0.5], [0.5]])
  # Eq. 3.3: Monte-Carlo mean; Eq. 3.4: strict threshold.
  np.testing.assert_allclose(ensemble.monte_carlo_mean(np.array([[0.2, 1.0], [0.4, 0.0]])), [0.3, 0.5])
  np.testing.assert_array_equal(ensemble.vote_labels(np.array([0.5, 0.5001])), [0, 1])


def test_ensemble_bad_inputs():
  probs = np.full((2, 3, 1), 0.5)
  with pytest.raises(ValueError, match='probabilities'):
    ensemble.soft_vote(probs + 1.0, np.full((2, 1), 0.5))
  with pytest.raises(ValueError, match='shape'):
    ensemble.soft_vote(probs, np.full((3, 1), 1 / 3))
  with pytest.raises(ValueError, match='sum'):
    ensemble.soft_vote(probs, np.full((2, 1), 0.7))
  with pytest.raises(ValueError, match='binary'):
    ensemble.classifier_accuracy(probs, np.full((3, 1), 2))
  with pytest.raises(ValueError, match='labels'):
    ensemble.classifier_accuracy(probs, np.zeros((4, 1)))


# ----------------------------------------------------------------------------- trainer


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  """The trainer runs compile the same programs: share them through JAX's persistent cache."""
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  previous = {n: jax.config.values[n] for n in names}
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  yield
  for n, v in previous.items():
    jax.config.update(n, v)


def _tiny_config(cache_dir, variant='sslacl', steps=12):
  c = _load_config(variant)
  c.data.kwargs.upsample = 3        # 24x24 images -> 8x8 grid patches
  c.jigsaw.crop_size = 6
  c.jigsaw.num_classes = 4
  c.jigsaw.cache_dir = str(cache_dir)
  c.model.width_factor = 1 / 128
  c.optim.lr = 1e-2
  c.optim.warmup_steps = 0
  c.batch_size = 16
  c.num_train_steps = steps
  c.max_eval_examples = 32
  c.eval_batch_size = 32
  c.log_every = 1
  c.eval_every = steps
  c.checkpoint_every = steps
  return c


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_config_variants():
  for v in ('sslacl', 'skid_v1', 'skid_v2', 'skid_v3'):
    c = _load_config(v)
    assert c.task == 'jigsaw' and c.method == v
    assert c.jigsaw.permutations == ('hamming' if v == 'sslacl' else 'uniform')
  with pytest.raises(ValueError, match='variant'):
    _load_config('skid_v4')


def test_train_pretext_learns_checkpoints_and_resumes(tmp_path, perm_cache, compile_cache):
  from contrastive_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.jigsaw.task import train_pretext  # pylint: disable=g-import-not-at-top
  config = _tiny_config(perm_cache)
  workdir = str(tmp_path / 'run')
  config.stop_at_step = 6
  assert train_pretext(config, workdir) == {'status': 'stopped', 'steps': 6}
  assert Checkpointer(os.path.join(workdir, 'checkpoints'), 2).latest_step() == 6
  config.stop_at_step = -1
  results = train_pretext(config, workdir)  # resumes at step 7
  assert results['task'] == 'jigsaw' and results['steps'] == 12 and results['num_params'] > 0
  assert set(results['val']) == {'loss', 'accuracy'} and results['chance_accuracy'] == 0.25
  steps = [m['step'] for m in _read_metrics(workdir) if 'train/loss' in m]
  assert steps == list(range(1, 13))
  losses = [m['train/loss'] for m in _read_metrics(workdir) if 'train/loss' in m]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
  assert Checkpointer(os.path.join(workdir, 'checkpoints'), 2).latest_step() == 12
  with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
    assert json.load(f)['test'] == results['test']
  metrics = _read_metrics(workdir)
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert train_pretext(config, workdir) == json.loads(json.dumps(results))  # finished: stored
  assert _read_metrics(workdir) == metrics and os.listdir(os.path.join(workdir, 'tensorboard')) == events

  config.jigsaw.num_classes = 5  # a different config refuses to resume, naming the field
  with pytest.raises(ValueError, match='jigsaw.num_classes'):
    train_pretext(config, workdir)


@pytest.mark.slow
def test_train_pretext_resume_equals_uninterrupted_run(tmp_path, perm_cache, compile_cache):
  from contrastive_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.jigsaw.task import train_pretext  # pylint: disable=g-import-not-at-top
  config = _tiny_config(perm_cache)
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  results = train_pretext(config, straight)
  config.stop_at_step = 5
  assert train_pretext(config, resumed) == {'status': 'stopped', 'steps': 5}
  config.stop_at_step = -1
  assert train_pretext(config, resumed) == results
  a, _ = Checkpointer(os.path.join(straight, 'checkpoints'), 2).restore_tree()
  b, _ = Checkpointer(os.path.join(resumed, 'checkpoints'), 2).restore_tree()
  assert int(a['step']) == int(b['step']) == 12
  jax.tree.map(np.testing.assert_array_equal, (a['params'], a['batch_stats'], a['opt_state']),
               (b['params'], b['batch_stats'], b['opt_state']))


def test_train_pretext_nonfinite_loss_raises_with_step(tmp_path, perm_cache, compile_cache,
                                                        monkeypatch):
  from contrastive_jax.data import demo  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.jigsaw import task as pretext  # pylint: disable=g-import-not-at-top
  real = pretext.load_dataset

  def poisoned(*args, **kwargs):
    ds = real(*args, **kwargs)
    x = ds.train.x.copy()
    x[:] = np.nan
    return demo.Dataset(ds.name, ds.kind, demo.Split(x, ds.train.y), ds.val, ds.test)

  monkeypatch.setattr(pretext, 'load_dataset', poisoned)
  with pytest.raises(pretext.NonFiniteLossError, match='at step 1'):
    pretext.train_pretext(_tiny_config(perm_cache), str(tmp_path / 'nan'))


def test_train_pretext_bad_config(tmp_path, perm_cache):
  from contrastive_jax.projects.jigsaw.task import train_pretext  # pylint: disable=g-import-not-at-top
  config = _tiny_config(perm_cache)
  config.jigsaw.crop_size = 9
  with pytest.raises(ValueError, match='crop_size'):
    train_pretext(config, str(tmp_path / 'bad'))
  config = _tiny_config(perm_cache)
  config.data.name = 'diabetes'
  config.data.kwargs = {}
  with pytest.raises(ValueError, match='image'):
    train_pretext(config, str(tmp_path / 'bad2'))
  config = _tiny_config(perm_cache)
  config.batch_size = 0
  with pytest.raises(ValueError, match='batch_size'):
    train_pretext(config, str(tmp_path / 'bad3'))


# ----------------------------------------------------------------------------- trainer on the run skeleton


def test_train_pretext_sigterm_resume_equals_uninterrupted_run(tmp_path, perm_cache, compile_cache,
                                                              monkeypatch, caplog):
  """SIGTERM during a step: a checkpoint at the next step boundary, a clean 'stopped' return; the
  re-run ends exactly like an uninterrupted run (results and every array of the final state)."""
  import logging  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.jigsaw import task as pretext  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top
  config = _tiny_config(perm_cache)
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  expected = pretext.train_pretext(config, straight)
  real = pretext.train_batch

  def terminated_at_step_4(split, batch_size, seed, step, **kwargs):
    if step == 4:  # while step 4's batch is prepared: the run stops after step 5
      os.kill(os.getpid(), signal.SIGTERM)
    return real(split, batch_size, seed, step, **kwargs)

  monkeypatch.setattr(pretext, 'train_batch', terminated_at_step_4)
  caplog.set_level(logging.INFO, logger='contrastive_jax')
  killed_config = config.copy_and_resolve_references()
  killed_config.data.prefetch = 0  # step 4's batch built as step 4 starts, not ahead (not identity)
  assert pretext.train_pretext(killed_config, killed) == {'status': 'stopped', 'steps': 5}
  assert 'Stopped at step 5 (SIGTERM)' in caplog.text
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  monkeypatch.setattr(pretext, 'train_batch', real)
  assert pretext.train_pretext(config, killed) == expected
  a, _ = load_checkpoint(os.path.join(straight, 'checkpoints'))
  b, _ = load_checkpoint(os.path.join(killed, 'checkpoints'))
  assert int(a['step']) == int(b['step']) == 12
  jax.tree.map(np.testing.assert_array_equal, (a['params'], a['batch_stats'], a['opt_state']),
               (b['params'], b['batch_stats'], b['opt_state']))


def test_train_pretext_nonfinite_skip_skips_the_step(tmp_path, perm_cache, compile_cache,
                                                     monkeypatch, caplog):
  """``nonfinite='skip'``: a NaN batch leaves the state as it was (the step counter moves on) and is
  logged with its step; the run finishes with finite parameters."""
  import logging  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.jigsaw import task as pretext  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top
  real = pretext.train_batch

  def nan_at_step_3(split, batch_size, seed, step, **kwargs):
    batch = real(split, batch_size, seed, step, **kwargs)
    return {**batch, 'x': np.full_like(batch['x'], np.nan)} if step + 1 == 3 else batch

  monkeypatch.setattr(pretext, 'train_batch', nan_at_step_3)
  config = _tiny_config(perm_cache)
  config.nonfinite = 'skip'
  caplog.set_level(logging.INFO, logger='contrastive_jax')
  results = pretext.train_pretext(config, str(tmp_path / 'skip'))
  assert results['steps'] == 12 and np.isfinite(results['test']['loss'])
  assert 'Non-finite loss or gradient at step 3 (loss=nan' in caplog.text
  assert 'update skipped' in caplog.text
  state, _ = load_checkpoint(str(tmp_path / 'skip' / 'checkpoints'))
  assert int(state['step']) == 12
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((state['params'],
                                                              state['batch_stats'])))
  train = [m for m in _read_metrics(str(tmp_path / 'skip')) if 'train/loss' in m]
  assert [m['step'] for m in train] == list(range(1, 13)) and np.isnan(train[2]['train/loss'])


def test_progress_line_shows_the_task_terms(caplog):
  """The progress line prints the terms a task declares: the jigsaw task its accuracy, no reg/con."""
  from contrastive_jax.train.writer import Progress  # pylint: disable=g-import-not-at-top
  metrics = {'loss': 1.25, 'accuracy': 0.5, 'grad_norm': 1.0, 'lr': 0.01}
  line = Progress(12, 0, 16, terms=(), shown=(('acc', 'accuracy', '.3f'),)).line(0, metrics)
  assert line == 'step 0/12 | loss 1.2500 | acc 0.500 | lr 0.01 | -- ex/s | ETA --'


EIGHT_DEVICE_WORKER = textwrap.dedent("""
    import json, os, sys
    import jax
    sys.path.insert(0, {repo!r})
    from tests.test_jigsaw import _tiny_config, _read_metrics
    from contrastive_jax.projects.jigsaw.task import train_pretext
    config = _tiny_config(sys.argv[2], steps=6)
    config.eval_every = 3
    # SGD: Adam turns the rounding noise in the (exactly zero) gradient of a conv bias that
    # BatchNorm follows into full-size steps, which no two summation orders share.
    config.optim.name, config.optim.lr = 'sgd', 0.05
    results = train_pretext(config, sys.argv[1])
    train = [m for m in _read_metrics(sys.argv[1]) if 'train/loss' in m]
    print(json.dumps({{'devices': jax.device_count(), 'results': results,
                      'losses': [m['train/loss'] for m in train],
                      'accuracy': [m['train/accuracy'] for m in train]}}))
""")


# Two subprocess runs (1 and 8 forced CPU devices): ~30 s on a 2-core CPU, so in the slow suite; the
# default suite checks the same skeleton path with CoWPro's 8-device test (tests/test_cowpro.py).
@pytest.mark.slow
def test_jigsaw_eight_devices_train_like_one(tmp_path, perm_cache):
  """The jigsaw step is data-parallel: 8 devices (batch split, BatchNorm synchronised over the
  'batch' axis, global gradient) give the 1-device losses, evaluation and final parameters."""
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top
  outputs = {}
  for devices in (1, 8):
    env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
           'JAX_PLATFORMS': 'cpu'}
    done = subprocess.run([sys.executable, '-c', EIGHT_DEVICE_WORKER.format(repo=_REPO),
                           str(tmp_path / str(devices)), str(perm_cache)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=_REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs[devices] = json.loads(done.stdout.strip().splitlines()[-1])
  assert outputs[1]['devices'] == 1 and outputs[8]['devices'] == 8
  assert len(outputs[1]['losses']) == 6
  np.testing.assert_allclose(outputs[8]['losses'], outputs[1]['losses'], rtol=1e-4)
  np.testing.assert_allclose(outputs[8]['accuracy'], outputs[1]['accuracy'], atol=1e-6)
  for split in ('val', 'test'):
    np.testing.assert_allclose(outputs[8]['results'][split]['loss'],
                               outputs[1]['results'][split]['loss'], rtol=1e-4)
  # Final states, read back into this 1-device process from both layouts' checkpoints.
  a, _ = load_checkpoint(str(tmp_path / '8' / 'checkpoints'))
  b, _ = load_checkpoint(str(tmp_path / '1' / 'checkpoints'))
  assert int(a['step']) == int(b['step']) == 6
  assert jax.tree.structure(a['params']) == jax.tree.structure(b['params'])
  for x, y in zip(jax.tree.leaves((a['params'], a['batch_stats'])),
                  jax.tree.leaves((b['params'], b['batch_stats']))):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
