"""Intermediate feature maps for dense heads (segmentation, detection), as timm's
`forward_intermediates` and `feature_info`.

Every family names the submodules whose outputs are its features (`Module.feature_taps`):
each block of a ViT (tokens on the patch grid, class token dropped), each stage of LeViT,
MobileViT and the MetaFormers (PoolFormer, RIFormer). `intermediates` runs the model once and
captures those outputs with Flax's `capture_intermediates`, so the forward pass is the
model's own (training form or deploy form alike) and nothing is recomputed.

    model, variables = repvit_jax.load_model('runs/demo/deploy')
    maps = repvit_jax.models.features.intermediates(model, variables, images)   # [(B, h, w, C), ...]
    repvit_jax.models.features.feature_info(model, 224)  # [{'module', 'channels', 'reduction'}, ...]
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp


class Tap(NamedTuple):
  """One feature: the output of the top-level submodule `module`.

  `grid` (h, w) turns a token sequence (B, prefix + h * w, C) into a map (B, h, w, C) after
  dropping the `prefix` leading tokens (a class token); None: the output is already a map.
  """
  module: str
  grid: Optional[Tuple[int, int]] = None
  prefix: int = 0


def taps(model: nn.Module, height: int, width: int) -> List[Tap]:
  """The model's feature taps for (height, width) images.

  Raises:
    ValueError: the model has no features for dense heads (e.g. a masked autoencoder).
  """
  method = getattr(model, 'feature_taps', None)
  if method is None:
    raise ValueError(f'{type(model).__name__} has no feature taps; features are defined for '
                     'ViT, LeViT, MobileViT and the MetaFormers (PoolFormer, RIFormer)')
  return method(height, width)


def _select(all_taps: List[Tap], indices: Union[None, int, Sequence[int]]) -> List[Tap]:
  """timm's convention: None is every tap, n the last n, a sequence those (negative from the
  end)."""
  if indices is None:
    return list(all_taps)
  count = len(all_taps)
  chosen = range(count - indices, count) if isinstance(indices, int) else indices
  picked = []
  for i in chosen:
    if not -count <= i < count:
      raise ValueError(f'feature index {i} out of range: this model has {count} taps')
    picked.append(all_taps[i])
  return picked


def intermediates(model: nn.Module, variables: Dict[str, Any], images: jax.Array, *,
                  indices: Union[None, int, Sequence[int]] = None) -> List[jax.Array]:
  """Feature maps of `images` (B, H, W, 3), in eval mode.

  Args:
    model, variables: any registered model (training or deploy form) and its variables.
    images: (B, H, W, 3), prepared as the model's input contract says.
    indices: None for every tap, an int n for the last n, or a sequence of tap indices.

  Returns:
    One (B, h, w, C) array per selected tap, in order (the model's compute dtype).
  """
  height, width = images.shape[1:3]
  chosen = _select(taps(model, height, width), indices)
  wanted = {tap.module for tap in chosen}

  def capture(module, method_name):
    return method_name == '__call__' and len(module.path) == 1 and module.path[0] in wanted

  _, state = model.apply(variables, images, train=False, capture_intermediates=capture,
                         mutable=['intermediates'])
  captured = state['intermediates']
  maps = []
  for tap in chosen:
    out = captured[tap.module]['__call__'][0]
    if tap.grid is not None:
      out = out[:, tap.prefix:].reshape(out.shape[0], *tap.grid, out.shape[-1])
    maps.append(out)
  return maps


def feature_info(model: nn.Module, image_size: Union[int, Tuple[int, int]]
                 ) -> List[Dict[str, Any]]:
  """timm's `feature_info`: for each tap, {'index', 'module', 'channels', 'reduction'}, from
  the abstract shapes (nothing is computed)."""
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  shapes = jax.eval_shape(lambda v, x: intermediates(model, v, x), variables, images)
  return [{'index': i, 'module': tap.module, 'channels': int(shape.shape[-1]),
           'reduction': height // int(shape.shape[1])}
          for i, (tap, shape) in enumerate(zip(taps(model, height, width), shapes))]


__all__ = ['Tap', 'taps', 'intermediates', 'feature_info']
