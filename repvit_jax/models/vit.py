"""Vision Transformer (ViT / DeiT) with optional TDRL linears.

Parameter names follow timm's layout, so loading timm weights is a renaming:
`patch_embed` (conv), `cls_token`, `pos_embed`, `blocks_<i>/{norm1, attn/{qkv, proj}, norm2,
mlp/{fc1, fc2}}`, `norm` (token pooling) or `fc_norm` (average pooling), `head`.
With `tdrl=None` this is the vanilla ViT; with a `TDRL` config the chosen linears are
`RepLinear`s, and `reparameterize` turns the variables into those of the vanilla ViT.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from repvit_jax.models.features import Tap
from repvit_jax.layers.dense import Dense
from repvit_jax.layers.posemb import sincos_2d
from repvit_jax.layers.rep_linear import TDRL
from repvit_jax.layers.transformer import remat_block

GLOBAL_POOLS = ('token', 'avg')
POS_EMBEDS = ('learn', 'sincos')


class VisionTransformer(nn.Module):
  """ViT classifier. Images (B, H, W, 3) float -> logits (B, num_classes).

  Attributes:
    num_classes: classes of the head; 0 returns the pooled features (B, width) instead.
    patch_size, width, depth, num_heads, mlp_ratio, qkv_bias: the architecture.
    global_pool: 'token' (class token, then `norm`) or 'avg' (mean of the patch tokens,
      then `fc_norm`, as MAE fine-tuning).
    pos_embed: 'learn' (a parameter, shaped by the first input's size) or 'sincos' (fixed).
    drop_rate: dropout before the head. drop_path_rate: stochastic depth, linear in depth.
    tdrl: None for a vanilla ViT, or where and how to use TDRL linears.
    head_init_std: std of the head's truncated-normal kernel init.
    dtype: compute dtype (float32 or bfloat16); parameters stay `param_dtype` (float32), and
      norm statistics and the attention softmax are float32 in any case.
    attention_impl: 'xla' (written out for XLA to fuse; default) or 'cudnn' (GPU flash
      attention through jax.nn.dot_product_attention, bfloat16).
    remat: 'none' or 'block' (recompute each block in the backward pass; less memory).
    attention_logits_layers: block indices (0-based) whose attention logits are sown when
      'intermediates' is mutable (None: every block); other blocks never store them.
  """
  num_classes: int = 1000
  patch_size: int = 16
  width: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  global_pool: str = 'token'
  pos_embed: str = 'learn'
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  head_init_std: float = 0.02
  tdrl: Optional[TDRL] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = 'xla'
  remat: str = 'none'
  attention_logits_layers: Optional[Tuple[int, ...]] = None

  # Images per pass through the network when a runtime that runs op by op (TFLite/XNNPACK,
  # `export.tflite_bytes`) gets a larger batch: 4 keeps an MLP's (4, 197, 768) activation in
  # the 2 MB L2 cache, where the whole batch's does not (figures: benchmarks/README.md).
  inference_micro_batch: ClassVar[Optional[int]] = 4

  @nn.compact
  def __call__(self, images, *, train: bool):
    """(B, H, W, 3) -> logits (B, num_classes), or pooled features (B, width)."""
    if self.global_pool not in GLOBAL_POOLS:
      raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}')
    if self.pos_embed not in POS_EMBEDS:
      raise ValueError(f'pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}')
    x = self.embed(images)
    x = self.run_blocks(x, train=train)
    return self.classify(x, train=train)

  def feature_taps(self, height: int, width: int):
    """Every block's output (`repvit_jax.models.features`): its patch tokens on the
    (height / p, width / p) grid, class token dropped."""
    grid = (height // self.patch_size, width // self.patch_size)
    return [Tap(f'blocks_{i}', grid, prefix=1) for i in range(self.depth)]

  def patchify(self, images):
    """(B, H, W, 3) -> patch tokens (B, T, width), T = H/p * W/p, without position."""
    _, height, width, _ = images.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f'image size {height}x{width} is not divisible by the patch size '
                       f'{self.patch_size}')
    x = nn.Conv(self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
                padding='VALID', dtype=self.dtype, param_dtype=self.param_dtype,
                name='patch_embed')(images.astype(self.dtype))
    return x.reshape(x.shape[0], -1, self.width)

  def embed(self, images):
    """(B, H, W, 3) -> tokens (B, 1 + T, width) with position embeddings, class token first."""
    x = self.patchify(images)
    pos = self.position_embedding(x.shape[1]).astype(x.dtype)
    cls = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, self.width),
                     self.param_dtype).astype(x.dtype) + pos[:, :1]
    # [cls, x + pos] as a zero slot padded in front plus a (1, 1 + T, width) table holding
    # the class token: the same values, without broadcasting the token to the batch, which
    # the TFLite graph would hold as a BROADCAST_TO that XNNPACK does not run.
    first = jnp.concatenate([cls, jnp.zeros_like(pos[:, 1:])], axis=1)
    return jnp.pad(x + pos[:, 1:], ((0, 0), (1, 0), (0, 0))) + first

  def position_embedding(self, num_patches: int):
    """(1, 1 + num_patches, width): learned parameter or fixed sin-cos (cls slot first)."""
    grid = int(round(num_patches ** 0.5))
    if grid * grid != num_patches:
      raise ValueError(f'position embeddings need a square grid, got {num_patches} patches')
    if self.pos_embed == 'sincos':
      return jnp.asarray(sincos_2d(grid, self.width, cls_token=True))[None]
    return self.param('pos_embed', nn.initializers.truncated_normal(0.02),
                      (1, 1 + num_patches, self.width), self.param_dtype)

  def run_blocks(self, x, *, train: bool):
    """(B, T', width) -> (B, T', width) through all blocks."""
    block = remat_block(self.remat)
    for i in range(self.depth):
      rate = self.drop_path_rate * i / max(self.depth - 1, 1)
      sow_logits = self.attention_logits_layers is None or i in self.attention_logits_layers
      x = block(self.num_heads, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                drop_path_rate=rate, layer_norm_eps=self.layer_norm_eps, tdrl=self.tdrl,
                attention_impl=self.attention_impl, sow_logits=sow_logits, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f'blocks_{i}')(x, train)
    return x

  def classify(self, x, *, train: bool):
    """(B, 1 + T, width) tokens -> logits (B, num_classes) or features (B, width)."""
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    if self.global_pool == 'avg':
      x = norm('fc_norm')(x[:, 1:].mean(axis=1))
    else:
      # The class token alone: LayerNorm is per token, and the other 196 would be dropped
      # (timm normalises them all, work whose result is thrown away).
      x = norm('norm')(x[:, 0])
    if self.num_classes == 0:
      return x
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(
        self.head_init_std), dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)


def _register_all():
  from repvit_jax.models.registry import register  # pylint: disable=import-outside-toplevel
  sizes = {
      'tiny': dict(width=192, depth=12, num_heads=3),
      'small': dict(width=384, depth=12, num_heads=6),
      'base': dict(width=768, depth=12, num_heads=12),
  }
  for size, arch in sizes.items():
    register(f'vit_{size}', VisionTransformer, **arch)
  register('deit_tiny', VisionTransformer, **sizes['tiny'])
  for size in ('tiny', 'small'):
    register(f'tdrl_vit_{size}', VisionTransformer, tdrl=TDRL(), deploy={'tdrl': None},
             **sizes[size])


_register_all()
