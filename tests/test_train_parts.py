"""Trainer parts in-process: model export/load, init_from fitting, mesh, distillation loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.train import losses, pretrained, sharding
from repvit_jax.train.classification import ClassificationTask
from conftest import TINY_VIT, load_config, nontrivial_variables


def test_save_and_load_model_round_trip(tmp_path):
  model = rj.create_model('tdrl_vit_tiny', num_classes=3, deploy=True, **TINY_VIT)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  rj.save_model(str(tmp_path), variables, rj.ModelSpec.registered(
      'tdrl_vit_tiny', num_classes=3, deploy=True, overrides=TINY_VIT,
      image_size=32))
  loaded_model, loaded = rj.load_model(str(tmp_path))
  assert loaded_model == model
  np.testing.assert_array_equal(loaded_model.apply(loaded, images, train=False),
                                model.apply(variables, images, train=False))


def test_load_model_missing_files_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match='holds no checkpoint and no saved model'):
    rj.load_model(str(tmp_path))
  (tmp_path / 'variables.msgpack').write_bytes(b'')
  with pytest.raises(FileNotFoundError, match='model.json not found'):
    rj.load_model(str(tmp_path))


def test_load_model_garbage_files_are_one_clear_error(tmp_path):
  model = rj.create_model('vit_tiny', num_classes=3, **TINY_VIT)
  variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
  rj.save_model(str(tmp_path), variables, rj.ModelSpec.registered(
      'vit_tiny', num_classes=3, deploy=True, overrides=TINY_VIT,
      image_size=32))
  (tmp_path / 'variables.msgpack').write_bytes(b'\x93\x01\x02')   # truncated msgpack
  with pytest.raises(ValueError, match=r'variables.msgpack is not a readable variable tree'):
    rj.load_model(str(tmp_path))
  (tmp_path / 'model.json').write_text('{garbage')
  with pytest.raises(ValueError, match=r'model.json is not a model description written by '
                                       'save_model'):
    rj.load_model(str(tmp_path))


def test_fit_takes_matching_leaves_and_lists_mismatches():
  target = {'a': {'kernel': np.zeros((2, 3))}, 'head': {'kernel': np.zeros((3, 5))}}
  source = {'a': {'kernel': np.ones((2, 3))}, 'head': {'kernel': np.ones((3, 10))},
            'decoder': {'kernel': np.ones(4)}}
  fitted, unused = rj.io.fit(target, source, skip=r'^head/')
  np.testing.assert_array_equal(fitted['a']['kernel'], 1)
  np.testing.assert_array_equal(fitted['head']['kernel'], 0)   # kept: new head
  assert unused == ['decoder/kernel']
  with pytest.raises(ValueError, match=r'2 mismatches.*a/kernel: shape \(2, 4\).*head/kernel'):
    rj.io.fit(target, {'a': {'kernel': np.ones((2, 4))}})


def test_mesh_errors():
  with pytest.raises(ValueError, match='does not fit'):
    sharding.make_mesh({'data': len(jax.devices()) + 1, 'fsdp': 1})
  with pytest.raises(ValueError, match='unknown mesh axes'):
    sharding.make_mesh({'model': 2})
  mesh = sharding.make_mesh(None)
  assert mesh.shape == {'data': len(jax.devices()), 'fsdp': 1}


def test_soft_distillation_feeds_the_teacher_at_its_own_size(tmp_path, capsys):
  """A teacher trained at 16x16 with its own mean/std gets the student's 32x32 batch resized
  and re-normalised to that; a teacher near chance on the first eval batch is a warning."""
  teacher = rj.create_model('vit_tiny', num_classes=10, **TINY_VIT)
  small = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  teacher_variables = nontrivial_variables(teacher, small)
  contract = rj.InputSpec(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  rj.save_model(str(tmp_path), teacher_variables,
                rj.ModelSpec.registered('vit_tiny', num_classes=10, deploy=True,
                                        overrides=TINY_VIT, input=contract))

  config = load_config('tdrl_vit_tiny.py:demo')
  config.model.update(TINY_VIT)
  config.teacher.model = 'vit_tiny'
  config.teacher.init_from = str(tmp_path)
  config.teacher.overrides = ml_collections.ConfigDict(TINY_VIT)
  config.teacher.temperature = 2.0
  config.teacher.alpha = 0.25
  config.label_smoothing = 0.0
  task = ClassificationTask(config, num_classes=10)
  frozen = task.load_frozen()
  assert task.teacher_input == contract
  assert 'warning: the teacher (vit_tiny' in capsys.readouterr().err   # random weights
  images = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  variables = task.init_variables(jax.random.key(1), images)
  labels = jnp.arange(4) % 10
  loss, (_, metrics) = task.loss(variables['params'], variables['batch_stats'],
                                 {'image': images, 'label': labels}, jax.random.key(2), frozen)

  logits, _ = task.model.apply(variables, images, train=True, mutable=['batch_stats'])
  # What the teacher must see: the pixels the student's images stand for, in its own units,
  # at 16x16 (antialiased bilinear).
  pixels = images * np.asarray(config.data.std) + np.asarray(config.data.mean)
  seen = jax.image.resize((pixels - 0.5) / 0.25, (4, 16, 16, 3), 'bilinear', antialias=True)
  teacher_logits = teacher.apply(teacher_variables, seen, train=False)
  ce = losses.softmax_cross_entropy(logits, losses.onehot(labels, 10)).mean()
  p = jax.nn.softmax(teacher_logits / 2.0)
  kl = jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(logits / 2.0)), axis=-1).mean() * 4.0
  np.testing.assert_allclose(metrics['train/distill_loss'], kl, rtol=1e-4)
  np.testing.assert_allclose(loss, 0.75 * ce + 0.25 * kl, rtol=1e-4)


def test_teacher_without_weights_is_an_error():
  config = load_config('vit_tiny.py:demo')
  config.teacher.model = 'vit_tiny'
  with pytest.raises(ValueError, match='teacher.init_from is not'):
    ClassificationTask(config, num_classes=10)


def test_position_tables_follow_the_resolution(tmp_path):
  """Same grid: the table as it is. Another grid: class token kept, a constant table stays
  constant (the bicubic weights sum to 1); load_model(image_size=) and init_from both use it."""
  from repvit_jax.layers import resample_posemb  # pylint: disable=import-outside-toplevel
  table = np.random.default_rng(0).normal(size=(1, 17, 8)).astype(np.float32)
  np.testing.assert_array_equal(resample_posemb(table, 4), table)
  flat = np.concatenate([table[:, :1], np.full((1, 16, 8), 0.3, np.float32)], axis=1)
  bigger = resample_posemb(flat, 8)
  assert bigger.shape == (1, 65, 8) and bigger.dtype == np.float32
  np.testing.assert_array_equal(bigger[:, :1], table[:, :1])
  np.testing.assert_allclose(bigger[:, 1:], 0.3, rtol=1e-6)
  with pytest.raises(ValueError, match='not a square grid'):
    resample_posemb(table[:, :15], 4)

  model = rj.create_model('vit_tiny', num_classes=3, **TINY_VIT)
  variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
  rj.save_model(str(tmp_path), variables, rj.ModelSpec.registered(
      'vit_tiny', num_classes=3, deploy=True, overrides=TINY_VIT, input=rj.InputSpec(32)))
  big_model, big = rj.load_model(str(tmp_path), image_size=64)
  assert big['params']['pos_embed'].shape == (1, 65, 16)
  assert big_model.apply(big, jnp.zeros((2, 64, 64, 3)), train=False).shape == (2, 3)
  same_model, same = rj.load_model(str(tmp_path), image_size=32)
  np.testing.assert_array_equal(same['params']['pos_embed'], variables['params']['pos_embed'])

  config = load_config('vit_tiny.py:demo')
  config.model.update(TINY_VIT)
  config.data.image_size = 64
  adapted = ClassificationTask(config, num_classes=3).adapt_pretrained(dict(variables))
  np.testing.assert_array_equal(adapted['params']['pos_embed'], big['params']['pos_embed'])


def test_gradient_accumulation_equals_the_large_batch_update():
  """4 micro-batches of 8 accumulated = one batch of 32 (a ViT without BatchNorm or dropout)."""
  import optax  # pylint: disable=import-outside-toplevel
  from repvit_jax.train.state import create_state  # pylint: disable=import-outside-toplevel
  from repvit_jax.train.step import make_train_step  # pylint: disable=import-outside-toplevel
  config = load_config('vit_tiny.py:demo')
  config.model.update(dict(TINY_VIT, depth=1))
  task = ClassificationTask(config, num_classes=10)
  batch = {'image': jax.random.normal(jax.random.key(0), (32, 32, 32, 3)),
           'label': jnp.arange(32) % 10}
  tx = optax.sgd(0.5)
  state = jax.jit(lambda: create_state(lambda rng: task.init_variables(rng, batch['image'][:1]),
                                       tx, 0))()
  whole, whole_metrics = jax.jit(make_train_step(task, tx))(state, batch, {})
  accumulated, metrics = jax.jit(make_train_step(task, tx, accum_steps=4))(state, batch, {})
  moved = rj.reparam.check.relative_error
  assert moved(jax.tree.leaves(whole['params'])[0], jax.tree.leaves(state['params'])[0]) > 1e-3
  for a, b in zip(jax.tree.leaves(accumulated['params']), jax.tree.leaves(whole['params'])):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(float(jnp.max(jnp.abs(b))), 1.0))
  np.testing.assert_allclose(metrics['train/loss'], whole_metrics['train/loss'], rtol=1e-5)
  with pytest.raises(ValueError, match='does not split into grad_accum_steps=5'):
    jax.jit(make_train_step(task, tx, accum_steps=5))(state, batch, {})


def test_the_console_shows_the_parts_of_a_composite_loss():
  row = {'train/loss': 3.0, 'train/ce': 1.0, 'train/distill_loss': 2.0, 'train/accuracy': 0.5,
         'train/lr': 1e-3}
  assert rj.train.loop.loss_parts(row) == {'ce': 1.0, 'distill_loss': 2.0}
  assert rj.train.loop.loss_parts({'train/loss': 1.0, 'train/ce': 1.0}) == {}   # one part
  assert rj.train.loop.loss_parts({'train/loss': 1.0, 'train/mae_loss': 1.0}) == {}


def test_the_trainer_names_the_classes_in_every_spec_it_saves():
  config = load_config('vit_tiny.py:demo')
  task = rj.train.tasks.build(config, rj.data.get_dataset_info(config.data))
  assert task.spec.class_names == tuple(str(k) for k in range(10))
  assert task.deploy_spec.class_names == task.spec.class_names


def test_init_from_refuses_weights_trained_with_other_attention_heads():
  from repvit_jax.models.spec import ModelSpec  # pylint: disable=import-outside-toplevel
  mae_lite = ModelSpec.registered('mae_vit_tiny', num_classes=0)        # 12 heads
  deit = ModelSpec.registered('vit_tiny', num_classes=10)               # 3 heads
  with pytest.raises(ValueError, match=r'12 attention heads .* has 3 .*num_heads=12'):
    pretrained.check_heads(mae_lite, deit, 'init_from runs/mae')
  pretrained.check_heads(mae_lite, deit.replace(overrides={'num_heads': 12}))   # fits
  pretrained.check_heads(None, deit)                       # a source without a spec: no check


def test_a_config_lacking_a_field_the_trainer_reads_is_one_line_naming_it():
  from repvit_jax.train.loop import check_config  # pylint: disable=import-outside-toplevel
  check_config(load_config('vit_tiny.py:demo'))          # a packaged config has every field
  config = load_config('vit_tiny.py:demo')
  config.teacher = ml_collections.ConfigDict({'kind': 'soft', 'alpha': 0.5})
  del config['ema']
  with pytest.raises(ValueError, match=r"config lacks ema, teacher.image_size, teacher.init_from, "
                                       r"teacher.model, teacher.overrides, "
                                       r"teacher.temperature: build it on repvit_jax.configs."
                                       r"common.run_config\('classification'\)"):
    check_config(config)


def test_evaluators_are_declared_in_the_config():
  from repvit_jax.train import evaluators  # pylint: disable=import-outside-toplevel
  config = load_config('vit_tiny.py:demo')
  assert config.evals.to_dict() == {'eval': {'kind': 'forms', 'split': None}}
  config.evals.eval.kind = 'accuracy'
  with pytest.raises(ValueError, match=r"config.evals.eval.kind='accuracy' is not an evaluator; "
                                       r"known: forms"):
    evaluators.build(config, task=None, mesh=None, batch_size=8, frozen={})
