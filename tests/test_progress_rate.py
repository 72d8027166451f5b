"""The console progress line (train.writer.Progress): throughput of the recent steps, evaluation and
checkpoints left out, and an ETA that adds their cost per step (issue 16 item 3)."""

import re

import pytest

from contrastive_jax.train import writer

METRICS = {'loss': 0.5, 'loss_reg': 0.25, 'loss_con': 0.25, 'lr': 0.1}


class FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _rate_and_eta(line):
  rate = float(re.search(r'\| ([\d,]+) ex/s', line).group(1).replace(',', ''))
  minutes, seconds = re.search(r'ETA (?:(\d+)m)?(\d+)s', line).groups()
  return rate, 60 * int(minutes or 0) + int(seconds)


@pytest.fixture
def clock(monkeypatch):
  fake = FakeClock()
  monkeypatch.setattr(writer.time, 'perf_counter', fake)
  return fake


def test_rate_is_the_recent_interval_without_evaluation_and_checkpoints(clock):
  progress = writer.Progress(total_steps=1001, first_step=0, examples_per_step=100)
  progress.restart_clock(1)  # after compilation
  clock.now = 10.0  # 100 steps in 10 s: 0.1 s a step, 1,000 ex/s
  rate, eta = _rate_and_eta(progress.line(101, METRICS))
  assert rate == 1000 and eta == 90  # 900 steps x 0.1 s
  with progress.paused():  # an evaluation + checkpoint of 5 s
    clock.now += 5.0
  clock.now += 20.0  # the next 100 steps take 0.2 s each (the machine got busy)
  rate, eta = _rate_and_eta(progress.line(201, METRICS))
  # The recent 500 ex/s (not the run's average, 200 steps in 35 s); the ETA: 800 steps at 0.2 s
  # plus the 5 s of evaluation / checkpoints per 200 steps measured so far.
  assert rate == 500
  assert eta == int(800 * (0.2 + 5.0 / 200))
  clock.now += 10.0  # and back to 0.1 s a step
  rate, eta = _rate_and_eta(progress.line(301, METRICS))
  assert rate == 1000 and eta == int(700 * (0.1 + 5.0 / 300))


def test_data_share_is_the_intervals_wait_for_batches(clock):
  progress = writer.Progress(total_steps=1001, first_step=0, examples_per_step=100)
  with progress.waiting():  # before the clock restarts (compilation): not counted
    clock.now += 3.0
  progress.restart_clock(1)
  with progress.waiting():
    clock.now += 2.5
  clock.now += 7.5  # 100 steps in 10 s, 2.5 s of it waiting for data
  assert progress.line(101, METRICS).endswith('| data 25%')
  with progress.paused():  # evaluation: neither in the interval nor in the wait
    clock.now += 5.0
  clock.now += 10.0  # no wait in this interval: the share is reset per line
  assert progress.line(201, METRICS).endswith('| data 0%')
