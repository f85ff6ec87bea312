"""The trainer end to end, through `train.py`, on tiny configs of the embedded digits."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ['--config=configs/tdrl_vit_tiny.py:demo', '--config.model.width=32',
        '--config.model.depth=2', '--config.model.num_heads=2', '--config.batch_size=16',
        '--config.eval_batch_size=64', '--config.log_every=1', '--config.eval_every=0',
        '--config.checkpoint_every=1000', '--config.optimizer.warmup_steps=5']


def command(workdir, *flags):
  return [sys.executable, 'train.py', f'--workdir={workdir}', *TINY, *flags]


def environment(devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def train(workdir, *flags, devices=1, check=True):
  result = subprocess.run(command(workdir, *flags), cwd=ROOT, env=environment(devices),
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f'train.py failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return result


def losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {row['step']: row['train/loss'] for row in rows if 'train/loss' in row}


def final_row(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return rows[-1]


@pytest.mark.slow
def test_one_device_and_eight_devices_agree(tmp_path):
  train(tmp_path / 'one', '--config.total_steps=10', devices=1)
  train(tmp_path / 'eight', '--config.total_steps=10', devices=8)
  one, eight = losses(tmp_path / 'one'), losses(tmp_path / 'eight')
  assert sorted(one) == sorted(eight) == list(range(1, 11))
  for step in range(1, 11):
    assert abs(one[step] - eight[step]) <= 1e-4 * abs(one[step]), (step, one[step], eight[step])
  # Both evaluate the train form and the reparameterized deploy form at the end.
  row = final_row(tmp_path / 'eight')
  assert abs(row['eval/accuracy'] - row['eval/deploy_accuracy']) <= 1 / 360


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
  steps = ['--config.total_steps=30']
  train(tmp_path / 'straight', *steps)

  workdir = tmp_path / 'interrupted'
  process = subprocess.Popen(command(workdir, *steps), cwd=ROOT, env=environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 20:
      process.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert 'SIGTERM' in stdout
  stopped = max(losses(workdir))
  assert 20 <= stopped < 30, stopped
  assert not (workdir / 'deploy').exists()      # exported only when training finishes

  resumed = train(workdir, *steps)
  assert f'resumed from' in resumed.stdout and f'at step {stopped}' in resumed.stdout
  straight, interrupted = losses(tmp_path / 'straight'), losses(workdir)
  assert sorted(interrupted) == list(range(1, 31))   # one line per step, no duplicates
  assert abs(interrupted[30] - straight[30]) <= 1e-6 * abs(straight[30])
  assert (workdir / 'deploy' / 'model.json').exists()


def error_line(result):
  """The one line a user sees on a bad input: no traceback."""
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize('flags,devices,message', [
    (['--config.model.name=vit_huge'], 1, "unknown model 'vit_huge'"),
    (['--config.data.name=no_such_dataset'], 1, 'no_such_dataset'),
    (['--config.init_from=/nonexistent/run'], 1, '/nonexistent/run does not exist'),
    (['--config.batch_size=12'], 8, 'batch_size 12 is not divisible by the 8 devices'),
])
def test_bad_input_is_one_clear_line(tmp_path, flags, devices, message):
  line = error_line(train(tmp_path, '--config.total_steps=2', *flags, devices=devices,
                          check=False))
  assert message in line


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  train(tmp_path, '--config.total_steps=4')
  line = error_line(train(tmp_path, '--config.total_steps=8', '--config.optimizer.lr=1e30',
                          check=False))
  assert 'at step 5' in line and 'last good checkpoint (step 4)' in line
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4']
