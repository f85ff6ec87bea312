"""LeViT: a convolutional stem, then attention stages with BatchNorm after every linear.

Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference".
Structure (the paper, as timm lays it out): a stem of four 3x3 stride-2 ConvBNs (hardswish between them,
224 -> 14x14 tokens); three stages of residual attention + MLP blocks; between stages a
shrinking attention (queries from a stride-2 subsample, no residual) and a residual MLP;
mean over tokens; a BatchNorm+linear head, and with `distillation` a second such head whose
logits are averaged with the first at inference.

Attention logits are q.k / sqrt(D) + B[h, |dy| * R + |dx|] (a learned bias per head and
absolute offset, on an R x R token grid); the values (attn_ratio * D per head) pass through
hardswish before the output projection.

Parameter layout (training form; timm's order of q, k, v per head in `qkv`):
  stem/conv1..conv4 {conv, bn};  stages_<i>/downsample/{attn/{kv, q, proj,
  attention_biases}, mlp/{fc1, fc2}};  stages_<i>/blocks_<j>/{attn/{qkv, proj,
  attention_biases}, mlp/{fc1, fc2}};  head/{cls, dist} (each {pre_bn, linear}) or, without
  distillation, head/{pre_bn, linear}.
Deploy form (`deploy=True`): every {conv|linear, bn} is a plain {kernel, bias} and the
head is one dense layer (the two averaged heads merged into one): no `batch_stats` at all.

In training mode a model with `distillation` returns the pair (class logits, distillation
logits), as DeiT does; in eval mode (and in the deploy form) it returns their mean.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax.models.features import Tap
from repvit_jax.layers.conv_bn import BNLinear, ConvBN, LinearBN
from repvit_jax.layers.dense import Dense
from repvit_jax.layers.transformer import DropPath, attention

hardswish = jax.nn.hard_swish


def bias_index(resolution: Tuple[int, int], stride: int = 1) -> np.ndarray:
  """(Nq, Nk) indices into a (heads, R_h * R_w) bias table: |dy| * R_w + |dx|.

  Keys sit on the full R_h x R_w grid; queries on its stride-`stride` subsample (row-major,
  positions 0, stride, 2 * stride, ...), as the shrinking attention takes them.
  """
  rh, rw = resolution
  ky, kx = np.meshgrid(np.arange(rh), np.arange(rw), indexing='ij')
  qy, qx = np.meshgrid(np.arange(0, rh, stride), np.arange(0, rw, stride), indexing='ij')
  dy = np.abs(qy.reshape(-1, 1) - ky.reshape(1, -1))
  dx = np.abs(qx.reshape(-1, 1) - kx.reshape(1, -1))
  return (dy * rw + dx).astype(np.int32)


class _Common(nn.Module):
  """Fields every LeViT sub-module shares."""
  bn_momentum: float = 0.9
  deploy: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def common(self) -> Dict[str, Any]:
    """The shared fields, to pass on to sub-modules."""
    return dict(bn_momentum=self.bn_momentum, deploy=self.deploy, dtype=self.dtype,
                param_dtype=self.param_dtype)

  def linear_bn(self, features: int, name: str, zero_init: bool = False) -> LinearBN:
    init = nn.initializers.zeros if zero_init else nn.initializers.ones
    return LinearBN(features, bn_scale_init=init, name=name, **self.common)


class LeViTAttention(_Common):
  """Attention with per-head position biases; with `stride > 1`, the shrinking form.

  Attributes:
    out_features: output width (the input width for the residual form).
    key_dim: D, per-head width of queries and keys.
    num_heads: heads.
    attn_ratio: value width per head = attn_ratio * D.
    resolution: (R_h, R_w), the token grid of the input.
    stride: 1 for the residual attention; 2 for the shrinking attention, whose queries come
      from the stride-2 subsample (output grid ((R_h - 1) // 2 + 1, ...)).
  """
  out_features: int = 0
  key_dim: int = 16
  num_heads: int = 4
  attn_ratio: float = 2.0
  resolution: Tuple[int, int] = (14, 14)
  stride: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, R_h * R_w, C) -> (B, N_out, out_features)."""
    batch, tokens, width = x.shape
    rh, rw = self.resolution
    if tokens != rh * rw:
      raise ValueError(f'LeViT attention expects {rh}x{rw} = {rh * rw} tokens, got {tokens}')
    kd, heads = self.key_dim, self.num_heads
    vd = int(self.attn_ratio * kd)
    if self.stride == 1:
      qkv = self.linear_bn(heads * (2 * kd + vd), 'qkv')(x, train=train)
      qkv = qkv.reshape(batch, tokens, heads, 2 * kd + vd)
      q, k, v = jnp.split(qkv, [kd, 2 * kd], axis=-1)
    else:
      kv = self.linear_bn(heads * (kd + vd), 'kv')(x, train=train)
      k, v = jnp.split(kv.reshape(batch, tokens, heads, kd + vd), [kd], axis=-1)
      # The stride-s subsample x[:, ::s, ::s] as pad + reshape + a plain slice: the same
      # values, but no strided slice, which XNNPACK does not run (the TFLite graph split into
      # three partitions around LeViT's two shrinking attentions).
      s = self.stride
      out_h, out_w = -(-rh // s), -(-rw // s)
      grid = jnp.pad(x.reshape(batch, rh, rw, width),
                     ((0, 0), (0, out_h * s - rh), (0, out_w * s - rw), (0, 0)))
      sub = grid.reshape(batch, out_h, s, out_w, s, width)[:, :, 0, :, 0]
      sub = sub.reshape(batch, -1, width)
      q = self.linear_bn(heads * kd, 'q')(sub, train=train).reshape(batch, -1, heads, kd)
    biases = self.param('attention_biases', nn.initializers.zeros, (heads, rh * rw),
                        self.param_dtype)
    index = bias_index((rh, rw), self.stride)                         # (Nq, Nk)
    out = attention(q, k, v, bias=biases[:, index][None]).reshape(batch, -1, heads * vd)
    zero_init = self.stride == 1   # a residual branch starts as the identity
    return self.linear_bn(self.out_features or width, 'proj', zero_init)(hardswish(out),
                                                                         train=train)


class LeViTMlp(_Common):
  """LinearBN -> hardswish -> LinearBN (BN gamma of the second starts at 0)."""
  hidden_features: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, N, C) -> (B, N, C)."""
    width = x.shape[-1]
    x = hardswish(self.linear_bn(self.hidden_features, 'fc1')(x, train=train))
    return self.linear_bn(width, 'fc2', zero_init=True)(x, train=train)


class LeViTBlock(_Common):
  """x + attn(x), then x + mlp(x) (no norms: every linear has its BatchNorm)."""
  key_dim: int = 16
  num_heads: int = 4
  attn_ratio: float = 2.0
  mlp_ratio: float = 2.0
  resolution: Tuple[int, int] = (14, 14)
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    common = self.common
    drop_path = DropPath(self.drop_path_rate)
    y = LeViTAttention(key_dim=self.key_dim, num_heads=self.num_heads,
                       attn_ratio=self.attn_ratio, resolution=self.resolution, name='attn',
                       **common)(x, train=train)
    x = x + drop_path(y, train=train)
    y = LeViTMlp(hidden_features=int(x.shape[-1] * self.mlp_ratio), name='mlp',
                 **common)(x, train=train)
    x = x + drop_path(y, train=train)
    self.sow('intermediates', 'features', x)
    return x


class LeViTDownsample(_Common):
  """Shrinking attention (no residual) to `out_features`, then x + mlp(x)."""
  out_features: int = 0
  key_dim: int = 16
  attn_ratio: float = 4.0
  mlp_ratio: float = 2.0
  resolution: Tuple[int, int] = (14, 14)
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    common = self.common
    width = x.shape[-1]
    if width % self.key_dim:
      raise ValueError(f'LeViT shrinking attention: width {width} is not a multiple of the key '
                       f'dim {self.key_dim}')
    x = LeViTAttention(out_features=self.out_features, key_dim=self.key_dim,
                       num_heads=width // self.key_dim, attn_ratio=self.attn_ratio,
                       resolution=self.resolution, stride=2, name='attn',
                       **common)(x, train=train)
    y = LeViTMlp(hidden_features=int(self.out_features * self.mlp_ratio), name='mlp',
                 **common)(x, train=train)
    return x + DropPath(self.drop_path_rate)(y, train=train)


class DistilledHead(nn.Module):
  """Class head + distillation head (each BatchNorm -> linear), DeiT style.

  Training mode: (class logits, distillation logits); eval mode: their mean. Deployed
  (`repvit_jax.reparameterize`), the mean is one dense layer.
  """
  num_classes: int
  drop_rate: float = 0.0
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    common = dict(bn_momentum=self.bn_momentum, dtype=self.dtype, param_dtype=self.param_dtype)
    cls = BNLinear(self.num_classes, drop_rate=self.drop_rate, name='cls', **common)(
        x, train=train)
    dist = BNLinear(self.num_classes, name='dist', **common)(x, train=train)
    if train:
      return cls, dist
    return (cls + dist) / 2


class Stem(_Common):
  """Four 3x3 stride-2 ConvBNs (C/8, C/4, C/2, C), hardswish between them: stride 16."""
  features: int = 128

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, H, W, 3) -> (B, H/16, W/16, features)."""
    widths = (self.features // 8, self.features // 4, self.features // 2, self.features)
    for i, width in enumerate(widths):
      if i:
        x = hardswish(x)
      x = ConvBN(width, (3, 3), strides=2, padding=1, name=f'conv{i + 1}',
                 **self.common)(x, train=train)
    return x


class LeViTStage(_Common):
  """Optionally a shrinking attention + MLP (`downsample`), then `depth` blocks."""
  features: int = 128
  key_dim: int = 16
  num_heads: int = 4
  depth: int = 2
  attn_ratio: float = 2.0
  mlp_ratio: float = 2.0
  downsample: bool = False
  down_attn_ratio: float = 4.0
  down_mlp_ratio: float = 2.0
  resolution: Tuple[int, int] = (14, 14)
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, R_h * R_w, C_in) -> (B, N', features)."""
    common = self.common
    resolution = tuple(self.resolution)
    if self.downsample:
      x = LeViTDownsample(out_features=self.features, key_dim=self.key_dim,
                          attn_ratio=self.down_attn_ratio, mlp_ratio=self.down_mlp_ratio,
                          resolution=resolution, drop_path_rate=self.drop_path_rate,
                          name='downsample', **common)(x, train=train)
      resolution = _halved(resolution)
    elif x.shape[-1] != self.features:
      raise ValueError(f'a LeViT stage without downsampling keeps its width: got {x.shape[-1]} '
                       f'channels for a stage of {self.features}')
    for j in range(self.depth):
      x = LeViTBlock(key_dim=self.key_dim, num_heads=self.num_heads,
                     attn_ratio=self.attn_ratio, mlp_ratio=self.mlp_ratio,
                     resolution=resolution, drop_path_rate=self.drop_path_rate,
                     name=f'blocks_{j}', **common)(x, train=train)
    return x


def _halved(resolution):
  """The grid after a stride-2, padding-1 layer (3x3 conv or LeViT's subsampling)."""
  return tuple((r - 1) // 2 + 1 for r in resolution)


class LeViT(nn.Module):
  """LeViT classifier. Images (B, H, W, 3) -> logits (B, num_classes).

  Attributes:
    num_classes: classes; 0 returns the pooled features (B, embed_dims[-1]).
    embed_dims, num_heads, depths: per stage.
    key_dim: D of every attention (the shrinking ones use embed_dim / D heads).
    attn_ratio, mlp_ratio: of the stage blocks; down_attn_ratio, down_mlp_ratio: of the
      shrinking attention and the MLP after it.
    distillation: a second (distillation) head, averaged with the first at inference.
    drop_rate: dropout before the class head. drop_path_rate: stochastic depth (the same rate
      in every residual branch, as the reference).
    deploy: the BN-free deploy form.
  """
  num_classes: int = 1000
  embed_dims: Tuple[int, ...] = (128, 256, 384)
  key_dim: int = 16
  num_heads: Tuple[int, ...] = (4, 6, 8)
  depths: Tuple[int, ...] = (2, 3, 4)
  attn_ratio: float = 2.0
  mlp_ratio: float = 2.0
  down_attn_ratio: float = 4.0
  down_mlp_ratio: float = 2.0
  distillation: bool = True
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  bn_momentum: float = 0.9
  deploy: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def feature_taps(self, height: int, width: int):
    """Every stage's output (`repvit_jax.models.features`): tokens on the stage's grid (stride 16,
    then 32, 64, ...)."""
    resolution = (height, width)
    for _ in range(4):                 # the stem's four stride-2 convolutions
      resolution = _halved(resolution)
    found = []
    for i in range(len(self.depths)):
      if i > 0:
        resolution = _halved(resolution)
      found.append(Tap(f'stages_{i}', resolution))
    return found

  @nn.compact
  def __call__(self, images, *, train: bool):
    """(B, H, W, 3) -> logits (B, num_classes); a pair in training with `distillation`."""
    if not len(self.embed_dims) == len(self.num_heads) == len(self.depths):
      raise ValueError('LeViT embed_dims, num_heads and depths need one entry per stage, got '
                       f'{self.embed_dims}, {self.num_heads}, {self.depths}')
    common = dict(bn_momentum=self.bn_momentum, deploy=self.deploy, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    x = Stem(features=self.embed_dims[0], name='stem', **common)(images.astype(self.dtype),
                                                                  train=train)
    batch, rh, rw, width = x.shape
    x = x.reshape(batch, rh * rw, width)
    resolution = (rh, rw)
    for i, (dim, heads, depth) in enumerate(zip(self.embed_dims, self.num_heads, self.depths)):
      x = LeViTStage(features=dim, key_dim=self.key_dim, num_heads=heads, depth=depth,
                     attn_ratio=self.attn_ratio, mlp_ratio=self.mlp_ratio, downsample=i > 0,
                     down_attn_ratio=self.down_attn_ratio, down_mlp_ratio=self.down_mlp_ratio,
                     resolution=resolution, drop_path_rate=self.drop_path_rate,
                     name=f'stages_{i}', **common)(x, train=train)
      if i > 0:
        resolution = _halved(resolution)
    x = x.mean(axis=1)
    if self.num_classes == 0:
      return x
    if self.deploy:
      # The folded head: one dense layer (the mean of the two heads when distilled).
      return Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name='head')(x)
    head_common = dict(drop_rate=self.drop_rate, bn_momentum=self.bn_momentum,
                       dtype=self.dtype, param_dtype=self.param_dtype, name='head')
    if self.distillation:
      return DistilledHead(self.num_classes, **head_common)(x, train=train)
    return BNLinear(self.num_classes, **head_common)(x, train=train)


def _register_all():
  from repvit_jax.models.inputs import InputSpec  # pylint: disable=import-outside-toplevel
  from repvit_jax.models.registry import register  # pylint: disable=import-outside-toplevel
  configs = {
      '128s': dict(embed_dims=(128, 256, 384), key_dim=16, num_heads=(4, 6, 8),
                   depths=(2, 3, 4)),
      '128': dict(embed_dims=(128, 256, 384), key_dim=16, num_heads=(4, 8, 12),
                  depths=(4, 4, 4)),
      '192': dict(embed_dims=(192, 288, 384), key_dim=32, num_heads=(3, 5, 6),
                  depths=(4, 4, 4)),
      '256': dict(embed_dims=(256, 384, 512), key_dim=32, num_heads=(4, 6, 8),
                  depths=(4, 4, 4)),
      '384': dict(embed_dims=(384, 512, 768), key_dim=32, num_heads=(6, 9, 12),
                  depths=(4, 4, 4)),
  }
  for size, arch in configs.items():
    # The paper trains LeViT-384 with stochastic depth 0.1 (its table's p), the others without.
    rate = 0.1 if size == '384' else 0.0
    register(f'levit_{size}', LeViT, deploy={'deploy': True}, drop_path_rate=rate,
             input=InputSpec(eval_crop_fraction=0.9), **arch)


_register_all()
