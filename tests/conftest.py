"""Shared test helpers: tiny model configs and non-trivial variables."""

import jax
import pytest

from repvit_jax.reparam import check

# A ViT small enough to compile in about a second: 32x32 images, 4x4 patches -> 64 tokens.
TINY_VIT = dict(patch_size=8, width=16, depth=2, num_heads=2, mlp_ratio=2.0)


def nontrivial_variables(model, images, seed=0):
  """Initialises `model` and makes every parameter and BN statistic non-trivial.

  All floating leaves take the images' dtype (Flax keeps BN statistics in float32 otherwise).
  """
  variables = model.init(jax.random.key(seed), images, train=False)
  variables = jax.tree.map(lambda v: v.astype(images.dtype), variables)
  variables = check.perturb_params(variables, seed)
  return check.randomize_batch_stats(variables, seed + 1)


@pytest.fixture
def tiny_images():
  return jax.random.normal(jax.random.key(42), (2, 32, 32, 3))
