"""Model registry: names -> (module class, configuration), and `create_model`.

A registered model has a training form and a deploy form. The deploy form is the same module
class with `deploy` overrides applied (for `tdrl_vit_tiny`: `tdrl=None`, which *is* `vit_tiny`),
and its variables are what `repvit_jax.reparameterize` makes of the training form's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Type

import flax.linen as nn
import jax.numpy as jnp

from repvit_jax.models.inputs import InputSpec


@dataclasses.dataclass(frozen=True)
class Registration:
  """One registered model: its module class, constructor arguments, deploy overrides, and
  the input contract of its published recipe (as timm's `pretrained_cfg`)."""
  name: str
  module: Type[nn.Module]
  kwargs: Mapping[str, Any]
  deploy: Mapping[str, Any]
  input: InputSpec


_MODELS: Dict[str, Registration] = {}


def register(name: str, module: Type[nn.Module], *, deploy: Mapping[str, Any] | None = None,
             input: InputSpec = InputSpec(), **kwargs) -> None:  # pylint: disable=redefined-builtin
  """Registers `name` as `module(**kwargs)`; `deploy` overrides give its deploy form; `input`
  is how its ImageNet recipe feeds it (224, ImageNet mean/std, unless given)."""
  if name in _MODELS:
    raise ValueError(f'model {name!r} is registered twice')
  _MODELS[name] = Registration(name, module, dict(kwargs), dict(deploy or {}), input)


def list_models() -> List[str]:
  """All registered model names, sorted."""
  return sorted(_MODELS)


def get_registration(name: str) -> Registration:
  """A registered model's entry; an unknown name raises ValueError listing known ones."""
  if name not in _MODELS:
    raise ValueError(f'unknown model {name!r}; known models: {", ".join(list_models())}')
  return _MODELS[name]


def create_model(name: str, *, num_classes: int = 1000, deploy: bool = False,
                 **overrides) -> nn.Module:
  """Builds a registered model.

  Args:
    name: a registered name (see `list_models()`), e.g. 'tdrl_vit_tiny'.
    num_classes: classes of the classification head (0: return pooled features).
    deploy: build the deploy form, the module whose variables `reparameterize` produces.
    **overrides: module fields to change, e.g. `depth=6`, `drop_path_rate=0.1`. A field that
      holds a config dataclass (such as `tdrl`) takes a mapping of its fields to change.

  Returns:
    An unbound flax.linen Module; call `.init(rngs, images, train=False)`.

  Raises:
    ValueError: unknown name, or an override that is not a field of the module.
  """
  spec = get_registration(name)
  kwargs = dict(spec.kwargs)
  kwargs['num_classes'] = num_classes
  fields = {f.name: f for f in dataclasses.fields(spec.module) if f.init}
  for key, value in overrides.items():
    if key not in fields or key in ('parent', 'name'):
      known = sorted(k for k in fields if k not in ('parent', 'name'))
      raise ValueError(f'{name} has no option {key!r}; its options are: {", ".join(known)}')
    if key == 'dtype' and isinstance(value, str):
      value = _dtype(value, name)
    kwargs[key] = _merge(kwargs.get(key, fields[key].default), value, f'{name}.{key}')
  if deploy:
    kwargs.update(spec.deploy)
  return spec.module(**kwargs)


COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16', 'float64')


def _dtype(value: str, name: str):
  """'bfloat16' (as config files give it) -> jnp.bfloat16."""
  if value not in COMPUTE_DTYPES:
    raise ValueError(f'{name}: dtype must be one of {", ".join(COMPUTE_DTYPES)}, got {value!r}')
  return jnp.dtype(value)


def _merge(current: Any, value: Any, where: str) -> Any:
  """Applies an override: mappings update config dataclasses field by field."""
  if isinstance(value, Mapping):
    value = {k: _freeze(v) for k, v in value.items()}
    if dataclasses.is_dataclass(current):
      known = {f.name for f in dataclasses.fields(current)}
      unknown = sorted(set(value) - known)
      if unknown:
        raise ValueError(f'{where} has no option(s) {unknown}; its options are: '
                         f'{", ".join(sorted(known))}')
      return dataclasses.replace(current, **value)
    if current is None:
      raise ValueError(f'{where} is off for this model; choose a model that has it '
                       f'(for TDRL: a tdrl_* model)')
  return _freeze(value)


def _freeze(value: Any) -> Any:
  """Lists (as config files give them) become tuples, so modules stay hashable."""
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value
