"""Data: bundled demo datasets, deterministic resumable batching, on-device augmentation.

* ``demo``      ``load_dataset(name, seed)`` -> ``Dataset`` of float32 ``Split``s (no network).
* ``pipeline``  ``train_batch`` (pure in ``(seed, step)``, per-process slices) and ``eval_batches``.
* ``augment``   jit-able augmentation with explicit PRNG keys; ``make_views`` for multi-view losses.
* ``sources``   file-based sources by name (``SOURCES``: tfds, csv_images, dir_benchmark,
                fashion_mnist, echonet, mrnet, chaos), lazily decoded; ``load_dataset`` dispatches
                to them.

Importing loads nothing; datasets are built when ``load_dataset`` is called.
"""

from contrastive_jax.data.augment import augment_images
from contrastive_jax.data.augment import augment_tabular
from contrastive_jax.data.augment import get_augment_fn
from contrastive_jax.data.augment import make_views
from contrastive_jax.data.demo import DATASETS
from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.demo import load_dataset
from contrastive_jax.data.demo import Split
from contrastive_jax.data.pipeline import eval_batches
from contrastive_jax.data.pipeline import steps_per_epoch
from contrastive_jax.data.pipeline import train_batch
from contrastive_jax.data.sources import SOURCES
from contrastive_jax.data.sources.base import LazyArray

__all__ = [
    'DATASETS',
    'Dataset',
    'LazyArray',
    'SOURCES',
    'Split',
    'augment_images',
    'augment_tabular',
    'eval_batches',
    'get_augment_fn',
    'load_dataset',
    'make_views',
    'steps_per_epoch',
    'train_batch',
]
