"""Launcher package: ``python -m launch --config=configs/<method>.py[:variant] --workdir=DIR``."""
