"""ViT: timm parameter counts, the TDRL deploy tree, and the equivalence promise at full size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.layers import Attention, sincos_2d
from repvit_jax.layers.transformer import attention
from repvit_jax.reparam import check
from conftest import TINY_VIT, nontrivial_variables

IMAGES_224 = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)


def abstract_init(model, images=IMAGES_224):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape,
                                                                        images.dtype),
                                           train=False))


@pytest.mark.parametrize('name,count', [('vit_tiny', 5_717_416), ('deit_tiny', 5_717_416),
                                        ('vit_small', 22_050_664), ('vit_base', 86_567_656)])
def test_parameter_counts_match_timm(name, count):
  assert rj.count_params(abstract_init(rj.create_model(name))['params']) == count


def test_timm_layout_names():
  params = abstract_init(rj.create_model('vit_tiny'))['params']
  assert set(params) == {'patch_embed', 'cls_token', 'pos_embed', 'norm', 'head'} | {
      f'blocks_{i}' for i in range(12)}
  assert params['patch_embed']['kernel'].shape == (16, 16, 3, 192)
  assert params['pos_embed'].shape == (1, 197, 192)
  block = params['blocks_0']
  assert set(block) == {'norm1', 'attn', 'norm2', 'mlp'}
  assert block['attn']['qkv']['kernel'].shape == (192, 576)
  assert block['mlp']['fc1']['kernel'].shape == (192, 768)


def test_tdrl_deploy_tree_is_the_vanilla_tree():
  train_tree = abstract_init(rj.create_model('tdrl_vit_tiny'))
  deploy_tree = jax.eval_shape(rj.reparameterize, train_tree)
  vanilla_tree = abstract_init(rj.create_model('vit_tiny'))
  assert jax.tree.structure(deploy_tree) == jax.tree.structure(vanilla_tree)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), deploy_tree) == jax.tree.map(
      lambda a: (a.shape, a.dtype), vanilla_tree)
  assert rj.count_params(deploy_tree['params']) == 5_717_416
  assert rj.create_model('tdrl_vit_tiny', deploy=True) == rj.create_model('vit_tiny')
  assert rj.create_model('tdrl_vit_small', deploy=True) == rj.create_model('vit_small')


@pytest.mark.slow
def test_tdrl_vit_tiny_equivalence_at_224():
  images = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
  model = rj.create_model('tdrl_vit_tiny', tdrl={'train_path': 'branches'})  # the reference
  variables = nontrivial_variables(model, images)
  result = check.equivalence_error(model, rj.create_model('tdrl_vit_tiny', deploy=True),
                                   variables, images)
  assert result['error'] <= 1e-5
  assert result['deploy_params'] == 5_717_416


def test_attention_matches_direct_computation():
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  layer = Attention(num_heads=2)
  variables = layer.init(jax.random.key(1), x, train=False)
  out, state = layer.apply(variables, x, train=False, mutable=['intermediates'])
  p = jax.tree.map(np.asarray, variables['params'])
  qkv = np.asarray(x) @ p['qkv']['kernel'] + p['qkv']['bias']        # (B, T, 3 * C)
  q, k, v = np.split(qkv, 3, axis=-1)
  heads = lambda t: t.reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)       # (B, H, T, D)
  logits = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 2.0
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = (weights @ heads(v)).transpose(0, 2, 1, 3).reshape(2, 5, 8)
  expected = expected @ p['proj']['kernel'] + p['proj']['bias']
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state['intermediates']['attn_logits'][0], logits, rtol=1e-5,
                             atol=1e-5)


def test_late_normalised_attention_equals_softmax_then_sum_with_gradients():
  # attention() divides by the softmax's sum after the weighted sum; values and gradients
  # are those of softmax(q k^T / sqrt(D) + bias) v, also with a bias and wider values (LeViT).
  keys = jax.random.split(jax.random.key(0), 4)
  q, k = (3.0 * jax.random.normal(key, (2, 6, 3, 4)) for key in keys[:2])
  v = jax.random.normal(keys[2], (2, 6, 3, 5))
  bias = jax.random.normal(keys[3], (1, 3, 6, 6))

  def reference(q, k, v):
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / 2.0 + bias
    return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), v)

  ours = lambda q, k, v: attention(q, k, v, bias=bias)
  np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-6)
  loss = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a))))
  for got, want in zip(jax.grad(loss(ours), (0, 1, 2))(q, k, v),
                       jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  half = attention(*(t.astype(jnp.bfloat16) for t in (q, k, v)))
  assert half.dtype == jnp.bfloat16 and half.shape == (2, 6, 3, 5)


def test_qkv_is_dense_split_in_three_with_the_query_scale_folded_in():
  # QKV keeps nn.Dense(3 C)'s variables (same init) and its numbers, column for column; the
  # query scale, a power of two, is exact: attention on the pre-scaled queries with scale=1
  # is bit for bit attention on the plain ones.
  from repvit_jax.layers.transformer import QKV  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(1), (2, 6, 8))
  dense = nn.Dense(24, kernel_init=nn.initializers.truncated_normal(stddev=0.02))
  variables = dense.init(jax.random.key(0), x)
  qkv = QKV(8, query_scale=0.5)
  assert jax.tree.all(jax.tree.map(jnp.array_equal, qkv.init(jax.random.key(0), x), variables))
  variables = check.perturb_params(variables, 3, relative=1.0)
  fused = dense.apply(variables, x)
  q, k, v = qkv.apply(variables, x)
  # The same dot products; XLA may sum a narrower product in another order (rounding).
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  close(q, fused[..., :8] * 0.5)
  close(k, fused[..., 8:16])
  close(v, fused[..., 16:])
  heads = lambda t: t.reshape(2, 6, 2, 4)                    # head_dim 4: scale 0.5, exact
  np.testing.assert_array_equal(
      attention(heads(q), heads(k), heads(v), scale=1.0),
      attention(heads(q / 0.5), heads(k), heads(v)))
  # A head_dim whose scale is not a power of two, in bfloat16: the logits carry the scale.
  odd = [jax.random.normal(key, (2, 5, 2, 3)) for key in jax.random.split(jax.random.key(2), 3)]
  half = attention(*(t.astype(jnp.bfloat16) for t in odd))
  np.testing.assert_allclose(half.astype(jnp.float32), attention(*odd), atol=3e-2)


def test_sincos_embedding_values():
  table = sincos_2d(4, 8, cls_token=True)
  assert table.shape == (17, 8)
  np.testing.assert_array_equal(table[0], 0)
  # Patch (row 1, col 2) = raster index 6 (+1 for cls); column code first, then row code.
  omega = 1.0 / 10000 ** (np.arange(2) / 2)
  expected = np.concatenate([np.sin(2 * omega), np.cos(2 * omega), np.sin(omega),
                             np.cos(omega)])
  np.testing.assert_allclose(table[7], expected, rtol=1e-6)


def test_avg_pool_sincos_variant():
  model = rj.create_model('vit_tiny', num_classes=5, global_pool='avg', pos_embed='sincos',
                          **TINY_VIT)
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)
  assert 'fc_norm' in variables['params'] and 'norm' not in variables['params']
  assert 'pos_embed' not in variables['params']
  assert model.apply(variables, jnp.ones((1, 32, 32, 3)), train=False).shape == (1, 5)


def test_drop_path_is_random_in_training_and_off_in_eval():
  model = rj.create_model('vit_tiny', num_classes=3, drop_path_rate=0.5, **TINY_VIT)
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  train = lambda seed: model.apply(variables, x, train=True,
                                   rngs={'dropout': jax.random.key(seed)})
  assert not np.allclose(train(1), train(2))
  np.testing.assert_array_equal(model.apply(variables, x, train=False),
                                model.apply(variables, x, train=False))


def test_bad_image_size_is_a_clear_error():
  model = rj.create_model('vit_tiny', **TINY_VIT)
  with pytest.raises(ValueError, match='not divisible by the patch size'):
    model.init(jax.random.key(0), jnp.ones((1, 30, 30, 3)), train=False)


def test_feature_output_without_head():
  model = rj.create_model('vit_small', num_classes=0)
  shapes = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), train=False),
                          abstract_init(model))
  assert shapes.shape == (2, 384)
