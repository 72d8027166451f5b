"""CoWPro (thesis Ch. 7): prototypes, aggregation, losses, Dice, episodes, end-to-end training.

References are float64 NumPy written from Eqs. 7.2-7.14 (variable-length prototype lists, loops over
pixels), independent of the padded JAX implementation.
"""

from __future__ import annotations

import functools
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

from contrastive_jax.projects.cowpro import data as cdata
from contrastive_jax.projects.cowpro import segmentation as seg
from contrastive_jax.projects.cowpro import losses as closs
from contrastive_jax.projects.cowpro import model as cmodel

pytestmark = pytest.mark.usefixtures('fast_compile')

# A hand-made episode: 4x4 feature maps with D = 3 channels.
SUPPORT = np.array([
    [[1.0, 0.0, 0.0], [0.9, 0.2, 0.0], [0.0, 1.0, 0.1], [0.1, 0.8, 0.3]],
    [[0.8, 0.1, 0.2], [1.0, 0.3, 0.1], [0.2, 0.9, 0.0], [0.0, 1.0, 0.5]],
    [[0.0, 0.2, 1.0], [0.1, 0.0, 0.9], [0.5, 0.5, 0.5], [0.3, 0.1, 0.7]],
    [[0.2, 0.1, 0.8], [0.0, 0.3, 1.0], [0.6, 0.4, 0.2], [0.9, 0.9, 0.1]]])
QUERY = np.array([
    [[0.9, 0.1, 0.0], [1.0, 0.0, 0.2], [0.1, 0.9, 0.0], [0.0, 0.7, 0.4]],
    [[0.7, 0.3, 0.1], [0.8, 0.1, 0.0], [0.3, 0.8, 0.2], [0.1, 0.9, 0.6]],
    [[0.1, 0.1, 0.9], [0.0, 0.2, 0.8], [0.4, 0.6, 0.3], [0.2, 0.2, 0.9]],
    [[0.3, 0.0, 0.7], [0.1, 0.4, 0.9], [0.7, 0.3, 0.1], [0.8, 1.0, 0.0]]])
# Foreground = the top-left 2x2 block plus one pixel of the top-right block.
MASK = np.array([[1, 1, 0, 1],
                 [1, 1, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]], np.float64)


# ----------------------------------------------------------------------------------------------------
# NumPy float64 references.

def ref_prototypes(features, mask, window, threshold, foreground):
  """Eqs. 7.2-7.3: pooled features where the pooled mask > zeta (+ the global FG prototype)."""
  h, w, _ = features.shape
  pooled_f, pooled_m = [], []
  for i in range(0, h, window):
    for j in range(0, w, window):
      pooled_f.append(features[i:i + window, j:j + window].reshape(-1, features.shape[-1]).mean(0))
      pooled_m.append(mask[i:i + window, j:j + window].mean())
  pooled_m = np.array(pooled_m)
  if threshold == 'dynamic':
    zeta = 0.8 * pooled_m.max() if foreground else pooled_m.mean()
  else:
    zeta = threshold
  protos = [f for f, m in zip(pooled_f, pooled_m) if m > zeta]
  if foreground:
    protos.append((features * mask[..., None]).sum((0, 1)) / (mask.sum() + 1e-5))
  return protos


def ref_scores(query, protos, t=0.05, scale=20.0, top_percent=100.0):
  """Eqs. 7.4-7.10 pixel by pixel: centre, normalise, softmax over prototypes, aggregate, score.

  ``top_percent`` < 100: each query pixel keeps "the Top-k% most similar prototypes" (Sec. 7.5.4.3,
  Table 7.4): the k = max(1, ceil(k% of N)) of highest cosine with the pixel, softmax over them only.
  """
  def cn(v):
    v = v - v.mean()
    return v / max(np.linalg.norm(v), 1e-4)
  h, w, _ = query.shape
  out = np.zeros((h, w))
  if not protos:
    return out
  p = np.stack([cn(v) for v in protos])
  k = max(1, math.ceil(top_percent / 100 * len(protos)))
  for i in range(h):
    for j in range(w):
      q = cn(query[i, j])
      corr = p @ q
      keep = np.argsort(-corr, kind='stable')[:k]
      e = np.exp((corr[keep] - corr[keep].max()) / t)
      prob = e / e.sum()
      out[i, j] = scale * q @ (prob[:, None] * p[keep]).sum(0)
  return out


def ref_logits(support, mask, query, fg_threshold=0.95, bg_threshold=0.95, window=2):
  """Eq. 7.11 inputs [c_BG, c_FG] at feature resolution (image size = feature size)."""
  fg = ref_scores(query, ref_prototypes(support, mask, window, fg_threshold, True))
  bg = ref_scores(query, ref_prototypes(support, 1.0 - mask, window, bg_threshold, False))
  return np.stack([bg, fg], -1)


def ref_ce(logits, target, weights=(1.0, 1.0)):
  """Weighted 2-class cross-entropy, weighted mean over pixels."""
  logits, target = logits.reshape(-1, 2), target.reshape(-1).astype(int)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  w = np.asarray(weights)[target]
  return -(w * logp[np.arange(target.size), target]).sum() / w.sum()


# ----------------------------------------------------------------------------------------------------
# Prototypes and aggregation.

@pytest.mark.parametrize('threshold', [0.95, 0.5, 'dynamic'])
@pytest.mark.parametrize('foreground', [True, False])
def test_prototypes_and_aggregation_match_reference(threshold, foreground):
  mask = MASK if foreground else 1.0 - MASK
  protos, valid = cmodel.extract_prototypes(jnp.asarray(SUPPORT, jnp.float32),
                                            jnp.asarray(mask, jnp.float32), foreground=foreground,
                                            threshold=threshold, window=2)
  expected = ref_prototypes(SUPPORT, mask, 2, threshold, foreground)
  chex.assert_shape(protos, (5, 3))  # (4 / 2)^2 local slots + the global slot
  np.testing.assert_allclose(np.asarray(protos)[np.asarray(valid)], np.stack(expected), atol=1e-6)
  scores = cmodel.aggregate_scores(jnp.asarray(QUERY, jnp.float32), protos, valid)
  np.testing.assert_allclose(scores, ref_scores(QUERY, expected), atol=2e-4)


def test_threshold_variants_closed_form():
  # Pooled 2x2 means of this mask are (0.75, 0.5; 0.25, 0).
  mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
  feats = jnp.zeros((4, 4, 3))
  valid = lambda thr, fg: np.asarray(cmodel.extract_prototypes(
      feats, jnp.asarray(mask), foreground=fg, threshold=thr, window=2)[1])
  np.testing.assert_array_equal(valid(0.95, True), [0, 0, 0, 0, 1])  # only the global one
  np.testing.assert_array_equal(valid(0.6, False), [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(valid('dynamic', True), [1, 0, 0, 0, 1])  # zeta = 0.8 * 0.75
  np.testing.assert_array_equal(valid('dynamic', False), [1, 1, 0, 0, 0])  # zeta = mean = 0.375
  for bad in ('fixed', 1.0, -0.1):
    with pytest.raises(ValueError, match='threshold'):
      cmodel.extract_prototypes(feats, jnp.asarray(mask), foreground=True, threshold=bad, window=2)
  with pytest.raises(ValueError, match='window'):
    cmodel.extract_prototypes(feats, jnp.asarray(mask), foreground=True, window=3)


def test_padded_set_ignores_invalid_slots_and_empty_set_scores_zero():
  query = jnp.asarray(QUERY, jnp.float32)
  real = jnp.asarray(SUPPORT[0, :3], jnp.float32)
  junk = jnp.array([[1e6, -3.0, 2.0], [0.0, 0.0, 0.0]], jnp.float32)
  padded = jnp.concatenate([real, junk])
  valid = jnp.array([True, True, True, False, False])
  scores = jax.jit(cmodel.aggregate_scores)
  chex.assert_trees_all_close(scores(query, padded, valid),
                              scores(query, real, jnp.ones(3, bool)), atol=1e-5)
  none = jnp.zeros(5, bool)
  np.testing.assert_array_equal(scores(query, padded, none), np.zeros((4, 4)))
  grad = jax.jit(jax.grad(lambda q: scores(q, padded, none).sum()
                          + scores(q, padded, valid).sum()))(query)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('fg_threshold,bg_threshold', [(0.95, 0.95), ('dynamic', 'dynamic')])
def test_episode_logits_match_reference(fg_threshold, bg_threshold):
  logits = cmodel.episode_logits(jnp.asarray(SUPPORT, jnp.float32), jnp.asarray(MASK, jnp.float32),
                                 jnp.asarray(QUERY, jnp.float32), (4, 4), fg_threshold=fg_threshold,
                                 bg_threshold=bg_threshold, window=2)
  expected = ref_logits(SUPPORT, MASK, QUERY, fg_threshold, bg_threshold)
  np.testing.assert_allclose(logits, expected, atol=2e-4)
  np.testing.assert_array_equal(cmodel.predict_mask(logits), expected[..., 1] > expected[..., 0])


def test_mask_resize_area_and_bilinear():
  mask = np.kron(MASK, np.ones((2, 2)))  # 8x8 mask of 2x2 blocks
  np.testing.assert_allclose(cmodel.resize_mask(mask, (4, 4), 'area'), MASK)
  np.testing.assert_allclose(cmodel.resize_mask(mask, (4, 4), 'bilinear'), MASK)  # block centres
  with pytest.raises(ValueError, match='mask_resize'):
    cmodel.resize_mask(mask, (4, 4), 'nearest')


# ----------------------------------------------------------------------------------------------------
# Losses.

def test_weighted_cross_entropy_closed_form():
  a, b = 1.3, -0.4
  logits = jnp.array([[0.0, a], [b, 0.0]])
  target = jnp.array([1, 0])
  nll1, nll2 = np.log1p(np.exp(-a)), np.log1p(np.exp(-b))
  np.testing.assert_allclose(closs.weighted_cross_entropy(logits, target),
                             (1.0 * nll1 + 0.05 * nll2) / 1.05, rtol=1e-6)
  np.testing.assert_allclose(closs.weighted_cross_entropy(logits, target, normalize='pixels'),
                             (1.0 * nll1 + 0.05 * nll2) / 2, rtol=1e-6)
  np.testing.assert_allclose(closs.weighted_cross_entropy(jnp.zeros((3, 5, 2)), jnp.ones((3, 5))),
                             np.log(2.0), rtol=1e-6)
  with pytest.raises(ValueError, match='class_weights'):
    closs.weighted_cross_entropy(logits, target, class_weights=(0.0, 0.0))
  with pytest.raises(ValueError, match='normalize'):
    closs.weighted_cross_entropy(logits, target, normalize='mean')


def test_cyclic_consistency_and_total_loss_match_reference():
  s, q, m = (jnp.asarray(x, jnp.float32) for x in (SUPPORT, QUERY, MASK))
  query_target = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], np.float32)
  fwd = ref_logits(SUPPORT, MASK, QUERY, window=2)
  predicted = (fwd[..., 1] > fwd[..., 0]).astype(np.float64)
  assert 0 < predicted.sum() < 16  # the reverse episode has both classes
  rev = ref_logits(QUERY, predicted, SUPPORT, window=2)
  expected_reg = ref_ce(rev, MASK)
  expected_ssl = ref_ce(fwd, query_target, (0.05, 1.0))
  reg = jax.jit(functools.partial(closs.cyclic_consistency_loss, window=2))(
      s, m, q, jnp.asarray(fwd, jnp.float32))
  np.testing.assert_allclose(reg, expected_reg, rtol=1e-4)
  total = jax.jit(functools.partial(closs.cowpro_loss, window=2))
  loss, aux = total(s[None], m[None], q[None], jnp.asarray(query_target)[None])
  np.testing.assert_allclose(aux['loss_ssl'], expected_ssl, rtol=1e-4)
  np.testing.assert_allclose(aux['loss_reg'], expected_reg, rtol=1e-4)
  np.testing.assert_allclose(loss, expected_ssl + expected_reg, rtol=1e-4)
  only_ssl, _ = jax.jit(functools.partial(closs.cowpro_loss, window=2, reg_weight=0.0))(
      s[None], m[None], q[None], jnp.asarray(query_target)[None])
  np.testing.assert_allclose(only_ssl, expected_ssl, rtol=1e-4)
  grads = jax.jit(jax.grad(lambda a, b: total(a, m[None], b, jnp.asarray(query_target)[None])[0],
                           argnums=(0, 1)))(s[None], q[None])
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)


# ----------------------------------------------------------------------------------------------------
# Dice and the 1-shot protocol.

def test_dice_closed_forms():
  assert seg.dice([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
  assert seg.dice([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.8)
  assert seg.dice([0, 0], [0, 0]) == 1.0
  assert seg.dice([0, 0], [0, 0], empty_value=0.0) == 0.0
  assert seg.dice([0, 0], [0, 1]) == 0.0 and seg.dice([1, 0], [0, 0]) == 0.0
  per = seg.dice_per_class([[0, 1, 2], [2, 2, 0]], [[0, 1, 1], [2, 0, 0]], [1, 2, 3])
  assert per == pytest.approx({1: 2 / 3, 2: 2 / 4, 3: 1.0})
  with pytest.raises(ValueError, match='shape'):
    seg.dice([1, 0], [1, 0, 0])


def test_chunk_helpers():
  np.testing.assert_array_equal(seg.support_slice_indices(0, 8), [1, 4, 7])  # 1/6, 1/2, 5/6
  np.testing.assert_array_equal(seg.support_slice_indices(3, 3), [3, 3, 3])
  np.testing.assert_array_equal(seg.query_chunks(2, 7), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(seg.query_chunks(0, 1), [0, 1])
  labels = np.zeros((3, 4, 4), int)
  labels[1, 0, 3] = labels[2, 1, 2] = 5
  assert seg.label_slice_range(labels, 5) == (1, 2) and seg.label_slice_range(labels, 1) is None
  np.testing.assert_array_equal(seg.quadrant_mask(labels, 5),
                                np.kron([[0, 1], [0, 0]], np.ones((2, 2))).astype(bool))


def test_one_shot_protocol_uses_chunk_supports_and_3d_dice():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 9, 4, 4)).astype(np.float32)
  labels = np.zeros((3, 9, 4, 4), np.int32)
  labels[0, 2:8, 1:3, 1:3] = 1  # query scan 0: slices 2..7
  labels[1, 0:3, 0, 0] = 1      # query scan 1: slices 0..2
  labels[2, 0:9, 2, 2] = 1      # support scan (last): slices 0..8 -> supports 1, 4, 7
  calls = []

  def oracle(s_img, s_mask, q_imgs, name):
    calls.append((np.flatnonzero([np.array_equal(s_img, im) for im in images[2]]).tolist(), len(q_imgs)))
    scan = 0 if any(np.array_equal(q_imgs[0], im) for im in images[0]) else 1
    idx = [int(np.flatnonzero([np.array_equal(q, im) for im in images[scan]])[0]) for q in q_imgs]
    return labels[scan, idx] == 1

  out = seg.one_shot_evaluate(oracle, images, labels, {'organ': 1}, scan_ids=['a', 'b', 's'])
  assert out['dice'] == {'organ': 1.0} and out['dice_per_scan'] == {'organ': {'a': 1.0, 'b': 1.0}}
  assert calls == [([1], 2), ([4], 2), ([7], 2), ([1], 1), ([4], 1), ([7], 1)]
  empty = seg.one_shot_evaluate(lambda s, m, q, n: np.zeros(q.shape, bool), images, labels,
                                {'organ': 1})
  assert empty['mean_dice'] == 0.0
  no_support = labels.copy()
  no_support[2] = 0
  with pytest.raises(ValueError, match='support scan'):
    seg.one_shot_evaluate(oracle, images, no_support, {'organ': 1})


# ----------------------------------------------------------------------------------------------------
# Pseudo-masks and episodes.

def test_body_mask_and_superpixels():
  image = np.zeros((32, 32))
  image[4:28, 4:28] = 0.6
  image[12:16, 12:16] = 0.0  # a hole: filled
  image[0:2, 30:32] = 0.9   # a small separate blob: dropped (not the largest component)
  image[16:28, 4:28] = 0.3
  body = cdata.body_mask(image, 0.05)
  expected = np.zeros((32, 32), bool)
  expected[4:28, 4:28] = True
  np.testing.assert_array_equal(body, expected)
  sp = cdata.superpixels(image, scale=1.0, sigma=0.0, min_size=10)
  assert np.all(sp[~expected] == 0) and np.all(sp[expected] > 0)
  np.testing.assert_array_equal(np.unique(sp[sp > 0]), np.arange(1, sp.max() + 1))
  assert len(np.unique(sp[4:28, 4:28])) >= 2  # the two tissue intensities are separated
  with pytest.raises(ValueError, match='image'):
    cdata.superpixels(np.zeros(5))


def test_pseudo_mask_cache_and_episode(tmp_path):
  vols = cdata.make_phantom_volumes(2, num_slices=4, size=32, seed=1)
  again = cdata.make_phantom_volumes(2, num_slices=4, size=32, seed=1)
  np.testing.assert_array_equal(vols.images, again.images)
  slices = cdata.training_slices(vols)
  params = dict(scale=1.0, sigma=0.5, min_size=10)
  first = cdata.build_pseudo_masks(slices, cache_dir=str(tmp_path), **params)
  assert len(os.listdir(tmp_path)) == 1
  second = cdata.build_pseudo_masks(slices, cache_dir=str(tmp_path), **params)
  np.testing.assert_array_equal(first.superpixels, second.superpixels)
  assert np.all(first.counts == first.superpixels.reshape(len(first), -1).max(1))
  ep = jax.jit(lambda k: cdata.sample_episode(k, first.images, first.superpixels, first.counts))(
      jax.random.PRNGKey(3))
  matches = [i for i in range(len(first)) if np.array_equal(ep['support_image'], first.images[i])]
  assert matches
  labels_in_mask = np.unique(first.superpixels[matches[0]][np.asarray(ep['support_mask']) > 0])
  assert labels_in_mask.size == 1 and labels_in_mask[0] >= 1
  chex.assert_shape(ep['query_image'], (32, 32))
  excluded = cdata.training_slices(vols, exclude_labels=(1,))
  assert excluded.shape[0] == int(np.sum(~np.any(vols.labels == 1, axis=(2, 3))))


def test_query_synthesis_identity_determinism_and_consistency():
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(size=(24, 24)), jnp.float32)
  mask = jnp.zeros((24, 24)).at[6:14, 8:18].set(1.0)
  q, qm = jax.jit(lambda k, x, m: cdata.synthesize_query(k, x, m, cdata.QueryAugment.identity()))(
      jax.random.PRNGKey(0), image, mask)
  np.testing.assert_allclose(q, image, atol=1e-6)
  np.testing.assert_array_equal(qm, mask > 0.5)
  synth = jax.jit(lambda k, x, m: cdata.synthesize_query(k, x, m, cdata.QueryAugment()))
  a, b = synth(jax.random.PRNGKey(1), image, mask), synth(jax.random.PRNGKey(1), image, mask)
  c = synth(jax.random.PRNGKey(2), image, mask)
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a[0], c[0])
  # The mask follows the image: warping the mask as an image (gamma has no effect on a 0/1 image)
  # and thresholding gives the warped mask.
  warped_as_image, warped_mask = synth(jax.random.PRNGKey(4), mask, mask)
  np.testing.assert_array_equal(warped_as_image > 0.5, warped_mask)
  assert 0 < int(warped_mask.sum()) != int(mask.sum())
  with pytest.raises(ValueError, match='scale'):
    cdata.QueryAugment(scale=(1.2, 0.9))


# ----------------------------------------------------------------------------------------------------
# End to end.

def tiny_config(**overrides):
  from configs.cowpro import get_config  # pylint: disable=g-import-not-at-top
  config = get_config()
  config.data.size = 32
  config.data.num_slices = 6
  config.data.num_train_volumes = 2
  config.data.num_eval_volumes = 2
  config.data.superpixels.min_size = 10
  config.model.encoder_kwargs = {'features': (8, 8), 'strides': (2, 2)}  # 32 -> 8x8 features
  config.model.feature_dim = 8
  config.augment.shift = 2.0
  config.num_train_steps = 3
  config.log_every = config.eval_every = config.checkpoint_every = 100  # final step only
  config.eval.batch_size = 4
  for key, value in overrides.items():
    config[key] = value
  return config


def test_end_to_end_tiny_run(tmp_path):
  from contrastive_jax.projects.cowpro.task import train_cowpro  # pylint: disable=g-import-not-at-top
  results = train_cowpro(tiny_config(), str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'results.json', encoding='utf-8') as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert results['steps'] == 3 and results['method'] == 'cowpro'
  assert set(results['test']['dice']) == set(cdata.ORGAN_IDS)
  assert all(0.0 <= d <= 1.0 for d in results['test']['dice'].values())
  assert 0.0 <= results['test']['mean_dice'] <= 1.0
  assert os.listdir(tmp_path / 'run' / 'superpixels')  # the offline pseudo-masks are cached
  metrics = (tmp_path / 'run' / 'metrics.jsonl').read_text()
  events = os.listdir(tmp_path / 'run' / 'tensorboard')
  assert train_cowpro(tiny_config(), str(tmp_path / 'run')) == json.loads(json.dumps(results))
  assert (tmp_path / 'run' / 'metrics.jsonl').read_text() == metrics  # finished: nothing rewritten
  assert os.listdir(tmp_path / 'run' / 'tensorboard') == events


@pytest.mark.slow
def test_resume_matches_uninterrupted_run_and_refuses_other_config(tmp_path):
  from contrastive_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.cowpro.task import train_cowpro  # pylint: disable=g-import-not-at-top
  config = tiny_config(stop_at_step=2, checkpoint_every=1)
  assert train_cowpro(config, str(tmp_path / 'resumed')) == {'status': 'stopped', 'steps': 2}
  config.stop_at_step = -1
  resumed = train_cowpro(config, str(tmp_path / 'resumed'))
  straight = train_cowpro(tiny_config(checkpoint_every=1), str(tmp_path / 'straight'))
  assert resumed['test'] == straight['test']
  a = Checkpointer(str(tmp_path / 'resumed' / 'checkpoints'), 2).restore_tree()[0]['params']
  b = Checkpointer(str(tmp_path / 'straight' / 'checkpoints'), 2).restore_tree()[0]['params']
  chex.assert_trees_all_equal(a, b)
  config.optim.lr = 0.02
  with pytest.raises(ValueError, match='different config'):
    train_cowpro(config, str(tmp_path / 'resumed'))


@pytest.mark.slow
def test_non_finite_loss_raises_with_step(tmp_path):
  from contrastive_jax.projects.cowpro.task import train_cowpro  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.loop import NonFiniteLossError  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.optim.lr = 1e38
  config.optim.momentum = 0.0
  config.optim.weight_decay = 0.0
  with pytest.raises(NonFiniteLossError, match=r'at step \d'):
    train_cowpro(config, str(tmp_path / 'nan'))


# ----------------------------------------------------------------------------------------------------
# The trainer on the run skeleton: preemption, the non-finite policy, data parallelism.

def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _run_with(config, workdir, device_batch):
  """``train_cowpro``'s run with the task's ``device_batch`` replaced by
  ``device_batch(step, real batch of step)``."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.cowpro import task as tcowpro  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train import run as run_lib  # pylint: disable=g-import-not-at-top

  def build(cfg, mesh):
    task = tcowpro.cowpro_task(cfg, mesh, workdir=workdir)
    return dataclasses.replace(task, device_batch=lambda step: device_batch(
        step, task.device_batch(step)))

  return run_lib.run(config, workdir, build, run_lib.make_mesh())


def test_sigterm_then_rerun_equals_uninterrupted_run(tmp_path, caplog):
  """SIGTERM during a step: a checkpoint at the next step boundary, a clean 'stopped' return; the
  re-run ends exactly like an uninterrupted run (results, evaluation history, every array)."""
  import logging  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.cowpro.task import train_cowpro  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_train_steps=5, eval_every=2)
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  expected = train_cowpro(config, straight)
  assert [h['step'] for h in expected['eval_history']] == [2, 4, 5]  # the last step included

  def terminated_at_step_2(step, batch):
    if step == 2:  # while step 3 is dispatched: the run stops after it
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  caplog.set_level(logging.INFO, logger='contrastive_jax')
  assert _run_with(config, killed, terminated_at_step_2) == {'status': 'stopped', 'steps': 3}
  assert 'Stopped at step 3 (SIGTERM)' in caplog.text
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  assert train_cowpro(config, killed) == expected
  a, meta_a = load_checkpoint(os.path.join(straight, 'checkpoints'))
  b, meta_b = load_checkpoint(os.path.join(killed, 'checkpoints'))
  assert int(a['step']) == int(b['step']) == 5 and meta_a['history'] == meta_b['history']
  jax.tree.map(np.testing.assert_array_equal, (a['params'], a['batch_stats'], a['opt_state']),
               (b['params'], b['batch_stats'], b['opt_state']))


def test_nonfinite_skip_skips_the_step(tmp_path, caplog):
  """``nonfinite='skip'``: a step whose episodes are NaN leaves the state as it was (the step
  counter moves on) and is logged with its step, one step late; the run ends with finite weights."""
  import logging  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_train_steps=4, log_every=1, nonfinite='skip')

  def nan_at_step_2(step, batch):
    return {**batch, 'images': batch['images'] * jnp.nan} if step + 1 == 2 else batch

  caplog.set_level(logging.INFO, logger='contrastive_jax')
  results = _run_with(config, str(tmp_path / 'skip'), nan_at_step_2)
  assert results['steps'] == 4 and np.isfinite(results['mean_dice'])
  assert 'Non-finite loss or gradient at step 2 (loss=nan' in caplog.text
  assert 'update skipped' in caplog.text
  state, _ = load_checkpoint(str(tmp_path / 'skip' / 'checkpoints'))
  assert int(state['step']) == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((state['params'],
                                                              state['batch_stats'])))
  train = [m for m in _read_metrics(str(tmp_path / 'skip')) if 'train/loss' in m]
  assert [m['step'] for m in train] == [1, 2, 3, 4] and np.isnan(train[1]['train/loss'])
  assert all(np.isfinite(m['train/loss']) for m in train if m['step'] != 2)
  config.nonfinite = 'stop'  # the same bad step stops a run, naming it
  from contrastive_jax.train.run import NonFiniteLossError  # pylint: disable=g-import-not-at-top
  with pytest.raises(NonFiniteLossError, match='at step 2:'):
    _run_with(config, str(tmp_path / 'stop'), nan_at_step_2)


EIGHT_DEVICE_WORKER = textwrap.dedent("""
    import json, os, sys
    import jax
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, os.path.join({repo!r}, 'tests'))
    from test_cowpro import tiny_config, _read_metrics
    from contrastive_jax.projects.cowpro.task import task_mesh, train_cowpro
    config = tiny_config(batch_size=8, num_train_steps=4, log_every=1, eval_every=2)
    results = train_cowpro(config, sys.argv[1])
    train = [m for m in _read_metrics(sys.argv[1]) if 'train/loss' in m]
    print(json.dumps({{'devices': jax.device_count(), 'results': results, 'train': train,
                      'mesh_sizes': [task_mesh(b).size for b in (1, 4, 6, 8)]}}))
""")


# Two subprocess runs (1 and 8 forced CPU devices): 15-18 s on a 2-core CPU, in the slow suite (the
# default suite's 10-minute budget).
@pytest.mark.slow
def test_eight_devices_train_like_one(tmp_path):
  """The CoWPro step is data-parallel: 8 devices (one episode each, the same episodes as one device
  draws, BatchNorm synchronised over the 'batch' axis, the global-mean loss) give the 1-device losses,
  evaluations and final parameters."""
  from contrastive_jax.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  outputs = {}
  for devices in (1, 8):
    env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
           'JAX_PLATFORMS': 'cpu'}
    done = subprocess.run([sys.executable, '-c', EIGHT_DEVICE_WORKER.format(repo=repo),
                           str(tmp_path / str(devices))],
                          capture_output=True, text=True, timeout=600, env=env, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs[devices] = json.loads(done.stdout.strip().splitlines()[-1])
  one, eight = outputs[1], outputs[8]
  assert one['devices'] == 1 and eight['devices'] == 8
  # Every device shares the episodes when it can; else the most devices that can (batch 1: one).
  assert one['mesh_sizes'] == [1, 1, 1, 1] and eight['mesh_sizes'] == [1, 4, 6, 8]
  assert [m['step'] for m in one['train']] == [m['step'] for m in eight['train']] == [1, 2, 3, 4]
  for key in ('train/loss', 'train/loss_ssl', 'train/loss_reg', 'train/grad_norm'):
    np.testing.assert_allclose([m[key] for m in eight['train']], [m[key] for m in one['train']],
                               rtol=1e-4, err_msg=key)
  np.testing.assert_allclose([m['train/query_dice'] for m in eight['train']],
                             [m['train/query_dice'] for m in one['train']], atol=1e-3)
  assert [h['step'] for h in one['results']['eval_history']] == [2, 4]
  np.testing.assert_allclose([h['mean_dice'] for h in eight['results']['eval_history']],
                             [h['mean_dice'] for h in one['results']['eval_history']], atol=1e-3)
  a, _ = load_checkpoint(str(tmp_path / '8' / 'checkpoints'))
  b, _ = load_checkpoint(str(tmp_path / '1' / 'checkpoints'))
  assert int(a['step']) == int(b['step']) == 4
  assert jax.tree.structure(a['params']) == jax.tree.structure(b['params'])
  for x, y in zip(jax.tree.leaves((a['params'], a['batch_stats'])),
                  jax.tree.leaves((b['params'], b['batch_stats']))):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# The CHAOS variant on a tiny generated CHAOS MR tree (DICOM slices + PNG masks).

def _write_chaos(root, num_patients=10, slices=(4, 5), size=32):
  """Phantom scans written in the CHAOS layout; returns ``{patient: (uint16 slices, labels)}``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pydicom import dataset, uid  # pylint: disable=g-import-not-at-top
  vols = cdata.make_phantom_volumes(num_patients, num_slices=max(slices), size=size, seed=5)
  grey_of = np.array([0, 63, 126, 189, 252], np.uint8)
  written = {}
  for p in range(num_patients):
    patient = str(p + 1)
    n = slices[p % len(slices)]
    seq = os.path.join(root, 'Train_Sets', 'MR', patient, 'T2SPIR')
    os.makedirs(os.path.join(seq, 'DICOM_anon'))
    os.makedirs(os.path.join(seq, 'Ground'))
    pixels = np.rint(vols.images[p, :n] * 1000).astype(np.uint16)
    for k in range(n):
      stem = os.path.join(seq, '{}', f'IMG-{p:04d}-{k:05d}')
      meta = dataset.FileMetaDataset()
      meta.MediaStorageSOPClassUID = uid.MRImageStorage
      meta.MediaStorageSOPInstanceUID = uid.generate_uid()
      meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
      ds = dataset.FileDataset(stem.format('DICOM_anon') + '.dcm', {}, file_meta=meta,
                               preamble=b'\0' * 128)
      ds.SOPClassUID, ds.SOPInstanceUID = uid.MRImageStorage, meta.MediaStorageSOPInstanceUID
      ds.Modality, ds.InstanceNumber = 'MR', k + 1
      ds.Rows, ds.Columns = size, size
      ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
      ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
      ds.PixelData = pixels[k].tobytes()
      ds.save_as(stem.format('DICOM_anon') + '.dcm', enforce_file_format=True)
      Image.fromarray(grey_of[vols.labels[p, k]], mode='L').save(stem.format('Ground') + '.png')
    written[patient] = (pixels, vols.labels[p, :n])
  return written


def chaos_config(root):
  config = tiny_config()
  config.data.name = 'chaos'
  config.data.root = str(root)
  return config


def test_chaos_scans_are_regrouped_into_volumes(tmp_path):
  from contrastive_jax.data.sources import chaos as chaos_source  # pylint: disable=g-import-not-at-top
  from contrastive_jax.projects.cowpro import task as tcowpro  # pylint: disable=g-import-not-at-top
  written = _write_chaos(tmp_path)
  train, val = tcowpro.load_volumes(chaos_config(tmp_path).data)
  train_ids, val_ids, _ = chaos_source.patient_split(sorted(written, key=int), 0)
  assert train.ids == tuple(train_ids) and val.ids == tuple(val_ids) and len(val) == 2
  for vols in (train, val):
    chex.assert_shape(vols.images, (len(vols), 5, 32, 32))
    for v, patient in enumerate(vols.ids):
      pixels, labels = written[patient]
      n = labels.shape[0]
      np.testing.assert_array_equal(vols.labels[v, :n], labels)
      assert np.all(vols.labels[v, n:] == 0) and np.all(vols.images[v, n:] == 0)
      assert 0.0 <= vols.images[v].min() and vols.images[v].max() <= 1.0
      # The source's per-scan normalisation is monotone: brighter pixels stay brighter.
      order = np.argsort(pixels.ravel(), kind='stable')
      assert np.all(np.diff(vols.images[v, :n].ravel()[order]) >= -1e-6)
  with pytest.raises(ValueError, match='data.root'):
    tcowpro.load_volumes(chaos_config('').data)


@pytest.mark.slow
def test_chaos_variant_trains_end_to_end(tmp_path):
  from contrastive_jax.projects.cowpro.task import train_cowpro  # pylint: disable=g-import-not-at-top
  _write_chaos(tmp_path / 'chaos')
  results = train_cowpro(chaos_config(tmp_path / 'chaos'), str(tmp_path / 'run'))
  assert results['dataset'] == 'chaos'
  assert all(0.0 <= d <= 1.0 for d in results['test']['dice'].values())


@pytest.mark.slow
def test_dilated_resnet101_encoder_has_output_stride_8():
  model = cmodel.CoWPro(encoder=cmodel.build_encoder('resnet101_dilated'), feature_dim=256,
                        in_channels=3)
  x = jnp.zeros((1, 64, 64))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (1, 8, 8, 256)  # 256x256 -> 32x32 in the thesis (Sec. 7.4.1.2)
  with pytest.raises(ValueError, match='encoder'):
    cmodel.build_encoder('resnet9000')
