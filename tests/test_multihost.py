"""Pre-emption and several processes, end to end through train.py.

Two processes on one machine, joined without a cluster manager (gloo over 127.0.0.1), train as
one process with two devices does (BatchNorm statistics are global); SIGTERM to one of the two stops both with a checkpoint, and rerunning resumes exactly
where an uninterrupted run would be. MAE's evaluation (whose reconstructions gather the weights
from every process) completes on two processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import repvit_jax as rj
from conftest import xla_flags

# Both tests start two processes: never at the same time (pytest -n 2 --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('two_processes')]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSIFICATION = ['--config=configs/tdrl_vit_tiny.py:demo', '--config.model.width=32',
                  '--config.model.depth=1', '--config.model.num_heads=2',
                  '--config.batch_size=16', '--config.eval_batch_size=64',
                  '--config.log_every=1', '--config.eval_every=0',
                  '--config.checkpoint_every=1000', '--config.optimizer.warmup_steps=5',
                  '--config.total_steps=12']
STEPS = 12
MAE_ARCH = dict(patch_size=4, width=32, depth=1, num_heads=2, decoder_width=16,
                decoder_depth=1, decoder_num_heads=2)
MAE = ['--config=configs/mae_tdrl_vit_tiny.py:demo',
       *[f'--config.model.{k}={v}' for k, v in MAE_ARCH.items()], '--config.batch_size=16',
       '--config.eval_batch_size=360', '--config.log_every=1', '--config.eval_every=2',
       '--config.checkpoint_every=1000', '--config.optimizer.warmup_steps=2',
       '--config.total_steps=3', '--config.reconstructions=3']


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def environment(devices):
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=xla_flags(devices))


def start(workdir, flags, process_id=None, port=None, devices=2):
  """One train.py process: alone with `devices` devices, or process `process_id` of two."""
  command = [sys.executable, 'train.py', f'--workdir={workdir}', *flags]
  if process_id is not None:
    command += ['--config.distributed.enabled=True',
                f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                '--config.distributed.num_processes=2',
                f'--config.distributed.process_id={process_id}']
  return subprocess.Popen(command, cwd=ROOT, env=environment(devices if process_id is None else 1),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*processes, returncode=0):
  results = [p.communicate(timeout=400) for p in processes]
  for p, (_, stderr) in zip(processes, results):
    assert p.returncode == returncode, stderr[-3000:]
  return results


def two_processes(workdir, flags):
  port = free_port()
  return [start(workdir, flags, i, port) for i in range(2)]


def rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def train_losses(workdir):
  return {r['step']: r['train/loss'] for r in rows(workdir) if 'train/loss' in r}


def sigterm_when(processes, workdir, rows_written, target):
  """Sends SIGTERM to `target` once metrics.jsonl has `rows_written` lines; then waits."""
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and target.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= rows_written:
      target.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  # Both stop, not finished: 143 (128 + SIGTERM), so that a scheduler restarts them.
  (chief_out, _), *_ = finish(*processes, returncode=143)
  assert 'SIGTERM: saved step' in chief_out
  stopped = max(train_losses(workdir))
  assert rows_written <= stopped < STEPS and (workdir / 'checkpoints' / str(stopped)).is_dir()
  assert not (workdir / 'deploy').exists()       # exported only when training finishes
  return stopped


def resume(processes, workdir, stopped):
  (chief_out, _), *_ = finish(*processes)
  assert f'resumed from {workdir / "checkpoints"} at step {stopped}' in chief_out
  assert sorted(train_losses(workdir)) == list(range(1, STEPS + 1))   # one row per step
  assert (workdir / 'deploy' / 'model.json').exists()
  return train_losses(workdir)


def test_two_processes_train_as_one_stop_together_on_sigterm_and_resume_exactly(tmp_path):
  # (One device against several, for the TDRL statistics: test_collapse's 8-device mesh.)
  finish(start(tmp_path / 'one', CLASSIFICATION, devices=2))
  one = train_losses(tmp_path / 'one')

  # Two processes: SIGTERM to the non-chief one stops both at the same step.
  workdir = tmp_path / 'two'
  processes = two_processes(workdir, CLASSIFICATION)
  stopped = sigterm_when(processes, workdir, 3, processes[1])
  two = resume(two_processes(workdir, CLASSIFICATION), workdir, stopped)
  # Interrupted and resumed on two processes = uninterrupted on one process with two devices.
  for step in one:
    assert abs(one[step] - two[step]) <= 1e-6 * abs(one[step]), (step, one[step], two[step])
  final = rows(workdir)[-1]
  assert abs(final['eval/accuracy'] - final['eval/deploy_accuracy']) <= 1 / 360


def check_mae_run(workdir):
  """Losses, evaluations of both forms, the reconstructions picture and the deploy model."""
  table = rows(workdir)
  train_rows = [r for r in table if 'train/mae_loss' in r]
  assert [r['step'] for r in train_rows] == [1, 2, 3]
  assert all(r['train/loss'] == r['train/mae_loss'] and r['train/mae_loss'] > 0
             for r in train_rows)
  evals = [r for r in table if 'eval/loss' in r]
  assert [r['step'] for r in evals] == [2, 3]
  for r in evals:   # the reparameterized (vanilla) encoder gives the same masked loss
    assert abs(r['eval/loss'] - r['eval/deploy_loss']) <= 1e-4 * r['eval/loss']
  # step 0: the model as initialised, to compare the later pictures with
  assert sorted(os.listdir(workdir / 'reconstructions')) == ['step_0.png', 'step_2.png',
                                                            'step_3.png']
  png = (workdir / 'reconstructions' / 'step_3.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n'
  width, height = int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big')
  # 3 columns (original, input, reconstruction) and 3 images, two lines of titles above,
  # the losses on the right
  assert height == 3 * 96 + 4 * 2 + 2 * 19 and width > 3 * 96 + 4 * 2
  model, variables = rj.load_model(str(workdir / 'deploy'))      # TDRL folded away
  assert model == rj.create_model('mae_vit_tiny', num_classes=10, **MAE_ARCH)
  assert 'batch_stats' not in variables
  return table


def test_mae_tdrl_pretraining_on_two_processes(tmp_path):
  """The MAE-specific collectives (the reconstructions' gather, the deploy fold) on two
  processes. That two processes compute what one does, TDRL statistics included, is the
  classification test above; a one-process MAE reference run would repeat it (~40 s)."""
  finish(*two_processes(tmp_path / 'two', MAE))
  check_mae_run(tmp_path / 'two')


def only_error_line(stderr):
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Check failure stack trace' not in stderr, stderr[-3000:]
  assert not [l for l in stderr.splitlines() if l.startswith('    @ ')], stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize('killed', [1, 0])
def test_a_lost_process_ends_the_other_within_the_heartbeat_timeout_in_one_line(tmp_path,
                                                                                killed):
  workdir = tmp_path / 'run'
  flags = [*CLASSIFICATION, '--config.total_steps=100000', '--config.checkpoint_every=3',
           '--config.distributed.heartbeat_timeout_s=5']
  processes = two_processes(workdir, flags)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and not (
      metrics.exists() and len(metrics.read_text().splitlines()) >= 7
      and (workdir / 'checkpoints' / '3').is_dir()):
    time.sleep(0.05)
  processes[killed].kill()
  killed_at = time.time()
  survivor = processes[1 - killed]
  _, stderr = survivor.communicate(timeout=120)
  waited = time.time() - killed_at
  assert survivor.returncode != 0 and waited < 60, (survivor.returncode, waited)
  line = only_error_line(stderr)
  saved = max(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())
  lost = ('process 1 of 2 stopped answering (no heartbeat for 5 s)' if killed == 1 else
          'process 0 of 2, the coordinator at 127.0.0.1:')
  assert line.startswith(f'error: {lost}'), line
  assert line.endswith(f'process {1 - killed} stopped too, and the last checkpoint, step '
                       f'{saved} in {workdir / "checkpoints"}, is intact: start all 2 '
                       'processes again with the same workdir to resume'), line


def test_a_process_that_never_joins_is_one_line_after_the_join_timeout(tmp_path):
  started = time.time()
  alone = start(tmp_path / 'run', [*CLASSIFICATION, '--config.distributed.join_timeout_s=3'],
                process_id=1, port=free_port())
  out, stderr = alone.communicate(timeout=120)
  assert alone.returncode != 0 and time.time() - started < 60
  assert 'joining 2 processes at 127.0.0.1:' in out and 'as process 1 (waiting up to 3 s)' in out
  line = only_error_line(stderr)
  assert line.startswith('error: not all 2 processes joined at 127.0.0.1:') and line.endswith(
      'within 3 s (this is process 1); start every process with the same '
      '--config.distributed settings, or raise --config.distributed.join_timeout_s'), line
