"""PoolFormer and RIFormer: sizes, MACs, the pooling mixer, the token-mixer-free deploy block,
and the sown features module imitation reads."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.models.metaformer import pool_mixer
from conftest import benchmark

bench = benchmark('models')

IMAGES_224 = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
TINY = dict(depths=(1, 1, 2, 1), dims=(8, 8, 16, 16))


def abstract(model, images=IMAGES_224):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def keys(tree, prefix=''):
  out = set()
  for k, v in tree.items():
    path = f'{prefix}/{k}'
    out |= keys(v, path) if isinstance(v, dict) else {path}
  return out


@pytest.fixture(scope='module')
def s12_trees():
  return {(name, deploy): abstract(rj.create_model(name, deploy=deploy))
          for name in ('poolformer_s12', 'riformer_s12') for deploy in (False, True)}


def test_parameter_counts(s12_trees):
  assert rj.count_params(s12_trees['poolformer_s12', False]['params']) == 11_915_176  # 11.92M
  deployed = s12_trees['riformer_s12', True]['params']
  assert rj.count_params(deployed) == 11_915_176
  # Training form: + a per-channel scale and shift in each of the 12 blocks.
  extra = 2 * (2 * 64 + 2 * 128 + 6 * 320 + 2 * 512)
  assert rj.count_params(s12_trees['riformer_s12', False]['params']) == 11_915_176 + extra


def test_riformer_s12_macs_within_2_percent_of_the_paper():
  macs = bench.model_macs('riformer_s12', deploy=True)
  assert abs(macs / 1.82e9 - 1) <= 0.02, macs


def test_deploy_riformer_has_no_token_mixer(s12_trees):
  train_tree = s12_trees['riformer_s12', False]
  assert 'mixer' in train_tree['params']['blocks_0']
  deployed = jax.eval_shape(rj.reparameterize, train_tree)
  target = s12_trees['riformer_s12', True]
  assert jax.tree.structure(deployed) == jax.tree.structure(target)
  assert jax.tree.map(lambda a: a.shape, deployed) == jax.tree.map(lambda a: a.shape, target)
  assert not any('mixer' in path for path in keys(deployed['params']))
  assert set(deployed['params']['blocks_11']) == {'norm1', 'layer_scale_1', 'norm2', 'mlp',
                                                  'layer_scale_2'}
  # The same layout as PoolFormer: a deployed RIFormer is a PoolFormer tree without pooling.
  assert keys(deployed['params']) == keys(s12_trees['poolformer_s12', False]['params'])


def test_poolformer_weights_fit_a_riformer_except_the_mixers(s12_trees):
  student = s12_trees['riformer_s12', False]['params']
  teacher = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                         s12_trees['poolformer_s12', False]['params'])
  fitted, unused = rj.io.fit(student, teacher, skip=r'(^|/)mixer/')
  assert unused == []
  assert jax.tree.structure(fitted) == jax.tree.structure(student)


def test_pool_mixer_excludes_padding_from_the_average():
  x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
  expected = np.zeros_like(x)
  for i in range(3):
    for j in range(4):
      window = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      expected[:, i, j] = window.mean(axis=(1, 2)) - x[:, i, j]
  np.testing.assert_allclose(pool_mixer(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-5)


def test_blocks_sow_mixer_input_output_and_features():
  model = rj.create_model('riformer_s12', num_classes=3, **TINY)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = abstract(model, images)
  _, state = jax.eval_shape(lambda v, x: model.apply(v, x, train=False,
                                                     mutable=['intermediates']),
                            variables, images)
  inter = state['intermediates']
  assert sorted(inter) == [f'blocks_{k}' for k in range(5)]
  for name in ('mixer_in', 'mixer_out', 'features'):
    assert inter['blocks_0'][name][0].shape == (2, 8, 8, 8)
    assert inter['blocks_4'][name][0].shape == (2, 1, 1, 16)


@pytest.mark.parametrize('size,count', [('s24', 21_388_968), ('s36', 30_862_760),
                                        ('m36', 56_172_520), ('m48', 73_473_448)])
def test_larger_sizes_match_the_paper(size, count):
  params = abstract(rj.create_model(f'poolformer_{size}'))['params']
  assert rj.count_params(params) == count   # 21M, 31M, 56M, 73M in the RIFormer table
