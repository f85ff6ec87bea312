"""Pre-norm transformer block pieces (attention, MLP, drop path), TDRL-aware.

Each linear is built by `make_linear`, so the same block serves the vanilla ViT (plain
`nn.Dense`) and the TDRL ViT (`RepLinear` on the configured layers) with identical parameter
names in the deploy form. Tokens are (B, T, C) throughout.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from repvit_jax.layers.rep_linear import TDRL, apply_linear, make_linear


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


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv linear (timm layout: (3, heads, head_dim)).

  Sows the pre-softmax logits, (B, heads, T, T), as `intermediates/attn_logits` for attention
  distillation and analysis (free unless the caller makes 'intermediates' mutable).
  """
  num_heads: int
  qkv_bias: bool = True
  tdrl: Optional[TDRL] = None
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
    qkv = make_linear(self.tdrl, 'qkv', 3 * width, width, name='qkv', use_bias=self.qkv_bias,
                      qk_features=2 * width, **dtypes)
    qkv = apply_linear(qkv, x, train=train).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, D)
    logits = jnp.einsum('bhqd,bhkd->bhqk', q, k) / jnp.sqrt(jnp.asarray(head_dim, q.dtype))
    self.sow('intermediates', 'attn_logits', logits)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum('bhqk,bhkd->bhqd', weights, v).transpose(0, 2, 1, 3)
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
    x = nn.gelu(apply_linear(fc1, x, train=train), approximate=False)
    fc2 = make_linear(self.tdrl, 'fc2', width, self.hidden_features, name='fc2', **dtypes)
    return apply_linear(fc2, x, train=train)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

  Sows its output, (B, T, C), as `intermediates/features` for feature distillation.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  tdrl: Optional[TDRL] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, T, C) -> (B, T, C)."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, name=name, **dtypes)
    drop_path = DropPath(self.drop_path_rate)
    y = Attention(self.num_heads, qkv_bias=self.qkv_bias, tdrl=self.tdrl, name='attn',
                  **dtypes)(norm('norm1')(x), train=train)
    x = x + drop_path(y, train=train)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), tdrl=self.tdrl, name='mlp',
            **dtypes)(norm('norm2')(x), train=train)
    x = x + drop_path(y, train=train)
    self.sow('intermediates', 'features', x)
    return x
