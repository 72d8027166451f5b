"""CoWPro's five-fold cross-validation on CHAOS (thesis Sec. 7.5.1): the fold runs combined.

One run per fold (``configs/cowpro.py:chaos`` with ``--config.data.fold=k``, k = 0..4) writes its
1-shot Dice per organ to ``<workdir>/results.json`` with ``'cross_validation': {'fold',
'num_folds', 'seed'}``. :func:`combine_folds` reads those files and reports the Dice of every fold
and, per organ and for the organ mean, the mean and standard deviation over the folds (the thesis'
Tables 7.1-7.4 give the fold means, in percent)::

  python -m contrastive_jax.projects.cowpro.crossval runs/cowpro/fold0 ... runs/cowpro/fold4 \
      --output=runs/cowpro/crossval.json

The standard deviation is the sample one (``ddof=1``) over the folds; Dice values stay fractions in
[0, 1] as in each run's results.json (``summary`` prints them in percent, as the tables do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np


def read_fold(workdir: str) -> dict:
  """The ``results.json`` of one finished CoWPro fold run.

  Raises:
    FileNotFoundError: no results.json (the run has not finished), naming the workdir.
    ValueError: not a CoWPro result, or one without ``cross_validation`` (a run of
      ``data.num_folds = 0``).
  """
  path = os.path.join(workdir, 'results.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: the fold run in {workdir} has not finished '
                            '(re-run its command to resume it).')
  with open(path, encoding='utf-8') as f:
    results = json.load(f)
  if results.get('task') != 'cowpro' or 'dice' not in results.get('test', {}):
    raise ValueError(f'{path} is not the result of a CoWPro run (no test.dice).')
  if 'cross_validation' not in results:
    raise ValueError(f'{path} is not a cross-validation fold: its run had data.num_folds=0 (set '
                     '--config.data.num_folds=5 --config.data.fold=k).')
  return results


def combine_folds(workdirs: Sequence[str], require_all: bool = True) -> dict:
  """Dice per fold and mean +- std over the folds of CoWPro fold runs.

  Args:
    workdirs: the fold runs' workdirs (any order).
    require_all: refuse a set that lacks some fold of ``num_folds``.

  Returns:
    ``{'num_folds', 'seed', 'folds': [{'fold', 'workdir', 'dice': {organ: d}, 'mean_dice',
    'eval_scans'}] (by fold), 'organs', 'mean': {organ: m, 'mean_dice': m}, 'std': {...},
    'summary': {organ: '75.77 +- 1.23', ...}}`` (``summary`` in percent).

  Raises:
    ValueError: no workdirs, folds of different cross-validations (``num_folds`` / ``seed``), a fold
      given twice, missing folds (with ``require_all``), or runs with different organ sets.
  """
  if not workdirs:
    raise ValueError('No fold workdirs given.')
  runs = [(w, read_fold(w)) for w in workdirs]
  splits = {(r['cross_validation']['num_folds'], r['cross_validation']['seed']) for _, r in runs}
  if len(splits) > 1:
    raise ValueError(f'The runs come from different cross-validations (num_folds, seed): '
                     f'{sorted(splits)}.')
  (num_folds, seed), = splits
  by_fold = {}
  for workdir, results in runs:
    fold = results['cross_validation']['fold']
    if fold in by_fold:
      raise ValueError(f'Fold {fold} is given twice: {by_fold[fold][0]} and {workdir}.')
    by_fold[fold] = (workdir, results)
  missing = sorted(set(range(num_folds)) - set(by_fold))
  if missing and require_all:
    raise ValueError(f'Fold(s) {missing} of {num_folds} are missing; give every fold run '
                     '(require_all=False combines a subset).')
  organs = list(runs[0][1]['test']['dice'])
  folds = []
  for fold in sorted(by_fold):
    workdir, results = by_fold[fold]
    if list(results['test']['dice']) != organs:
      raise ValueError(f'{workdir} reports the organs {list(results["test"]["dice"])}, another '
                       f'fold {organs}.')
    folds.append({'fold': fold, 'workdir': workdir, 'dice': dict(results['test']['dice']),
                  'mean_dice': results['test']['mean_dice'],
                  'eval_scans': results.get('eval_scans')})
  table = {organ: np.array([f['dice'][organ] for f in folds], np.float64) for organ in organs}
  table['mean_dice'] = np.array([f['mean_dice'] for f in folds], np.float64)
  ddof = 1 if len(folds) > 1 else 0
  mean = {k: float(np.mean(v)) for k, v in table.items()}
  std = {k: float(np.std(v, ddof=ddof)) for k, v in table.items()}
  return {'num_folds': num_folds, 'seed': seed, 'missing_folds': missing, 'folds': folds,
          'organs': organs, 'mean': mean, 'std': std,
          'summary': {k: f'{100 * mean[k]:.2f} +- {100 * std[k]:.2f}' for k in table}}


def format_table(combined: dict) -> str:
  """The combined Dice as a text table (percent): one row per fold, then mean and std."""
  keys = combined['organs'] + ['mean_dice']
  lines = ['fold  ' + '  '.join(f'{k:>13s}' for k in keys)]
  for f in combined['folds']:
    values = [f['dice'][k] for k in combined['organs']] + [f['mean_dice']]
    lines.append(f'{f["fold"]:<4d}  ' + '  '.join(f'{100 * v:13.2f}' for v in values))
  for name in ('mean', 'std'):
    lines.append(f'{name:<4s}  ' + '  '.join(f'{100 * combined[name][k]:13.2f}' for k in keys))
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m contrastive_jax.projects.cowpro.crossval',
      description='Combines the results.json of CoWPro fold runs: Dice per fold and mean +- std '
                  'per organ.')
  parser.add_argument('workdirs', nargs='+', help='the fold runs\' workdirs')
  parser.add_argument('--output', default='', help='write the combined result as JSON here')
  parser.add_argument('--allow_missing', action='store_true',
                      help='combine a subset of the folds')
  args = parser.parse_args(argv)
  try:
    combined = combine_folds(args.workdirs, require_all=not args.allow_missing)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, 'w', encoding='utf-8') as f:
      json.dump(combined, f, indent=2)
  print(format_table(combined))
  return 0


if __name__ == '__main__':
  sys.exit(main())
