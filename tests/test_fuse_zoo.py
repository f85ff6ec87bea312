"""The zoo's fusion: new fuse algebra, the conv/linear+BN, averaged-head and affine-mixer fusers,
and idempotence. The equivalence promise for every registered name is tests/test_models.py;
full-size equivalence is measured by benchmarks/models.py (`--check`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax import reparam
from repvit_jax.layers.conv_bn import BNLinear, ConvBN, LinearBN
from repvit_jax.reparam import check
from conftest import nontrivial_variables
from test_models import reduced

# Reseeded from each test's name (conftest.py, `_rng_per_test`).
RNG = np.random.default_rng(0)

# ---------------------------------------------------------------- fuse algebra


def bn_params(channels):
  return (RNG.uniform(0.5, 1.5, channels), RNG.normal(size=channels),
          RNG.normal(size=channels), RNG.uniform(0.5, 2.0, channels))


def batchnorm(y, scale, offset, mean, var, eps=reparam.BN_EPSILON):
  return (y - mean) / np.sqrt(var + eps) * scale + offset


@pytest.mark.parametrize('with_bias', [True, False])
def test_fold_preceding_batchnorm_matches_bn_then_dense(with_bias):
  f32 = lambda a: a.astype(np.float32)
  x, kernel = f32(RNG.normal(size=(4, 6))), f32(RNG.normal(size=(6, 3)))
  bias = f32(RNG.normal(size=3)) if with_bias else None
  params = [f32(p) for p in bn_params(6)]
  expected = batchnorm(x, *params) @ kernel + (0 if bias is None else bias)
  k, b = reparam.fold_preceding_batchnorm(kernel, bias, *params)
  np.testing.assert_allclose(x @ np.asarray(k) + np.asarray(b), expected, rtol=1e-5, atol=1e-5)


def test_fold_preceding_batchnorm_rejects_bad_shapes():
  with pytest.raises(ValueError, match='following dense kernel'):
    reparam.fold_preceding_batchnorm(np.ones((1, 1, 6, 3)), None, *bn_params(6))
  with pytest.raises(ValueError, match='6 input features'):
    reparam.fold_preceding_batchnorm(np.ones((6, 3)), None, *bn_params(3))


@pytest.mark.parametrize('minus_input', [True, False])
def test_fold_affine_into_norm_matches_norm_then_affine(minus_input):
  x = RNG.normal(size=(2, 5, 5, 4)).astype(np.float32)
  gamma, beta, s, t = (RNG.normal(size=4).astype(np.float32) for _ in range(4))
  x_hat = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / np.sqrt(
      x.var(axis=(1, 2, 3), keepdims=True) + 1e-5)
  n = gamma * x_hat + beta
  expected = s * n + t - (n if minus_input else 0)
  g2, b2 = reparam.fold_affine_into_norm(gamma, beta, s, t, minus_input=minus_input)
  np.testing.assert_allclose(np.asarray(g2) * x_hat + np.asarray(b2), expected, rtol=1e-5,
                             atol=1e-5)
  # The same through Flax's GroupNorm with one group (what MetaFormer uses).
  norm = nn.GroupNorm(num_groups=1, epsilon=1e-5)
  out = norm.apply({'params': {'scale': g2, 'bias': b2}}, x)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_fold_affine_into_norm_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='one shape'):
    reparam.fold_affine_into_norm(np.ones(3), np.ones(3), np.ones(4), np.ones(3))


# ---------------------------------------------------------------- layer fusers


@pytest.mark.parametrize('layer,shape', [
    (ConvBN(6, (3, 3), strides=2, padding=1), (2, 7, 7, 4)),
    (ConvBN(8, (3, 3), padding=1, groups=8), (2, 5, 5, 8)),       # depthwise
    (ConvBN(6, (1, 1), use_bias=True), (2, 4, 4, 3)),
    (LinearBN(5), (2, 7, 3)),
    (BNLinear(5), (3, 6)),
])
def test_layer_fusers_reach_the_deploy_layer(layer, shape):
  x = jnp.asarray(RNG.normal(size=shape), jnp.float32)
  variables = nontrivial_variables(layer, x)
  deploy_layer = layer.clone(deploy=True)
  deployed = rj.reparameterize(variables)
  abstract = jax.eval_shape(lambda: deploy_layer.init(jax.random.key(0), x, train=False))
  assert jax.tree.structure(deployed) == jax.tree.structure(abstract)
  assert set(deployed) == {'params'} and set(deployed['params']) == {'kernel', 'bias'}
  expected = layer.apply(variables, x, train=False)
  np.testing.assert_allclose(deploy_layer.apply(deployed, x, train=False), expected,
                             rtol=1e-5, atol=1e-5)
  # The deploy layers are plain Flax layers' variables.
  plain = (nn.Dense(layer.features) if not isinstance(layer, ConvBN) else
           nn.Conv(layer.features, layer.kernel_size, strides=layer.strides,
                   padding=[(layer.padding, layer.padding)] * 2,
                   feature_group_count=layer.groups))
  np.testing.assert_allclose(plain.apply(deployed, x), expected, rtol=1e-5, atol=1e-5)


def test_averaged_heads_become_one_dense():
  from repvit_jax.models.levit import DistilledHead
  x = jnp.asarray(RNG.normal(size=(4, 6)), jnp.float32)
  head = DistilledHead(3)
  variables = nontrivial_variables(head, x)
  cls, dist = head.apply(variables, x, train=True, mutable=['batch_stats'])[0]
  assert cls.shape == dist.shape == (4, 3)
  deployed = rj.reparameterize(variables)
  assert set(deployed) == {'params'} and set(deployed['params']) == {'kernel', 'bias'}
  np.testing.assert_allclose(nn.Dense(3).apply(deployed, x),
                             head.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)


def test_missing_batch_stats_and_bad_shapes_name_the_path():
  model, size = reduced('levit_128s')
  variables = nontrivial_variables(model, jnp.zeros((1, size, size, 3)))
  with pytest.raises(ValueError, match=r'^/(stem|head)/\S+: a .* needs the BatchNorm stat'):
    rj.reparameterize({'params': variables['params']})
  broken = jax.tree.map(lambda a: a, variables)
  broken['batch_stats']['stages_1']['blocks_0']['mlp']['fc1']['bn']['var'] = jnp.ones(3)
  with pytest.raises(ValueError, match=r'/stages_1/blocks_0/mlp/fc1/bn \(batch_stats\)/var'):
    rj.reparameterize(broken)
  broken = jax.tree.map(lambda a: a, variables)
  broken['params']['head']['dist']['pre_bn']['scale'] = jnp.ones(7)
  with pytest.raises(ValueError, match=r'/head/dist/pre_bn/scale'):
    rj.reparameterize(broken)
  model, size = reduced('riformer_s12')
  variables = nontrivial_variables(model, jnp.zeros((1, size, size, 3)))
  variables['params']['blocks_2']['mixer']['shift'] = jnp.ones(3)
  with pytest.raises(ValueError, match=r'/blocks_2/mixer/shift'):
    rj.reparameterize(variables)


@pytest.mark.parametrize('name', ['levit_128s', 'mobilevit_xxs', 'riformer_s12'])
def test_reparameterize_is_idempotent(name):
  model, size = reduced(name)
  once = rj.reparameterize(nontrivial_variables(model, jnp.zeros((1, size, size, 3))))
  twice = rj.reparameterize(once)
  assert jax.tree.structure(once) == jax.tree.structure(twice)
  jax.tree.map(np.testing.assert_array_equal, once, twice)
