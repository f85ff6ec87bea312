"""GELU in a form every runtime the project ships runs fast, with the exact GELU's values.

GELU(x) = x/2 (1 + erf(x/sqrt(2))). XLA expands erf into a piecewise rational approximation
(compare, select), and so does the StableHLO that `jax2tf` hands the TFLite converter: LESS and
SELECT have no XNNPACK kernel, so every MLP split the TFLite graph into pieces run by the
reference kernels in between (ViT-Tiny: 37 XNNPACK partitions, 27 img/s at batch 1 against
43 in one partition; benchmarks/README.md).

Here erf is Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 for every x, below float32's
resolution of erf near 1), on |x| and without any select, using that erf is odd:
x/2 (1 + erf(x/sqrt 2)) = (x + |x| erf(|x|/sqrt 2)) / 2, with
    u = |x|/sqrt(2), t = 1/(1 + p u), 1 - erf(u) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^{-u^2}.
Only ABS, MUL, ADD, SUB, DIV and EXP, which XNNPACK runs in one delegate. Its largest
difference from `jax.nn.gelu(x, approximate=False)` is below 6e-7 (tests/test_activations.py);
no model's logits moved by more than 1e-6 relative (benchmarks/deploy.py --compare). XLA pulls
it into its dot fusions and materialises the constants there: vit_tiny's XLA inference at
batch 32 ran at 0.94-0.95x of the old GELU, 1.03x at batch 1 (benchmarks/README.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_INV_SQRT2 = 0.7071067811865476


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU, elementwise, in x's dtype (see the module docstring)."""
  magnitude = jnp.abs(x)
  u = magnitude * _INV_SQRT2
  t = 1.0 / (1.0 + _P * u)
  erfc = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4])))) * jnp.exp(-u * u)
  return 0.5 * (x + magnitude * (1.0 - erfc))


__all__ = ['gelu']
