"""CoWPro's thesis protocols (issue 13): 5-fold cross-validation on CHAOS and the Top-k% ablation.

* Sec. 7.5.1: fold ``data.fold`` of ``data.num_folds`` (by patient, seeded) is evaluated, the rest
  trains; ``contrastive_jax.projects.cowpro.crossval`` combines the fold runs' results.json into Dice
  per fold and mean +- std per organ.
* Sec. 7.5.4.3 / Table 7.4: each query pixel aggregates only its Top-k% most correlated prototypes,
  checked against a float64 NumPy reference written from the thesis text (a loop over pixels with
  variable-length prototype lists).
"""

from __future__ import annotations

import functools
import json
import os
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax.data.sources import chaos as chaos_source
from contrastive_jax.projects.cowpro import crossval as cv
from contrastive_jax.projects.cowpro import model as cmodel
from tests.test_cowpro import _write_chaos
from tests.test_cowpro import chaos_config
from tests.test_cowpro import ref_prototypes
from tests.test_cowpro import ref_scores
from tests import launch_process

pytestmark = pytest.mark.usefixtures('fast_compile')


# ----------------------------------------------------------------------------------------------------
# Top-k% of the prototypes (Table 7.4).

def _episode(seed=0, size=8, dim=6):
  rng = np.random.default_rng(seed)
  support = rng.normal(size=(size, size, dim))
  query = support + 0.5 * rng.normal(size=(size, size, dim))
  mask = np.zeros((size, size))
  mask[1:5, 2:7] = 1.0
  return support, query, mask


def test_top_percent_aggregation_matches_reference():
  support, query, mask = _episode()
  fg = ref_prototypes(support, mask, 1, 0.5, True)  # 20 local + the global prototype
  bg = ref_prototypes(support, 1.0 - mask, 1, 0.5, False)  # 44 local
  args = [jnp.asarray(a, jnp.float32) for a in (support, mask, query)]
  logits = lambda pct: jax.jit(functools.partial(
      cmodel.episode_logits, image_hw=(8, 8), fg_threshold=0.5, bg_threshold=0.5, window=1,
      top_percent=pct))(args[0], args[1], args[2])
  # Table 7.4's 100 % (the method as trained), 10 % (k = 3 of 21 FG, 5 of 44 BG) and 2 % (k = 1).
  for top_percent in (100.0, 10.0, 2.0):
    expected = np.stack([ref_scores(query, bg, top_percent=top_percent),
                         ref_scores(query, fg, top_percent=top_percent)], -1)
    np.testing.assert_allclose(logits(top_percent), expected, atol=5e-4, err_msg=str(top_percent))


def test_top_percent_mask_counts_and_errors():
  corr = jnp.asarray([[0.1, 0.9, 0.5, -0.2, 0.7]])
  valid = jnp.asarray([True, True, True, False, True])  # 4 valid prototypes
  keep = lambda pct: np.asarray(cmodel.top_percent_mask(corr, valid, pct))[0].tolist()
  assert keep(100) == [True, True, True, False, True]
  assert keep(50) == [False, True, False, False, True]  # ceil(2.0) = 2: 0.9 and 0.7
  assert keep(30) == keep(50)                          # ceil(1.2) = 2
  assert keep(10) == keep(2) == [False, True, False, False, False]  # at least one: the best
  none = np.asarray(cmodel.top_percent_mask(corr, jnp.zeros(5, bool), 10))
  assert not none.any()  # an empty set stays empty (its scores are 0)
  for bad in (0, 101, -5, True, '50'):
    with pytest.raises(ValueError, match='top_percent'):
      cmodel.top_percent_mask(corr, valid, bad)


# ----------------------------------------------------------------------------------------------------
# Five-fold cross-validation by patient (Sec. 7.5.1).

def test_patient_folds_partition_the_patients():
  patients = [str(i) for i in range(1, 21)]
  held = []
  for fold in range(5):
    train, val, test = chaos_source.patient_split(patients, 3, num_folds=5, fold=fold)
    assert val == test and len(val) == 4 and len(train) == 16  # 16 / 4 scans as in the thesis
    assert set(train) | set(val) == set(patients) and not set(train) & set(val)
    assert val == sorted(val, key=int) and train == sorted(train, key=int)  # support = last scan
    held += val
  assert sorted(held, key=int) == patients  # every patient evaluated exactly once
  assert chaos_source.patient_split(patients, 3, 5, 1) == chaos_source.patient_split(patients, 3, 5, 1)
  assert chaos_source.patient_split(patients, 4, 5, 1) != chaos_source.patient_split(patients, 3, 5, 1)
  assert chaos_source.patient_split(patients, 3) == chaos_source.patient_split(patients, 3, 0)
  for num_folds, fold in ((1, 0), (5, 5), (5, -1), (-2, 0)):
    with pytest.raises(ValueError, match='fold'):
      chaos_source.patient_split(patients, 3, num_folds, fold)


def test_chaos_fold_selects_the_evaluation_scans(tmp_path):
  from contrastive_jax.projects.cowpro import task as tcowpro  # pylint: disable=g-import-not-at-top
  _write_chaos(tmp_path)
  config = chaos_config(tmp_path)
  config.data.num_folds, config.data.fold = 5, 3
  train, val = tcowpro.load_volumes(config.data)
  ids = [str(p) for p in range(1, 11)]
  _, expected_val, _ = chaos_source.patient_split(ids, 0, 5, 3)
  assert val.ids == tuple(expected_val) and len(val) == 2 and len(train) == 8
  assert set(train.ids) == set(ids) - set(expected_val)
  config.data.fold = 5
  with pytest.raises(ValueError, match='num_folds'):
    tcowpro.load_volumes(config.data)
  phantom = chaos_config(tmp_path)
  phantom.data.name, phantom.data.num_folds = 'cowpro_phantom', 5
  with pytest.raises(ValueError, match='num_folds'):
    tcowpro.load_volumes(phantom.data)


def test_paper_variant_is_five_fold_and_old_runs_keep_their_identity():
  from configs.cowpro import get_config  # pylint: disable=g-import-not-at-top
  from contrastive_jax.train.run import config_identity  # pylint: disable=g-import-not-at-top
  chaos = get_config('chaos')
  assert (chaos.data.num_folds, chaos.data.fold, chaos.eval.top_percent) == (5, 0, 100.0)
  synthetic = get_config('synthetic')
  assert synthetic.data.num_folds == 0
  identity = config_identity(synthetic)  # the new fields at their old-run values are left out
  assert 'num_folds' not in identity['data'] and 'fold' not in identity['data']
  assert 'top_percent' not in identity['eval']
  synthetic.eval.top_percent = 10.0
  assert config_identity(synthetic)['eval']['top_percent'] == 10.0


# ----------------------------------------------------------------------------------------------------
# The combiner.

ORGANS = ('liver', 'right_kidney', 'left_kidney', 'spleen')


def _fold_result(workdir, fold, dice, num_folds=5, seed=0):
  os.makedirs(workdir, exist_ok=True)
  results = {'task': 'cowpro', 'method': 'cowpro', 'test': {
      'dice': dict(zip(ORGANS, dice)), 'mean_dice': float(np.mean(dice))},
             'eval_scans': [f'p{fold}a', f'p{fold}b'],
             'cross_validation': {'fold': fold, 'num_folds': num_folds, 'seed': seed}}
  with open(os.path.join(workdir, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f)
  return str(workdir)


def test_combine_folds_mean_and_std_per_organ(tmp_path):
  rng = np.random.default_rng(0)
  dice = rng.uniform(0.5, 0.9, size=(5, 4))
  dirs = [_fold_result(tmp_path / f'fold{k}', k, dice[k]) for k in (3, 0, 4, 1, 2)]
  combined = cv.combine_folds(dirs)
  assert [f['fold'] for f in combined['folds']] == [0, 1, 2, 3, 4]
  for j, organ in enumerate(ORGANS):
    np.testing.assert_allclose(combined['mean'][organ], dice[:, j].mean(), rtol=1e-12)
    np.testing.assert_allclose(combined['std'][organ], dice[:, j].std(ddof=1), rtol=1e-12)
    assert combined['summary'][organ] == (f'{100 * dice[:, j].mean():.2f} +- '
                                          f'{100 * dice[:, j].std(ddof=1):.2f}')
  np.testing.assert_allclose(combined['mean']['mean_dice'], dice.mean(), rtol=1e-12)
  np.testing.assert_allclose(combined['std']['mean_dice'], dice.mean(1).std(ddof=1), rtol=1e-12)
  assert combined['folds'][2]['eval_scans'] == ['p2a', 'p2b']
  # The command line writes the same JSON and prints the table.
  out = tmp_path / 'cv.json'
  assert cv.main(dirs + [f'--output={out}']) == 0
  assert json.loads(out.read_text()) == json.loads(json.dumps(combined))


def test_combine_folds_refuses_inconsistent_sets(tmp_path):
  dirs = [_fold_result(tmp_path / f'f{k}', k, [0.5] * 4) for k in range(4)]
  with pytest.raises(ValueError, match=r'Fold\(s\) \[4\]'):
    cv.combine_folds(dirs)
  assert cv.combine_folds(dirs, require_all=False)['missing_folds'] == [4]
  twice = _fold_result(tmp_path / 'again', 1, [0.6] * 4)
  with pytest.raises(ValueError, match='twice'):
    cv.combine_folds(dirs + [twice])
  other = _fold_result(tmp_path / 'other', 4, [0.6] * 4, seed=1)
  with pytest.raises(ValueError, match='different cross-validations'):
    cv.combine_folds(dirs + [other])
  with pytest.raises(FileNotFoundError, match='not finished'):
    cv.combine_folds(dirs + [str(tmp_path / 'missing')])
  assert cv.main([str(tmp_path / 'missing')]) == 2


TINY_CHAOS = """
from configs import cowpro
def get_config():
  c = cowpro.get_config("chaos")
  c.data.size, c.data.superpixels.min_size, c.augment.shift = 32, 10, 2.0
  c.model.encoder, c.model.in_channels, c.model.feature_dim = "conv", 1, 8
  c.model.encoder_kwargs = {"features": (8, 8), "strides": (2, 2)}
  c.prototypes.window = 2
  c.num_train_steps, c.eval.batch_size = 2, 4
  c.log_every = c.eval_every = c.checkpoint_every = 100
  return c
"""


@pytest.mark.parametrize('num_folds', [2, pytest.param(5, marks=pytest.mark.slow)])
def test_cross_validation_runs_through_the_launcher_and_combine(tmp_path, capsys, num_folds):
  """The :chaos paper variant, shrunk, run fold by fold by `python -m launch` on a generated CHAOS
  tree (10 patients), then combined by the cross-validation command: Dice per fold and mean +- std.
  The default suite runs 2 folds (the same code path as the paper's 5, at 2 processes' cost); the
  slow suite the variant's own 5."""
  _write_chaos(tmp_path / 'chaos')
  config = launch_process.config_file(tmp_path / 'tiny_chaos.py', TINY_CHAOS)
  workdirs = []
  for fold in range(num_folds):
    workdir = str(tmp_path / f'fold{fold}')
    launch_process.launch(f'--config={config}', f'--workdir={workdir}',
                    f'--config.data.root={tmp_path / "chaos"}', f'--config.data.fold={fold}',
                    f'--config.data.num_folds={num_folds}', '--config.eval.top_percent=50',
                    f'--config.data.cache_dir={tmp_path / "superpixels"}')  # shared by the folds
    workdirs.append(workdir)
    with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
      results = json.load(f)
    assert results['cross_validation'] == {'fold': fold, 'num_folds': num_folds, 'seed': 0}
    assert results['protocol']['top_percent'] == 50.0
    assert len(results['eval_scans']) == 10 // num_folds
  out = tmp_path / 'cv.json'
  assert cv.main([*workdirs, f'--output={out}']) == 0
  combined = json.loads(out.read_text())
  assert [f['fold'] for f in combined['folds']] == list(range(num_folds))
  scans = [s for f in combined['folds'] for s in f['eval_scans']]
  assert sorted(scans, key=int) == [str(p) for p in range(1, 11)]  # each scan evaluated once
  assert set(combined['mean']) == set(ORGANS) | {'mean_dice'}
  assert set(combined['std']) == set(ORGANS) | {'mean_dice'}
  assert all(0.0 <= v <= 1.0 for v in combined['mean'].values())
  for organ in ORGANS:
    dice = [f['dice'][organ] for f in combined['folds']]
    np.testing.assert_allclose(combined['mean'][organ], np.mean(dice), rtol=1e-6)
  assert 'mean' in capsys.readouterr().out
