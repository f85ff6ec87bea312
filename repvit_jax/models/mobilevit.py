"""MobileViT: MobileNetV2 inverted residual blocks with MobileViT (conv + transformer) blocks.

Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision
Transformer". Structure (the paper, in timm's layout of ml-cvnets):

  stem        ConvBN 3x3 stride 2 -> 16 channels, SiLU
  stages_0    one inverted residual block (stride 1)
  stages_1    three inverted residual blocks, the first with stride 2
  stages_2..4 an inverted residual block with stride 2, then a MobileViT block
  final_conv  ConvBN 1x1, SiLU;  global average pool;  dropout;  head (dense)

Inverted residual: ConvBN 1x1 expand (width make_divisible(C_in * expansion, 8), SiLU) ->
depthwise ConvBN 3x3 (stride, SiLU) -> ConvBN 1x1 project (no activation), plus the input
when the shape is kept. MobileViT block: ConvBN 3x3 (SiLU) -> conv 1x1 to width d (no BN,
no bias) -> unfold 2x2 patches into (B * 4, N, d) sequences -> transformer layers (pre-LN,
eps 1e-5, 4 heads, MLP ratio 2, SiLU) -> LayerNorm -> fold -> ConvBN 1x1 back to C (SiLU) ->
concatenate [block input, that] -> ConvBN 3x3 2C -> C (SiLU). Feature maps whose side is
not a multiple of the patch size are resized (bilinear) to the next multiple and back, as
the reference does, so any input size works (the multi-scale sampler relies on it).

Deploy form (`deploy=True`): every ConvBN is one conv with a bias (no batch_stats left).
Inputs are expected in [0, 1] (the reference does not normalise by ImageNet statistics);
the configs set data.mean = (0, 0, 0), data.std = (1, 1, 1).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from repvit_jax.models.features import Tap
from repvit_jax.layers.conv_bn import ConvBN
from repvit_jax.layers.dense import Dense
from repvit_jax.layers.transformer import Attention, DropPath


def make_divisible(value: float, divisor: int = 8) -> int:
  """The nearest multiple of `divisor` to `value`, never below 90% of it (MobileNet rule)."""
  out = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if out < 0.9 * value:
    out += divisor
  return out


class _Common(nn.Module):
  bn_momentum: float = 0.9
  deploy: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def conv_bn(self, features: int, kernel: int, name: str, strides: int = 1,
              groups: int = 1) -> ConvBN:
    return ConvBN(features, (kernel, kernel), strides=strides, padding=kernel // 2,
                  groups=groups, bn_momentum=self.bn_momentum, deploy=self.deploy,
                  dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class InvertedResidual(_Common):
  """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> project 1x1 (+ input if same shape)."""
  features: int = 32
  strides: int = 1
  expansion: float = 4.0
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, H, W, C_in) -> (B, H / strides, W / strides, features)."""
    in_features = x.shape[-1]
    hidden = make_divisible(in_features * self.expansion)
    y = nn.silu(self.conv_bn(hidden, 1, 'expand')(x, train=train))
    y = nn.silu(self.conv_bn(hidden, 3, 'dw', strides=self.strides, groups=hidden)(
        y, train=train))
    y = self.conv_bn(self.features, 1, 'project')(y, train=train)
    if self.strides == 1 and in_features == self.features:
      y = x + DropPath(self.drop_path_rate)(y, train=train)
    return y


class TransformerLayer(nn.Module):
  """Pre-norm transformer layer with a SiLU MLP: x + attn(ln(x)), x + mlp(ln(x))."""
  num_heads: int = 4
  mlp_ratio: float = 2.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B', N, d) -> (B', N, d)."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, name=name, **dtypes)
    drop_path = DropPath(self.drop_path_rate)
    dense = lambda features, name: Dense(
        features, kernel_init=nn.initializers.truncated_normal(0.02), name=name, **dtypes)
    y = Attention(self.num_heads, qkv_bias=True, name='attn', **dtypes)(norm('norm1')(x),
                                                                        train=train)
    x = x + drop_path(y, train=train)
    y = dense(int(width * self.mlp_ratio), 'fc1')(norm('norm2')(x))
    y = dense(width, 'fc2')(nn.silu(y))
    return x + drop_path(y, train=train)


def _resize(x, height: int, width: int):
  """Bilinear resize of (B, H, W, C) with half-pixel centres and no antialiasing (PyTorch's
  F.interpolate(mode='bilinear', align_corners=False))."""
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), 'bilinear',
                          antialias=False)


class MobileViTBlock(_Common):
  """Local ConvBN 3x3 + conv 1x1, global transformer over unfolded patches, fuse with input."""
  transformer_dim: int = 96
  depth: int = 2
  patch_size: int = 2
  num_heads: int = 4
  mlp_ratio: float = 2.0
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, H, W, C) -> (B, H, W, C)."""
    batch, height, width, channels = x.shape
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.silu(self.conv_bn(channels, 3, 'conv_kxk')(x, train=train))
    y = nn.Conv(self.transformer_dim, (1, 1), use_bias=False, name='conv_1x1', **dtypes)(y)

    p = self.patch_size
    ph, pw = math.ceil(height / p), math.ceil(width / p)        # patches per column / row
    y = _resize(y, ph * p, pw * p)
    d = self.transformer_dim
    # Unfold: one sequence per position inside a patch, over all patches: (B * p * p, N, d).
    y = y.reshape(batch, ph, p, pw, p, d).transpose(0, 2, 4, 1, 3, 5)
    y = y.reshape(batch * p * p, ph * pw, d)
    for i in range(self.depth):
      y = TransformerLayer(self.num_heads, self.mlp_ratio, self.drop_path_rate,
                           name=f'transformer_{i}', **dtypes)(y, train=train)
    y = nn.LayerNorm(epsilon=1e-5, name='norm', **dtypes)(y)
    # Fold back to the feature map.
    y = y.reshape(batch, p, p, ph, pw, d).transpose(0, 3, 1, 4, 2, 5)
    y = _resize(y.reshape(batch, ph * p, pw * p, d), height, width)

    y = nn.silu(self.conv_bn(channels, 1, 'conv_proj')(y, train=train))
    y = jnp.concatenate([x, y], axis=-1)
    return nn.silu(self.conv_bn(channels, 3, 'conv_fusion')(y, train=train))


class MobileViT(_Common):
  """MobileViT classifier. Images (B, H, W, 3) in [0, 1] -> logits (B, num_classes).

  Attributes:
    num_classes: classes; 0 returns the pooled features (B, final_features).
    stem_features: width of the stem conv.
    channels: output width of the five stages.
    stage_depths: inverted residual blocks in stages 0 and 1 (stages 2-4 have one, plus
      their MobileViT block).
    transformer_dims, transformer_depths: width d and layers of the three MobileViT blocks.
    expansion: inverted residual expansion ratio.
    final_features: width of the final 1x1 conv.
    patch_size, num_heads, mlp_ratio: of the MobileViT blocks.
    drop_rate: dropout before the head; drop_path_rate: stochastic depth in the
      transformer layers and residual inverted blocks.
    deploy: the BN-folded deploy form.
  """
  # Images per pass for op-by-op runtimes given a larger batch (see `VisionTransformer`):
  # mobilevit_xs gains from passes of 4 as the ViT does; LeViT and the MetaFormers lose, and
  # keep the whole batch (figures: benchmarks/README.md).
  inference_micro_batch: ClassVar[Optional[int]] = 4

  num_classes: int = 1000
  stem_features: int = 16
  channels: Tuple[int, ...] = (32, 48, 64, 80, 96)
  stage_depths: Tuple[int, int] = (1, 3)
  transformer_dims: Tuple[int, ...] = (96, 120, 144)
  transformer_depths: Tuple[int, ...] = (2, 4, 3)
  expansion: float = 4.0
  final_features: int = 384
  patch_size: int = 2
  num_heads: int = 4
  mlp_ratio: float = 2.0
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0

  def feature_taps(self, height: int, width: int):
    """Every stage's output (`repvit_jax.models.features`), strides 2, 4, 8, 16 and 32: the last
    inverted residual of stages 0 and 1, the MobileViT block of stages 2 to 4."""
    del height, width
    return [Tap(f'stages_{i}_blocks_{self.stage_depths[i] - 1}') if i < 2
            else Tap(f'stages_{i}_mobilevit') for i in range(len(self.channels))]

  @nn.compact
  def __call__(self, images, *, train: bool):
    """(B, H, W, 3) -> logits (B, num_classes)."""
    if len(self.channels) != 5 or len(self.transformer_dims) != 3 or len(
        self.transformer_depths) != 3:
      raise ValueError('MobileViT needs 5 stage widths and 3 transformer widths/depths, got '
                       f'{self.channels}, {self.transformer_dims}, {self.transformer_depths}')
    common = dict(bn_momentum=self.bn_momentum, deploy=self.deploy, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    x = nn.silu(self.conv_bn(self.stem_features, 3, 'stem', strides=2)(
        images.astype(self.dtype), train=train))
    for i, features in enumerate(self.channels):
      stage = f'stages_{i}'
      depth = self.stage_depths[i] if i < 2 else 1
      for j in range(depth):
        strides = 2 if (i > 0 and j == 0) else 1
        x = InvertedResidual(features=features, strides=strides, expansion=self.expansion,
                             drop_path_rate=self.drop_path_rate, name=f'{stage}_blocks_{j}',
                             **common)(x, train=train)
      if i >= 2:
        x = MobileViTBlock(transformer_dim=self.transformer_dims[i - 2],
                           depth=self.transformer_depths[i - 2], patch_size=self.patch_size,
                           num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                           drop_path_rate=self.drop_path_rate, name=f'{stage}_mobilevit',
                           **common)(x, train=train)
    x = nn.silu(self.conv_bn(self.final_features, 1, 'final_conv')(x, train=train))
    x = x.mean(axis=(1, 2))
    if self.num_classes == 0:
      return x
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(0.02),
                    dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)


def _register_all():
  from repvit_jax.models.inputs import InputSpec  # pylint: disable=import-outside-toplevel
  from repvit_jax.models.registry import register  # pylint: disable=import-outside-toplevel
  configs = {
      'xxs': dict(channels=(16, 24, 48, 64, 80), transformer_dims=(64, 80, 96),
                  expansion=2.0, final_features=320),
      'xs': dict(channels=(32, 48, 64, 80, 96), transformer_dims=(96, 120, 144),
                 expansion=4.0, final_features=384),
      's': dict(channels=(32, 64, 96, 128, 160), transformer_dims=(144, 192, 240),
                expansion=4.0, final_features=640),
  }
  for size, arch in configs.items():
    # MobileViT's recipe: 256x256, pixels in [0, 1] without mean/std, eval crop 256 of 288.
    register(f'mobilevit_{size}', MobileViT, deploy={'deploy': True},
             input=InputSpec(256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                             eval_crop_fraction=256 / 288), **arch)


_register_all()
