r"""External validation: the fold models' average prediction on a second data set.

AdaCon (Dai et al., TMI 2023) validates its cross-validated models on data from another machine or
hospital: Sec. IV-A7, Tables VI (Fujifilm X-rays) and VII (CGMH): "We use the trained models from
our four-fold cross validation experiments ... to run inference, taking the average output of the
four models as our final prediction"; Sec. IV-B7, Table XIII (CAMUS, "use the same parameters and
data processing pipeline"). :func:`external_validation` does that for regression runs of this
library:

* each fold run (a workdir of ``train_and_evaluate``) contributes its best state (``best/``, the
  state its test metrics came from; ``state='latest'``: ``checkpoints/``) and its target
  normalisation (``results.json``: the head predicts ``(y - mean) / std`` of ITS training labels,
  so each fold's output is mapped back to label units with its own mean and std);
* the external set is read by the training config's data source (``data.name``) with the training
  config's ``data.kwargs`` (image size, channels, frames, ...) minus the cross-validation ``fold``,
  updated by ``external_kwargs`` and rooted at ``external_root``; ``split='all'`` evaluates every
  row, whichever split the source assigns it to (a list without a split column is partitioned
  70/15/15 by the source, all of which is used), or one named split;
* the model is rebuilt from the training config, which must give the checkpoints' model (its
  ``model`` section and ``data.normalize`` are compared with each checkpoint's recorded config);
  inputs go through the evaluation path of training (input normalisation inside the model, the
  first clip of a video, the middle slice of a volume);
* the ensemble is the plain mean of the fold models' predictions (``evaluate.crossval.
  fold_ensemble``); its MAE / RMSE / R2 / Pearson, each fold model's, and the predictions are
  written to ``<output>/results.json`` and ``<output>/predictions.npz``.

Command line (``--config`` with the same ``--config.*`` overrides as the fold runs)::

  python -m contrastive_jax.train.external --config=configs/adacon.py:bmd \
    --workdirs=runs/bmd/fold0,runs/bmd/fold1,runs/bmd/fold2,runs/bmd/fold3 \
    --external_root=/data/fujifilm --external_kwargs='{"csv_path": "fujifilm.csv"}' \
    --output=runs/bmd/fujifilm
"""

from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np

from contrastive_jax import models
from contrastive_jax.evaluate import regression_metrics
from contrastive_jax.evaluate.crossval import fold_ensemble
from contrastive_jax.train import loop
from contrastive_jax.train import run as run_lib
from contrastive_jax.train.checkpoint import load_checkpoint
from contrastive_jax.train.step import AXIS
from contrastive_jax.train.step import make_predict_step

log = logging.getLogger("contrastive_jax")

SPLITS = ("all", "train", "val", "test")
STATES = ("best", "latest")
# Keys of ``data.kwargs`` that select the training run's part of its own data set, not a format.
CV_KWARGS = ("fold",)


class Variables(NamedTuple):
  """The ``state.params`` / ``state.batch_stats`` that ``make_predict_step`` reads."""
  params: dict
  batch_stats: dict


def external_config(config: ml_collections.ConfigDict, root: str, name: Optional[str] = None,
                    kwargs: Optional[dict] = None) -> ml_collections.ConfigDict:
  """A copy of the training ``config`` whose data section reads the external set: source ``name``
  (default ``data.name``), ``data.kwargs`` without :data:`CV_KWARGS` updated by ``kwargs``,
  ``data.root = root``, the whole training split kept (``data.train_fraction = 1``)."""
  if not root:
    raise ValueError("The external data set needs a root directory (external_root).")
  out = ml_collections.ConfigDict(config.to_dict())
  data_kwargs = {k: v for k, v in dict(config.data.kwargs).items() if k not in CV_KWARGS}
  data_kwargs.update(kwargs or {})
  out.data.kwargs = ml_collections.ConfigDict(data_kwargs)
  out.data.name = name or config.data.name
  out.data.root = os.fspath(root)
  out.data.train_fraction = 1.0
  return out


def read_fold(workdir: str, state: str = "best") -> tuple:
  """``(Variables, target mean, target std, recorded config identity, checkpoint directory)`` of one
  finished regression run."""
  if state not in STATES:
    raise ValueError(f"`state`={state!r}; expected one of {STATES}.")
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: the fold run in {workdir} has not finished.")
  with open(path, encoding="utf-8") as f:
    results = json.load(f)
  norm = results.get("target_normalization")
  if norm is None:
    raise ValueError(f"{path} has no 'target_normalization' (a run written before it was "
                     "recorded): re-run its test evaluation with this version.")
  directory = os.path.join(workdir, "best" if state == "best" else "checkpoints")
  if state == "best" and not os.path.isdir(directory):
    directory = os.path.join(workdir, "checkpoints")
  tree, meta = load_checkpoint(directory)
  variables = Variables(tree["params"], tree.get("batch_stats") or {})
  return variables, float(norm["mean"]), float(norm["std"]), meta.get("config", {}), directory


def check_same_model(identity: dict, recorded: dict, where: str) -> None:
  """Refuses a checkpoint whose recorded ``model`` / ``data.normalize`` differ from the config's."""
  pick = lambda c: {"model": c.get("model", {}),
                    "data.normalize": c.get("data", {}).get("normalize", "")}
  differences = run_lib.config_differences(pick(recorded), pick(identity))
  if differences:
    raise ValueError(f"{where} was trained with another model than --config gives:\n  "
                     + "\n  ".join(differences) + "\nPass the fold runs' config and overrides.")


def _splits(dataset, split: str) -> list:
  if split not in SPLITS:
    raise ValueError(f"`split`={split!r}; expected one of {SPLITS}.")
  return [dataset.train, dataset.val, dataset.test] if split == "all" else [getattr(dataset, split)]


def external_validation(config: ml_collections.ConfigDict, workdirs: Sequence[str],
                        external_root: str, *, external_name: Optional[str] = None,
                        external_kwargs: Optional[dict] = None, split: str = "all",
                        state: str = "best", output: Optional[str] = None) -> dict:
  """The fold-average ensemble of ``workdirs``' models on an external data set (module doc).

  Args:
    config: the fold runs' training config (with the same overrides).
    workdirs: the fold runs' workdirs (one is allowed: a single model, e.g. EchoNet's).
    external_root, external_name, external_kwargs: the external set (:func:`external_config`).
    split: 'all' (every row) or one split of the external source.
    state: 'best' (the fold runs' reported states) or 'latest'.
    output: directory for ``results.json`` and ``predictions.npz`` (None: nothing written).

  Returns:
    ``{'protocol': 'external_validation', 'dataset', 'split', 'num_examples', 'folds': [workdirs],
    'state', 'ensemble': metrics, 'per_fold': [metrics], 'per_fold_mean': metrics}`` where metrics
    are ``regression_metrics`` (MAE, RMSE, R2, Pearson, ...) in label units.
  """
  if not workdirs:
    raise ValueError("No fold workdirs given.")
  ext = external_config(config, external_root, external_name, external_kwargs)
  dataset = loop.load_data(ext)
  parts = _splits(dataset, split)
  y = np.concatenate([np.asarray(p.y, np.float64) for p in parts])
  mesh = run_lib.make_mesh()
  batch_size = int(config.get("eval_batch_size") or config.batch_size)
  run_lib.check_divisible(mesh, eval_batch_size=batch_size)
  model = models.build_model(config.model, AXIS, task="regression",
                             input_normalization=loop.model_input_normalization(config, dataset))
  preprocess = {"video": loop.video_eval_preprocess(config) if dataset.kind == "video" else None,
                "volume": loop.middle_slice}.get(dataset.kind)
  predict = make_predict_step(model, mesh, "prediction", preprocess)
  identity = run_lib.config_identity(config)
  predictions, per_fold, sources = [], [], []
  for workdir in workdirs:
    variables, mean, std, recorded, directory = read_fold(workdir, state)
    check_same_model(identity, recorded, directory)
    outputs = [loop.split_outputs(predict, variables, part, batch_size, mesh) for part in parts]
    pred = np.concatenate(outputs).astype(np.float64) * std + mean
    predictions.append(pred)
    per_fold.append(regression_metrics(pred, y))
    sources.append(directory)
    log.info("External set, fold model %s: MAE %.4f", directory, per_fold[-1]["mae"])
  ensemble = fold_ensemble(predictions)
  results = {"protocol": "external_validation", "dataset": dataset.name, "split": split,
             "num_examples": int(y.shape[0]), "folds": [os.fspath(w) for w in workdirs],
             "checkpoints": sources, "state": state,
             "ensemble": regression_metrics(ensemble, y), "per_fold": per_fold,
             "per_fold_mean": {k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}}
  if output and jax.process_index() == 0:
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    np.savez(os.path.join(output, "predictions.npz"), y=y, ensemble=ensemble,
             per_fold=np.stack(predictions))
  return results


def main(argv) -> None:  # pragma: no cover - exercised by a subprocess test
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  values = flags.FLAGS
  try:
    kwargs = json.loads(values.external_kwargs) if values.external_kwargs else {}
  except json.JSONDecodeError as e:
    raise SystemExit(f"error: --external_kwargs is not JSON: {e}") from e
  try:
    results = external_validation(
        values.config, values.workdirs, values.external_root, external_name=values.external_name,
        external_kwargs=kwargs, split=values.split, state=values.state, output=values.output)
  except (ValueError, OSError) as e:
    raise SystemExit(f"error: {e}") from e
  m = results["ensemble"]
  print(f"External validation of {len(results['folds'])} fold model(s) on {results['dataset']} "
        f"({results['num_examples']} examples): MAE {m['mae']:.4f}, RMSE {m['rmse']:.4f}, "
        f"R2 {m['r2']:.4f}, Pearson {m['pearson']:.4f} (results in {values.output}/results.json)")


def _define_flags() -> None:  # pragma: no cover
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "The fold runs' config file[:variant].",
                                  lock_config=True)
  flags.DEFINE_list("workdirs", None, "The fold runs' workdirs, comma-separated.")
  flags.DEFINE_string("external_root", None, "Folder of the external data set.")
  flags.DEFINE_string("external_name", None, "Its data source (default: the config's data.name).")
  flags.DEFINE_string("external_kwargs", "", "JSON object updating the config's data.kwargs.")
  flags.DEFINE_enum("split", "all", SPLITS, "Which rows of the external set: all, or one split.")
  flags.DEFINE_enum("state", "best", STATES, "The fold runs' best or latest state.")
  flags.DEFINE_string("output", None, "Directory for results.json and predictions.npz.")
  flags.mark_flags_as_required(["config", "workdirs", "external_root", "output"])


if __name__ == "__main__":  # pragma: no cover
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
