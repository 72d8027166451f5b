r"""Starts a training run from an ml_collections config file.

  python -m launch --config=configs/adacon.py --workdir=/tmp/adacon
  python -m launch --config=configs/adacon.py:diabetes --workdir=/tmp/adacon_diabetes \
      --config.num_train_steps=2000 --config.loss.gamma_con=0.01

Any config field can be overridden with ``--config.<field>=value``; an unknown field is an error.
Re-running the same command with the same ``--workdir`` resumes from the latest checkpoint.

``config.task`` selects the trainer (default: the contrastive-regression trainer
``contrastive_jax.train.train_and_evaluate``); see :data:`TASKS`.
"""

import importlib
import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py), "
                                          "optionally followed by ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() before training: multi-process runs "
    "(TPU pods, SLURM and Open MPI are detected from the environment).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for explicit multi-process set-ups.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit set-up).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit set-up).")
flags.mark_flags_as_required(["config", "workdir"])

# ``config.task`` -> "module:function" of its trainer, ``trainer(config, workdir) -> results dict``;
# imported only when selected.
TASKS = {
    "regression": "contrastive_jax.train.loop:train_and_evaluate",
    "jigsaw": "contrastive_jax.train.pretext:train_pretext",
    "cowpro": "contrastive_jax.train.cowpro:train_cowpro",
}


def _trainer(task: str):
  if task not in TASKS:
    raise ValueError(f"Unknown `task`={task!r}; expected one of {sorted(TASKS)}.")
  module, _, name = TASKS[task].partition(":")
  return getattr(importlib.import_module(module), name)


def _summary(results: dict) -> str:
  """One line for the console: the test metrics of a regression run, else the results' scalars."""
  test = results.get("test")
  if isinstance(test, dict) and {"mae", "rmse", "r2", "pearson"} <= set(test):
    return (f"{results['method']} on {results['dataset']}: test MAE {test['mae']:.4f}, "
            f"RMSE {test['rmse']:.4f}, R2 {test['r2']:.4f}, Pearson {test['pearson']:.4f}")
  scalars = {k: v for k, v in results.items() if isinstance(v, (int, float, str))}
  return f"{results.get('task', 'run')} finished: " + ", ".join(f"{k}={v}" for k, v in scalars.items())


def _initialize_distributed() -> None:
  explicit = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
  if not _DISTRIBUTED.value and all(v is None for v in explicit):
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  ours = std_logging.getLogger("contrastive_jax")
  ours.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
            jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0:
    ours.setLevel(std_logging.WARNING)  # Progress from process 0 only; errors from every process.


def _configure_logging() -> None:
  """Our progress at INFO on stdout; third-party libraries (Orbax, JAX) only at WARNING and above."""
  logging.set_verbosity(logging.WARNING)
  ours = std_logging.getLogger("contrastive_jax")
  ours.setLevel(std_logging.INFO)
  ours.propagate = False
  if not ours.handlers:
    handler = std_logging.StreamHandler(sys.stdout)
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)


def _parse_flags(argv):
  """absl's flag parsing, with an override of a field the config lacks (which ml_collections reports
  as a bare KeyError / AttributeError traceback) turned into one ``error:`` line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    while isinstance(e, (AttributeError, KeyError)) and e.args and isinstance(e.args[0], Exception):
      e = e.args[0]  # AttributeError(KeyError(message)): the message
    detail = " ".join(str(e.args[0] if e.args else e).split())
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: a config override names a field the config does not have: {detail} "
             f"(overrides given: {', '.join(overrides)}). The fields are those of the config file "
             "and of contrastive_jax/train/defaults.py.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _configure_logging()
  _initialize_distributed()
  config = _CONFIG.value
  std_logging.getLogger("contrastive_jax").info("Config:\n%s", config)
  try:
    # Imported here so that `--help` and flag errors do not pay for importing JAX.
    train = _trainer(config.get("task", "regression"))
    results = train(config, _WORKDIR.value)
  except (ValueError, FloatingPointError, FileNotFoundError) as e:  # bad input: one clear line
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  import jax  # pylint: disable=g-import-not-at-top
  if results.get("status") != "stopped" and jax.process_index() == 0:  # Process 0 reports.
    print(f"{_summary(results)} (results in {_WORKDIR.value}/results.json)", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
