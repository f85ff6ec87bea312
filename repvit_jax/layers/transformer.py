"""Pre-norm transformer block pieces (attention, MLP, drop path), TDRL-aware.

Each linear is built by `make_linear`, so the same block serves the vanilla ViT (plain
`nn.Dense`) and the TDRL ViT (`RepLinear` on the configured layers) with identical parameter
names in the deploy form. Tokens are (B, T, C) throughout.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from repvit_jax.layers.activations import gelu
from repvit_jax.layers.dense import rows_dot_general
from repvit_jax.layers.rep_linear import (TDRL, apply_linear, default_kernel_init,
                                         is_reparameterized, make_linear)

ATTENTION_IMPLS = ('xla', 'cudnn')
REMAT_POLICIES = ('none', 'block')


def is_power_of_two(factor: float) -> bool:
  """Whether multiplying by `factor` is exact in every float format (barring under/overflow)."""
  return factor > 0 and math.log2(factor).is_integer()


def attention(q, k, v, *, impl: str = 'xla', bias=None, sow=None,
              scale: Optional[float] = None):
  """Softmax attention over (B, T, H, D) queries, keys and values -> (B, T, H, D).

  The logits q.k / sqrt(D) (+ bias) and the softmax are float32 whatever the compute dtype.
  'xla' writes the computation out for XLA to fuse; 'cudnn' (bfloat16/float16) runs cuDNN's
  flash attention through `jax.nn.dot_product_attention` where the function is lowered for
  CUDA (never storing the (B, H, T, T) logits) and 'xla' on other platforms, unless `sow` (a
  callable taking the logits) needs them, or the values have another width than the keys
  (LeViT).

  Args:
    q, k: (B, T, H, D) and (B, S, H, D); v: (B, S, H, D_v); one dtype.
    impl: 'xla' or 'cudnn'.
    bias: optional additive logit bias broadcastable to (B, H, T, S) (LeViT's position bias).
    sow: None, or a callable receiving the (B, H, T, S) float32 logits.
    scale: the logits' factor; default 1/sqrt(D). 1.0 for queries already scaled (`QKV`).
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}')
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  if impl == 'cudnn' and sow is None and v.shape[-1] == q.shape[-1]:
    if q.dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"attention_impl='cudnn' needs model.dtype bfloat16 (here {q.dtype}); "
                       "use attention_impl='xla'")
    written_out = lambda q, k, v: attention(q, k, v, bias=bias, scale=scale)
    # Decided by the platform the step is lowered for, not the host's backend: cuDNN's kernel
    # where the lowering is for CUDA, the written-out attention for every other platform (a
    # model trained on a GPU evaluates on a CPU; a SavedModel lowers for several).
    return jax.lax.platform_dependent(
        q, k, v, cuda=lambda q, k, v: _cudnn_attention(q, k, v, bias, scale, written_out),
        default=written_out)
  # 'xla': softmax(q k^T / sqrt(D) + bias) v written out, heads first (B, H, T, D), the layout
  # XLA's CPU dot wants (jax.nn.dot_product_attention's XLA path, and einsums over (B, T, H,
  # D), slower on the CPU: benchmarks/README.md); also the only way to read
  # the logits. The softmax is normalised after the weighted sum, as flash attention does:
  # exp(l - max) v / sum exp(l - max) divides a (B, H, T, D_v) tensor instead of the
  # (B, H, T, S) weights, one pass fewer over the largest tensor (figures:
  # benchmarks/README.md). Same values up to float rounding (1e-6 of the logits).
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
  # 1/sqrt(D) scales the (B, H, T, D) queries rather than the (B, H, T, S) logits, one pass
  # over the larger tensor fewer (bit-identical logits),
  # where that is exact: a power of two (D = 16, 64, 256), or float32 queries (one rounding,
  # as on the logits). bfloat16 queries with another D would lose bits.
  scale_queries = is_power_of_two(scale) or q.dtype == jnp.float32
  if scale_queries and scale != 1.0:
    q = q * jnp.asarray(scale, q.dtype)
  logits = jnp.einsum('bhqd,bhkd->bhqk', q, k, preferred_element_type=jnp.float32)
  if not scale_queries:
    logits = logits * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if sow is not None:
    sow(logits)
  # The max only keeps exp in range; it cancels in the ratio, so no gradient flows through it.
  unnormalised = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  weighted = jnp.einsum('bhqk,bhkd->bhqd', unnormalised.astype(v.dtype), v,
                        preferred_element_type=jnp.float32)
  out = weighted / unnormalised.sum(-1, keepdims=True)
  return out.astype(v.dtype).transpose(0, 2, 1, 3)


def _cudnn_attention(q, k, v, bias, scale, fallback):
  """cuDNN's fused attention; `fallback` where cuDNN cannot be found while tracing (JAX looks
  it up then: a host without JAX's CUDA plugin and cuDNN wheels cannot lower it)."""
  try:
    return jax.nn.dot_product_attention(q, k, v, bias=None if bias is None else
                                        bias.astype(q.dtype), scale=scale,
                                        implementation='cudnn')
  except RuntimeError as e:
    if 'cudnn' not in str(e).lower():
      raise
    if jax.default_backend() == 'gpu':
      warnings.warn(f"attention_impl='cudnn': {e} (install jax[cuda12]); using XLA's attention")
    return fallback(q, k, v)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example with probability `rate`."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, ...) -> (B, ...); draws from the 'dropout' rng in training."""
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) *
                                (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class QKV(nn.Module):
  """The fused qkv linear, applied as three products: (B, T, C) -> q, k, v, each (B, T, C).

  Its variables are `nn.Dense(3 C)`'s, `kernel` (C, 3 C) in timm's column layout (q, k, v;
  each (heads, head_dim)) and `bias` (3 C,), and every output column is the dot product Dense
  computes (vit_tiny's logits came out bit-identical; a backend may sum a narrower product in
  another order, a rounding difference). Three products instead of one product and three
  slices: XLA and XNNPACK write q, k and v directly rather than copy them out of a (B, T, 3 C)
  tensor (figures: benchmarks/README.md). Each is `rows_dot_general`, as in `Dense`.

  `query_scale` multiplies the query's columns and bias: attention's 1/sqrt(head_dim), folded
  into the product where that is exact (a power of two: `is_power_of_two`).
  """
  width: int
  use_bias: bool = True
  query_scale: float = 1.0
  kernel_init: Any = default_kernel_init
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], 3 * self.width),
                        self.param_dtype)
    bias = (self.param('bias', nn.initializers.zeros_init(), (3 * self.width,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    outputs = []
    for index in range(3):
      columns = slice(index * self.width, (index + 1) * self.width)
      part_kernel = kernel[:, columns]
      part_bias = None if bias is None else bias[columns]
      if index == 0 and self.query_scale != 1.0:
        factor = jnp.asarray(self.query_scale, kernel.dtype)
        part_kernel = part_kernel * factor
        part_bias = None if part_bias is None else part_bias * factor
      y = rows_dot_general(x, part_kernel, (((x.ndim - 1,), (0,)), ((), ())))
      outputs.append(y if part_bias is None else y + part_bias)
    return tuple(outputs)


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv linear (timm layout: (3, heads, head_dim)).

  A plain qkv linear is `QKV` (three products, the query scale folded in where exact); a TDRL
  one a `RepLinear` whose output is split.

  When the caller makes 'intermediates' mutable and `sow_logits` is set, it materialises the
  pre-softmax logits, (B, heads, T, T) float32, and sows them as `intermediates/attn_logits`
  (attention distillation, analysis); otherwise they are never stored (see `attention`).
  """
  num_heads: int
  qkv_bias: bool = True
  tdrl: Optional[TDRL] = None
  attention_impl: str = 'xla'
  sow_logits: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, T, C) -> (B, T, C)."""
    batch, tokens, width = x.shape
    if width % self.num_heads:
      raise ValueError(f'width {width} is not divisible by {self.num_heads} heads')
    head_dim = width // self.num_heads
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    scale = None                                   # attention's default, 1/sqrt(head_dim)
    if is_reparameterized(self.tdrl, 'qkv'):
      qkv = make_linear(self.tdrl, 'qkv', 3 * width, width, name='qkv', use_bias=self.qkv_bias,
                        qk_features=2 * width, **dtypes)
      q, k, v = jnp.split(apply_linear(qkv, x, train=train), 3, axis=-1)
    else:
      fold = is_power_of_two(head_dim ** -0.5)
      scale = 1.0 if fold else None
      q, k, v = QKV(width, use_bias=self.qkv_bias, query_scale=head_dim ** -0.5 if fold else 1.0,
                    name='qkv', **dtypes)(x)
    q, k, v = (t.reshape(batch, tokens, self.num_heads, head_dim) for t in (q, k, v))
    read = self.sow_logits and self.is_mutable_collection('intermediates')
    sow = (lambda logits: self.sow('intermediates', 'attn_logits', logits)) if read else None
    out = attention(q, k, v, impl=self.attention_impl, sow=sow, scale=scale)
    out = out.reshape(batch, tokens, width)
    proj = make_linear(self.tdrl, 'proj', width, width, name='proj', **dtypes)
    return apply_linear(proj, out, train=train)


class Mlp(nn.Module):
  """fc1 -> GELU (exact erf form, as timm) -> fc2."""
  hidden_features: int
  tdrl: Optional[TDRL] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, T, C) -> (B, T, C)."""
    width = x.shape[-1]
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    fc1 = make_linear(self.tdrl, 'fc1', self.hidden_features, width, name='fc1', **dtypes)
    x = gelu(apply_linear(fc1, x, train=train))
    fc2 = make_linear(self.tdrl, 'fc2', width, self.hidden_features, name='fc2', **dtypes)
    return apply_linear(fc2, x, train=train)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

  Sows its output, (B, T, C), as `intermediates/features` for feature distillation.
  `train` may be passed by position: `nn.remat` needs it as a static positional argument.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  tdrl: Optional[TDRL] = None
  attention_impl: str = 'xla'
  sow_logits: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """(B, T, C) -> (B, T, C)."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, name=name, **dtypes)
    drop_path = DropPath(self.drop_path_rate)
    y = Attention(self.num_heads, qkv_bias=self.qkv_bias, tdrl=self.tdrl,
                  attention_impl=self.attention_impl, sow_logits=self.sow_logits, name='attn',
                  **dtypes)(norm('norm1')(x), train=train)
    x = x + drop_path(y, train=train)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), tdrl=self.tdrl, name='mlp',
            **dtypes)(norm('norm2')(x), train=train)
    x = x + drop_path(y, train=train)
    self.sow('intermediates', 'features', x)
    return x


def remat_block(remat: str):
  """The block class for a `remat` policy: 'none' keeps every activation for the backward
  pass; 'block' stores only block inputs and recomputes the rest (less memory, ~1/3 more
  compute), for large batches."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f'remat must be one of {REMAT_POLICIES}, got {remat!r}')
  # static_argnums counts `self`: (x, train) -> train is argument 2.
  return nn.remat(Block, static_argnums=(2,)) if remat == 'block' else Block
