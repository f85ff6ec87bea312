"""Dense layers over tokens whose weight gradient is one product over all token rows.

A linear layer on tokens (B, T, C_in) -> (B, T, C_out) has the weight gradient
x^T dy, a contraction over both B and T. Differentiated as written (a dot_general over the 3-D
input), that product reaches XLA with two contracting axes, and XLA:CPU first copies the
output gradient into a transposed (C_out, B T) buffer and then runs a dot that its library
kernels do not take (benchmarks/README.md, "Train steps on the CPU"). Seen as rows,
(B T, C_in)^T (B T, C_out), the same product has one contracting axis and runs as one library
dot without the copy.

`rows_dot_general` keeps the forward product exactly as `jax.lax.dot_general` writes it (same
op, same values, the same graph for export), and gives JAX a derivative rule (`custom_jvp`)
whose kernel term is written over rows, so the transpose JAX derives for the backward pass is
the rows product. Forward- and reverse-mode differentiation both work. `Dense` is `nn.Dense`
with that product: the same variables, initialisers and outputs.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


def rows_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`jax.lax.dot_general`, with the derivative in `rhs` written over rows of `lhs`.

  Takes the rows path where `lhs` (..., K) has more than one leading axis and `rhs` is a
  (K, N) kernel contracted on its first axis (what `nn.Dense` asks for); any other product is
  `jax.lax.dot_general` itself.
  """
  if (lhs.ndim > 2 and rhs.ndim == 2 and
      tuple(map(tuple, dimension_numbers[0])) == ((lhs.ndim - 1,), (0,)) and
      not any(dimension_numbers[1])):
    return _kernel_product(lhs, rhs, precision, preferred_element_type)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _kernel_product(x, kernel, precision, preferred_element_type):
  """(..., K) x (K, N) -> (..., N), contracting x's last axis."""
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=preferred_element_type)


def _kernel_product_jvp(precision, preferred_element_type, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  y = _kernel_product(x, kernel, precision, preferred_element_type)
  product = functools.partial(jax.lax.dot_general, precision=precision,
                              preferred_element_type=preferred_element_type)
  terms = []
  if not isinstance(x_dot, SymbolicZero):
    terms.append(product(x_dot, kernel, (((x.ndim - 1,), (0,)), ((), ()))))
  if not isinstance(kernel_dot, SymbolicZero):
    # d(x W) = dx W + x dW, the second term as a product over the rows of x: its transpose,
    # the kernel gradient, is then rows(x)^T rows(dy), one contracting axis.
    rows = x.reshape(-1, x.shape[-1])
    terms.append(product(rows, kernel_dot, (((1,), (0,)), ((), ()))).reshape(y.shape))
  if not terms:   # JAX skips the rule when both tangents are zero; answered all the same
    return y, jnp.zeros_like(y)
  return y, functools.reduce(jnp.add, terms)


_kernel_product.defjvp(_kernel_product_jvp, symbolic_zeros=True)


class Dense(nn.Dense):
  """`nn.Dense` (same variables, initialisers and outputs) whose kernel gradient over
  (..., C_in) inputs is one product over all leading axes (`rows_dot_general`)."""
  dot_general: Any = rows_dot_general
