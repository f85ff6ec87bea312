"""LeViT: sizes (eval_shape), MACs, attention-bias indexing, the BN-free deploy tree, and the
classification task's two-head training (labels, or a teacher for the distillation head)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax import io
from repvit_jax.models.levit import bias_index
from repvit_jax.train import losses
from repvit_jax.train.classification import ClassificationTask
from conftest import benchmark, load_config, nontrivial_variables

bench = benchmark('models')

IMAGES_224 = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
TINY = dict(embed_dims=(16, 16, 24), key_dim=8, num_heads=(2, 2, 3), depths=(1, 1, 1))


def abstract(model, images=IMAGES_224):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


@pytest.mark.parametrize('name,count,paper_m', [
    ('levit_128s', 7_777_058, 7.8), ('levit_128', 9_213_936, 9.2),
    ('levit_192', 10_947_069, 10.9), ('levit_256', 18_893_876, 18.9),
    ('levit_384', 39_128_836, 39.1)])
def test_parameter_counts(name, count, paper_m):
  params = abstract(rj.create_model(name))['params']
  assert rj.count_params(params) == count
  assert round(count / 1e6, 1) == paper_m


def test_levit_128s_macs_within_2_percent_of_the_paper():
  macs = bench.model_macs('levit_128s', deploy=True)
  assert abs(macs / 305e6 - 1) <= 0.02, macs


def test_deploy_tree_has_no_batch_stats_and_one_head():
  train_tree = abstract(rj.create_model('levit_128s'))
  assert set(train_tree) == {'params', 'batch_stats'}
  assert set(train_tree['params']['head']) == {'cls', 'dist'}
  deployed = jax.eval_shape(rj.reparameterize, train_tree)
  assert set(deployed) == {'params'}                    # every BatchNorm folded
  target = abstract(rj.create_model('levit_128s', deploy=True))
  assert jax.tree.structure(deployed) == jax.tree.structure(target)
  assert jax.tree.map(lambda a: a.shape, deployed) == jax.tree.map(lambda a: a.shape, target)
  assert deployed['params']['head']['kernel'].shape == (384, 1000)
  attn = deployed['params']['stages_1']['downsample']['attn']
  assert set(attn) == {'kv', 'q', 'proj', 'attention_biases'}
  assert attn['attention_biases'].shape == (8, 14 * 14)    # 128 / 16 heads, 14x14 key grid
  assert set(attn['q']) == {'kernel', 'bias'}


def test_bias_index_is_absolute_offset():
  index = bias_index((3, 4))
  for q in range(12):
    for k in range(12):
      assert index[q, k] == abs(q // 4 - k // 4) * 4 + abs(q % 4 - k % 4)
  # Shrinking attention: queries on the stride-2 subsample of a 7x7 grid (4x4), keys on all.
  index = bias_index((7, 7), stride=2)
  assert index.shape == (16, 49)
  assert index[5, 0] == abs(2 * 1 - 0) * 7 + abs(2 * 1 - 0)   # query (2, 2), key (0, 0)
  assert len(np.unique(index)) == 49 and index.max() == 48


def test_heads_pair_in_training_mean_in_eval():
  model = rj.create_model('levit_128s', num_classes=4, **TINY)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = abstract(model, images)
  train_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True,
                                                      mutable=['batch_stats'])[0],
                             variables, images)
  assert isinstance(train_out, tuple) and [o.shape for o in train_out] == [(2, 4), (2, 4)]
  eval_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert eval_out.shape == (2, 4)
  no_dist = rj.create_model('levit_128s', num_classes=4, distillation=False, **TINY)
  assert set(abstract(no_dist, images)['params']['head']) == {'pre_bn', 'linear'}


def _config(teacher=None):
  config = load_config('levit_128s.py:demo')
  config.data.image_size = 32
  config.model.update(TINY)
  config.teacher.kind = 'hard'
  if teacher:
    config.teacher.model = 'levit_128s'
    config.teacher.overrides = dict(TINY)
    config.teacher.init_from = teacher
  return config


def test_task_trains_class_head_on_labels_and_distillation_head_on_teacher(tmp_path, capsys):
  teacher = rj.create_model('levit_128s', num_classes=10, **TINY)
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  io.save_model(str(tmp_path / 'teacher'), nontrivial_variables(teacher, images),
                rj.ModelSpec.registered('levit_128s', num_classes=10, overrides=TINY,
                                        image_size=32))
  batch = {'image': images, 'label': jnp.array([0, 1, 2, 3])}
  targets = losses.onehot(batch['label'], 10, 0.1)
  for path in (None, str(tmp_path / 'teacher')):
    task = ClassificationTask(_config(path), num_classes=10)
    frozen = task.load_frozen()
    variables = nontrivial_variables(task.model, images, seed=3)

    @jax.jit
    def run(variables, frozen):
      loss, (_, metrics) = task.loss(variables['params'], variables['batch_stats'], batch,
                                     jax.random.key(3), frozen)
      (cls, dist), _ = task.model.apply(variables, images, train=True, mutable=['batch_stats'])
      ce = losses.softmax_cross_entropy(cls, targets).mean()
      if task.teacher is None:
        other = losses.softmax_cross_entropy(dist, targets).mean()
      else:
        teacher_logits = task.teacher.apply(frozen['teacher'], images, train=False)
        other = losses.hard_distillation_loss(dist, teacher_logits).mean()
      return loss, metrics, ce, other

    loss, metrics, ce, other = run(variables, frozen)
    # The teacher is named in one line with how it is fed and its first-batch accuracy.
    announced = [l for l in capsys.readouterr().out.splitlines() if l.startswith('teacher:')]
    assert len(announced) == (path is not None)
    if path:
      assert announced[0].startswith(f'teacher: levit_128s from {path}, fed 32x32 images '
                                     '(hard distillation, alpha 0.5): right on ')
      assert announced[0].endswith('of the first eval batch (128 images)'), announced[0]
    key = 'train/dist_ce' if path is None else 'train/distill_loss'
    np.testing.assert_allclose(metrics[key], other, rtol=1e-5)
    np.testing.assert_allclose(metrics['train/ce'], ce, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * ce + 0.5 * other, rtol=1e-5)
