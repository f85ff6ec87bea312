"""The pieces that keep a run recoverable: checkpoint health, config drift, process settings,
and the checks that turn silent corruption into one clear error."""

import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train import distributed
from repvit_jax.train.resume import config_record
from repvit_jax.train.resume.health import HealthLog
from conftest import TINY_VIT, load_config


def test_health_names_the_latest_checkpoint_before_a_divergence(tmp_path):
  log = HealthLog(str(tmp_path))
  log.start(0)
  # Checkpoints at 1, 2, 3; the loss of the step after each measures it.
  losses = {1: 2.30, 2: 2.27, 3: 6.6e11, 4: math.nan}
  for step in (1, 2, 3):
    log.observe([(step, losses[step], 4.0)])
    log.checkpoint_saved(step)
  log.observe([(4, losses[4], math.nan)])
  assert [log.is_healthy(s) for s in (1, 2, 3)] == [True, False, False]
  assert log.latest_healthy([1, 2, 3]) == 1
  # Persisted: a new process (a resumed run) knows the same.
  again = HealthLog(str(tmp_path))
  assert again.latest_healthy([1, 2, 3]) == 1 and again.is_healthy(7) is None
  again.forget_after(1)
  again.mark_applied(1)
  stored = json.loads((tmp_path / 'health.json').read_text())
  assert sorted(stored['records']) == ['1'] and stored['applied_resume_steps'] == [1]


def test_advised_resume_step_is_honoured_after_every_divergence_and_not_on_a_restart(tmp_path):
  log = HealthLog(str(tmp_path))
  assert log.should_apply(20)               # a first request
  log.diverged()                            # the trainer advised --config.resume_step=20
  log.mark_applied(20)
  restarted = HealthLog(str(tmp_path))      # the same command line after a pre-emption
  assert not restarted.should_apply(20)
  restarted.diverged()                      # diverged again: the same advice, honoured again
  assert HealthLog(str(tmp_path)).should_apply(20)
  restarted.mark_applied(20)
  assert not HealthLog(str(tmp_path)).should_apply(20)
  assert HealthLog(str(tmp_path)).should_apply(10)


def test_health_tolerates_a_slow_rise_and_flags_a_tenfold_one(tmp_path):
  log = HealthLog(str(tmp_path))
  log.start(0)
  for step, loss in enumerate([3.0, 1.0, 2.5, 9.0, 11.0], start=1):
    log.observe([(step, loss, 1.0)])
    log.checkpoint_saved(step)
  log.observe([(6, 1.0, 1.0)])
  # Each checkpoint is judged by the next loss against the lowest seen so far (1.0).
  assert [log.is_healthy(s) for s in (1, 2, 3, 4, 5)] == [True, True, True, False, True]


def _config(**changes):
  config = load_config('vit_tiny.py:demo')
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split('.')
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def test_config_drift_errors_on_what_is_trained_and_warns_on_the_rest(tmp_path):
  config_record.write(str(tmp_path), _config(**{'model.num_heads': 3}))
  warnings = []
  with pytest.raises(ValueError) as error:
    config_record.check_resume(str(tmp_path), _config(**{'model.num_heads': 6,
                                                         'optimizer.base_lr': 0.5}), warnings.append)
  message = str(error.value)
  assert 'model.num_heads: 3 -> 6' in message and 'optimizer' not in message
  assert 'allow_config_change=True' in message and '\n' not in message
  config_record.check_resume(
      str(tmp_path), _config(**{'model.num_heads': 3, 'optimizer.base_lr': 0.5, 'resume_step': 4}),
      warnings.append)
  assert len(warnings) == 1 and 'optimizer.base_lr: 0.004 -> 0.5' in warnings[0]
  warnings.clear()
  config_record.check_resume(
      str(tmp_path), _config(**{'model.num_heads': 6, 'allow_config_change': True}),
      warnings.append)
  assert len(warnings) == 1 and 'model.num_heads: 3 -> 6' in warnings[0]


def test_distributed_settings_from_config_and_environment(monkeypatch):
  for name in distributed.ENVIRONMENT.values():
    monkeypatch.delenv(name, raising=False)
  config = load_config('vit_tiny.py:demo').distributed
  assert distributed.settings(config) is None
  timeouts = {'initialization_timeout': 300, 'heartbeat_timeout_seconds': 100}
  config.enabled = True
  assert distributed.settings(config) == timeouts
  config.coordinator_address = '127.0.0.1:1234'
  config.num_processes = 2
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  assert distributed.settings(config) == {'coordinator_address': '127.0.0.1:1234',
                                          'num_processes': 2, 'process_id': 1, **timeouts}
  config.heartbeat_timeout_s = 0
  with pytest.raises(ValueError, match='heartbeat_timeout_s=0 must be a number of seconds'):
    distributed.settings(config)
  config.heartbeat_timeout_s = 20
  monkeypatch.setenv('JAX_PROCESS_ID', '2')
  with pytest.raises(ValueError, match='process_id 2 is not below num_processes 2'):
    distributed.settings(config)
  monkeypatch.setenv('JAX_PROCESS_ID', 'one')
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='one' is not an integer"):
    distributed.settings(config)


def test_jax_process_variables_without_distributed_enabled_warn_once(monkeypatch):
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS', raising=False)
  warnings = []
  assert not distributed.initialize(load_config('vit_tiny.py:demo').distributed,
                                    warn=warnings.append)
  assert warnings == ['warning: JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=1 set, but '
                      'config.distributed.enabled is False: this process trains alone; add '
                      '--config.distributed.enabled=True to join the others']


def test_workdir_lock_refuses_a_live_run_takes_over_a_dead_ones_and_releases(tmp_path):
  import socket
  import subprocess
  import sys
  from repvit_jax.train.resume import workdir_lock
  warnings = []
  with workdir_lock.hold(str(tmp_path), warnings.append) as lock:
    record = json.loads((tmp_path / '.lock').read_text())
    assert record['pid'] == os.getpid() and record['host'] == socket.gethostname()
    with pytest.raises(workdir_lock.WorkdirInUse, match=f'pid {os.getpid()} on host'):
      workdir_lock.hold(str(tmp_path), warnings.append).__enter__()
    lock.refresh()
  assert not (tmp_path / '.lock').exists() and warnings == []
  # A run that died holding it (its pid is gone) on this host: taken over with a warning.
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  (tmp_path / '.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': int(dead),
                                              'started': 0}))
  with workdir_lock.hold(str(tmp_path), warnings.append):
    assert json.loads((tmp_path / '.lock').read_text())['pid'] == os.getpid()
  assert len(warnings) == 1 and warnings[0].startswith(
      f'warning: taking over the lock of a training run that is gone (pid {dead} on host')
  # Another host's lock: live while refreshed, stale after STALE_AFTER_S.
  (tmp_path / '.lock').write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'started': 0}))
  with pytest.raises(workdir_lock.WorkdirInUse, match='on host elsewhere'):
    workdir_lock.hold(str(tmp_path), warnings.append).__enter__()
  old = time.time() - workdir_lock.STALE_AFTER_S - 60
  os.utime(tmp_path / '.lock', (old, old))
  with workdir_lock.hold(str(tmp_path), warnings.append):
    pass
  assert len(warnings) == 2 and 'on host elsewhere' in warnings[1]


@pytest.mark.parametrize('bad', [np.nan, -1.0])
def test_reparameterize_refuses_invalid_running_variances(bad):
  model = rj.create_model('tdrl_vit_tiny', num_classes=3, **TINY_VIT)
  variables = jax.device_get(model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                                        train=False))
  stats = variables['batch_stats']['blocks_1']['mlp']['fc1']['branch_2']['bn_1']
  stats['var'] = np.asarray(stats['var']).copy()
  stats['var'][5] = bad
  with pytest.raises(ValueError, match=r'^batch_stats/blocks_1/mlp/fc1/branch_2/bn_1/var has 1 '
                                       'invalid running variances'):
    reparameterize(variables)


class _FakeCheckpointer:
  directory = '/runs/x/checkpoints'

  def __init__(self, steps):
    self.steps = steps

  def wait_until_finished(self):
    pass

  def all_steps(self):
    return self.steps


@pytest.mark.parametrize('kept,next_losses,expected', [
    ([1, 2, 3], {1: 2.3, 2: 6e11, 3: math.nan},
     'the latest checkpoint from before the divergence is step 1 in /runs/x/checkpoints '
     '(later checkpoints had diverged: step 2 (next loss 6e+11), step 3 (next loss nan)). '
     'Run again with --config.resume_step=1 and a lower --config.optimizer.lr (now 1e+06)'),
    ([2, 3], {2: 6e11, 3: math.nan},
     'no kept checkpoint predates the divergence (later checkpoints had diverged: step 2 '
     '(next loss 6e+11), step 3 (next loss nan)). Run again with --config.resume_step=0 '
     '(starts over in this workdir) and a lower --config.optimizer.lr (now 1e+06)'),
    ([], {}, 'no checkpoint had been saved. Run again with a lower --config.optimizer.lr '
             '(now 1e+06), or set --config.optimizer.grad_clip, or check the data (the same '
             'workdir starts over)'),
])
def test_divergence_advice_names_a_step_that_resumes(tmp_path, kept, next_losses, expected):
  from repvit_jax.train.loop import _divergence_advice  # pylint: disable=import-outside-toplevel
  log = HealthLog(str(tmp_path))
  log.start(0)
  log.observe([(1, 2.3, 1.0)])
  for step, loss in next_losses.items():
    log.checkpoint_saved(step)
    log.observe([(step + 1, loss, 1.0)])
  config = ml_collections.ConfigDict({'optimizer': {'lr': 1e6, 'base_lr': None}})
  assert _divergence_advice(_FakeCheckpointer(kept), log, config).startswith(expected)
