"""RepLinear computes TDRL's formula, and every TDRL option reparameterizes exactly."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.layers import RepLinear
from repvit_jax.layers.rep_linear import TDRL
from repvit_jax.reparam import check
from conftest import TINY_VIT, nontrivial_variables

EPS = rj.reparam.BN_EPSILON


def bn_eval(y, params, stats):
  return (y - stats['mean']) / jnp.sqrt(stats['var'] + EPS) * params['scale'] + params['bias']


def direct_rep_linear(v, x, num_branches, rectify, rectify_features=None):
  """TDRL's Y = Rectify(Linear(X) + sum_n f_{n,n}(X)), written out from the variables."""
  p, s = v['params'], v['batch_stats']
  y = x @ p['skip']['kernel'] + p['skip']['bias']
  for n in range(1, num_branches + 1):
    h = x
    for i in range(n):
      h = bn_eval(h @ p[f'branch_{n}'][f'linear_{i}']['kernel'], p[f'branch_{n}'][f'bn_{i}'],
                  s[f'branch_{n}'][f'bn_{i}'])
    y = y + h
  if rectify == 'scale':   # the recorded constant: 1 / sqrt(N + 1) at init (tested below)
    y = y * s['rectify_scale']
  elif rectify == 'bn':
    k = rectify_features
    y = jnp.concatenate([bn_eval(y[..., :k], p['rectify_bn'], s['rectify_bn']), y[..., k:]], -1)
  return y


@pytest.mark.parametrize('train_path', ['branches', 'collapsed'])
@pytest.mark.parametrize('rectify', ['none', 'scale', 'bn'])
def test_rep_linear_eval_matches_formula_and_fuses(rectify, train_path):
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  layer = RepLinear(6, num_branches=3, rectify=rectify, rectify_features=4,
                    train_path=train_path)
  variables = nontrivial_variables(layer, x)
  out = layer.apply(variables, x, train=False)
  expected = direct_rep_linear(variables, x, 3, rectify, 4)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # Pyramid: branch n has n units; intermediate width defaults to the input width.
  assert [len(variables['params'][f'branch_{n}']) // 2 for n in (1, 2, 3)] == [1, 2, 3]
  assert variables['params']['branch_3']['linear_0']['kernel'].shape == (8, 8)
  fused = rj.reparameterize(variables)
  assert set(fused) == {'params'} and set(fused['params']) == {'kernel', 'bias'}
  y = x @ fused['params']['kernel'] + fused['params']['bias']
  assert check.relative_error(y, out) < 1e-6


@pytest.mark.parametrize('train_path', ['branches', 'collapsed'])
def test_rep_linear_batchnorm_statistics_are_over_batch_and_tokens(train_path):
  x = jax.random.normal(jax.random.key(1), (4, 7, 8)) * 3 + 1
  layer = RepLinear(6, num_branches=1, rectify='none', train_path=train_path)
  variables = layer.init(jax.random.key(0), x, train=False)
  _, updates = layer.apply(variables, x, train=True, mutable=['batch_stats'])
  h = x @ variables['params']['branch_1']['linear_0']['kernel']
  batch_mean = h.reshape(-1, 6).mean(0)
  np.testing.assert_allclose(updates['batch_stats']['branch_1']['bn_0']['mean'],
                             0.1 * batch_mean, rtol=1e-5, atol=1e-6)  # momentum 0.9 from 0


def test_scale_rectification_is_recorded_in_the_tree():
  layer = RepLinear(4, num_branches=3, rectify='scale')
  variables = layer.init(jax.random.key(0), jnp.ones((1, 4)), train=False)
  assert float(variables['batch_stats']['rectify_scale']) == pytest.approx(0.5)


def tdrl_error(tdrl, images, dtype=jnp.float32, seed=0):
  # The branch path is the reference: the collapsed path's eval mode is the fold itself.
  overrides = dict(TINY_VIT, tdrl=dict(tdrl, train_path='branches'), dtype=dtype,
                   param_dtype=dtype)
  train_model = rj.create_model('tdrl_vit_tiny', num_classes=10, **overrides)
  deploy_model = rj.create_model('tdrl_vit_tiny', num_classes=10, deploy=True, **overrides)
  variables = nontrivial_variables(train_model, images.astype(dtype), seed)
  result = check.equivalence_error(train_model, deploy_model, variables, images.astype(dtype),
                                   jit=False)
  return result['error']


OPTIONS = (
    [dict(num_branches=n) for n in (1, 2, 3, 4)] +
    [dict(qkv_rectify=q, rectify=r) for q, r in itertools.product(['bn', 'scale', 'none'],
                                                                 ['scale', 'bn', 'none'])] +
    [dict(layers=subset) for size in (1, 2, 3)
     for subset in itertools.combinations(('qkv', 'proj', 'fc1', 'fc2'), size)] +
    [dict(hidden_ratio=0.5, num_branches=3)])


@pytest.mark.parametrize('options', OPTIONS, ids=lambda o: ','.join(f'{k}={v}' for k, v in
                                                                  o.items()))
def test_every_tdrl_option_reparameterizes_exactly(options, tiny_images):
  assert tdrl_error(options, tiny_images) <= 1e-5


@pytest.mark.parametrize('options', [dict(num_branches=4), dict(qkv_rectify='bn', rectify='bn'),
                                     dict(layers=('qkv',), qkv_rectify='scale')])
def test_tdrl_reparameterizes_to_1e10_in_float64(options, tiny_images):
  with jax.enable_x64(True):
    assert tdrl_error(options, tiny_images, dtype=jnp.float64) <= 1e-10


def test_rectify_none_as_the_command_line_gives_it():
  # `--config.model.tdrl.rectify=none` reaches the model as None: it means no rectification.
  tdrl = TDRL(rectify=None, qkv_rectify=None)
  assert (tdrl.rectify, tdrl.qkv_rectify) == ('none', 'none')
  with pytest.raises(ValueError, match="TDRL rectify must be one of"):
    TDRL(rectify="batchnorm")
