"""Feature maps for dense heads: every family's taps, their shapes and strides, that they are
the model's own activations, and that the deploy form gives the same maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.models import features
from conftest import TINY_VIT, nontrivial_variables

REDUCED = {
    'tdrl_vit_tiny': (dict(TINY_VIT, patch_size=8), 32,
                      [(4, 4, 16), (4, 4, 16)], [8, 8]),
    'levit_128s': (dict(embed_dims=(16, 24, 32), key_dim=8, num_heads=(2, 2, 2),
                        depths=(1, 1, 1)), 64, [(4, 4, 16), (2, 2, 24), (1, 1, 32)],
                   [16, 32, 64]),
    'mobilevit_xs': (dict(stem_features=8, channels=(8, 8, 8, 16, 16), stage_depths=(1, 2),
                          transformer_dims=(16, 16, 16), transformer_depths=(1, 1, 1),
                          expansion=2.0, final_features=16), 64,
                     [(32, 32, 8), (16, 16, 8), (8, 8, 8), (4, 4, 16), (2, 2, 16)],
                     [2, 4, 8, 16, 32]),
    'riformer_s12': (dict(depths=(1, 1, 2, 1), dims=(8, 8, 16, 16)), 32,
                     [(8, 8, 8), (4, 4, 8), (2, 2, 16), (1, 1, 16)], [4, 8, 16, 32]),
}


@pytest.mark.parametrize('name', sorted(REDUCED))
def test_every_family_gives_its_maps_in_both_forms(name):
  overrides, size, shapes, reductions = REDUCED[name]
  model = rj.create_model(name, num_classes=10, **overrides)
  images = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  info = features.feature_info(model, size)
  assert [i['reduction'] for i in info] == reductions
  assert [i['channels'] for i in info] == [s[-1] for s in shapes]
  variables = nontrivial_variables(model, images)
  deploy = rj.create_model(name, num_classes=10, deploy=True, **overrides)

  @jax.jit
  def run(variables, images):
    # The reparameterized model computes the same maps (TDRL, BatchNorms, the affine mixer
    # folded away).
    return (features.intermediates(model, variables, images),
            features.intermediates(model, variables, images, indices=2),
            features.intermediates(model, variables, images, indices=(0,)),
            features.intermediates(deploy, rj.reparameterize(variables), images))

  maps, last_two, first, folded = run(variables, images)
  assert [m.shape[1:] for m in maps] == shapes and all(m.shape[0] == 2 for m in maps)
  np.testing.assert_array_equal(last_two[1], maps[-1])
  np.testing.assert_array_equal(first[0], maps[0])
  for a, b in zip(folded, maps):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_vit_maps_are_the_patch_tokens_of_each_block():
  """The last map, averaged over the grid and normalised by fc_norm, is the pooled feature the
  model returns without a head: the class token is dropped and the grid is the patch grid."""
  model = rj.create_model('vit_tiny', num_classes=0, global_pool='avg', **TINY_VIT)
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  variables = nontrivial_variables(model, images)
  last = jax.jit(lambda v: features.intermediates(model, v, images, indices=1)[0])(variables)
  norm = variables['params']['fc_norm']
  pooled = last.mean(axis=(1, 2))
  mean, var = pooled.mean(-1, keepdims=True), pooled.var(-1, keepdims=True)
  expected = (pooled - mean) / jnp.sqrt(var + 1e-6) * norm['scale'] + norm['bias']
  np.testing.assert_allclose(expected, model.apply(variables, images, train=False),
                             rtol=1e-5, atol=1e-5)


def test_no_taps_and_bad_indices_are_one_clear_error():
  mae = rj.create_model('mae_vit_tiny', **dict(TINY_VIT, decoder_width=16, decoder_depth=1,
                                               decoder_num_heads=2))
  with pytest.raises(ValueError, match='no dense features'):
    features.taps(mae, 32, 32)
  model = rj.create_model('vit_tiny', num_classes=10, **TINY_VIT)
  images = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  with pytest.raises(ValueError, match='feature index 5 out of range: this model has 2 taps'):
    jax.eval_shape(lambda v: features.intermediates(model, v, images, indices=[5]), variables)
