"""MetaFormer backbones: PoolFormer (pooling token mixer) and RIFormer (no token mixer).

Yu et al., "MetaFormer Is Actually What You Need for Vision"; Wang et al., "RIFormer: Keep
Your Vision Backbone Effective but Removing Token Mixer". Structure (the papers, as timm lays it out):

  stem            conv 7x7 stride 4 pad 2 (with bias)
  4 stages        blocks; between stages a conv 3x3 stride 2 pad 1 (`downsample_<s>`)
  block           x + ls1 * mixer(norm1(x)),  then  x + ls2 * mlp(norm2(x))
                  norm = GroupNorm with one group (statistics over H, W, C of each image,
                  eps 1e-5, per-channel gamma/beta); mlp = 1x1 conv, GELU, 1x1 conv (ratio 4);
                  ls1, ls2 = per-channel layer scale
  norm            GroupNorm(1); global average pool; head (dense)

Token mixers (`mixer`):
  'pool'    PoolFormer: avg_pool_3x3(n) - n, padding excluded from the average. No params.
  'affine'  RIFormer training form: scale * n + shift - n, a per-channel affine
            (`mixer/{scale, shift}`).
  'none'    RIFormer deploy form: the block is x + ls1 * norm1(x); the affine lives in norm1
            (gamma' = gamma (s - 1), beta' = beta (s - 1) + t, see
            `repvit_jax.reparam.fold_affine_into_norm`). No mixer parameters at all.

Parameter layout: stem, blocks_<k> (k counts blocks over all stages, 0-based) with
{norm1, mixer?, layer_scale_1, norm2, mlp/{fc1, fc2}, layer_scale_2}, downsample_<s>
(s = 1, 2, 3), norm, head. PoolFormer and RIFormer share it except for `mixer`, so a
PoolFormer's weights initialise a RIFormer (module imitation's `init_student`).

Each block sows, in 'intermediates', `mixer_in` (norm1's output, (B, H, W, C)), `mixer_out`
(the mixer's output before layer scale) and `features` (the block output), for module
imitation; they cost nothing unless 'intermediates' is made mutable.
"""

from __future__ import annotations

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from repvit_jax.models.features import Tap
from repvit_jax.layers.activations import gelu
from repvit_jax.layers.dense import Dense
from repvit_jax.layers.transformer import DropPath

MIXERS = ('pool', 'affine', 'none')

_dense_init = nn.initializers.truncated_normal(0.02)


def pool_mixer(x):
  """PoolFormer's mixer: 3x3 average (stride 1, padding not counted) minus the input."""
  pooled = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)
  return pooled - x


def _uniform(low: float, high: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, low, high)
  return init


class ImageNorm(nn.Module):
  """GroupNorm with one group: each image normalised by the mean and variance of all its
  (H, W, C) values, then a per-channel scale and bias. (B, H, W, C) -> same.

  The parameters are `nn.GroupNorm(num_groups=1)`'s ('scale', 'bias'), so checkpoints and
  fusers are unchanged, and it computes what nn.GroupNorm does (float32 statistics, the
  variance as E[x^2] - E[x]^2, for which XLA reads x once). Written out rather than with
  `nn.GroupNorm`, whose lowering broadcasts the statistics explicitly: the TFLite graph then
  holds a BROADCAST_TO per norm, which XNNPACK does not run (PoolFormer-S12's norms alone
  split it into 26 XNNPACK partitions, with reference kernels between them; now one).
  """
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (channels,), self.param_dtype)
    values = x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim))
    # One pass over x for both moments (as flax's GroupNorm: var = E[x^2] - E[x]^2).
    mean = values.mean(axis=axes, keepdims=True)
    variance = jnp.maximum(jnp.mean(values * values, axis=axes, keepdims=True) - mean * mean,
                           0.0)
    y = (values - mean) * jax.lax.rsqrt(variance + self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class AffineMixer(nn.Module):
  """RIFormer's training-time mixer: scale * x + shift - x, per channel ((..., C) inputs).

  Initialised as the reference's depthwise 1x1 conv with PyTorch's default init: scale and
  shift uniform in [-1, 1] (fan-in 1). The layer scale after it starts tiny, so the block
  starts close to the identity anyway.
  """
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param('scale', _uniform(-1.0, 1.0), (channels,), self.param_dtype)
    shift = self.param('shift', _uniform(-1.0, 1.0), (channels,), self.param_dtype)
    return x * (scale - 1).astype(x.dtype) + shift.astype(x.dtype)


class MetaFormerBlock(nn.Module):
  """x + ls1 * mixer(norm1(x)); x + ls2 * mlp(norm2(x)). (B, H, W, C) -> same."""
  mixer: str = 'pool'
  mlp_ratio: float = 4.0
  layer_scale_init: float = 1e-5
  drop_path_rate: float = 0.0
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.mixer not in MIXERS:
      raise ValueError(f'MetaFormer mixer must be one of {MIXERS}, got {self.mixer!r}')
    channels = x.shape[-1]
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: ImageNorm(epsilon=self.norm_eps, name=name, **dtypes)
    layer_scale = lambda name: self.param(name, nn.initializers.constant(
        self.layer_scale_init), (channels,), self.param_dtype).astype(x.dtype)
    drop_path = DropPath(self.drop_path_rate)

    y = norm('norm1')(x)
    self.sow('intermediates', 'mixer_in', y)
    if self.mixer == 'pool':
      y = pool_mixer(y)
    elif self.mixer == 'affine':
      y = AffineMixer(param_dtype=self.param_dtype, name='mixer')(y)
    self.sow('intermediates', 'mixer_out', y)
    x = x + drop_path(layer_scale('layer_scale_1') * y, train=train)

    y = norm('norm2')(x)
    y = Mlp(int(channels * self.mlp_ratio), name='mlp', **dtypes)(y)
    x = x + drop_path(layer_scale('layer_scale_2') * y, train=train)
    self.sow('intermediates', 'features', x)
    return x


class Mlp(nn.Module):
  """1x1 conv (as a dense over channels) -> GELU (exact) -> 1x1 conv."""
  hidden_features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(..., C) -> (..., C)."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    shape = x.shape
    # Over (pixels, C): the TFLite converter makes a (B, H, W, C) dense a BATCH_MATMUL,
    # which it cannot build for a 1x1 map (a 32x32 image at the last stage); a 2-D one is a
    # FULLY_CONNECTED at every size. The same numbers either way.
    x = x.reshape(-1, shape[-1])
    x = Dense(self.hidden_features, kernel_init=_dense_init, name='fc1', **dtypes)(x)
    x = gelu(x)
    x = Dense(shape[-1], kernel_init=_dense_init, name='fc2', **dtypes)(x)
    return x.reshape(shape)


class MetaFormer(nn.Module):
  """PoolFormer / RIFormer classifier. Images (B, H, W, 3) -> logits (B, num_classes).

  Attributes:
    num_classes: classes; 0 returns the pooled features (B, dims[-1]).
    depths, dims: blocks and width of the four stages.
    mixer: 'pool' (PoolFormer), 'affine' (RIFormer, training) or 'none' (RIFormer, deploy).
    mlp_ratio: MLP hidden width / width.
    layer_scale_init: initial value of every layer scale.
    drop_rate: dropout before the head; drop_path_rate: stochastic depth, linear in the
      block index from 0 to this value.
    head_norm: 'map' (the paper and mmpretrain: GroupNorm(1) on the feature map, then global
      average pooling) or 'pooled' (timm: pooling, then LayerNorm over channels, eps 1e-6);
      the same `norm` parameters either way, so timm weights load into both.
  """
  num_classes: int = 1000
  depths: Tuple[int, ...] = (2, 2, 6, 2)
  dims: Tuple[int, ...] = (64, 128, 320, 512)
  mixer: str = 'pool'
  mlp_ratio: float = 4.0
  layer_scale_init: float = 1e-5
  norm_eps: float = 1e-5
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  head_norm: str = 'map'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def feature_taps(self, height: int, width: int):
    """Every stage's output (`repvit_jax.models.features`), strides 4, 8, 16 and 32: its last
    block."""
    del height, width
    ends = [sum(self.depths[:s + 1]) - 1 for s in range(len(self.depths))]
    return [Tap(f'blocks_{k}') for k in ends]

  @nn.compact
  def __call__(self, images, *, train: bool):
    """(B, H, W, 3) -> logits (B, num_classes)."""
    if self.head_norm not in ('map', 'pooled'):
      raise ValueError(f"head_norm must be 'map' or 'pooled', got {self.head_norm!r}")
    if len(self.depths) != len(self.dims):
      raise ValueError(f'MetaFormer depths {self.depths} and dims {self.dims} need one entry '
                       'per stage')
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda features, kernel, stride, pad, name: nn.Conv(
        features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
        kernel_init=_dense_init, name=name, **dtypes)
    x = conv(self.dims[0], 7, 4, 2, 'stem')(images.astype(self.dtype))
    total = sum(self.depths)
    k = 0
    for s, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if s > 0:
        x = conv(dim, 3, 2, 1, f'downsample_{s}')(x)
      for _ in range(depth):
        rate = self.drop_path_rate * k / max(total - 1, 1)
        x = MetaFormerBlock(self.mixer, self.mlp_ratio, self.layer_scale_init, rate,
                            self.norm_eps, name=f'blocks_{k}', **dtypes)(x, train=train)
        k += 1
    if self.head_norm == 'map':
      x = ImageNorm(epsilon=self.norm_eps, name='norm', **dtypes)(x)
      x = x.mean(axis=(1, 2))
    else:
      x = nn.LayerNorm(epsilon=1e-6, name='norm', **dtypes)(x.mean(axis=(1, 2)))
    if self.num_classes == 0:
      return x
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return Dense(self.num_classes, kernel_init=_dense_init, name='head', **dtypes)(x)


def _register_all():
  from repvit_jax.models.inputs import InputSpec  # pylint: disable=import-outside-toplevel
  from repvit_jax.models.registry import register  # pylint: disable=import-outside-toplevel
  small, medium = (64, 128, 320, 512), (96, 192, 384, 768)
  INPUT = InputSpec(eval_crop_fraction=0.9)   # PoolFormer's recipe: 224, crop 0.9
  sizes = {
      's12': dict(depths=(2, 2, 6, 2), dims=small, layer_scale_init=1e-5),
      's24': dict(depths=(4, 4, 12, 4), dims=small, layer_scale_init=1e-5),
      's36': dict(depths=(6, 6, 18, 6), dims=small, layer_scale_init=1e-6),
      'm36': dict(depths=(6, 6, 18, 6), dims=medium, layer_scale_init=1e-6),
      'm48': dict(depths=(8, 8, 24, 8), dims=medium, layer_scale_init=1e-6),
  }
  for size, arch in sizes.items():
    register(f'poolformer_{size}', MetaFormer, mixer='pool', input=INPUT, **arch)
    register(f'riformer_{size}', MetaFormer, mixer='affine', deploy={'mixer': 'none'},
             input=INPUT, **arch)


_register_all()
