"""RIFormer module imitation: the loss terms, the task's checks, and a short run of the demo
config in which every logged term falls."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax import io
from repvit_jax.models.metaformer import AffineMixer
from repvit_jax.train.losses import mse, relation_loss
from repvit_jax.train.module_imitation import ModuleImitationTask, default_blocks
from conftest import load_config, nontrivial_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(depths=(1, 1, 2, 1), dims=(8, 8, 16, 16))


def direct_relation_loss(s, t):
  def relation(x):
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1, x.shape[-1])
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return x @ x.transpose(0, 2, 1)
  return np.mean((relation(s) - relation(t)) ** 2)


@pytest.mark.parametrize('shape', [(2, 6, 6, 4), (2, 2, 2, 16)])   # N > C (Gram form), N <= C
def test_relation_loss_matches_the_direct_computation(shape):
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
  np.testing.assert_allclose(relation_loss(jnp.asarray(s), jnp.asarray(t)),
                             direct_relation_loss(s, t), rtol=1e-4)
  assert float(relation_loss(jnp.asarray(s), jnp.asarray(s))) == pytest.approx(0.0, abs=1e-6)


def test_relation_loss_has_finite_gradients_at_zero_tokens():
  t = jnp.ones((1, 3, 3, 4))
  grad = jax.jit(jax.grad(lambda s: relation_loss(s, t)))(jnp.zeros((1, 3, 3, 4)))
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_default_blocks_are_the_last_of_each_stage():
  assert default_blocks((2, 2, 6, 2)) == (1, 3, 9, 11)


def _config(teacher_dir, **feature):
  config = load_config('riformer_s12.py:plain_demo')
  config.model.update(TINY)
  spec = {'model': 'poolformer_s12', 'init_from': teacher_dir, 'overrides': dict(TINY),
          'blocks': None, 'weights': {'in': 1.0, 'out': 2.0, 'rel': 3.0},
          'init_student': False}
  spec.update(feature)
  config.task = 'module_imitation'
  config.feature_teacher = spec
  config.teacher.alpha = 1.0
  return config


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('poolformer'))
  model = rj.create_model('poolformer_s12', num_classes=10, **TINY)
  io.save_model(path, nontrivial_variables(model, jnp.zeros((1, 32, 32, 3))), rj.ModelSpec.registered(
      'poolformer_s12', num_classes=10, deploy=False, overrides=TINY,
      image_size=32))
  return path


def test_loss_terms_follow_their_definitions(teacher_dir):
  task = ModuleImitationTask(_config(teacher_dir), num_classes=10)
  assert task.blocks == (0, 1, 3, 4)
  frozen = task.load_frozen()
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  batch = {'image': images, 'label': jnp.array([1, 2])}
  variables = nontrivial_variables(task.model, images)

  @jax.jit
  def run(params, frozen):
    loss, (_, metrics) = task.loss(params, {}, batch, jax.random.key(1), frozen)
    _, mine = task.model.apply({'params': params}, images, train=True, mutable=['intermediates'],
                               rngs={'dropout': jax.random.key(0)})
    logits, theirs = task.feature_teacher.apply(frozen['feature_teacher'], images, train=False,
                                                mutable=['intermediates'])
    mine, theirs = mine['intermediates']['blocks_3'], theirs['intermediates']['blocks_3']
    imitated = AffineMixer().apply({'params': params['blocks_3']['mixer']},
                                   theirs['mixer_in'][0])
    return loss, metrics, mse(mine['features'][0], theirs['features'][0]), imitated, theirs

  loss, metrics, in_3, imitated, theirs = run(variables['params'], frozen)
  for key in ('soft', 'in', 'out', 'rel'):
    assert np.isfinite(metrics[f'train/{key}_loss']) and metrics[f'train/{key}_loss'] > 0
  expected = (metrics['train/soft_loss'] + 1.0 * metrics['train/in_loss'] +
              2.0 * metrics['train/out_loss'] + 3.0 * metrics['train/rel_loss'])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(in_3) <= 4 * float(metrics['train/in_loss'])     # one of four averaged blocks
  # The affine runs on the teacher's normalised input: (s - 1) * n + t.
  p = variables['params']['blocks_3']['mixer']
  np.testing.assert_allclose(imitated, theirs['mixer_in'][0] * (p['scale'] - 1) + p['shift'],
                             rtol=1e-5, atol=1e-5)


def test_task_checks_its_configuration(teacher_dir):
  with pytest.raises(ValueError, match='feature_teacher.model and feature_teacher.init_from'):
    ModuleImitationTask(_config(None), num_classes=10)
  with pytest.raises(ValueError, match=r'block indices in \[0, 5\)'):
    ModuleImitationTask(_config(teacher_dir, blocks=(0, 5)), num_classes=10)
  config = _config(teacher_dir)
  config.model.name = 'poolformer_s12'
  with pytest.raises(ValueError, match='trains a RIFormer'):
    ModuleImitationTask(config, num_classes=10)
  narrow = dict(TINY, dims=(8, 8, 16, 8))
  task = ModuleImitationTask(_config(teacher_dir, overrides=narrow), num_classes=10)
  with pytest.raises(ValueError, match=r'does not fit|differ'):
    task.load_frozen()


def test_init_student_loads_the_teacher_without_its_mixers(teacher_dir):
  config = _config(teacher_dir, init_student=True)
  path, skip = ModuleImitationTask(config, num_classes=10).init_source()
  assert path == teacher_dir and config.init_from is None   # the config is left as it was
  assert re.search(skip, 'stages_0/blocks_0/mixer/scale')
  assert re.search(skip, 'head/kernel') and not re.search(skip, 'stages_0/blocks_0/mlp/fc1/kernel')
  config = _config(teacher_dir, init_student=True)
  config.init_from = '/somewhere/else'
  with pytest.raises(ValueError, match='set only one of them'):
    ModuleImitationTask(config, num_classes=10)


@pytest.mark.slow
def test_demo_runs_and_every_loss_term_falls(tmp_path, teacher_dir):
  flags = [f'--workdir={tmp_path}', '--config=configs/riformer_s12.py:demo',
           f'--config.feature_teacher.init_from={teacher_dir}',
           "--config.model.depths=(1,1,2,1)", "--config.model.dims=(8,8,16,16)",
           "--config.feature_teacher.overrides.depths=(1,1,2,1)",
           "--config.feature_teacher.overrides.dims=(8,8,16,16)",
           '--config.batch_size=32', '--config.total_steps=40', '--config.log_every=1',
           '--config.eval_every=0', '--config.checkpoint_every=1000',
           '--config.optimizer.warmup_steps=5', '--config.optimizer.lr=3e-3']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, 'train.py', *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train = [r for r in rows if 'train/in_loss' in r]
  assert [r['step'] for r in train] == list(range(1, 41))
  for key in ('soft', 'in', 'out', 'rel'):
    first = np.mean([r[f'train/{key}_loss'] for r in train[:5]])
    last = np.mean([r[f'train/{key}_loss'] for r in train[-5:]])
    assert last < first, (key, first, last)
  assert rows[-1]['eval/accuracy'] == rows[-1]['eval/deploy_accuracy']
  # The exported deploy model has no token mixer.
  _, variables = rj.load_model(str(tmp_path / 'deploy'))
  assert 'mixer' not in variables['params']['blocks_0']
