"""What a model family tells the converter: how to read a state dict into one of its models.

A `Family` recognises its registered model names, decides the model's build arguments from the
state dict (`plan`: classes from the head's shape, the deploy form, the input size that shapes
resolution-dependent tables), and gives one `Rule` per leaf of the target variable tree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import numpy as np

from repvit_jax.convert.core import Constant, Rule
from repvit_jax.models.registry import get_registration
from repvit_jax.models.spec import ModelSpec


@dataclasses.dataclass
class Plan:
  """The model one conversion builds, and what it may ignore in the state dict.

  Attributes:
    name: registered model name. num_classes, overrides: `create_model` arguments.
    deploy: the form of the tree the checkpoint fills (the form of the checkpoint itself).
    fold: `reparameterize` the converted tree afterwards (a training-form checkpoint asked
      for in deploy form); the saved model is then the deploy form.
    image_size: side of the square input used to shape the target tree (position tables,
      attention-bias tables depend on it).
    ignore: regexes of PyTorch keys that are present but not needed.
    notes: lines for the user (what was inferred).
    source: the key layout of the checkpoint when a family reads several ('timm', ...).
    input_changes: InputSpec fields the weights were published with where they differ from
      the registered contract (timm's bicubic resize and crop, say: `published_contract`).
  """
  name: str
  num_classes: int
  deploy: bool
  overrides: Dict[str, Any]
  image_size: int
  ignore: List[str] = dataclasses.field(default_factory=list)
  notes: List[str] = dataclasses.field(default_factory=list)
  fold: bool = False
  source: str = ''
  input_changes: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def spec(self) -> ModelSpec:
    """The converted model's `ModelSpec`: the registered input contract with the weights'
    published evaluation (`input_changes`), at `image_size`."""
    contract = dataclasses.replace(get_registration(self.name).input, **self.input_changes)
    return ModelSpec.registered(self.name, num_classes=self.num_classes, deploy=self.deploy,
                                overrides=self.overrides,
                                input=dataclasses.replace(contract, image_size=self.image_size))


# Keys no Flax model needs: PyTorch's BatchNorm step counter.
COMMON_IGNORE = (r'(^|\.)num_batches_tracked$',)


class Family:
  """Base class; subclasses set `name`, `prefixes` and implement `rules`."""
  name: str = ''
  prefixes: Tuple[str, ...] = ()
  init_rngs: Tuple[str, ...] = ('params', 'dropout')

  def matches(self, model_name: str) -> bool:
    return model_name.startswith(self.prefixes)

  def plan(self, model_name: str, state_dict: Mapping[str, np.ndarray], *,
           num_classes: Optional[int], overrides: Mapping[str, Any],
           image_size: Optional[int]) -> Plan:
    """Build arguments and the checkpoint's form (`Plan.deploy`).

    The default: classes from `head_keys`, the training form, the family's input size.
    """
    notes = []
    if num_classes is None:
      num_classes = self.infer_num_classes(state_dict)
      notes.append(f'num_classes = {num_classes} (from the head in the checkpoint)')
    return Plan(model_name, int(num_classes), False, dict(overrides),
                int(image_size or get_registration(model_name).input.image_size), list(COMMON_IGNORE), notes)

  head_keys: Tuple[str, ...] = ('head.weight',)

  def infer_num_classes(self, state_dict: Mapping[str, np.ndarray]) -> int:
    for key in self.head_keys:
      if key in state_dict:
        return int(np.shape(state_dict[key])[0])
    return 0

  def rules(self, plan: Plan, target: Mapping[str, Any], model: nn.Module) -> List[Rule]:
    raise NotImplementedError

  def constants(self, plan: Plan, model: nn.Module) -> Sequence[Constant]:
    del plan, model
    return ()


_FAMILIES: List[Family] = []


def register_family(family: Family) -> Family:
  _FAMILIES.append(family)
  return family


def family_for(model_name: str) -> Family:
  """The family converting into `model_name`; ValueError naming the supported prefixes."""
  for family in _FAMILIES:
    if family.matches(model_name):
      return family
  known = sorted(p for f in _FAMILIES for p in f.prefixes)
  raise ValueError(f'no PyTorch conversion for model {model_name!r}; supported families: '
                   f'{", ".join(p + "*" for p in known)}')


def families() -> List[Family]:
  return list(_FAMILIES)


__all__ = ['Plan', 'Family', 'COMMON_IGNORE', 'register_family', 'family_for', 'families']
