"""GELU, traced in the form that suits the runtime the model is headed for.

GELU(x) = x/2 (1 + erf(x/sqrt(2))), the exact (erf) GELU of ViT, MAE and PoolFormer.

XLA (training, evaluation, `jax.jit` inference) gets that formula as written, with `erf` as
one op: PyTorch's formula (so timm's GELU, value for value), and cheaper on XLA:CPU than
`jax.nn.gelu(x, approximate=False)`, whose `x/2 erfc(-x/sqrt(2))` lowers to an exponential
and selects (the train step's figures: benchmarks/README.md). The two differ by float
rounding (at most 1e-6 apart on [-6, 6]; the erfc form keeps more relative precision for
x < -4, where GELU is below 1e-4). Kept as one op, `erf` ends XLA's dot fusions; written out
in elementwise ops, XLA would pull the GELU into its dot fusions and materialise every
constant there, which is slower.

An exporter may trace another form of the same function: `with traced_as(form): ...` around
the trace makes `gelu` call `form` instead (`repvit_jax.deploy.gelu.select_free_gelu` traces
a form without SELECT for TFLite's XNNPACK delegate). JAX caches traces by function, so a
function already traced outside the context keeps its form inside it: trace a fresh function
there.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

import jax

_SQRT_HALF = 0.7071067811865476

_FORM: contextvars.ContextVar[Optional[Callable[[jax.Array], jax.Array]]] = (
    contextvars.ContextVar('repvit_jax_gelu_form', default=None))


@contextlib.contextmanager
def traced_as(form: Callable[[jax.Array], jax.Array]) -> Iterator[None]:
  """Within this context `gelu(x)` traces to `form(x)` (an exact GELU in other ops)."""
  token = _FORM.set(form)
  try:
    yield
  finally:
    _FORM.reset(token)


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU, elementwise, in x's dtype; `form(x)` inside `traced_as(form)`."""
  form = _FORM.get()
  if form is not None:
    return form(x)
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))
