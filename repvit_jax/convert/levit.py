"""LeViT checkpoints (timm's `levit_*`) into the training form (every linear with its BN).

timm names -> ours:
  stem.conv<i>.{linear, bn}                      stem/conv<i>/{conv, bn}
  stages.<s>.blocks.<j>.attn.qkv.{linear, bn}    stages_<s>/blocks_<j>/attn/qkv/{linear, bn}
  ....attn.proj.ln.{linear, bn}                  .../attn/proj/{linear, bn}
  ....mlp.ln1 / ln2                              .../mlp/fc1 / fc2
  stages.<s>.downsample.attn_downsample.{kv, q.ln, proj.ln, attention_biases}
                                                 stages_<s>/downsample/attn/{kv, q, proj, ...}
  head.{bn, linear}, head_dist.{bn, linear}      head/cls/{pre_bn, linear}, head/dist/...
Both keep qkv per head as [q | k | v] (kv as [k | v]) and the bias table as (heads, R * R)
indexed by |dy| * R + |dx|, so only Linear/conv layouts change. Older timm and the official
code also store `attention_bias_idxs`; it is checked against our index table. A checkpoint
without `head_dist` converts into `distillation=False`; the input size follows from the
first stage's bias table (14 x 14 tokens: 224).
"""

from __future__ import annotations

import math
from typing import List

import flax.linen as nn
import numpy as np

from repvit_jax.convert.core import Constant, Rule, rules_from_target, timm_key
from repvit_jax.convert.family import Family, Plan, register_family
from repvit_jax.models.levit import bias_index

RENAMES = (
    (r'^stem\.(conv\d)\.conv\.', r'stem.\1.linear.'),
    (r'\.attn\.proj\.(linear|bn)\.', r'.attn.proj.ln.\1.'),
    (r'\.downsample\.attn\.', '.downsample.attn_downsample.'),
    (r'\.attn_downsample\.q\.(linear|bn)\.', r'.attn_downsample.q.ln.\1.'),
    (r'\.mlp\.fc1\.', '.mlp.ln1.'),
    (r'\.mlp\.fc2\.', '.mlp.ln2.'),
    (r'^head\.cls\.', 'head.'),
    (r'^head\.dist\.', 'head_dist.'),
    (r'^(head|head_dist)\.pre_bn\.', r'\1.bn.'),
)


class LeViTFamily(Family):
  name = 'levit'
  prefixes = ('levit_',)
  head_keys = ('head.linear.weight',)

  def plan(self, model_name, state_dict, *, num_classes, overrides, image_size):
    plan = super().plan(model_name, state_dict, num_classes=num_classes,
                        overrides=overrides, image_size=image_size)
    if ('distillation' not in plan.overrides and plan.num_classes and
        'head.linear.weight' in state_dict and 'head_dist.linear.weight' not in state_dict):
      plan.overrides['distillation'] = False
      plan.notes.append('distillation = False (the checkpoint has no head_dist)')
    bias = state_dict.get('stages.0.blocks.0.attn.attention_biases')
    if image_size is None and bias is not None:
      side = int(round(math.sqrt(np.shape(bias)[1])))
      if side * side == np.shape(bias)[1]:
        plan.image_size = side * 16
    # Index buffers are derived from the resolution; checked by `constants`.
    return plan

  def rules(self, plan: Plan, target, model: nn.Module) -> List[Rule]:
    return rules_from_target(target, lambda path: timm_key(path, RENAMES))

  def constants(self, plan: Plan, model: nn.Module):
    """`attention_bias_idxs` of older checkpoints: (Nq, Nk) indices, checked, never written."""
    out = []
    res = -(-plan.image_size // 16)
    for s, depth in enumerate(model.depths):
      if s > 0:
        out.append(Constant(f'stages.{s}.downsample.attn_downsample.attention_bias_idxs',
                            bias_index((res, res), 2), atol=0, write=False))
        res = (res - 1) // 2 + 1
      for j in range(depth):
        out.append(Constant(f'stages.{s}.blocks.{j}.attn.attention_bias_idxs',
                            bias_index((res, res), 1), atol=0, write=False))
    return out


register_family(LeViTFamily())

__all__ = ['LeViTFamily', 'RENAMES']
