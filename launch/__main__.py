r"""Starts a training run from an ml_collections config file.

  python -m launch --config=configs/adacon.py --workdir=/tmp/adacon
  python -m launch --config=configs/adacon.py:diabetes --workdir=/tmp/adacon_diabetes \
      --config.num_train_steps=2000 --config.loss.gamma_con=0.01

Any config field can be overridden with ``--config.<field>=value``; an unknown field is an error.
``--config.method=<m>`` on a paper config runs its recipe (data, model, optimiser) with method ``m``
at ``m``'s paper defaults: the file's options of its own method are dropped (logged), see
:func:`switch_method`.
Re-running the same command with the same ``--workdir`` resumes from the latest checkpoint; a run
that already finished reports its results and writes nothing. A bad command line, config or workdir
stops with one ``error:`` line (exit status 2), before any data are read.

``config.task`` selects the trainer (default: the contrastive-regression trainer
``contrastive_jax.train.train_and_evaluate``); see :data:`TASKS`.
"""

import ast
import difflib
import importlib
import importlib.util
import logging as std_logging
import os
import sys
import tempfile

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
    "finetune": "contrastive_jax.train.finetune:train_finetune",
    "jigsaw": "contrastive_jax.projects.jigsaw.task:train_pretext",
    "cowpro": "contrastive_jax.projects.cowpro.task:train_cowpro",
    "mrnet": "contrastive_jax.projects.mrnet.task:train_downstream",
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


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
USAGE = ("usage: python -m launch --config=configs/<name>.py[:<variant>] --workdir=<dir> "
         "[--config.<field>=<value> ...]\n(python -m launch --help lists the configs and their "
         "variants.)")
_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


class LaunchError(Exception):
  """A bad command line or config: reported as one ``error:`` line (see :func:`_exit_with`)."""


def _exit_with(message: str, usage: bool = False) -> None:
  """Exits with status 2 after one ``error:`` line on stderr (the usage lines above it if asked)."""
  if usage:
    print(USAGE, file=sys.stderr)
  print(f"error: {str(message).strip()}", file=sys.stderr, flush=True)
  sys.exit(2)


def config_variants(path: str):
  """``(variants, default variant, first docstring line)`` of a config file, read without running
  it (so without importing JAX): its literal ``VARIANTS`` tuple (None if it has none) and the
  default of ``get_config``'s argument."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  variants = default = None
  for node in tree.body:
    targets = getattr(node, "targets", ())
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "VARIANTS" for t in targets):
      try:
        variants = tuple(ast.literal_eval(node.value))
      except ValueError:
        variants = None
    elif isinstance(node, ast.FunctionDef) and node.name == "get_config" and node.args.defaults:
      try:
        default = ast.literal_eval(node.args.defaults[-1])
      except ValueError:
        default = None
  doc = (ast.get_docstring(tree) or "").strip().splitlines()
  return variants, default, doc[0] if doc else ""


def _config_files() -> list:
  if not os.path.isdir(CONFIG_DIR):
    return []
  return sorted(os.path.join(CONFIG_DIR, name) for name in os.listdir(CONFIG_DIR)
                if name.endswith(".py") and not name.startswith("_"))


def configs_help() -> str:
  """The configs in ``configs/``, each with its variants (the default marked *) and summary."""
  lines = [f"Configs (--config={os.path.relpath(CONFIG_DIR)}/<name>.py[:<variant>]; the "
           "default variant is marked *):"]
  for path in _config_files():
    try:
      variants, default, doc = config_variants(path)
    except (OSError, SyntaxError) as e:
      lines.append(f"  {os.path.basename(path):14s} (unreadable: {e})")
      continue
    names = ", ".join(v + ("*" if v == default else "") for v in variants or ())
    lines.append(f"  {os.path.basename(path):14s} {names or '(no variants)'}")
    if doc:
      lines.append(f"  {'':14s}   {doc}")
  return "\n".join(lines)


def _print_help() -> None:
  print((__doc__ or "").strip() + "\n")
  print("Flags:")
  print(flags.FLAGS.main_module_help() or flags.FLAGS.module_help(sys.modules[__name__]))
  print("\n" + configs_help())
  print("\n(--helpfull lists every flag, those of absl and JAX included.)")


def _config_argument(argv) -> str:
  """The value of the last ``--config`` / ``--config=`` argument, or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def check_config_argument(value: str) -> None:
  """Raises :class:`LaunchError` when ``--config=<path>[:<variant>]`` names no file, or a variant
  that the file's ``VARIANTS`` lacks (listing the valid ones)."""
  path, has_variant, variant = value.partition(":")
  if not os.path.isfile(path):
    available = ", ".join(os.path.relpath(p) for p in _config_files())
    raise LaunchError(f"--config={value}: the config file {path!r} does not exist"
                       + (f" (available: {available})." if available else "."))
  try:
    variants, default, _ = config_variants(path)
  except SyntaxError as e:
    raise LaunchError(f"--config={value}: {path} is not valid Python: {e}") from e
  if has_variant and variants is not None and variant not in variants:
    close = difflib.get_close_matches(variant, variants, n=1)
    raise LaunchError(f"--config={value}: Unknown config variant {variant!r} of {path}"
                       + (f" (did you mean {close[0]!r}?)" if close else "")
                       + f"; its variants: {', '.join(variants)} (default {default!r}).")


def _one_line(error: BaseException) -> str:
  """The message of a flag-parsing error, one line (ml_collections embeds a whole traceback in the
  message of an error raised while loading a config: its last line is the error)."""
  text = str(error)
  if "Traceback (most recent call last)" in text:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text
  return "; ".join(line.strip() for line in text.strip().splitlines())


def _parse_flags(argv):
  """absl's flag parsing, with every bad command line (no arguments, a missing config file or
  variant, an override of a field the config lacks or of the wrong type) reported as one ``error:``
  line instead of a traceback, and ``--help`` listing the configs (exit status 0)."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    try:
      _print_help()
      sys.stdout.flush()
    except BrokenPipeError:  # `--help | head`: the reader left; exit quietly
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  config_value = _config_argument(argv[1:])
  if config_value is not None:
    try:
      check_config_argument(config_value)
    except LaunchError as e:
      _exit_with(str(e))
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # An override of a field the config does not have: ml_collections raises a bare KeyError /
    # AttributeError(KeyError(message)).
    while isinstance(e, (AttributeError, KeyError)) and e.args and isinstance(e.args[0], Exception):
      e = e.args[0]
    detail = " ".join(str(e.args[0] if e.args else e).split())
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    _exit_with(f"a config override names a field the config does not have: {detail} "
               f"(overrides given: {', '.join(overrides)}). The fields are those of the config "
               "file and of contrastive_jax/train/defaults.py.")
  except flags.Error as e:  # missing --config / --workdir, a value of the wrong type
    missing = [f"--{name}" for name in ("config", "workdir") if f"--{name}=None" in str(e)]
    if missing:
      _exit_with(f"{' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} required.",
                 usage=True)
    _exit_with(_one_line(e))
  except (TypeError, ValueError) as e:  # raised while loading the config file
    _exit_with(f"--config={config_value}: {_one_line(e)}")


def _overridden_fields(argv) -> set:
  """The config fields set on the command line (``--config.a.b=v`` or ``--config.a.b v``)."""
  return {a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")}


def _file_config(config_value: str):
  """The config of ``--config=<path>[:<variant>]`` as the file makes it, before any override."""
  path, has_variant, variant = config_value.partition(":")
  spec = importlib.util.spec_from_file_location("_launch_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if has_variant else module.get_config()


def switch_method(config, file_method: str, overridden: set):
  """A comparator on a paper recipe: when ``--config.method`` names another method than the config
  file's, the file's options of its own method (``loss.contrastive``) are dropped, so the new method
  runs at the defaults of its paper (``losses/registry.py``) plus any ``--config.loss.contrastive.*``
  given on the command line; data, model, optimiser and loss weights stay the file's recipe.

  Returns the dropped ``{option: value}`` (empty when the method is the file's), for the log line.
  Without this, a paper config's options would be refused by another method (``label_range`` is
  not RNC's) or, worse, silently carried over (ACCon's temperature 0.05 is not RNC's 2.0).
  """
  if "method" not in overridden or config.method == file_method:
    return {}
  options = config.loss.contrastive
  dropped = {k: options[k] for k in list(options.keys())
             if f"loss.contrastive.{k}" not in overridden}
  with config.unlocked():
    for key in dropped:
      del options[key]
  return dropped


def check_workdir(workdir: str) -> bool:
  """Creates ``workdir`` if needed and checks that a file can be written there; raises
  :class:`LaunchError` naming it otherwise (a file in the way, a read-only place). Returns whether
  it was created."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise LaunchError(f"--workdir={workdir} is a file, not a directory.")
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise LaunchError(f"--workdir={workdir} cannot be created: {e.strerror or e}.") from e
  try:
    with tempfile.TemporaryFile(dir=workdir, prefix=".write-check-"):
      pass
  except OSError as e:
    raise LaunchError(f"--workdir={workdir} is not writable (a test file could not be created "
                       f"there: {e.strerror or e}).") from e
  return created


def main(argv):
  if len(argv) > 1:
    _exit_with(f"unexpected arguments {argv[1:]} (flags are written --name=value).", usage=True)
  config = _CONFIG.value
  # Refused before JAX, the data or the trainer are imported (run_checks imports no JAX).
  from contrastive_jax.train import run_checks  # pylint: disable=g-import-not-at-top
  overridden = _overridden_fields(sys.argv[1:])
  dropped = {}
  try:
    if "method" in overridden:
      file_method = _file_config(_config_argument(sys.argv[1:])).method
      dropped = switch_method(config, file_method, overridden)
    run_checks.check_run_control(config)
    created = check_workdir(_WORKDIR.value)
  except (ValueError, OSError, LaunchError) as e:
    _exit_with(str(e))
  _configure_logging()
  if dropped:
    std_logging.getLogger("contrastive_jax").info(
        "--config.method=%s replaces the config's %s: its options %s are dropped; %s runs at its "
        "paper defaults (losses/registry.py) plus the --config.loss.contrastive.* given.",
        config.method, file_method, dropped, config.method)
  _initialize_distributed()
  std_logging.getLogger("contrastive_jax").info("Config:\n%s", config)
  try:
    # Imported here so that `--help` and flag errors do not pay for importing JAX.
    train = _trainer(config.get("task", "regression"))
    results = train(config, _WORKDIR.value)
  except (ValueError, FloatingPointError, OSError) as e:  # bad input: one clear line
    if created:  # refused before writing anything (e.g. a typo in a config field): leave no trace
      try:
        os.rmdir(_WORKDIR.value)
      except OSError:
        pass
    _exit_with(str(e).strip() or type(e).__name__)
  import jax  # pylint: disable=g-import-not-at-top
  if results.get("status") != "stopped" and jax.process_index() == 0:  # Process 0 reports.
    print(f"{_summary(results)} (results in {_WORKDIR.value}/results.json)", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
