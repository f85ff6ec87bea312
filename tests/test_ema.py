"""The EMA of the weights: timm's decay schedule, its update in the compiled step, exact resume,
evaluation beside the raw weights and export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import repvit_jax as rj
from repvit_jax import io
from repvit_jax.train import ema as ema_lib
from repvit_jax.train.classification import ClassificationTask
from repvit_jax.train.state import create_state
from repvit_jax.train.step import make_train_step
from conftest import TINY_VIT, load_config


def timm_decay(step, decay, warmup=True, gamma=1.0, power=2 / 3, min_decay=0.0, after=0):
  """timm ModelEmaV3.get_decay, written out in Python floats."""
  step = max(0, step - after - 1)
  if step <= 0:
    return 0.0
  if not warmup:
    return decay
  return max(min(1 - (1 + step / gamma) ** -power, decay), min_decay)


@pytest.mark.parametrize('warmup', [True, False])
def test_decay_follows_timm_model_ema_v3(warmup):
  config = load_config('vit_tiny.py:demo').ema
  config.update(dict(decay=0.999, warmup=warmup))
  steps = [1, 2, 3, 10, 1000, 10**5, 10**7]
  got = [float(ema_lib.decay_at(config, s)) for s in steps]
  np.testing.assert_allclose(got, [timm_decay(s, 0.999, warmup) for s in steps], rtol=1e-6)
  assert got[0] == 0.0 and got[-1] == pytest.approx(0.999)
  if warmup:    # 1 - 2 ** (-2/3): the second update keeps 37% of the first weights
    assert got[1] == pytest.approx(0.370, abs=1e-3)


def test_update_averages_floats_and_copies_the_rest():
  average = {'w': jnp.array([1.0, 2.0]), 'count': jnp.array(3, jnp.int32)}
  current = {'w': jnp.array([3.0, 6.0]), 'count': jnp.array(5, jnp.int32)}
  out = ema_lib.update(average, current, jnp.float32(0.75))
  np.testing.assert_allclose(out['w'], [1.5, 3.0])
  assert int(out['count']) == 5
  with pytest.raises(ValueError, match='ema.decay must be in'):
    ema_lib.enabled(_with(decay=1.5))
  with pytest.raises(ValueError, match='set --config.ema.decay'):
    ema_lib.enabled(_with(decay=0.0, deploy=True))


def _with(**fields):
  config = load_config('vit_tiny.py:demo').ema
  config.update(fields)
  return config


def test_the_compiled_step_updates_weights_and_batchnorm_statistics():
  """Update 1 copies the weights; update 2 is decay_at(2) * EMA + (1 - decay_at(2)) * weights,
  BatchNorm statistics (TDRL's) included."""
  config = load_config('tdrl_vit_tiny.py:demo')
  config.model.update(dict(TINY_VIT, depth=1))
  config.ema.decay = 0.99
  task = ClassificationTask(config, num_classes=10)
  batch = {'image': jax.random.normal(jax.random.key(0), (8, 32, 32, 3)),
           'label': jnp.arange(8) % 10}
  tx = optax.sgd(0.1)
  state = jax.jit(lambda: create_state(lambda rng: task.init_variables(rng, batch['image'][:1]),
                                       tx, 0, with_ema=True))()
  assert state['batch_stats'] and set(state['ema']) == {'params', 'batch_stats'}
  step = jax.jit(make_train_step(task, tx, ema_config=config.ema))
  first, metrics = step(state, batch, {})
  assert float(metrics['train/ema_decay']) == 0.0
  second, metrics = step(first, batch, {})
  decay = float(metrics['train/ema_decay'])
  assert decay == pytest.approx(1 - 2 ** (-2 / 3), rel=1e-6)
  for part in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(first['ema'][part]), jax.tree.leaves(first[part])):
      np.testing.assert_array_equal(a, b)
    moved = False
    for got, old, new in zip(jax.tree.leaves(second['ema'][part]),
                             jax.tree.leaves(first[part]), jax.tree.leaves(second[part])):
      np.testing.assert_allclose(got, decay * old + (1 - decay) * new, rtol=1e-6, atol=1e-7)
      moved = moved or not np.allclose(old, new)
    assert moved, part


def _run(workdir, preempt_after=None):
  """4 steps of a tiny ViT on the digits, evaluated and checkpointed at the last one; with
  `preempt_after`, a SIGTERM is seen after that step (the run saves and returns). (The EMA of
  BatchNorm statistics is the compiled-step test's; a vanilla ViT compiles in half the time.)"""
  config = load_config('vit_tiny.py:demo')
  config.model.update(dict(TINY_VIT, depth=1))
  config.update(dict(batch_size=16, eval_batch_size=120, total_steps=4, log_every=1,
                     eval_every=0, checkpoint_every=1000))
  config.ema.update(dict(decay=0.9, deploy=True))
  steps = iter(range(1, 5))
  stop = lambda self: next(steps) == preempt_after
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(rj.train.loop._Preemption, 'should_stop', stop)  # pylint: disable=protected-access
    return rj.train.run(config, str(workdir))


def test_ema_resumes_exactly_is_evaluated_beside_the_weights_and_exports(tmp_path):
  _run(tmp_path / 'straight')
  assert _run(tmp_path / 'resumed', preempt_after=2)['preempted']
  result = _run(tmp_path / 'resumed')
  assert result['step'] == 4
  for ema in (False, True):
    _, straight = io.read(str(tmp_path / 'straight'), ema=ema)
    _, resumed = io.read(str(tmp_path / 'resumed'), ema=ema)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
      np.testing.assert_array_equal(a, b)      # bit for bit
  _, raw = io.read(str(tmp_path / 'straight'))
  _, averaged = io.read(str(tmp_path / 'straight'), ema=True)
  assert not np.allclose(jax.tree.leaves(raw)[0], jax.tree.leaves(averaged)[0])
  last = [json.loads(line) for line in open(tmp_path / 'straight' / 'metrics.jsonl')][-1]
  for key in ('eval/accuracy', 'eval/deploy_accuracy', 'eval/ema_accuracy',
              'eval/ema_deploy_accuracy'):
    assert 0.0 <= last[key] <= 1.0, key
  assert abs(last['eval/ema_loss'] - last['eval/ema_deploy_loss']) < 1e-4 * last['eval/ema_loss']
  assert last['eval/ema_loss'] != last['eval/loss']        # other weights were evaluated
  # ema.deploy=True: workdir/deploy is the folded EMA.
  _, deployed = io.read(str(tmp_path / 'straight' / 'deploy'))
  folded = jax.jit(rj.reparameterize)(averaged)
  for a, b in zip(jax.tree.leaves(deployed), jax.tree.leaves(folded)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='holds one set of weights'):
    io.read(str(tmp_path / 'straight' / 'deploy'), ema=True)


def test_the_log_says_when_the_warm_up_never_reaches_the_decay():
  config = load_config('vit_tiny.py:demo').ema
  config.decay = 0.9998
  line = rj.train.ema.describe(config, 600)
  reached = float(rj.train.ema.decay_at(config, 600))
  assert line.startswith('EMA of the weights: decay 0.9998; the warm-up reaches only '
                         f'{reached:.5f} by step 600') and reached < 0.99
  config.decay = 0.9
  assert rj.train.ema.describe(config, 600) == 'EMA of the weights: decay 0.9'
