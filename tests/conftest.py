"""Makes the repository root and tests/ importable (``contrastive_jax``, ``references``)."""

import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(_TESTS_DIR), _TESTS_DIR):
  if _path not in sys.path:
    sys.path.insert(0, _path)
