"""`Dense` / `rows_dot_general`: nn.Dense's values and gradients, the kernel gradient as one
product over token rows."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repvit_jax.layers.dense import Dense, rows_dot_general

ROWS_SHAPE = (4, 50, 16)     # (B, T, C_in): 200 token rows
FEATURES = 64


def _inputs():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(ROWS_SHAPE).astype(np.float32))
  dy = jnp.asarray(rng.standard_normal(ROWS_SHAPE[:-1] + (FEATURES,)).astype(np.float32))
  return x, dy


def test_same_variables_and_outputs_as_nn_dense():
  x, _ = _inputs()
  variables = nn.Dense(FEATURES).init(jax.random.key(0), x)
  ours = Dense(FEATURES).init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_array_equal(ours['params']['kernel'], variables['params']['kernel'])
  np.testing.assert_array_equal(Dense(FEATURES).apply(variables, x),
                                nn.Dense(FEATURES).apply(variables, x))


def test_gradients_match_nn_dense_in_both_modes():
  x, dy = _inputs()
  variables = nn.Dense(FEATURES).init(jax.random.key(0), x)

  def vjp(layer):
    _, pullback = jax.vjp(layer.apply, variables, x)
    return pullback(dy)

  ours, theirs = vjp(Dense(FEATURES)), vjp(nn.Dense(FEATURES))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Forward mode, tangents in the kernel and the input together.
  tangent = jax.tree.map(lambda v: jnp.full_like(v, 0.5), variables)
  jvp = lambda layer: jax.jvp(layer.apply, (variables, x), (tangent, x))[1]
  np.testing.assert_allclose(jvp(Dense(FEATURES)), jvp(nn.Dense(FEATURES)), rtol=1e-5,
                             atol=1e-5)
  # Only the input differentiated (a frozen layer): the kernel term is left out.
  grad_x = lambda layer: jax.grad(lambda x: (layer.apply(variables, x) * dy).sum())(x)
  np.testing.assert_allclose(grad_x(Dense(FEATURES)), grad_x(nn.Dense(FEATURES)), rtol=1e-5,
                             atol=1e-5)


def _kernel_gradient_hlo(layer) -> str:
  x, dy = _inputs()
  variables = layer.init(jax.random.key(0), x)
  grad = jax.jit(jax.grad(lambda v, x, dy: (layer.apply(v, x) * dy).sum()))
  return grad.lower(variables, x, dy).compile().as_text()


def test_kernel_gradient_is_one_rows_product_without_a_transposed_copy():
  # nn.Dense's kernel gradient contracts two axes (B and T); XLA:CPU copies the output
  # gradient into a transposed (C_out, B T) buffer first. Dense's contracts the 200 rows.
  rows = ROWS_SHAPE[0] * ROWS_SHAPE[1]
  transposed = re.compile(rf'f32\[{FEATURES},{rows}\]')
  if jax.default_backend() != 'cpu':
    pytest.skip('the transposed copy is XLA:CPU layout assignment')
  assert transposed.search(_kernel_gradient_hlo(nn.Dense(FEATURES))), (
      'nn.Dense no longer makes the transposed copy: this test no longer tells them apart')
  hlo = _kernel_gradient_hlo(Dense(FEATURES))
  assert not transposed.search(hlo)
  assert re.search(rf'f32\[{ROWS_SHAPE[-1]},{FEATURES}\]\S* (dot|fusion)\(', hlo)


def test_other_products_are_plain_dot_general():
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.standard_normal((3, 5, 7)).astype(np.float32))
  b = jnp.asarray(rng.standard_normal((3, 7, 2)).astype(np.float32))
  batched = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_array_equal(rows_dot_general(a, b, batched),
                                jax.lax.dot_general(a, b, batched))
  matrix = a[0]
  kernel = b[0]
  plain = (((1,), (0,)), ((), ()))
  np.testing.assert_array_equal(rows_dot_general(matrix, kernel, plain),
                                jax.lax.dot_general(matrix, kernel, plain))


def test_bfloat16_compute_keeps_dtypes():
  x, _ = _inputs()
  layer = Dense(FEATURES, dtype=jnp.bfloat16)
  variables = layer.init(jax.random.key(0), x)
  y = layer.apply(variables, x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  grads = jax.grad(lambda v: layer.apply(v, x.astype(jnp.bfloat16)).astype(jnp.float32).sum())(
      variables)
  assert grads['params']['kernel'].dtype == jnp.float32
  # The kernel gradient of sum(x W + b) is the column sums of x, repeated per output.
  expected = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32)).reshape(
      -1, ROWS_SHAPE[-1]).sum(0)
  np.testing.assert_allclose(grads['params']['kernel'][:, 0], expected, rtol=2e-2, atol=2e-1)
