"""The tree walk: idempotent, structure-driven, strict about what it cannot fuse."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.layers import RepLinear
from repvit_jax.reparam import check
from conftest import TINY_VIT, nontrivial_variables


@pytest.fixture(scope='module')
def tdrl_variables():
  model = rj.create_model('tdrl_vit_tiny', num_classes=4, **TINY_VIT)
  return nontrivial_variables(model, jnp.ones((2, 32, 32, 3)))


def test_idempotent(tdrl_variables):
  once = rj.reparameterize(tdrl_variables)
  twice = rj.reparameterize(once)
  assert jax.tree.structure(once) == jax.tree.structure(twice)
  jax.tree.map(np.testing.assert_array_equal, once, twice)
  assert 'batch_stats' not in once


def test_vanilla_tree_is_returned_unchanged():
  model = rj.create_model('vit_tiny', num_classes=4, **TINY_VIT)
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)
  out = rj.reparameterize(variables)
  jax.tree.map(np.testing.assert_array_equal, out, variables)


def test_missing_batch_stats_names_the_path(tdrl_variables):
  with pytest.raises(ValueError, match=r'/blocks_0/attn/(qkv|proj): a TDRL RepLinear needs'):
    rj.reparameterize({'params': tdrl_variables['params']})


def test_inconsistent_shapes_name_the_path(tdrl_variables):
  broken = jax.tree.map(lambda x: x, tdrl_variables)
  branch = broken['params']['blocks_1']['mlp']['fc1']['branch_2']
  branch['linear_1'] = {'kernel': jnp.ones((16, 5))}
  with pytest.raises(ValueError, match=r'/blocks_1/mlp/fc1/branch_2'):
    rj.reparameterize(broken)


def test_missing_statistics_entry_names_the_path(tdrl_variables):
  broken = jax.tree.map(lambda x: x, tdrl_variables)
  del broken['batch_stats']['blocks_0']['mlp']['fc2']['branch_1']
  with pytest.raises(ValueError, match=r'/blocks_0/mlp/fc2/branch_1/bn_0'):
    rj.reparameterize(broken)


def test_not_a_variable_tree():
  with pytest.raises(ValueError, match="expects a variable tree"):
    rj.reparameterize({'kernel': jnp.ones(3)})


class UserModel(nn.Module):
  """A user's own model with RepLinear deep inside; `deploy` swaps in nn.Dense."""
  deploy: bool = False

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Dense(6, name='stem')(x)
    inner = nn.Dense(5, name='mixer') if self.deploy else RepLinear(5, num_branches=3,
                                                                    rectify='bn',
                                                                    name='mixer')
    x = inner(x) if self.deploy else inner(x, train=train)
    x = nn.BatchNorm(use_running_average=not train, name='other_bn')(nn.relu(x))
    self.sow('intermediates', 'h', x)
    return nn.Dense(2, name='out')(x)


def test_user_model_with_rep_linear_anywhere():
  x = jax.random.normal(jax.random.key(0), (4, 3))
  train_model = UserModel()
  variables = nontrivial_variables(train_model, x)
  # The user's BatchNorm after a ReLU has no fuser: an error naming it, unless strict=False,
  # which keeps it with its statistics.
  with pytest.raises(ValueError, match=r'no fuser for the BatchNorm statistics at '
                                       r'batch_stats/other_bn: register one .* strict=False'):
    rj.reparameterize(variables)
  deploy_variables = rj.reparameterize(variables, strict=False)
  assert set(deploy_variables['batch_stats']) == {'other_bn'}
  assert set(deploy_variables['params']['mixer']) == {'kernel', 'bias'}
  error = check.relative_error(UserModel(deploy=True).apply(deploy_variables, x, train=False),
                               train_model.apply(variables, x, train=False))
  assert error < 1e-6


def test_reparameterize_runs_under_jit(tdrl_variables):
  eager = rj.reparameterize(tdrl_variables)
  jitted = jax.jit(rj.reparameterize)(tdrl_variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), eager,
               jitted)


def test_a_second_fuser_for_a_name_or_a_structure_is_refused(tdrl_variables):
  """Registering a name twice is an error (replace=True replaces); two fusers that match one
  subtree make reparameterize name both instead of folding by registration order."""
  from repvit_jax.reparam import tree  # pylint: disable=import-outside-toplevel
  existing = next(f for f in tree._FUSERS if f.name == 'TDRL RepLinear')  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="a fuser named 'TDRL RepLinear' is already registered"):
    tree.register_fuser(existing)
  assert tree.register_fuser(existing, replace=True) is existing
  shadow = tree.Fuser('shadow of RepLinear', existing.matches, existing.fuse)
  tree.register_fuser(shadow)
  try:
    with pytest.raises(ValueError, match="matches several fusers .*'TDRL RepLinear', "
                                         "'shadow of RepLinear'"):
      rj.reparameterize(tdrl_variables)
  finally:
    tree._FUSERS.remove(shadow)  # pylint: disable=protected-access
  rj.reparameterize(tdrl_variables)
