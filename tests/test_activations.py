"""The fast formulations of GELU and of GroupNorm(1) compute what the reference ones do."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax.deploy.gelu import gelu_select_free, select_free_gelu
from repvit_jax.layers import gelu
from repvit_jax.models.metaformer import ImageNorm


def test_select_free_gelu_equals_the_exact_erf_gelu():
  gelu_sf = gelu_select_free
  x = jnp.linspace(-12.0, 12.0, 240_001)
  exact = jax.nn.gelu(x, approximate=False)
  ours = gelu_sf(x)
  assert float(jnp.max(jnp.abs(ours - exact))) <= 6e-7
  assert float(gelu_sf(jnp.float32(0.0))) == 0.0
  # Far out it is relu to the last bit, as the exact GELU is in float32.
  np.testing.assert_array_equal(np.asarray(gelu_sf(jnp.asarray([-30.0, 30.0]))), [0.0, 30.0])
  # Gradients: smooth through 0, where relu's and |x|'s kinks cancel.
  slope = jax.vmap(jax.grad(gelu_sf))(x)
  exact_slope = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
  assert float(jnp.max(jnp.abs(slope - exact_slope))) <= 2e-6
  assert abs(float(jax.grad(gelu_sf)(0.0)) - 0.5) <= 1e-6
  assert gelu_sf(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_gelu_is_the_erf_formula_for_xla_and_select_free_only_while_exporting():
  x = jnp.linspace(-6.0, 6.0, 1001)
  # PyTorch's formula, x/2 (1 + erf(x/sqrt 2)), with erf as one op; JAX's erfc form of the same
  # function differs by rounding only.
  np.testing.assert_array_equal(np.asarray(gelu(x)),
                                np.asarray(0.5 * x * (1 + jax.lax.erf(x / np.sqrt(2.0)))))
  np.testing.assert_allclose(np.asarray(gelu(x)), np.asarray(jax.nn.gelu(x, approximate=False)),
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(gelu))(x)),
                             np.asarray(jax.vmap(jax.grad(
                                 lambda v: jax.nn.gelu(v, approximate=False)))(x)),
                             rtol=0, atol=1e-6)
  assert gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  primitives = lambda: {e.primitive.name for e in jax.make_jaxpr(lambda v: gelu(v))(x).jaxpr.eqns}
  erf_ops = {'erf', 'erfc'}
  assert 'erf' in primitives()
  with select_free_gelu():
    inside = primitives()
    # JAX caches traces by function: the choice holds for functions traced in the context.
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: gelu(v))(x)),
                                  np.asarray(jax.jit(gelu_select_free)(x)))
  assert not inside & (erf_ops | {'select_n'}) and 'exp' in inside
  assert primitives() & erf_ops  # the context is left as it was found


def test_image_norm_is_group_norm_with_one_group():
  reference = nn.GroupNorm(num_groups=1, epsilon=1e-5)
  ours = ImageNorm(epsilon=1e-5)
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 8)) + 0.5
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, reference.init(jax.random.key(1), x))
  variables = {'params': {'scale': jnp.linspace(0.5, 2.0, 8), 'bias': jnp.linspace(-1, 1, 8)}}

  expected = reference.apply(variables, x)
  assert float(jnp.max(jnp.abs(ours.apply(variables, x) - expected))) <= 1e-6 * float(
      jnp.max(jnp.abs(expected)))
  half = ImageNorm(epsilon=1e-5, dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
