"""File-based data sources, chosen by name; each returns a ``contrastive_jax.data.demo.Dataset``.

``SOURCES`` maps a name to ``'module:function'``; the module is imported only when the source is
loaded (``load_source``), so importing this package loads no decoder library (pydicom, OpenCV,
tensorflow_datasets). ``contrastive_jax.data.load_dataset(name, seed, **kwargs)`` dispatches here
for every name that is not a bundled demo dataset.

=================  ===============================================================================
name               data
=================  ===============================================================================
``tfds``           any TFDS catalogue dataset by name and split strings (``tfds_source``)
``csv_images``     local images (PNG / JPEG / DICOM / NPY) listed in a CSV ``path,label[,split|fold]``
``dir_benchmark``  AgeDB-DIR / IMDB-WIKI-DIR (``dataset='agedb'|'imdb_wiki'``, balanced / natural)
``fashion_mnist``  Fashion-MNIST IDX files (default root: Debian's /usr/share/datasets/fashion-mnist)
``echonet``        EchoNet-Dynamic videos (``FileList.csv`` + ``Videos/*.avi``)
``mrnet``          MRNet knee MRI (per-plane ``.npy`` volumes + label CSVs)
``chaos``          CHAOS MR (DICOM series + PNG masks)
``sts_b``          STS-B-DIR sentence pairs (GLUE TSV files) embedded with a GloVe-format word-vector file
=================  ===============================================================================
"""

from __future__ import annotations

import importlib
from typing import Callable

SOURCES: dict[str, str] = {
    'tfds': 'contrastive_jax.data.sources.tfds_source:load_tfds',
    'csv_images': 'contrastive_jax.data.sources.csv_images:load_csv_images',
    'dir_benchmark': 'contrastive_jax.data.sources.dir_benchmark:load_dir_benchmark',
    'fashion_mnist': 'contrastive_jax.data.sources.idx:load_fashion_mnist',
    'echonet': 'contrastive_jax.data.sources.echonet:load_echonet',
    'mrnet': 'contrastive_jax.data.sources.mrnet:load_mrnet',
    'chaos': 'contrastive_jax.data.sources.chaos:load_chaos',
    'sts_b': 'contrastive_jax.data.sources.sts_b:load_sts_b',
}


def get_loader(name: str) -> Callable:
  """Imports and returns the loader registered under ``name``.

  Raises:
    ValueError: ``name`` is not in ``SOURCES`` (the message lists the known names).
  """
  if name not in SOURCES:
    raise ValueError(f'Unknown data source {name!r}; available: {", ".join(SOURCES)}.')
  module_name, function_name = SOURCES[name].split(':')
  return getattr(importlib.import_module(module_name), function_name)


def load_source(name: str, seed: int = 0, **kwargs):
  """``get_loader(name)(seed=seed, **kwargs)``: the ``Dataset`` of a registered source."""
  return get_loader(name)(seed=seed, **kwargs)


__all__ = ['SOURCES', 'get_loader', 'load_source']
