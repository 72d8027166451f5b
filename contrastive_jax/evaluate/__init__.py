"""Evaluation: regression metrics."""

from contrastive_jax.evaluate.metrics import regression_metrics
