"""PyTorch checkpoints -> this project's variable trees (and back), for every model family.

    from repvit_jax import convert
    result = convert.convert_checkpoint('vit_tiny.safetensors', 'models/vit_tiny',
                                        model='vit_tiny')
    model, variables = repvit_jax.load_model('models/vit_tiny')   # also init_from=...

or `repvit-convert SRC DST --model NAME`. Sources: timm ViT/DeiT, LeViT,
MobileViT, PoolFormer; the official MAE and MAE-Lite (`{"model": ...}`, `model.` prefix);
mmpretrain RIFormer (training and deploy forms). Files: `.safetensors` and `.npz` without
torch, `.pth`/`.pt`/`.bin` with torch installed. A checkpoint that does not fit the model
raises one `ConversionError` (a ValueError) listing every missing, unexpected and mismatched
key. Models with training-time structure (LeViT's BatchNorms) are filled in their training
form; `repvit_jax.reparameterize` gives the deploy form.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax import io
from repvit_jax.convert import core, family
# Each family module registers its mapping.
from repvit_jax.convert import levit as _levit  # noqa: F401  levit_*
from repvit_jax.convert import metaformer as _metaformer  # noqa: F401  poolformer_*, riformer_*
from repvit_jax.convert import mobilevit as _mobilevit  # noqa: F401  mobilevit_*
from repvit_jax.convert import vit as _vit  # noqa: F401  vit_*, deit_*, tdrl_vit_*, mae_*
from repvit_jax.convert.core import ConversionError, flatten, unflatten
from repvit_jax.convert.family import Plan, family_for
from repvit_jax.convert.readers import (normalize_state_dict, read_state_dict,
                                        write_safetensors)
from repvit_jax.models.registry import create_model, get_registration, list_models
from repvit_jax.reparam import reparameterize

COLLECTIONS = ('params', 'batch_stats')


@dataclasses.dataclass
class Converted:
  """A converted checkpoint: the variables and the `create_model` recipe that runs them."""
  variables: Dict[str, Any]
  plan: Plan

  @property
  def spec(self):
    """The `ModelSpec` of the result (saved as the model directory's model.json)."""
    return self.plan.spec()

  @property
  def model(self):
    return self.spec.build()

  def save(self, directory: str) -> str:
    """Writes a model directory (`repvit_jax.load_model`, `init_from`, `teacher.init_from`)."""
    return io.save_model(directory, self.variables, self.spec)


def target_tree(plan: Plan) -> Dict[str, jax.ShapeDtypeStruct]:
  """Flat {'params/...': ShapeDtypeStruct} of the model `plan` describes (nothing compiled)."""
  model = create_model(plan.name, num_classes=plan.num_classes, deploy=plan.deploy,
                       **plan.overrides)
  fam = family_for(plan.name)
  images = jnp.zeros((1, plan.image_size, plan.image_size, 3), jnp.float32)
  rngs = {name: jax.random.key(0) for name in fam.init_rngs}
  abstract = jax.eval_shape(lambda: model.init(rngs, images, train=False))
  return flatten({k: v for k, v in abstract.items() if k in COLLECTIONS})


def convert_state_dict(state_dict: Mapping[str, Any], model: str, *,
                       num_classes: Optional[int] = None, deploy: Optional[bool] = None,
                       overrides: Optional[Mapping[str, Any]] = None,
                       image_size: Optional[int] = None,
                       ignore: Sequence[str] = ()) -> Converted:
  """Converts a PyTorch state dict into the variables of the registered model `model`.

  Args:
    state_dict: {key: array} (numpy or torch tensors); training-checkpoint wrappers
      (`{"model": ...}`, `{"state_dict": ...}`) and `module.`/`model.` prefixes are removed.
    model: a registered name (`repvit_jax.list_models()`), e.g. 'vit_tiny', 'levit_128s', or
      timm's ('deit_tiny_patch16_224'); the saved input contract is the one the weights were
      published with (`published_contract`).
    num_classes: None infers it from the checkpoint's classifier (0 without one).
    deploy: the form of the result. None: the checkpoint's own form (RIFormer's deploy
      checkpoints, a plain ViT into `tdrl_vit_*`: deploy; LeViT, MobileViT: training).
      True with a training-form checkpoint: converted, then `reparameterize`d.
    overrides: `create_model` overrides (e.g. {'num_heads': 12} for MAE-Lite's ViT-Tiny).
    image_size: the input side of the result. The checkpoint is converted at its own size
      (inferred from its position or bias tables; else the family's default, 224 or 256 for
      MobileViT), then moved to `image_size` by `io.at_image_size`: a learned ViT position
      table is resampled (bicubic, class token kept), other families change their input
      contract; LeViT's bias tables cannot move (ValueError).
    ignore: extra regexes of checkpoint keys to skip.

  Returns:
    `Converted` with `variables` ({'params': ..., 'batch_stats': ...}, numpy float32) and
    the `plan` (name, num_classes, deploy, overrides, image_size, notes).

  Raises:
    ConversionError: the checkpoint does not fit; the message lists every problem.
    ValueError: an unknown model, or a model family without a PyTorch mapping.
  """
  state_dict = normalize_state_dict(state_dict)
  given, model = model, registered_name(model)
  fam = family_for(model)
  plan = fam.plan(model, state_dict, num_classes=num_classes,
                  overrides=dict(overrides or {}), image_size=None)
  plan.ignore.extend(ignore)
  plan.input_changes = published_contract(given)
  if plan.input_changes:
    shown = ', '.join(f'{k} {v}' for k, v in plan.input_changes.items())
    plan.notes.append(f'input contract: {shown} (how {given} was evaluated where published)')
  has_deploy_form = bool(get_registration(model).deploy)
  if deploy and has_deploy_form and not plan.deploy:
    plan.fold = True
    plan.notes.append('converted in training form, then reparameterized (deploy form)')
  elif deploy is False and has_deploy_form and plan.deploy:
    raise ConversionError(f'the checkpoint holds the deploy form of {model}, which cannot be '
                          'turned back into the training form; convert with --deploy')
  elif deploy is not None and not has_deploy_form:
    plan.deploy = bool(deploy)  # one form only: the flag is just recorded
  target = target_tree(plan)
  module = create_model(plan.name, num_classes=plan.num_classes, deploy=plan.deploy,
                        **plan.overrides)
  rules = fam.rules(plan, target, module)
  form = 'deploy' if plan.deploy else 'training'
  flat = core.apply_rules(rules, state_dict, target, ignore=plan.ignore,
                          constants=fam.constants(plan, module),
                          model=f'{plan.name} ({form} form, {plan.num_classes} classes)')
  variables = unflatten(flat)
  if plan.fold:
    # One compiled program: much faster than folding op by op on the host.
    variables = jax.tree.map(np.asarray, jax.jit(reparameterize)(variables))
    plan.deploy = True
  if image_size is not None and int(image_size) != plan.image_size:
    spec, variables = io.at_image_size(plan.spec(), variables, int(image_size))
    resampled = 'pos_embed' in variables.get('params', {})
    plan.notes.append(f'moved from {plan.image_size}x{plan.image_size} to {image_size}x'
                      f'{image_size}' + (' (position table resampled)' if resampled else ''))
    plan.image_size = spec.input.image_size
    variables = jax.tree.map(np.asarray, variables)
  return Converted(variables, plan)


# timm's ViT/DeiT names carry patch size and resolution: 'deit_tiny_patch16_224'.
_TIMM_VIT = re.compile(r'^(?P<name>(?:vit|deit)_(?:tiny|small|base))_patch16_\d+$')


# How published weights were evaluated, where that differs from the registered contract:
# (pattern of the name the user gives, InputSpec fields). timm's pretrained configs resize
# bicubically; timm's own ViTs (augreg) take pixels normalised to [-1, 1]; MAE's fine-tuning
# evaluated at 224 of 256 with bicubic resizing. A bare 'vit_tiny' could be either a timm ViT
# or a DeiT-style checkpoint, so it keeps the registered contract.
_PUBLISHED = (
    (r'^vit_(tiny|small|base)_patch16_\d+', dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                                  eval_crop_fraction=0.9, resize='bicubic')),
    (r'^deit_', dict(eval_crop_fraction=0.9, resize='bicubic')),
    (r'^levit_', dict(eval_crop_fraction=0.9, resize='bicubic')),
    (r'^mobilevit_', dict(eval_crop_fraction=0.9, resize='bicubic')),
    (r'^poolformer_s', dict(eval_crop_fraction=0.9, resize='bicubic')),
    (r'^poolformer_m', dict(eval_crop_fraction=0.95, resize='bicubic')),
    (r'^mae_', dict(eval_crop_fraction=0.875, resize='bicubic')),
)


def published_contract(name: str) -> Dict[str, Any]:
  """InputSpec fields of the evaluation the weights of model `name` (timm's name or a
  registered one) were published with, where they differ from the registered contract."""
  for pattern, fields in _PUBLISHED:
    if re.match(pattern, name):
      registered = get_registration(registered_name(name)).input
      return {k: v for k, v in fields.items() if getattr(registered, k) != v}
  return {}


def registered_name(name: str) -> str:
  """The registered model for `name`, which may be timm's: its pretrained tag dropped
  ('vit_tiny_patch16_224.augreg_in21k_ft_in1k'), ViT/DeiT's patch and resolution suffix too
  ('deit_tiny_patch16_224' -> 'deit_tiny'). An unknown name is returned as given (the
  conversion then lists the known ones)."""
  known = set(list_models())
  base = name.split('.')[0]
  match = _TIMM_VIT.match(base)
  for candidate in (name, base, match['name'] if match else None):
    if candidate in known:
      return candidate
  return name


def convert_checkpoint(src: str, dst: Optional[str] = None, *, model: str,
                       **kwargs) -> Converted:
  """Reads `src` (.safetensors / .npz / .pth), converts it, and writes a model dir to `dst`.

  `model` is a registered name or timm's (`registered_name`); keyword arguments are those of
  `convert_state_dict`.
  """
  result = convert_state_dict(read_state_dict(src), model, **kwargs)
  if dst is not None:
    result.save(dst)
  return result


def to_state_dict(variables: Mapping[str, Any], model: str, *, num_classes: int,
                  deploy: bool = False, overrides: Optional[Mapping[str, Any]] = None,
                  image_size: Optional[int] = None) -> Dict[str, np.ndarray]:
  """The PyTorch state dict (numpy arrays) of our variables: the inverse of the conversion.

  Keys and layouts are those `convert_state_dict` reads (fixed buffers included, BatchNorm
  step counters not). Useful to write test checkpoints and to hand weights to PyTorch code.
  """
  fam = family_for(model)
  plan = Plan(model, int(num_classes), bool(deploy), dict(overrides or {}),
              int(image_size or get_registration(model).input.image_size))
  module = create_model(model, num_classes=plan.num_classes, deploy=plan.deploy,
                        **plan.overrides)
  flat = flatten({k: v for k, v in variables.items() if k in COLLECTIONS})
  flat = {k: np.asarray(v) for k, v in flat.items()}
  rules = fam.rules(plan, flat, module)
  return core.invert_rules(rules, flat, fam.constants(plan, module))


__all__ = ['Converted', 'ConversionError', 'convert_state_dict', 'convert_checkpoint',
           'registered_name', 'published_contract',
           'to_state_dict', 'target_tree', 'read_state_dict', 'write_safetensors',
           'normalize_state_dict', 'Plan', 'core', 'family']
