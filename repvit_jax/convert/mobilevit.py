"""MobileViT checkpoints (timm's `mobilevit_*`, a ByobNet) into the training form.

timm names -> ours:
  stem.{conv, bn}                                stem/{conv, bn}
  stages.<i>.<j>.conv1_1x1 / conv2_kxk / conv3_1x1
                                                 stages_<i>_blocks_<j>/expand / dw / project
  stages.<i>.<n>.{conv_kxk, conv_1x1, norm, conv_proj, conv_fusion}
                                                 stages_<i>_mobilevit/{...}, n = the number of
                                                 inverted residual blocks of the stage
  stages.<i>.<n>.transformer.<k>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
                                                 stages_<i>_mobilevit/transformer_<k>/{norm1,
                                                 attn/qkv, attn/proj, norm2, fc1, fc2}
  final_conv.{conv, bn}                          final_conv/{conv, bn}
  head.fc                                        head
Depthwise conv weights (C, 1, 3, 3) become HWIO (3, 3, 1, C), like every other conv.
"""

from __future__ import annotations

import re
from typing import List

import flax.linen as nn

from repvit_jax.convert.core import Rule, rules_from_target, timm_key
from repvit_jax.convert.family import Family, Plan, register_family

_BLOCK_NAMES = {'expand': 'conv1_1x1', 'dw': 'conv2_kxk', 'project': 'conv3_1x1'}


class MobileViTFamily(Family):
  name = 'mobilevit'
  prefixes = ('mobilevit_',)
  head_keys = ('head.fc.weight',)

  def rules(self, plan: Plan, target, model: nn.Module) -> List[Rule]:
    depths = [int(model.stage_depths[i]) if i < 2 else 1 for i in range(len(model.channels))]

    def key_fn(path):
      key, transform = timm_key(path)
      match = re.match(r'^stages_(\d+)_blocks\.(\d+)\.(expand|dw|project)\.', key)
      if match:
        stage, block, part = match.groups()
        key = f'stages.{stage}.{block}.{_BLOCK_NAMES[part]}.' + key[match.end():]
      match = re.match(r'^stages_(\d+)_mobilevit\.', key)
      if match:
        stage = int(match.group(1))
        rest = key[match.end():]
        rest = re.sub(r'^transformer\.(\d+)\.(fc\d)\.', r'transformer.\1.mlp.\2.', rest)
        key = f'stages.{stage}.{depths[stage]}.{rest}'
      key = re.sub(r'^head\.', 'head.fc.', key)
      return key, transform

    return rules_from_target(target, key_fn)


register_family(MobileViTFamily())

__all__ = ['MobileViTFamily']
