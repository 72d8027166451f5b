r"""Starts a training run from an ml_collections config file.

  python -m launch --config=configs/adacon.py --workdir=/tmp/adacon
  python -m launch --config=configs/adacon.py:diabetes --workdir=/tmp/adacon_diabetes \
      --config.num_train_steps=2000 --config.loss.gamma_con=0.01

Any config field can be overridden with ``--config.<field>=value``; an unknown field is an error.
Re-running the same command with the same ``--workdir`` resumes from the latest checkpoint.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py), "
                                          "optionally followed by ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
flags.mark_flags_as_required(["config", "workdir"])


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _configure_logging()
  # Imported here so that `--help` and flag errors do not pay for importing JAX.
  from contrastive_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  std_logging.getLogger("contrastive_jax").info("Config:\n%s", config)
  try:
    results = train_and_evaluate(config, _WORKDIR.value)
  except (ValueError, FloatingPointError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  if results.get("status") != "stopped":
    test = results["test"]
    print(f"{results['method']} on {results['dataset']}: test MAE {test['mae']:.4f}, "
          f"RMSE {test['rmse']:.4f}, R2 {test['r2']:.4f}, Pearson {test['pearson']:.4f} "
          f"(results in {_WORKDIR.value}/results.json)", flush=True)


if __name__ == "__main__":
  app.run(main)
