"""AgeDB-DIR / IMDB-WIKI-DIR: facial age regression in the layout of the DIR benchmark.

The deep-imbalanced-regression benchmark of Yang et al. (ICML 2021) ships one meta file per dataset,
``agedb.csv`` / ``imdb_wiki.csv`` with columns ``age,path,split`` (``split`` in train / val / test,
``path`` relative to the data folder); ACCon (Zhao et al., AAAI 2025), SupReMix, Rank-N-Contrast,
ConR and RankSim all read it. Expected layout::

    root/agedb.csv            age,path,split      (AgeDB-DIR: 12,208 / 2,140 / 2,140)
    root/AgeDB/0_MariaCallas_35_f.jpg ...
    root/imdb_wiki.csv        age,path,split      (IMDB-WIKI-DIR: 191,500 / 11,000 / 11,000)
    root/imdb_crop/..., root/wiki_crop/...

Two split modes (ACCon "Datasets"):

* ``'balanced'`` -- the benchmark's own split column: val and test have a balanced label
  distribution ("AgeDB-DIR", "IMDB-WIKI-DIR").
* ``'natural'`` -- "the same dataset splitting ratio but randomized the division of training,
  validation, and test datasets, thereby preserving similar label distributions across all three
  sets" ("AgeDB-Natural", "IMDB-WIKI-Natural"): all rows are permuted with ``seed`` and cut into
  parts of the balanced split's sizes.

Images are decoded lazily as RGB uint8 ``[N, S, S, 3]``, ``S = image_size`` (224, the DIR
benchmark's input size; centre crop + bilinear resize).
"""

from __future__ import annotations

import os

import numpy as np

from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.sources import base
from contrastive_jax.data.sources import csv_images

DATASETS = {'agedb': 'agedb.csv', 'imdb_wiki': 'imdb_wiki.csv'}
SPLIT_MODES = ('balanced', 'natural')


def natural_parts(sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
  """A seeded random partition of ``sum(sizes)`` rows into parts of the given sizes (sorted)."""
  total = sum(sizes.values())
  perm = np.random.default_rng([int(seed), 2]).permutation(total)
  parts, start = {}, 0
  for part in ('train', 'val', 'test'):
    parts[part] = np.sort(perm[start:start + sizes[part]])
    start += sizes[part]
  return parts


def load_dir_benchmark(root: str | os.PathLike, *, seed: int = 0, dataset: str = 'agedb',
                       split_mode: str = 'balanced', csv_path: str | os.PathLike | None = None,
                       image_size=224, check_files: bool = True, workers: int = 1) -> Dataset:
  """Loads AgeDB-DIR or IMDB-WIKI-DIR (balanced) or their natural-split versions.

  Args:
    root: the data folder holding the meta CSV and the image folders it names.
    seed: seed of the natural split (unused by the balanced one).
    dataset: ``'agedb'`` or ``'imdb_wiki'``.
    split_mode: ``'balanced'`` (the benchmark's split column) or ``'natural'`` (random, same sizes).
    csv_path: the meta file; default ``root/agedb.csv`` or ``root/imdb_wiki.csv``.
    image_size: output size (int or ``(height, width)``); 224 as in the DIR benchmark.
    check_files: check at load time that every image exists and is complete (not truncated).
    workers: decoding threads per batch.

  Returns:
    ``Dataset`` named ``'agedb_dir'`` / ``'imdb_wiki_dir'`` (balanced) or ``'agedb_natural'`` /
    ``'imdb_wiki_natural'``, kind ``'image'``, ``y`` = age in years (float32).

  Raises:
    ValueError: unknown ``dataset`` / ``split_mode``, bad rows (NaN / inf / non-numeric age, unknown
      split), an empty split.
    FileNotFoundError: the meta CSV or an image is missing (named).
  """
  if dataset not in DATASETS:
    raise ValueError(f'dataset must be one of {sorted(DATASETS)}, got {dataset!r}.')
  if split_mode not in SPLIT_MODES:
    raise ValueError(f'split_mode must be one of {SPLIT_MODES}, got {split_mode!r}.')
  root = base.require_dir(root, f'{dataset} data folder')
  csv_path = os.fspath(csv_path) if csv_path is not None else os.path.join(root, DATASETS[dataset])
  table = csv_images.read_table(csv_path, ['age', 'path', 'split'])
  paths = csv_images.resolve_paths(table['path'], root, check_files=check_files)
  ages = csv_images.parse_labels(table['age'], csv_path=csv_path, column='age', names=paths)
  parts = csv_images.parse_splits(table['split'], csv_path=csv_path, column='split')
  for part, idx in parts.items():
    if len(idx) == 0:
      raise ValueError(f'{csv_path}: the {part} split is empty.')
  if split_mode == 'natural':
    parts = natural_parts({k: len(v) for k, v in parts.items()}, seed)
  name = f'{dataset}_{"dir" if split_mode == "balanced" else "natural"}'
  return csv_images.image_dataset(name, paths, ages, parts, image_size=image_size, channels=3,
                                  workers=workers, check_files=check_files)
