"""`ModelSpec`: what a set of weights is and how to feed it, in one JSON-able description.

    spec = ModelSpec.from_config(config, num_classes)   # the trainer's student
    model = spec.build()                                 # flax module (training form)
    deploy = spec.deploy_form()                          # what `reparameterize` produces
    json.dump(deploy.to_json(), f)                       # model.json, checkpoint metadata
    spec = ModelSpec.from_json(record)

A spec names a registered model, its head size, its module overrides and its form (training or
deploy), and carries the input contract (`InputSpec`: image size, mean/std, pixel range, eval
resize and crop) and the compute dtype it was trained in. The tasks build their models from it,
`io` saves it into every model directory and checkpoint, and `export`, `convert` and `analyze`
read it back, so a directory alone says what it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn

from repvit_jax.models.inputs import InputSpec
from repvit_jax.models.registry import COMPUTE_DTYPES, create_model, get_registration

#: model.json / checkpoint metadata format. 1: v1's model.json (no input contract).
FORMAT = 2


def _plain(value: Any) -> Any:
  """Config values as JSON data: mappings -> dicts, tuples -> lists, numpy scalars -> numbers."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
    return value.item()
  return value


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model with its head, overrides, form, input contract and dtypes.

  Attributes:
    name: registered model name (`repvit_jax.list_models()`).
    num_classes: rows of the classification head (0: pooled features).
    overrides: module fields that differ from the registered ones (JSON data; no `dtype`).
    deploy: the deploy form (after `reparameterize`) rather than the training form.
    input: the input contract (`InputSpec`).
    dtype: compute dtype `build()` uses ('float32' or 'bfloat16').
    trained_dtype: the compute dtype of training, recorded for the reader.
    class_names: the name of each output class, in order (() when unknown): what a copied
      model directory needs to say what it predicts.
  """
  name: str
  num_classes: int = 1000
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  deploy: bool = False
  input: InputSpec = InputSpec()
  dtype: str = 'float32'
  trained_dtype: str = 'float32'
  class_names: Tuple[str, ...] = ()

  def __post_init__(self):
    get_registration(self.name)       # an unknown name fails here, listing the known ones
    object.__setattr__(self, 'class_names', tuple(str(n) for n in self.class_names))
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(f'ModelSpec.class_names has {len(self.class_names)} names for '
                       f'{self.num_classes} classes')
    if 'dtype' in self.overrides:
      raise ValueError('ModelSpec.overrides holds no dtype: give dtype= (compute dtype) instead')
    for field in ('dtype', 'trained_dtype'):
      if getattr(self, field) not in COMPUTE_DTYPES:
        raise ValueError(f'ModelSpec.{field} must be one of {COMPUTE_DTYPES}, got '
                         f'{getattr(self, field)!r}')

  # -- building ----------------------------------------------------------------------------

  def build(self, **changes) -> nn.Module:
    """The flax module; `changes` override module fields on top of the spec's."""
    overrides = dict(self.overrides, dtype=self.dtype)
    overrides.update(changes)
    return create_model(self.name, num_classes=self.num_classes, deploy=self.deploy,
                        **overrides)

  def deploy_form(self) -> 'ModelSpec':
    """The spec of the deploy form: float32, and without the overrides the deploy form
    replaces (a TDRL model's `tdrl` block, RIFormer's `mixer`)."""
    replaced = get_registration(self.name).deploy
    overrides = {k: v for k, v in self.overrides.items() if k not in replaced}
    return dataclasses.replace(self, deploy=True, overrides=overrides, dtype='float32')

  def replace(self, **changes) -> 'ModelSpec':
    return dataclasses.replace(self, **changes)

  # -- construction ------------------------------------------------------------------------

  @classmethod
  def from_config(cls, config, num_classes: int) -> 'ModelSpec':
    """The student of a trainer config: `config.model` (name + overrides + dtype) and the
    input contract of `config.data` (image_size, mean, std, eval_crop_fraction, eval_resize)."""
    model = _plain(config['model'])
    name = model.pop('name')
    dtype = str(model.pop('dtype', 'float32'))
    data = _plain(config['data']) if 'data' in config else {}
    contract = InputSpec.from_data_config(data, get_registration(name).input)
    return cls(name=name, num_classes=int(num_classes), overrides=model, input=contract,
               dtype=dtype, trained_dtype=dtype)

  @classmethod
  def registered(cls, name: str, *, num_classes: int = 1000, deploy: bool = False,
                 overrides: Optional[Mapping[str, Any]] = None,
                 input: Optional[InputSpec] = None,  # pylint: disable=redefined-builtin
                 image_size: Optional[int] = None) -> 'ModelSpec':
    """A spec with the registered model's own input contract (at `image_size` when given)
    unless `input` is given; a `dtype` among the overrides becomes the compute dtype.

    Raises:
      ValueError: an override names a field of the spec itself (`num_classes`, `deploy`).
    """
    overrides = _plain(dict(overrides or {}))
    for field in ('num_classes', 'deploy'):
      if field in overrides:
        raise ValueError(f'{field} is not a module override: it is read from the weights and '
                         'their form; overrides are module fields that differ from the '
                         'registered model (e.g. num_heads=12)')
    dtype = str(overrides.pop('dtype', 'float32'))
    contract = input or get_registration(name).input
    if image_size:
      contract = dataclasses.replace(contract, image_size=int(image_size))
    return cls(name=name, num_classes=int(num_classes), overrides=overrides, deploy=deploy,
               input=contract, dtype=dtype, trained_dtype=dtype)

  # -- JSON --------------------------------------------------------------------------------

  def to_json(self) -> Dict[str, Any]:
    """JSON data (model.json, checkpoint metadata); the compute dtype is not saved: a saved
    model loads as float32 (its `trained_dtype` says what training used)."""
    record = {'format': FORMAT, 'name': self.name, 'num_classes': int(self.num_classes),
              'deploy': bool(self.deploy), 'overrides': _plain(self.overrides),
              'input': self.input.to_json(), 'trained_dtype': self.trained_dtype}
    if self.class_names:
      record['class_names'] = list(self.class_names)
    return record

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> 'ModelSpec':
    """Reads `to_json`'s record.

    Raises:
      ValueError: the record is not a model description (the message says what is wrong).
    """
    try:
      name = str(record['name'])
      num_classes = int(record['num_classes'])
      overrides = dict(record.get('overrides') or {})
      trained_dtype = str(record.get('trained_dtype', 'float32'))
      if 'input' not in record:
        raise ValueError('not a model description (no input contract)')
      contract = InputSpec.from_json(record['input'])
      return cls(name=name, num_classes=num_classes, overrides=overrides,
                 deploy=bool(record.get('deploy', False)), input=contract,
                 trained_dtype=trained_dtype,
                 class_names=tuple(record.get('class_names') or ()))
    except (KeyError, TypeError, AttributeError) as e:
      raise ValueError(f'not a model description ({e.__class__.__name__}: {e})') from None


__all__ = ['ModelSpec', 'InputSpec', 'FORMAT']
