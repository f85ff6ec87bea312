"""Every registered model, one sweep over `list_models()` (as timm's test_models): the deploy
tree `reparameterize` makes is the deploy model's, the training form in eval mode computes
what the deploy form computes, and a training forward and backward are finite and reach every
parameter.

The models are reduced (small widths and depths, small images); every name of a family
reduces to a few modules, so each compiles once. Variables are drawn on the host from the
model's abstract tree (no init compile). Family-specific facts (parameter counts against the
papers, layouts, full-size equivalence) are in each family's own test file."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.models import registry
from repvit_jax.reparam import check
from conftest import nontrivial_variables

# Reseeded from each test's name (conftest.py, `_rng_per_test`).
RNG = np.random.default_rng(0)

# Per module class: (overrides, image size). Fields that only matter in training (drop path)
# or at init (layer scale) are pinned, so that the names of a family reduce to few modules.
REDUCED = {
    'VisionTransformer': (dict(patch_size=8, width=16, depth=2, num_heads=2, mlp_ratio=2.0), 32),
    'MaskedAutoencoder': (dict(patch_size=8, width=16, depth=2, num_heads=2, mlp_ratio=2.0,
                               decoder_width=8, decoder_depth=1, decoder_num_heads=2), 32),
    'LeViT': (dict(embed_dims=(16, 16, 16), key_dim=8, num_heads=(2, 2, 2), depths=(1, 1, 1),
                   drop_path_rate=0.0), 128),   # the last stage at 2x2: its attention biases learn
    'MobileViT': (dict(stem_features=8, channels=(8, 8, 8, 8, 8), stage_depths=(1, 2),
                       transformer_dims=(16, 16, 16), transformer_depths=(1, 1, 1),
                       expansion=2.0, final_features=16), 48),  # stage 4 at 3x3 -> 4x4
    # The last stage at 2x2: pooling a 1x1 map is the identity, and its block learns nothing.
    'MetaFormer': (dict(depths=(1, 1, 2, 1), dims=(8, 8, 8, 8), layer_scale_init=1e-5), 64),
}
MODELS = rj.list_models()
# TDRL's pyramid branch n is n units of linear -> BN, its BatchNorms bn_0 .. bn_<n-1>.
BRANCH_BN_BIAS = re.compile(r'/branch_(\d+)/bn_(\d+)/bias$')


def moves_by_design(path: str) -> bool:
  """False for a parameter training does not move, by design: the shift of a BatchNorm inside
  a TDRL branch, which the branch's next BatchNorm subtracts again with its batch mean."""
  found = BRANCH_BN_BIAS.search(path)
  return not (found and int(found.group(2)) < int(found.group(1)) - 1)


def reduced(name, deploy=False):
  """(the reduced model, its image size)."""
  overrides, size = REDUCED[registry.get_registration(name).module.__name__]
  return rj.create_model(name, num_classes=5, deploy=deploy, **overrides), size


def is_mae(name):
  return registry.get_registration(name).module.__name__ == 'MaskedAutoencoder'


def test_every_registered_family_is_swept():
  families = {registry.get_registration(name).module.__name__ for name in MODELS}
  assert families == set(REDUCED)
  assert len(MODELS) >= 27


@pytest.mark.parametrize('name', MODELS)
def test_deploy_tree_is_the_deploy_models_tree(name):
  model, size = reduced(name)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  train_tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  deploy_model, _ = reduced(name, deploy=True)
  deploy_tree = jax.eval_shape(lambda x: deploy_model.init(jax.random.key(0), x, train=False),
                               images)
  fused = jax.eval_shape(rj.reparameterize, train_tree)
  assert jax.tree.structure(fused) == jax.tree.structure(deploy_tree)
  assert jax.tree.map(lambda a: a.shape, fused) == jax.tree.map(lambda a: a.shape, deploy_tree)


@functools.partial(jax.jit, static_argnums=0)
def forward(model, variables, images):
  """Eval-mode outputs (an MAE masks with a fixed key); compiled once per distinct module."""
  return model.apply(variables, images, train=False, rngs={'mask': jax.random.key(1)})


@pytest.mark.parametrize('name', MODELS)
def test_train_form_in_eval_mode_equals_deploy_form(name):
  model, size = reduced(name)
  images = jnp.asarray(RNG.normal(size=(2, size, size, 3)), jnp.float32)
  variables = nontrivial_variables(model, images, seed=1)
  deploy_model, _ = reduced(name, deploy=True)
  deployed = rj.reparameterize(variables)
  assert 'batch_stats' not in deployed     # every BatchNorm folds away
  expected, got = forward(model, variables, images), forward(deploy_model, deployed, images)
  assert jax.tree.structure(expected) == jax.tree.structure(got)
  for want, have in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    assert np.all(np.isfinite(want))
    if jnp.issubdtype(want.dtype, jnp.floating):
      assert check.relative_error(have, want) <= 1e-5, name


@functools.partial(jax.jit, static_argnums=0)
def loss_and_grads(model, params, batch_stats, images):
  """A training forward (batch statistics, drop path, masking) and the gradient of the mean
  square of every floating output with respect to every parameter."""
  def loss(params):
    outputs, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=True,
        rngs={'dropout': jax.random.key(2), 'mask': jax.random.key(3)},
        mutable=['batch_stats'])
    leaves = [x for x in jax.tree.leaves(outputs) if jnp.issubdtype(x.dtype, jnp.floating)]
    return sum(jnp.mean(jnp.square(x)) for x in leaves), updates
  (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, updates, grads


@pytest.mark.parametrize('name', MODELS)
def test_training_forward_and_backward_are_finite_and_reach_every_parameter(name):
  model, size = reduced(name)
  images = jnp.asarray(RNG.normal(size=(2, size, size, 3)), jnp.float32)
  variables = nontrivial_variables(model, images, seed=2)
  value, updates, grads = loss_and_grads(model, variables['params'],
                                         variables.get('batch_stats', {}), images)
  assert np.isfinite(value) and value > 0
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(g)
          for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.all(np.isfinite(g)) for g in flat.values()), name
  untouched = sorted(path for path, g in flat.items()
                     if not np.any(g) and moves_by_design(path))
  assert not untouched, (name, untouched)
  assert all(not np.any(g) for path, g in flat.items() if not moves_by_design(path))
  # Training updates the BatchNorm statistics it normalises with.
  if 'batch_stats' in variables:
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), variables['batch_stats'],
                           updates['batch_stats'])
    assert any(jax.tree.leaves(changed)), name
