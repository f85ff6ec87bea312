"""ViT / DeiT (timm) and MAE / MAE-Lite (official PyTorch) checkpoints.

Our ViT keeps timm's names, so the mapping is timm's naming convention (`blocks.3` for
`blocks_3`, `weight` for `kernel`/`scale`) plus one rename: the patch embedding conv is
`patch_embed.proj` in PyTorch. Linear weights are transposed, the patch conv goes OIHW -> HWIO;
qkv rows are (3, heads, head_dim) in both. MAE checkpoints add the decoder under the same
`decoder_*` names our MAE uses, and two fixed sin-cos tables (`pos_embed`,
`decoder_pos_embed`), which our MAE computes instead of storing: they are checked, not copied.

Inferred from the state dict: `num_classes` (rows of `head.weight`, 0 without a head),
`global_pool='avg'` when the checkpoint has `fc_norm` and no `norm` (MAE fine-tuning), the
input size (from the length of `pos_embed`), and for `tdrl_*` models the deploy form unless
the checkpoint holds TDRL branches. The number of heads does not show in any shape: MAE-Lite's
ViT-Tiny has 12 (`--set num_heads=12`), timm's and DeiT's 3.
"""

from __future__ import annotations

import math
import re
from typing import Any, List, Mapping, Optional

import flax.linen as nn
import numpy as np

from repvit_jax.convert.core import Constant, Rule, rules_from_target, timm_key
from repvit_jax.convert.family import COMMON_IGNORE, Family, Plan, register_family
from repvit_jax.layers.posemb import sincos_2d
from repvit_jax.models.registry import get_registration

RENAMES = ((r'^patch_embed\.', 'patch_embed.proj.'),)
_TDRL_KEY = re.compile(r'\.(skip|branch\.\d+|rectify_bn)\.')


def _field(model_name: str, overrides: Mapping[str, Any], key: str, default: Any) -> Any:
  if key in overrides:
    return overrides[key]
  return get_registration(model_name).kwargs.get(key, default)


def _image_size(state_dict, model_name, overrides, key='pos_embed') -> Optional[int]:
  """The input side implied by a (1, 1 + g*g, D) position table, or None."""
  if key not in state_dict:
    return None
  tokens = int(np.shape(state_dict[key])[1]) - 1
  grid = int(round(math.sqrt(max(tokens, 0))))
  if grid * grid != tokens:
    return None
  return grid * int(_field(model_name, overrides, 'patch_size', 16))


class ViTFamily(Family):
  """vit_*, deit_*, tdrl_vit_*: timm's VisionTransformer."""
  name = 'vit'
  prefixes = ('vit_', 'deit_', 'tdrl_vit_')

  def plan(self, model_name, state_dict, *, num_classes, overrides, image_size):
    plan = super().plan(model_name, state_dict, num_classes=num_classes,
                        overrides=overrides, image_size=image_size)
    if ('global_pool' not in plan.overrides and 'fc_norm.weight' in state_dict and
        'norm.weight' not in state_dict):
      plan.overrides['global_pool'] = 'avg'
      plan.notes.append("global_pool = 'avg' (the checkpoint has fc_norm and no norm)")
    return _finish_plan(plan, state_dict, model_name, image_size)

  def rules(self, plan: Plan, target, model: nn.Module) -> List[Rule]:
    return rules_from_target(target, lambda path: timm_key(path, RENAMES))


def _finish_plan(plan: Plan, state_dict, model_name: str, image_size) -> Plan:
  """The steps every ViT-like plan ends with: TDRL branches, and the image size the
  checkpoint's position embedding implies when the caller gave none."""
  _plan_tdrl(plan, state_dict)
  if image_size is None:
    size = _image_size(state_dict, model_name, plan.overrides)
    if size:
      plan.image_size = size
  return plan


class MAEFamily(Family):
  """mae_*: the official MAE pre-training model (MAE-Lite's too: `{"model": ...}`, `model.`)."""
  name = 'mae'
  prefixes = ('mae_',)
  init_rngs = ('params', 'dropout', 'mask')

  def plan(self, model_name, state_dict, *, num_classes, overrides, image_size):
    # A pre-training model has no head; `num_classes` is kept only for the model recipe.
    plan = Plan(model_name, int(num_classes or 0), False, dict(overrides),
                int(image_size or 224), list(COMMON_IGNORE))
    return _finish_plan(plan, state_dict, model_name, image_size)

  def rules(self, plan: Plan, target, model: nn.Module) -> List[Rule]:
    return rules_from_target(target, lambda path: timm_key(path, RENAMES))

  def constants(self, plan: Plan, model: nn.Module):
    grid = plan.image_size // int(model.patch_size)
    return [Constant('pos_embed', sincos_2d(grid, int(model.width), cls_token=True)[None]),
            Constant('decoder_pos_embed',
                     sincos_2d(grid, int(model.decoder_width), cls_token=True)[None])]


def _plan_tdrl(plan: Plan, state_dict) -> None:
  """A tdrl_* model takes a plain checkpoint in its deploy form (= the vanilla ViT)."""
  if get_registration(plan.name).kwargs.get('tdrl') is None:
    return
  if not any(_TDRL_KEY.search(k) for k in state_dict):
    plan.deploy = True
    plan.notes.append('deploy form (the checkpoint has no TDRL branches: it is a plain ViT)')


register_family(ViTFamily())
register_family(MAEFamily())

__all__ = ['ViTFamily', 'MAEFamily', 'RENAMES']
