"""PoolFormer and RIFormer checkpoints: timm, mmpretrain and the original PoolFormer layouts.

Our MetaFormer numbers blocks over all stages (`blocks_<k>`) and names the stage transitions
`downsample_<s>`; the sources number (stage, block):

  ours              timm (poolformer_*)           mmpretrain (`backbone.` + ...) / original
  stem              stem.conv                     patch_embed.proj
  downsample_<s>    stages.<s>.downsample.conv    network.<2s-1>.proj
  blocks_<k>        stages.<s>.blocks.<j>         network.<2s>.<j>
    norm1, norm2    norm1, norm2                  norm1 (deploy: norm_reparam), norm2
    mixer           -                             token_mixer.affine (RIFormer: a depthwise
                                                  1x1 conv, weight (C,1,1,1) -> scale (C,),
                                                  bias -> shift)
    layer_scale_1   layer_scale1.scale            layer_scale_1
    mlp/fc1, fc2    mlp.fc1, mlp.fc2              mlp.fc1, mlp.fc2   (1x1 convs -> dense)
  norm              head.norm                     backbone.norm<2S-2> / norm
  head              head.fc                       head.fc / head

RIFormer checkpoints come in the training form (norm1 + token_mixer) or the deploy form
(norm_reparam); the form is read from the keys. Note: timm applies the final norm *after*
global pooling (a LayerNorm over channels, eps 1e-6) where the original PoolFormer,
mmpretrain and our MetaFormer apply a one-group GroupNorm to the feature map before pooling;
the weights are the same tensors, the last step of the function is not: timm checkpoints set
the model option `head_norm='pooled'` when the model has it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import List, Mapping

import flax.linen as nn
import numpy as np

from repvit_jax.convert.core import (CONV, LINEAR, SAME, Rule, conv1x1_to_dense,
                                     reshape_to)
from repvit_jax.convert.family import Family, Plan, register_family
from repvit_jax.models.registry import get_registration

LAYOUTS = ('timm', 'mmpretrain', 'original')
# The MetaFormer option that reproduces timm's head (pool, then LayerNorm over channels with
# eps 1e-6), set automatically for timm checkpoints when the model has it.
TIMM_HEAD_NORM = ('head_norm', 'pooled')


def detect_layout(state_dict: Mapping[str, np.ndarray], default: str = 'timm') -> str:
  """'timm', 'mmpretrain' or 'original' from the stem's key (`default` when none is there)."""
  if 'backbone.patch_embed.proj.weight' in state_dict:
    return 'mmpretrain'
  if 'patch_embed.proj.weight' in state_dict:
    return 'original'
  if 'stem.conv.weight' in state_dict:
    return 'timm'
  return default


def _stage_of(depths):
  """Global block index k -> (stage s, index j in the stage)."""
  out = []
  for s, depth in enumerate(depths):
    out.extend((s, j) for j in range(depth))
  return out


def metaformer_rules(target, depths, layout: str, deploy: bool) -> List[Rule]:
  if layout not in LAYOUTS:
    raise ValueError(f'unknown MetaFormer checkpoint layout {layout!r}; known: {LAYOUTS}')
  where = _stage_of(depths)
  num_stages = len(depths)
  pre = 'backbone.' if layout == 'mmpretrain' else ''
  rules = []
  for path, leaf in target.items():
    collection, *parts = path.split('/')
    if collection != 'params':
      raise ValueError(f'MetaFormer has no {collection} collection (found {path})')
    top, rest = parts[0], parts[1:]
    transform = SAME
    if top == 'stem':
      module = 'stem.conv' if layout == 'timm' else f'{pre}patch_embed.proj'
      key, transform = f'{module}.{_weight(rest[-1])}', (CONV if rest[-1] == 'kernel' else SAME)
    elif top.startswith('downsample_'):
      s = int(top.split('_')[1])
      module = (f'stages.{s}.downsample.conv' if layout == 'timm'
                else f'{pre}network.{2 * s - 1}.proj')
      key, transform = f'{module}.{_weight(rest[-1])}', (CONV if rest[-1] == 'kernel' else SAME)
    elif top.startswith('blocks_'):
      s, j = where[int(top.split('_')[1])]
      block = f'stages.{s}.blocks.{j}' if layout == 'timm' else f'{pre}network.{2 * s}.{j}'
      name = rest[0]
      if name in ('layer_scale_1', 'layer_scale_2'):
        key = (f'{block}.layer_scale{name[-1]}.scale' if layout == 'timm'
               else f'{block}.{name}')
      elif name == 'mixer':
        key = f'{block}.token_mixer.affine.{"weight" if rest[1] == "scale" else "bias"}'
        if rest[1] == 'scale':
          transform = reshape_to((int(np.prod(leaf.shape)), 1, 1, 1))
      elif name == 'mlp':
        key = f'{block}.mlp.{rest[1]}.{_weight(rest[2])}'
        if rest[2] == 'kernel':
          transform = conv1x1_to_dense()
      elif name in ('norm1', 'norm2'):
        module = 'norm_reparam' if (name == 'norm1' and deploy and layout != 'timm') else name
        key = f'{block}.{module}.{_weight(rest[1])}'
      else:
        raise ValueError(f'no PyTorch name for MetaFormer leaf {path}')
    elif top == 'norm':
      module = {'timm': 'head.norm', 'mmpretrain': f'backbone.norm{2 * num_stages - 2}',
                'original': 'norm'}[layout]
      key = f'{module}.{_weight(rest[-1])}'
    elif top == 'head':
      module = 'head' if layout == 'original' else 'head.fc'
      key = f'{module}.{_weight(rest[-1])}'
      if rest[-1] == 'kernel':
        transform = LINEAR
    else:
      raise ValueError(f'no PyTorch name for MetaFormer leaf {path}')
    rules.append(Rule(path, key, transform))
  return rules


def _weight(leaf: str) -> str:
  return 'bias' if leaf == 'bias' else 'weight'


class _MetaFormerFamily(Family):
  default_layout = 'timm'

  def infer_num_classes(self, state_dict) -> int:
    for key in ('head.fc.weight', 'head.weight'):
      if key in state_dict and np.ndim(state_dict[key]) == 2:
        return int(np.shape(state_dict[key])[0])
    return 0

  def plan(self, model_name, state_dict, *, num_classes, overrides, image_size):
    plan = super().plan(model_name, state_dict, num_classes=num_classes,
                        overrides=overrides, image_size=image_size)
    plan.source = detect_layout(state_dict, self.default_layout)
    plan.notes.append(f'{plan.source} key layout')
    return plan

  def rules(self, plan: Plan, target, model: nn.Module) -> List[Rule]:
    return metaformer_rules(target, tuple(model.depths), plan.source or self.default_layout,
                            plan.deploy)


class PoolFormerFamily(_MetaFormerFamily):
  name = 'poolformer'
  prefixes = ('poolformer_',)

  def plan(self, model_name, state_dict, *, num_classes, overrides, image_size):
    plan = super().plan(model_name, state_dict, num_classes=num_classes,
                        overrides=overrides, image_size=image_size)
    if plan.source == 'timm':
      fields = {f.name for f in dataclasses.fields(get_registration(model_name).module)}
      if TIMM_HEAD_NORM[0] in fields:
        plan.overrides.setdefault(*TIMM_HEAD_NORM)
        plan.notes.append(f'{TIMM_HEAD_NORM[0]} = {TIMM_HEAD_NORM[1]!r} (timm normalises the '
                          'pooled features)')
      else:
        plan.notes.append('timm normalises after global pooling (LayerNorm, eps 1e-6); this '
                          'model normalises the feature map before pooling (GroupNorm, as the '
                          'PoolFormer paper and mmpretrain): the logits differ')
    return plan


class RIFormerFamily(_MetaFormerFamily):
  """riformer_*: mmpretrain checkpoints (`backbone.` / `head.fc.`), training or deploy form."""
  name = 'riformer'
  prefixes = ('riformer_',)
  default_layout = 'mmpretrain'

  def plan(self, model_name, state_dict, *, num_classes, overrides, image_size):
    plan = super().plan(model_name, state_dict, num_classes=num_classes,
                        overrides=overrides, image_size=image_size)
    if any(re.search(r'(^|\.)norm_reparam\.', k) for k in state_dict):
      plan.deploy = True
      plan.notes.append('deploy form (the checkpoint has norm_reparam)')
    return plan


register_family(PoolFormerFamily())
register_family(RIFormerFamily())

__all__ = ['PoolFormerFamily', 'RIFormerFamily', 'detect_layout', 'metaformer_rules', 'LAYOUTS']
