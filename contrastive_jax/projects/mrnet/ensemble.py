r"""The weighted soft-voting ensemble of MRNet downstream runs (thesis Eq. 3.1-3.4, 4.19-4.20).

  python -m contrastive_jax.projects.mrnet.ensemble --runs runs/axial runs/coronal runs/sagittal \
      --out runs/ensemble

Each run (``configs/mrnet.py``) saved the Monte-Carlo mean probabilities (Eq. 3.3) of its val and
test exams in ``predictions.npz``. For every task ``j`` the classifiers ``i`` are the runs that
predict it (Ch. 3: the 3 plane models of SKID, each predicting the 3 tasks; Ch. 4: the 9 (plane,
task) models, 3 per task). Their weights ``w_i^j`` are the normalised positive log-odds of their
accuracy (Eq. 3.2 / 4.20, ``evaluate.ensemble.vote_weights``), FITTED ON THE VAL EXAMS, which are
held out from MRNet's training set (spec B10: never on the reported set); the ensemble score is
``H_j = sum_i w_i^j f_i^j`` (Eq. 3.1 / 4.19) and its label ``[H_j > 0.5]`` (Eq. 3.4). ``--out``
receives ``results.json``: per task the weights, every classifier's test metrics and the ensemble's
val and test AUC / sensitivity / specificity / accuracy with bootstrap intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from contrastive_jax.evaluate import ensemble as vote
from contrastive_jax.projects.mrnet import metrics as mrnet_metrics

PREDICTIONS = 'predictions.npz'


def load_run(workdir: str) -> dict:
  """The ``predictions.npz`` of one downstream run as a dict (plane, tasks, val_* / test_*)."""
  path = os.path.join(workdir, PREDICTIONS)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: --runs takes the workdirs of finished '
                            'MRNet downstream runs (configs/mrnet.py).')
  with np.load(path, allow_pickle=False) as f:
    run = {k: f[k] for k in f.files}
  run['plane'], run['tasks'] = str(run['plane']), [str(t) for t in run['tasks']]
  run['workdir'] = workdir
  return run


def _column(run: dict, split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
  j = run['tasks'].index(task)
  return run[f'{split}_probs'][:, j], run[f'{split}_labels'][:, j]


def _check_same_exams(members: list, task: str) -> None:
  first = members[0]
  for run in members[1:]:
    for split in ('val', 'test'):
      same = (np.array_equal(run[f'{split}_ids'], first[f'{split}_ids'])
              and np.array_equal(_column(run, split, task)[1], _column(first, split, task)[1]))
      if not same:
        raise ValueError(f'{run["workdir"]} and {first["workdir"]} hold different {split} exams or '
                         f'{task} labels: the runs of an ensemble need the same data.seed and '
                         'data.val_fraction (and the same MRNet release).')


def combine(workdirs: Sequence[str], *, threshold: float = 0.5, seed: int = 0,
            num_resamples: int = 100, resample_size: Optional[int] = 1000,
            percentiles: Sequence[float] = (5.0, 95.0), eps: float = 1e-3) -> dict:
  """The ensemble of the runs in ``workdirs`` (module doc); returns the ``results.json`` dict.

  Raises:
    FileNotFoundError: a workdir without ``predictions.npz``.
    ValueError: runs of one task with different val / test exams.
  """
  runs = [load_run(w) for w in workdirs]
  if not runs:
    raise ValueError('--runs names no run.')
  report = lambda s, y: mrnet_metrics.diagnosis_report(
      s, y, threshold=threshold, seed=seed, num_resamples=num_resamples,
      resample_size=resample_size, percentiles=percentiles)
  tasks = list(dict.fromkeys(t for run in runs for t in run['tasks']))
  out = {'task': 'mrnet_ensemble', 'runs': [os.path.abspath(w) for w in workdirs],
         'weights_fitted_on': 'val (held out from MRNet train)', 'threshold': threshold,
         'bootstrap': {'resamples': num_resamples, 'resample_size': resample_size,
                       'percentiles': list(percentiles), 'stratified': True},
         'tasks': {}}
  for task in tasks:
    members = [run for run in runs if task in run['tasks']]
    _check_same_exams(members, task)
    cols = {split: [_column(run, split, task) for run in members] for split in ('val', 'test')}
    probs = {split: np.stack([c[0] for c in cols[split]])[..., None] for split in cols}
    labels = {split: cols[split][0][1] for split in cols}
    weights = vote.fit_vote_weights(probs['val'], labels['val'][:, None], threshold, eps)[:, 0]
    accuracy = vote.classifier_accuracy(probs['val'], labels['val'][:, None], threshold)[:, 0]
    scores = {split: vote.soft_vote(probs[split], weights[:, None])[:, 0] for split in probs}
    out['tasks'][task] = {
        'classifiers': [{'workdir': run['workdir'], 'plane': run['plane'], 'weight': float(w),
                         'val_accuracy': float(a), 'test': report(p[:, 0], labels['test'])}
                        for run, w, a, p in zip(members, weights, accuracy, probs['test'])],
        'ensemble': {split: report(scores[split], labels[split]) for split in scores}}
  return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(
      prog='python -m contrastive_jax.projects.mrnet.ensemble',
      description='Weighted soft-voting ensemble of MRNet downstream runs (thesis Eq. 3.1-3.4, '
                  '4.19-4.20); writes OUT/results.json.')
  parser.add_argument('--runs', nargs='+', required=True, help='workdirs of finished runs')
  parser.add_argument('--out', required=True, help='directory for results.json')
  parser.add_argument('--threshold', type=float, default=0.5)
  parser.add_argument('--resamples', type=int, default=100, help='bootstrap resamples ([CODE]: 100)')
  parser.add_argument('--resample_size', type=int, default=1000, help='([CODE]: 1000; 0: N exams)')
  parser.add_argument('--seed', type=int, default=0, help='bootstrap seed')
  args = parser.parse_args(argv)
  try:
    results = combine(args.runs, threshold=args.threshold, seed=args.seed,
                      num_resamples=args.resamples, resample_size=args.resample_size or None)
  except (ValueError, OSError) as e:
    parser.exit(2, f'error: {e}\n')
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2)
  for task, r in results['tasks'].items():
    planes = ', '.join(f"{c['plane']} {c['weight']:.2f}" for c in r['classifiers'])
    print(f"{task} (weights {planes}): test {mrnet_metrics.describe(r['ensemble']['test'])}")
  print(f'(results in {os.path.join(args.out, "results.json")})')
  return results


if __name__ == '__main__':
  main(sys.argv[1:])
