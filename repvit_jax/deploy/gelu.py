"""The exact GELU for TFLite: the select-free form `export` traces, and the scope that marks it.

GELU(x) = x/2 (1 + erf(x/sqrt(2))), the exact (erf) GELU of ViT, MAE and PoolFormer.

XLA (training, evaluation, `jax.jit` inference) gets `repvit_jax.layers.gelu`, with `erf` as
one op that ends XLA's dot fusions. Written out in ABS/MUL/EXP (below), XLA
pulls the GELU into its YNNPACK dot fusions and materialises every constant there, which
slows XLA inference (figures: benchmarks/README.md).

TFLite (`repvit_jax.deploy.export`) gets the select-free form: `jax2tf` hands the converter an erf
already expanded into a piecewise rational approximation (compare, select), and LESS and SELECT
have no XNNPACK kernel, so every MLP split the TFLite graph into pieces run by the reference
kernels in between (ViT-Tiny: 37 XNNPACK partitions instead of one; the cost is in
benchmarks/README.md). There erf is Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 for every x, below
float32's resolution of erf near 1), on |x| and without any select, using that erf is odd:
x/2 (1 + erf(x/sqrt 2)) = (x + |x| erf(|x|/sqrt 2)) / 2, with
    u = |x|/sqrt(2), t = 1/(1 + p u),
    1 - erf(u) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^{-u^2}.
Only ABS, MUL, ADD, SUB, DIV and EXP, which XNNPACK runs in one delegate. Its largest
difference from the exact GELU is below 6e-7 (tests/test_activations.py); the TFLite logits
stay within 2e-6 of the XLA ones (benchmarks/deploy.py).

The exported graph does not keep the chain: `repvit_jax.deploy.tflite_ops.fuse_gelu` finds it by the
named scope `GELU_SCOPE` and replaces it by TFLite's one GELU op (one kernel instead of about
20 passes). The select-free chain is what runs when the export refuses that edit.

The choice is made when the model is traced: `with select_free_gelu(): ...` around the trace
(`export.tf_module` does this), through `repvit_jax.layers.activations.traced_as`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import jax.numpy as jnp

from repvit_jax.layers import activations

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_INV_SQRT2 = 0.7071067811865476

# The named scope the select-free form is traced in: the TFLite converter keeps it in the names
# of the tensors it writes, and `repvit_jax.deploy.tflite_ops.fuse_gelu` finds the chain by it.
GELU_SCOPE = 'repvit_jax_gelu'


def gelu_select_free(x: jax.Array) -> jax.Array:
  """The exact GELU with erf from A&S 7.1.26, in ops XNNPACK runs (module docstring)."""
  magnitude = jnp.abs(x)
  u = magnitude * _INV_SQRT2
  t = 1.0 / (1.0 + _P * u)
  erfc = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4])))) * jnp.exp(-u * u)
  # 0.5 x + |x| (0.5 - 0.5 erfc), not 0.5 (x + ...): the same numbers (halving is exact), but
  # the last op is an ADD of two tensors, which the converter cannot fold into the next dense
  # layer's weights as it does a final MUL by 0.5 (tflite_ops.fuse_gelu relies on that).
  return 0.5 * x + magnitude * (0.5 - 0.5 * erfc)


def _traced_select_free(x: jax.Array) -> jax.Array:
  with jax.named_scope(GELU_SCOPE):
    return gelu_select_free(x)


@contextlib.contextmanager
def select_free_gelu() -> Iterator[None]:
  """Within this context `layers.gelu` traces to the select-free form (for TFLite/XNNPACK)."""
  with activations.traced_as(_traced_select_free):
    yield


__all__ = ['GELU_SCOPE', 'gelu_select_free', 'select_free_gelu']
