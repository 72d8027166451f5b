"""Evaluation: regression metrics, shot splits, frozen-feature probes, CV, diagnosis metrics, analysis.

* ``metrics``         MAE / RMSE / R^2 / Pearson / Spearman / G-mean; many / medium / few-shot splits
* ``probe``           kNN regression and the closed-form ridge probe
* ``knn``             InstDisc weighted kNN classification (k=200, T=0.07) and top-1 accuracy;
                      the unweighted l2 k-NN of the thesis' long-tailed evaluation (k = 1, 10)
* ``linear_probe``    optax linear / logistic probe; best-by-validation selection
* ``crossval``        k-fold splits (stratified, grouped), fold-model ensemble, CV driver
* ``classification``  ROC AUC, sensitivity / specificity, Youden threshold, bootstrap intervals
* ``analysis``        cosine-vs-label-distance Pearson, uniformity / alignment / tolerance, PNG plots
* ``hessian``         Hessian eigenspectrum by Lanczos on Hessian-vector products
"""

from contrastive_jax.evaluate.analysis import alignment
from contrastive_jax.evaluate.analysis import angular_positions
from contrastive_jax.evaluate.analysis import cosine_label_pearson
from contrastive_jax.evaluate.analysis import pair_cosine_label_distance
from contrastive_jax.evaluate.analysis import plot_angular
from contrastive_jax.evaluate.analysis import plot_similarity_vs_label_distance
from contrastive_jax.evaluate.analysis import plot_tsne
from contrastive_jax.evaluate.analysis import tolerance
from contrastive_jax.evaluate.analysis import tsne_embedding
from contrastive_jax.evaluate.analysis import uniformity
from contrastive_jax.evaluate.classification import BootstrapCI
from contrastive_jax.evaluate.classification import binary_metrics
from contrastive_jax.evaluate.classification import bootstrap_ci
from contrastive_jax.evaluate.classification import roc_auc
from contrastive_jax.evaluate.classification import sensitivity_specificity
from contrastive_jax.evaluate.classification import youden_threshold
from contrastive_jax.evaluate.crossval import CrossValResult
from contrastive_jax.evaluate.crossval import cross_validate
from contrastive_jax.evaluate.crossval import fold_ensemble
from contrastive_jax.evaluate.crossval import kfold_indices
from contrastive_jax.evaluate.hessian import hessian_eigenspectrum
from contrastive_jax.evaluate.hessian import hessian_vector_product
from contrastive_jax.evaluate.hessian import lanczos
from contrastive_jax.evaluate.hessian import tridiagonal_ritz
from contrastive_jax.evaluate.knn import knn_class_scores
from contrastive_jax.evaluate.knn import knn_classify
from contrastive_jax.evaluate.knn import knn_top1
from contrastive_jax.evaluate.knn import top1_accuracy
from contrastive_jax.evaluate.knn import topk_accuracy
from contrastive_jax.evaluate.knn import knn_topk
from contrastive_jax.evaluate.knn import l2_knn_classify
from contrastive_jax.evaluate.knn import l2_knn_top1
from contrastive_jax.evaluate.knn import weighted_knn_scores
from contrastive_jax.evaluate.linear_probe import LinearProbe
from contrastive_jax.evaluate.linear_probe import best_index
from contrastive_jax.evaluate.linear_probe import fit_linear_probe
from contrastive_jax.evaluate.linear_probe import linear_probe
from contrastive_jax.evaluate.linear_probe import linear_probe_accuracy
from contrastive_jax.evaluate.linear_probe import linear_probe_topk
from contrastive_jax.evaluate.linear_probe import probe_outputs
from contrastive_jax.evaluate.linear_probe import probe_predict
from contrastive_jax.evaluate.linear_probe import select_best
from contrastive_jax.evaluate.metrics import SHOT_SUBSETS
from contrastive_jax.evaluate.metrics import regression_metrics
from contrastive_jax.evaluate.metrics import shot_metrics
from contrastive_jax.evaluate.probe import fit_standardizer
from contrastive_jax.evaluate.probe import knn_regression
from contrastive_jax.evaluate.probe import ridge_probe
