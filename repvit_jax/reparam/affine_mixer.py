"""Fuser for RIFormer's affine token mixer: folded into the norm before it, mixer removed.

Training-form block subtree (see `repvit_jax.models.metaformer`):

  params: norm1: {scale (C,), bias (C,)}      the norm whose output the mixer takes
          mixer: {scale (C,), shift (C,)}     mixer(n) = scale * n + shift - n
          ... every other child of the block (layer scales, norm2, mlp) ...

Deploy: the same block without `mixer`, `norm1` replaced by
gamma' = gamma * (scale - 1), beta' = beta * (scale - 1) + shift (`fold_affine_into_norm`),
so that norm1'(x) == mixer(norm1(x)). The other children go through the usual walk.
The affine needs no statistics; GroupNorm has none either.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from repvit_jax.reparam import fuse
from repvit_jax.reparam import tree
from repvit_jax.reparam.tree import Fuser, leaf, register_fuser, subtree

NORM = 'norm1'
MIXER = 'mixer'


def matches(params: Mapping[str, Any]) -> bool:
  """A node with `mixer: {scale, shift}` beside `norm1: {scale, bias}`."""
  mixer, norm = params.get(MIXER), params.get(NORM)
  return (isinstance(mixer, Mapping) and set(mixer) == {'scale', 'shift'} and
          isinstance(norm, Mapping) and set(norm) == {'scale', 'bias'})


def fuse_affine_mixer(params: Mapping[str, Any], stats: Optional[Mapping[str, Any]],
                      path: str):
  """Block subtree -> (block without mixer, norm1 folded; remaining batch_stats or None)."""
  norm = subtree(params, NORM, path, 'the norm before the affine mixer')
  mixer = subtree(params, MIXER, path, 'the affine mixer')
  gamma = leaf(norm, 'scale', f'{path}/{NORM}', ndim=1)
  channels = (gamma.shape[0],)
  beta = leaf(norm, 'bias', f'{path}/{NORM}', channels)
  scale = leaf(mixer, 'scale', f'{path}/{MIXER}', channels)
  shift = leaf(mixer, 'shift', f'{path}/{MIXER}', channels)
  new_gamma, new_beta = fuse.fold_affine_into_norm(gamma, beta, scale, shift, minus_input=True)
  rest = {k: v for k, v in params.items() if k not in (NORM, MIXER)}
  rest_stats = ({k: v for k, v in stats.items() if k not in (NORM, MIXER)}
                if isinstance(stats, Mapping) else None)
  # pylint: disable=protected-access
  new_params, new_stats = tree._walk(rest, rest_stats, path if path != '/' else '')
  new_params[NORM] = {'scale': new_gamma.astype(gamma.dtype), 'bias': new_beta.astype(gamma.dtype)}
  return new_params, new_stats


register_fuser(Fuser('RIFormer affine token mixer', matches, fuse_affine_mixer))
