"""Evaluation: regression metrics and many / medium / few-shot splits."""

from contrastive_jax.evaluate.metrics import SHOT_SUBSETS
from contrastive_jax.evaluate.metrics import regression_metrics
from contrastive_jax.evaluate.metrics import shot_metrics
from contrastive_jax.evaluate.probe import knn_regression
from contrastive_jax.evaluate.probe import ridge_probe
