"""Masked autoencoder (MAE / MAE-Lite) on the ViT encoder, with optional TDRL linears.

The encoder *is* `VisionTransformer`'s: the same `patch_embed`, `cls_token`, `blocks_<i>` and
`norm` parameters at the top level of `params` (position embeddings are the fixed 2-D sin-cos
table, so there is no `pos_embed` parameter). The decoder lives beside it under `decoder_*`
names (`decoder_embed`, `mask_token`, `decoder_blocks_<i>`, `decoder_norm`, `decoder_pred`;
its position embeddings are fixed sin-cos too). Hence:

* fine-tuning is a plain copy of the encoder subtree into a classifier (`to_classifier`);
* with a TDRL encoder (`mae_tdrl_vit_tiny`), `repvit_jax.reparameterize` folds the encoder's
  `RepLinear`s and leaves the decoder alone, giving the variables of the vanilla MAE
  (`mae_vit_tiny`), whose encoder is the vanilla ViT encoder.

Masking keeps static shapes under jit: every example draws uniform noise from the 'mask' rng,
its argsort is a per-example shuffle of the N patches, and the first
`num_visible(N, mask_ratio)` of the shuffle are the visible patches.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax.layers.posemb import sincos_2d
from repvit_jax.layers.dense import Dense
from repvit_jax.layers.rep_linear import TDRL
from repvit_jax.layers.transformer import remat_block
from repvit_jax.models.vit import VisionTransformer

# Top-level params that belong to pre-training only (the decoder, and what a distillation task
# keeps beside the model): dropped when an MAE tree becomes a classifier.
DECODER_PREFIX = 'decoder_'
PRETRAINING_ONLY = ('mask_token', 'distill')


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Visible patches per example: round(N * (1 - mask_ratio)), at least 1."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
  return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def random_shuffle(rng: jax.Array, batch: int, num_patches: int) -> jax.Array:
  """A random permutation of the patches per example: (batch, num_patches) int32.

  The argsort of uniform noise (MAE's per-sample shuffling); deterministic for a given rng.
  """
  noise = jax.random.uniform(rng, (batch, num_patches))
  return jnp.argsort(noise, axis=1).astype(jnp.int32)


def mask_from_shuffle(ids_shuffle: jax.Array, visible: int):
  """(ids_keep (B, visible), ids_restore (B, N), mask (B, N) float32 with 1 = masked).

  `ids_restore` is the inverse permutation: `take_along_axis(shuffled, ids_restore)` puts a
  sequence in shuffled order back into raster order. Masked patches are the last N - visible
  of the shuffle.
  """
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  mask = (ids_restore >= visible).astype(jnp.float32)
  return ids_shuffle[:, :visible], ids_restore, mask


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p * W/p, p * p * C), patches in raster order, pixels (row, col, c).

  The patch order is the token order of `patch_embed` (row-major over the grid).
  """
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f'image size {h}x{w} is not divisible by the patch size {p}')
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, channels: int = 3) -> jax.Array:
  """The inverse of `patchify` for a square grid: (B, N, p * p * C) -> (B, H, W, C)."""
  b, n, _ = patches.shape
  grid = int(round(n ** 0.5))
  if grid * grid != n:
    raise ValueError(f'unpatchify needs a square grid, got {n} patches')
  p = patch_size
  x = patches.reshape(b, grid, grid, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid * p, grid * p, channels)


class MaskedAutoencoder(VisionTransformer):
  """MAE: a ViT encoder on the visible patches and a light transformer decoder.

  Images (B, H, W, 3) -> a dict (see `__call__`). Inherits every encoder field of
  `VisionTransformer` (`patch_size`, `width`, `depth`, `num_heads`, `mlp_ratio`, `tdrl`, ...);
  the classifier-only fields (`num_classes`, `global_pool`, `drop_rate`, `head_init_std`) are
  ignored.

  Attributes:
    mask_ratio: fraction of patches hidden from the encoder (MAE: 0.75).
    decoder_width, decoder_depth, decoder_num_heads, decoder_mlp_ratio: the decoder
      (MAE-Lite: 96, 1, 3; G2SD: 128, 4, 4; MAE-Base: 512, 8, 16).
  """
  pos_embed: str = 'sincos'
  mask_ratio: float = 0.75
  decoder_width: int = 96
  decoder_depth: int = 1
  decoder_num_heads: int = 3
  decoder_mlp_ratio: float = 4.0

  def feature_taps(self, height: int, width: int):
    """None: the encoder of a masked autoencoder sees a random subset of the patches."""
    raise ValueError(f'{type(self).__name__} has no dense features (its encoder sees a random '
                     'subset of the patches): fine-tune it, or load its encoder into vit_tiny')

  @nn.compact
  def __call__(self, images, *, train: bool, ids_shuffle: Optional[jax.Array] = None,
               decode: bool = True) -> Dict[str, jax.Array]:
    """Encodes the visible patches and (with `decode`) predicts the pixels of every patch.

    Args:
      images: (B, H, W, 3).
      train: training mode (BatchNorm batch statistics of TDRL, drop path).
      ids_shuffle: (B, N) per-example patch permutation whose first
        `num_visible(N, mask_ratio)` entries are visible; None draws one from the 'mask' rng.
        A teacher is given the student's, so that both see the same tokens.
      decode: run the decoder; False returns the encoder's outputs only (for a teacher whose
        decoder is not needed, and which may not even have one).

    Returns:
      'latent': (B, 1 + V, width) encoder output (class token first, after `norm`);
      'ids_shuffle': (B, N) int32; 'ids_keep': (B, V) the visible patch indices;
      'mask': (B, N) float32, 1 = masked (hidden from the encoder);
      with `decode`: 'pred': (B, N, p * p * 3) predicted pixels of every patch.
    """
    if self.pos_embed != 'sincos':
      raise ValueError(f"MAE uses fixed sin-cos position embeddings; pos_embed must be "
                       f"'sincos', got {self.pos_embed!r}")
    x = self.patchify(images)                       # (B, N, width), raster order
    batch, n, _ = x.shape
    pos = self.position_embedding(n).astype(x.dtype)
    x = x + pos[:, 1:]
    if ids_shuffle is None:
      ids_shuffle = random_shuffle(self.make_rng('mask'), batch, n)
    if ids_shuffle.shape != (batch, n):
      raise ValueError(f'ids_shuffle must have shape {(batch, n)}, got {ids_shuffle.shape}')
    visible = num_visible(n, self.mask_ratio)
    ids_keep, ids_restore, mask = mask_from_shuffle(ids_shuffle, visible)
    x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)
    cls = self.param('cls_token', nn.initializers.normal(0.02), (1, 1, self.width),
                     self.param_dtype).astype(x.dtype) + pos[:, :1]
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)), x], axis=1)
    x = self.run_blocks(x, train=train)
    latent = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                          param_dtype=self.param_dtype, name='norm')(x)
    out = {'latent': latent, 'ids_shuffle': ids_shuffle, 'ids_keep': ids_keep, 'mask': mask}
    if decode:
      out['pred'] = self.decode(latent, ids_restore, train=train)
    return out

  def decode(self, latent, ids_restore, *, train: bool):
    """(B, 1 + V, width) latent + (B, N) restore ids -> (B, N, p * p * 3) pixel predictions."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = self.decoder_width
    batch, n = ids_restore.shape
    dense_init = nn.initializers.xavier_uniform()
    y = Dense(width, kernel_init=dense_init, name='decoder_embed', **dtypes)(latent)
    mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, width),
                            self.param_dtype).astype(y.dtype)
    masked = jnp.broadcast_to(mask_token, (batch, n + 1 - y.shape[1], width))
    tokens = jnp.concatenate([y[:, 1:], masked], axis=1)            # shuffled order
    tokens = jnp.take_along_axis(tokens, ids_restore[..., None], axis=1)  # raster order
    grid = int(round(n ** 0.5))
    pos = jnp.asarray(sincos_2d(grid, width, cls_token=True), y.dtype)[None]
    y = jnp.concatenate([y[:, :1], tokens], axis=1) + pos
    block = remat_block(self.remat)
    for i in range(self.decoder_depth):
      # Nothing reads the decoder's attention logits: never materialise them.
      y = block(self.decoder_num_heads, mlp_ratio=self.decoder_mlp_ratio, qkv_bias=True,
                layer_norm_eps=self.layer_norm_eps, attention_impl=self.attention_impl,
                sow_logits=False, name=f'decoder_blocks_{i}', **dtypes)(y, train)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, name='decoder_norm', **dtypes)(y)
    pixels = self.patch_size * self.patch_size * 3
    y = Dense(pixels, kernel_init=dense_init, name='decoder_pred', **dtypes)(y)
    return y[:, 1:]


def is_mae_tree(params: Mapping[str, Any]) -> bool:
  """Whether a params tree is an MAE pre-training tree (it has a decoder or a mask token)."""
  return isinstance(params, Mapping) and any(
      str(k).startswith(DECODER_PREFIX) or k in PRETRAINING_ONLY for k in params)


def encoder_variables(variables: Mapping[str, Any]) -> Dict[str, Any]:
  """An MAE variable tree without its decoder and pre-training-only params.

  Keeps everything else as it is (TDRL branches and their `batch_stats` included).
  """
  def keep(tree):
    return {k: v for k, v in (tree or {}).items()
            if not str(k).startswith(DECODER_PREFIX) and k not in PRETRAINING_ONLY}
  out = dict(variables)
  out['params'] = keep(variables['params'])
  if 'batch_stats' in variables:
    out['batch_stats'] = keep(variables['batch_stats'])
  return out


def to_classifier(variables: Mapping[str, Any], *, num_patches: Optional[int] = None
                  ) -> Dict[str, Any]:
  """Maps MAE pre-training variables onto a `VisionTransformer` classifier's layout.

  Drops the decoder (and `mask_token`, `distill`); with `num_patches`, adds the classifier's
  learned `pos_embed` parameter, (1, 1 + num_patches, width), initialised from the fixed
  sin-cos table the encoder was trained with. `head` and `fc_norm` are not created: the
  classifier keeps its fresh ones (the trainer's `init_skip`).

  Args:
    variables: {'params': ..., 'batch_stats': ...} of an MAE model (any form).
    num_patches: the classifier's number of patches when it learns its position embedding;
      None when it uses fixed sin-cos embeddings itself.
  """
  out = encoder_variables(variables)
  if num_patches is not None:
    cls = out['params'].get('cls_token')
    if cls is None:
      raise ValueError('the MAE tree has no cls_token; cannot infer the encoder width')
    grid = int(round(num_patches ** 0.5))
    if grid * grid != num_patches:
      raise ValueError(f'position embeddings need a square grid, got {num_patches} patches')
    table = sincos_2d(grid, int(np.shape(cls)[-1]), cls_token=True)[None]
    out['params'] = dict(out['params'], pos_embed=table.astype(np.asarray(cls).dtype))
  return out


def _register_all():
  from repvit_jax.models.registry import register  # pylint: disable=import-outside-toplevel
  # MAE-Lite's ViT-Tiny: 12 heads of 16 channels (not DeiT-Tiny's 3 heads of 64).
  tiny = dict(width=192, depth=12, num_heads=12, decoder_width=96, decoder_depth=1,
              decoder_num_heads=3)
  register('mae_vit_tiny', MaskedAutoencoder, **tiny)
  register('mae_tdrl_vit_tiny', MaskedAutoencoder, tdrl=TDRL(), deploy={'tdrl': None}, **tiny)
  register('mae_vit_base', MaskedAutoencoder, width=768, depth=12, num_heads=12,
           decoder_width=512, decoder_depth=8, decoder_num_heads=16)


_register_all()

__all__ = ['MaskedAutoencoder', 'num_visible', 'random_shuffle', 'mask_from_shuffle',
           'patchify', 'unpatchify', 'is_mae_tree', 'encoder_variables', 'to_classifier']
