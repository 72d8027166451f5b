"""The metric files a run writes can be read by the tools the README names (issue 16 item 4)."""

import configparser
import json
import os

import pytest

from contrastive_jax.train.writer import MetricWriter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tensorboard_reads_the_event_files(tmp_path):
  """``tensorboard --logdir`` (the ``tensorboard`` extra, which ``.[test]`` includes) reads the
  scalars of ``MetricWriter``'s event files; metrics.jsonl holds the same values."""
  event_accumulator = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator',
      reason='the tensorboard extra is part of .[test]; install it with pip install -e ".[test]"')
  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.write_scalars(1, {'train/loss': 2.5, 'val/mae': 1.25})
  writer.write_scalars(2, {'train/loss': 1.5})
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == [(1, 2.5), (2, 1.5)]
  assert [(e.step, e.value) for e in acc.Scalars('val/mae')] == [(1, 1.25)]
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    lines = [json.loads(line) for line in f]
  assert lines == [{'step': 1, 'train/loss': 2.5, 'val/mae': 1.25}, {'step': 2, 'train/loss': 1.5}]


def test_tensorboard_is_an_extra_of_the_test_install():
  """The viewer the README suggests is installable by name: the ``tensorboard`` extra, part of
  ``all`` and so of ``test``."""
  cfg = configparser.ConfigParser(interpolation=None)
  cfg.read(os.path.join(REPO_ROOT, 'setup.cfg'))
  extras = cfg['options.extras_require']
  assert 'tensorboard' in extras['tensorboard']
  assert '%(tensorboard)s' in extras['all'] and '%(all)s' in extras['test']
