"""The documented command lines as processes: ``python -m launch ...`` and the projects' CLIs.

Each call starts ``python -m <module> <args>`` from the repository root with the repository on
``PYTHONPATH`` (so a config file written to a temporary directory can ``from configs import ...``),
inherits the test session's environment (its XLA compilation cache, ``JAX_DISABLE_MOST_OPTIMIZATIONS``,
the missing system-data folder of ``conftest.py``) and fails the test with the tail of the process'
stderr when it exits non-zero.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """``python -m module *args``; asserts exit status 0 and returns the finished process (text)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, (f"python -m {module} exited {proc.returncode}:\n"
                                f"{proc.stderr[-3000:]}")
  return proc


def launch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """``python -m launch *args`` (the README's command), asserting success."""
  return run_module("launch", *args, timeout=timeout)


def config_file(path, body: str) -> str:
  """Writes a config module (``get_config``) importing the repository's ``configs`` package; returns
  its path for ``--config=<path>[:variant]``. For shrinking a paper variant where ``--config.*``
  overrides cannot (replacing a dict of encoder options, say)."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(body.lstrip("\n"))
  return str(path)
