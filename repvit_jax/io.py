"""Saving and loading a model with its variables: one directory, one call to load it back.

    model, variables = repvit_jax.load_model('runs/demo/deploy')
    logits = model.apply(variables, images, train=False)

A model directory holds `model.json` (registered name, `deploy` flag, `num_classes`, module
overrides, the dtype it was trained in) and `variables.msgpack` (Flax serialization of the
variable tree, host arrays). Variables are float32 whatever the training dtype, and the model
loads as float32 unless `load_model(..., dtype='bfloat16')` asks for another compute dtype.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import numpy as np
from flax import serialization

from repvit_jax.models.registry import create_model

MODEL_FILE = 'model.json'
VARIABLES_FILE = 'variables.msgpack'


def save_model(directory: str, variables: Mapping[str, Any], *, name: str, num_classes: int,
               deploy: bool, overrides: Mapping[str, Any] | None = None,
               trained_dtype: str = 'float32') -> str:
  """Writes `variables` and the recipe of their module into `directory`.

  Args:
    directory: created if missing; existing files of the same names are replaced atomically.
    variables: the variable tree (jax or numpy arrays; fetched to the host).
    name, num_classes, deploy, overrides: arguments of `create_model` that rebuild the module;
      overrides must be JSON-serialisable (tuples become lists). A compute `dtype` among
      them is not saved as an override (the model loads as float32) but as `trained_dtype`.
    trained_dtype: the compute dtype of training, recorded for the reader.

  Returns:
    The directory.
  """
  os.makedirs(directory, exist_ok=True)
  host = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
  overrides = dict(overrides or {})
  trained_dtype = str(overrides.pop('dtype', trained_dtype))
  recipe = {'name': name, 'num_classes': int(num_classes), 'deploy': bool(deploy),
            'overrides': _jsonable(overrides), 'trained_dtype': trained_dtype}
  _atomic_write(os.path.join(directory, VARIABLES_FILE), serialization.msgpack_serialize(host))
  _atomic_write(os.path.join(directory, MODEL_FILE),
                json.dumps(recipe, indent=2, sort_keys=True).encode())
  return directory


def load_model(directory: str, *, dtype: str | None = None) -> Tuple[nn.Module, Dict[str, Any]]:
  """Loads a directory written by `save_model` (e.g. a training run's `workdir/deploy`).

  Args:
    directory: the model directory.
    dtype: compute dtype of the module ('float32' when None, whatever it was trained in;
      'bfloat16' for mixed-precision inference).

  Returns:
    (module, variables): call `module.apply(variables, images, train=False)`.

  Raises:
    FileNotFoundError: the directory or one of its two files is missing.
    ValueError: a file is unreadable or not what save_model writes (the message names it).
  """
  recipe_path = os.path.join(directory, MODEL_FILE)
  variables_path = os.path.join(directory, VARIABLES_FILE)
  for path in (recipe_path, variables_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} not found: a model directory holds {MODEL_FILE} and '
                              f'{VARIABLES_FILE} (written by repvit_jax.io.save_model, e.g. '
                              'as <workdir>/deploy at the end of training)')
  try:
    with open(recipe_path, encoding='utf-8') as f:
      recipe = json.load(f)
    name, num_classes = recipe['name'], recipe['num_classes']
    deploy, overrides = recipe['deploy'], dict(recipe['overrides'])
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f'{recipe_path} is not a model description written by save_model '
                     f'({e.__class__.__name__}: {e}); re-export the model') from None
  if dtype is not None:
    overrides['dtype'] = dtype
  module = create_model(name, num_classes=num_classes, deploy=deploy, **overrides)
  return module, load_variables(directory)


def load_variables(directory: str) -> Dict[str, Any]:
  """Only the variable tree (numpy arrays) of a model directory.

  Raises:
    ValueError: the file is not a msgpack variable tree (truncated or overwritten).
  """
  path = os.path.join(directory, VARIABLES_FILE)
  with open(path, 'rb') as f:
    payload = f.read()
  try:
    variables = serialization.msgpack_restore(payload)
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises several kinds)
    raise ValueError(f'{path} is not a readable variable tree ({e.__class__.__name__}: '
                     f'{e}); re-export the model') from None
  if not isinstance(variables, dict):
    raise ValueError(f'{path} holds a {type(variables).__name__}, not a variable tree; '
                     're-export the model')
  return variables


def is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MODEL_FILE)) and os.path.isfile(
      os.path.join(path, VARIABLES_FILE))


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _atomic_write(path: str, payload: bytes) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(payload)
  os.replace(tmp, path)
