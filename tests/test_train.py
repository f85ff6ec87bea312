"""The trainer end to end, through `train.py`, on tiny configs of the embedded digits."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ['--config=configs/tdrl_vit_tiny.py:demo', '--config.model.width=32',
        '--config.model.depth=2', '--config.model.num_heads=2', '--config.batch_size=16',
        '--config.eval_batch_size=64', '--config.log_every=1', '--config.eval_every=0',
        '--config.checkpoint_every=1000', '--config.optimizer.warmup_steps=5']


def command(workdir, *flags):
  return [sys.executable, 'train.py', f'--workdir={workdir}', *TINY, *flags]


def environment(devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)   # `import jax` here set it; a user's shell has none
  env['XLA_FLAGS'] = xla_flags(devices)
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
    (['--config.data.name=fashion_mnist', '--config.data.data_dir=/nonexistent/fashion'], 1,
     'apt-get install dataset-fashion-mnist'),
    (['--config.batch_size=12'], 8, 'batch_size 12 is not divisible by the 8 devices'),
    (['--config.eval_batch_size=12'], 8,
     'eval_batch_size 12 is not divisible by the 8 devices; set --config.eval_batch_size'),
    (['--config.optimzer.lr=1'], 1, "--config.optimzer.lr: the config has no field 'optimzer'; "
                                    'did you mean "optimizer"'),
    (['--config=configs/no_such_file.py'], 1,
     "--config: config file configs/no_such_file.py not found, and no packaged config is "
     "named 'no_such_file' (packaged: levit_128s, mae_lite_tiny,"),
    (['--config=configs/tdrl_vit_tiny.py:demoo'], 1,
     'unknown config variant \'demoo\'; known: "" (ImageNet), "demo"'),
    # grad_clip=None is accepted (clipping off); the run then stops on the next mistake.
    (['--config.optimizer.grad_clip=None', '--config.total_steps=None'], 1,
     'config.total_steps must be positive, got None'),
    (['--workdir=/proc/version'], 1, '--workdir /proc/version is a file; give a directory'),
    (['--workdir=/proc/self/workdir'], 1, 'cannot write to --workdir /proc/self/workdir'),
])
def test_bad_input_is_one_clear_line(tmp_path, flags, devices, message):
  line = error_line(train(tmp_path, '--config.total_steps=2', *flags, devices=devices,
                          check=False))
  assert message in line


def test_a_second_run_on_a_live_workdir_is_one_line_and_touches_nothing(tmp_path):
  # This test's own process stands for the live run holding the workdir.
  import socket  # pylint: disable=import-outside-toplevel
  lock = tmp_path / '.lock'
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                              'started': 0, 'processes': 1}))
  line = error_line(train(tmp_path, '--config.total_steps=2', check=False))
  assert f'workdir {tmp_path} is in use by another training run (pid {os.getpid()}' in line
  assert 'use another --workdir' in line
  assert sorted(os.listdir(tmp_path)) == ['.lock'] and lock.read_text().count(str(os.getpid()))


def interrupt_after(workdir, rows, *flags, signals=1):
  """Starts train.py and sends `signals` Ctrl-Cs once metrics.jsonl has `rows` more lines."""
  metrics = os.path.join(workdir, 'metrics.jsonl')
  before = len(open(metrics).readlines()) if os.path.exists(metrics) else 0
  process = subprocess.Popen(command(workdir, *flags), cwd=ROOT, env=environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(metrics) and len(open(metrics).readlines()) >= before + rows:
      for _ in range(signals):
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
      break
    time.sleep(0.02)
  out, err = process.communicate(timeout=300)
  return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_ctrl_c_saves_like_sigterm_and_a_second_one_stops_at_once(tmp_path):
  flags = ('--config.total_steps=1000',)
  first = interrupt_after(tmp_path, 3, *flags)
  assert first.returncode == 130 and 'Traceback' not in first.stderr, first.stderr[-3000:]
  saved = int(re.search(r'^Ctrl-C: saved step (\d+) in ', first.stdout, re.M).group(1))
  assert 3 <= saved < 1000 and (tmp_path / 'checkpoints' / str(saved)).is_dir()
  assert f'stopped at step {saved} on Ctrl-C' in first.stdout
  assert 'Ctrl-C again stops at once' in first.stderr

  second = interrupt_after(tmp_path, 3, *flags, signals=2)
  assert error_line(second).startswith('error: stopped at once on a second Ctrl-C, without '
                                       'saving; run again with the same --workdir')
  assert second.returncode == 130
  assert f'resumed from {tmp_path / "checkpoints"} at step {saved}' in second.stdout
  assert (tmp_path / 'checkpoints' / str(saved)).is_dir()


def test_an_eval_image_that_does_not_decode_keeps_the_steps_trained(tmp_path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for split in ('train', 'val'):
    for name in ('a', 'b'):
      os.makedirs(tmp_path / 'images' / split / name)
      for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(
            tmp_path / 'images' / split / name / f'{i}.png')
  (tmp_path / 'images' / 'val' / 'b' / 'bad.jpg').write_bytes(b'not a jpeg')
  result = train(tmp_path / 'run', '--config.total_steps=5', '--config.eval_every=2',
                 f'--config.data.name=folder:{tmp_path / "images"}', check=False)
  line = error_line(result)
  assert line.startswith(f'error: {tmp_path / "images" / "val" / "b" / "bad.jpg"} does not '
                         'decode (')
  assert line.endswith('(the evaluation at step 2 stopped; step 2 is saved, so the same '
                       'command resumes from it)')
  assert [s for s in os.listdir(tmp_path / 'run' / 'checkpoints') if s.isdigit()] == ['2']
  assert not [l for l in result.stderr.splitlines() if l.startswith('W0000')], result.stderr


def test_a_save_that_fails_in_the_background_is_one_line_naming_the_step(tmp_path):
  # A file-size limit stands for a full disk: the space check passes, the write then fails.
  import resource  # pylint: disable=import-outside-toplevel

  def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

  result = subprocess.run(command(tmp_path, '--config.total_steps=12',
                                  '--config.checkpoint_every=5'),
                          cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=600, preexec_fn=limit_file_size)
  line = error_line(result)
  assert re.fullmatch(
      rf'error: could not save checkpoint step 5 in {re.escape(str(tmp_path))}/checkpoints '
      r'\(File too large, [\d.]+ [KMG]iB free there\); no checkpoint was saved before it: '
      'free some space and run again', line), line
  noise = [l for l in result.stderr.splitlines() if 'Event loop' in l or 'never retrieved' in l
           or l.startswith(('E1', 'E0', 'W1', 'W0')) and 'orbax' in l]
  assert not noise, noise[:5]
  assert [s for s in os.listdir(tmp_path / 'checkpoints') if s[0].isdigit()] == []
  assert 'File too large' in (tmp_path / 'checkpoint_errors.log').read_text()


@pytest.mark.slow
def test_recovery_from_divergence_config_drift_corrupt_checkpoint_and_stale_metrics(tmp_path):
  """One workdir through what goes wrong, in the order a user meets it."""
  # What a run killed before its first checkpoint leaves: metrics rows and no checkpoint.
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "train/loss": 9.0}\n'
                                          '{"step": 2, "train/loss": 9.0}\n')
  steps = ['--config.total_steps=8', '--config.checkpoint_every=1']

  # Divergence. The lr is still 0 at step 1 (warm-up): checkpoint 1 is healthy, checkpoint 2
  # already diverged (the loss at step 3 is ~1e11), the loss is NaN at step 4.
  line = error_line(train(tmp_path, *steps, '--config.optimizer.lr=1e6', check=False))
  assert 'became nan at step 4' in line
  assert 'the latest checkpoint from before the divergence is step 1' in line
  advice = re.findall(r'--config\.resume_step=\d+', line)
  assert advice == ['--config.resume_step=1'] and 'lower --config.optimizer.lr' in line
  assert sorted(losses(tmp_path)) == [1, 2, 3] and 9.0 not in losses(tmp_path).values()
  assert json.loads((tmp_path / 'config.json').read_text())['model']['num_heads'] == 2

  # Another model with the same shapes, with the advice: refused before anything is moved.
  line = error_line(train(tmp_path, *steps, *advice, '--config.model.num_heads=4', check=False))
  assert 'model.num_heads: 2 -> 4' in line and 'allow_config_change=True' in line
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', '3', 'health.json']
  assert not (tmp_path / 'set_aside').exists()

  # The advice followed with an lr still too high: diverges again, and the same advice is
  # given and honoured a second time.
  line = error_line(train(tmp_path, *steps, *advice, '--config.optimizer.lr=1e5', check=False))
  assert 'became nan' in line and re.findall(r'--config\.resume_step=\d+', line) == advice
  assert sorted(os.listdir(tmp_path / 'set_aside')) == ['2-after_resume_step_1',
                                                        '3-after_resume_step_1']
  # The advice, followed literally, completes.
  resumed = train(tmp_path, *steps, *advice, '--config.optimizer.lr=1e-3')
  assert 'resumed from' in resumed.stdout and 'at step 1' in resumed.stdout
  assert sorted(losses(tmp_path)) == list(range(1, 9))     # one row per step
  assert max(losses(tmp_path).values()) < 3.0
  assert sorted(os.listdir(tmp_path / 'set_aside')) == [
      '2-after_resume_step_1', '2-after_resume_step_1-2', '3-after_resume_step_1',
      '3-after_resume_step_1-2']
  # Every checkpoint and the deploy model say what they hold (the spec), tdrl block and all.
  from repvit_jax import io  # pylint: disable=import-outside-toplevel
  spec, variables = io.read(str(tmp_path))
  assert (spec.name, spec.deploy, spec.num_classes, spec.input.image_size) == (
      'tdrl_vit_tiny', False, 10, 32)
  assert spec.overrides['tdrl']['num_branches'] == 2 and 'params' in variables
  deploy, _ = io.read(str(tmp_path / 'deploy'))
  assert deploy.deploy and 'tdrl' not in deploy.overrides
  assert deploy.input == spec.input and deploy.overrides['num_heads'] == 2

  # A truncated newest checkpoint: one warning, the step before it, the bad one set aside.
  # (The same command line: resume_step=1 was applied once and is not applied again.)
  for path in (tmp_path / 'checkpoints' / '8').glob('state/**/d/*'):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  result = train(tmp_path, *steps, *advice, '--config.optimizer.lr=1e-3')
  warnings = [l for l in result.stderr.splitlines() if l.startswith('warning: ')]
  assert len(warnings) == 2, warnings
  assert warnings[0].startswith('warning: config.resume_step=1 was applied before')
  assert warnings[1].startswith('warning: checkpoint step 8 in ') and warnings[1].endswith(
      f'moved it to {tmp_path / "set_aside" / "8-unreadable"} and used step 7')
  assert 'Traceback' not in result.stderr
  assert 'at step 7' in result.stdout and (tmp_path / 'set_aside' / '8-unreadable').is_dir()
  assert sorted(losses(tmp_path)) == list(range(1, 9))
