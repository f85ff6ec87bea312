"""Saving, loading and opening models: a directory says what it holds.

    model, variables = repvit_jax.load_model('runs/demo/deploy')
    logits = model.apply(variables, images, train=False)
    spec, variables = repvit_jax.io.read('runs/demo')      # any workdir, checkpoint, model dir

A model directory holds `model.json` (a `ModelSpec`: registered name, `deploy` flag,
`num_classes`, module overrides, the input contract and the dtype it was trained in) and
`variables.msgpack` (Flax serialization of the variable tree, host arrays). Variables are
float32 whatever the training dtype, and the model loads as float32 unless
`load_model(..., dtype='bfloat16')` asks for another compute dtype.

`read` is the one place that decides what a path holds; `init_from`, teachers, `export`,
`analyze` and `load_model` all go through it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np
from flax import serialization

from repvit_jax.io import checkpoint_steps
from repvit_jax.io.fit import fit
from repvit_jax.layers.posemb import resample_posemb
from repvit_jax.models.registry import get_registration
from repvit_jax.models.spec import ModelSpec

MODEL_FILE = 'model.json'
VARIABLES_FILE = 'variables.msgpack'
RUN_CONFIG_FILE = 'config.json'   # written by the trainer into every workdir
DEPLOY_DIR = 'deploy'             # a finished workdir's deploy model


def save_model(directory: str, variables: Mapping[str, Any], spec: ModelSpec | None = None,
               **legacy) -> str:
  """Writes `variables` and their `spec` into `directory` (created if missing; files of the
  same names are replaced atomically).

  Args:
    directory: the model directory.
    variables: the variable tree (jax or numpy arrays; fetched to the host).
    spec: what they are (`repvit_jax.ModelSpec`). v1's keyword form
      (`name=, num_classes=, deploy=, overrides=`) is still accepted and given the registered
      model's input contract.

  Returns:
    The directory.
  """
  if spec is None:   # v1's keywords: the registered input contract, sized from the tables
    name, overrides = legacy.pop('name'), dict(legacy.pop('overrides', None) or {})
    contract = get_registration(name).input
    size = table_image_size(name, variables, overrides)
    if size:
      contract = dataclasses.replace(contract, image_size=size)
    spec = ModelSpec.registered(name, num_classes=legacy.pop('num_classes'),
                                deploy=legacy.pop('deploy', False), overrides=overrides,
                                input=contract)
    legacy.pop('trained_dtype', None)
  if legacy:
    raise TypeError(f'save_model got unexpected arguments {sorted(legacy)}')
  os.makedirs(directory, exist_ok=True)
  host = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
  _atomic_write(os.path.join(directory, VARIABLES_FILE), serialization.msgpack_serialize(host))
  _atomic_write(os.path.join(directory, MODEL_FILE),
                json.dumps(spec.to_json(), indent=2, sort_keys=True).encode())
  return directory


def load_model(path: str, *, dtype: str | None = None,
               image_size: int | None = None) -> Tuple[nn.Module, Dict[str, Any]]:
  """The module and variables at `path` (a model directory such as `workdir/deploy`, or any
  path `read` reads).

  Args:
    path: the model directory, workdir or checkpoint.
    dtype: compute dtype of the module ('float32' when None, whatever it was trained in;
      'bfloat16' for mixed-precision inference).
    image_size: another input size (`at_image_size`: learned position tables resampled).

  Returns:
    (module, variables): call `module.apply(variables, images, train=False)`.

  Raises:
    FileNotFoundError: nothing to load at `path`.
    ValueError: a file is unreadable or the path does not say which model it holds.
  """
  spec, variables = read(path)
  if spec is None:
    raise ValueError(f'{path} does not say which model it holds (a checkpoint from before '
                     'model specs, without workdir/config.json); load its variables with '
                     'repvit_jax.io.read and build the model with repvit_jax.create_model')
  if dtype is not None:
    spec = spec.replace(dtype=dtype)
  if image_size is not None:
    spec, variables = at_image_size(spec, variables, image_size)
  return spec.build(), variables


def at_image_size(spec: ModelSpec, variables: Mapping[str, Any],
                  image_size: int) -> Tuple[ModelSpec, Dict[str, Any]]:
  """A model moved to another input size: its spec's contract says `image_size`, and a
  learned ViT position table is resampled to the new patch grid (`resample_posemb`:
  bicubic, class token kept). Families without resolution-dependent parameters (sin-cos
  ViTs, MobileViT, MetaFormer) only change the contract; the same size changes nothing.

  Raises:
    ValueError: LeViT, whose attention-bias tables are tied to the input size.
  """
  image_size = int(image_size)
  if image_size == spec.input.image_size:
    return spec, dict(variables)
  params = variables.get('params', {})
  if _attention_bias_table(params) is not None:
    raise ValueError(f'{spec.name} has attention-bias tables made for '
                     f'{spec.input.image_size}x{spec.input.image_size} inputs; it cannot be '
                     f'moved to {image_size}x{image_size}')
  variables = dict(variables)
  if isinstance(params, Mapping) and 'pos_embed' in params:
    patch = int(spec.build().patch_size)
    if image_size % patch:
      raise ValueError(f'image size {image_size} is not a multiple of the patch size {patch}')
    variables['params'] = dict(params, pos_embed=resample_posemb(params['pos_embed'],
                                                                 image_size // patch))
  contract = dataclasses.replace(spec.input, image_size=image_size)
  return spec.replace(input=contract), variables


def read(path: str, *, ema: bool = False
         ) -> Tuple[Optional[ModelSpec], Dict[str, Any]]:
  """(spec or None, variables) of whatever `path` holds.

  Accepted: a model directory (`save_model`'s, `repvit-convert`'s output, a
  workdir's `deploy/`), a training workdir (its latest checkpoint; its `deploy/` when it has no
  checkpoint left), a checkpoint directory, or one step of it. Variables are
  {'params': ..., 'batch_stats': ...} host arrays, in the form the spec says (a checkpoint
  holds the training form; the newest step that reads back and matches its checksums, with a
  warning line for each newer one that does not). The spec is None only for a checkpoint that
  records none.
  `ema=True` gives the EMA of the weights a checkpoint holds (trained with `config.ema`).

  Raises:
    FileNotFoundError: the path does not exist or holds neither a checkpoint nor a model.
    ValueError: a file is unreadable (the message names it), or `ema` and it holds no EMA.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: give a training workdir, a checkpoint '
                            'directory or step, or a model directory')
  if is_model_dir(path):
    if ema:
      raise ValueError(f'{path} is a model directory, which holds one set of weights: give a '
                       'checkpoint for its EMA (a run with --config.ema.deploy=True saves the '
                       "EMA's deploy form as <workdir>/deploy)")
    record = _read_model_record(path)     # model.json first: it says what the rest is
    variables = load_variables(path)
    return _spec_from_record(path, record, variables), variables
  present = [name for name in (MODEL_FILE, VARIABLES_FILE)
             if os.path.isfile(os.path.join(path, name))]
  if len(present) == 1:
    missing = VARIABLES_FILE if present[0] == MODEL_FILE else MODEL_FILE
    raise FileNotFoundError(f'{os.path.join(path, missing)} not found: a model directory holds '
                            f'{MODEL_FILE} and {VARIABLES_FILE} (written by '
                            'repvit_jax.io.save_model, e.g. as <workdir>/deploy)')
  try:
    step_dir = checkpoint_steps.find_step_dir(path)
  except FileNotFoundError:
    if is_model_dir(os.path.join(path, DEPLOY_DIR)):
      return read(os.path.join(path, DEPLOY_DIR), ema=ema)
    raise FileNotFoundError(
        f'{path} holds no checkpoint and no saved model: give a training workdir, its '
        "'checkpoints' directory or one step of it, or a model directory (model.json + "
        'variables.msgpack)') from None
  step_dir, state = checkpoint_steps.read_newest_readable(path)
  if ema:
    if 'ema' not in state:
      raise ValueError(f'{step_dir} holds no EMA of the weights (trained without '
                       '--config.ema.decay); leave out the EMA option')
    state = state['ema']
  variables = {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}
  record = checkpoint_steps.step_metadata(step_dir).get('model')
  if record is not None:
    return ModelSpec.from_json(record), variables
  config = run_config(step_dir)
  if config is None:
    return None, variables
  return ModelSpec.from_config(config, head_rows(variables)), variables


def read_spec(directory: str) -> ModelSpec:
  """The `ModelSpec` of a model directory. v1's model.json has no input contract: its size
  then comes from the position/bias tables of the directory's variables.

  Raises:
    ValueError: model.json is unreadable or not a model description.
  """
  record = _read_model_record(directory)
  variables = None if 'input' in record else load_variables(directory)
  return _spec_from_record(directory, record, variables)


def _read_model_record(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, MODEL_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
  except ValueError as e:
    raise _not_a_description(path, e) from None
  if not isinstance(record, dict):
    raise _not_a_description(path, f'a JSON {type(record).__name__}, not an object')
  return record


def _spec_from_record(directory: str, record: Mapping[str, Any],
                      variables: Optional[Mapping[str, Any]]) -> ModelSpec:
  try:
    image_size = None
    if 'input' not in record and variables is not None:
      image_size = table_image_size(str(record.get('name', '')), variables,
                                    record.get('overrides') or {})
    return ModelSpec.from_json(record, image_size=image_size)
  except ValueError as e:
    raise _not_a_description(os.path.join(directory, MODEL_FILE), e) from None


def _not_a_description(path: str, reason) -> ValueError:
  return ValueError(f'{path} is not a model description written by save_model ({reason}); '
                    're-export the model')


def run_config(path: str) -> Optional[Dict[str, Any]]:
  """The trainer config (`config.json`, as JSON data) of the workdir `path` lies in: the
  workdir itself, its `deploy/`, its `checkpoints/` or one step of them; None elsewhere."""
  path = os.path.abspath(os.fspath(path))
  for _ in range(3):
    candidate = os.path.join(path, RUN_CONFIG_FILE)
    if os.path.isfile(candidate):
      try:
        with open(candidate, encoding='utf-8') as f:
          config = json.load(f)
      except (OSError, ValueError):
        return None
      return config if isinstance(config, dict) and 'model' in config else None
    path = os.path.dirname(path)
  return None


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


def head_rows(variables: Mapping[str, Any]) -> int:
  """Classes of a variable tree's classification head (0 without one)."""
  head = variables.get('params', {}).get('head')
  if isinstance(head, Mapping):
    for path in (('kernel',), ('linear', 'kernel'), ('cls', 'linear', 'kernel')):
      node = head
      for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
      if node is not None:
        return int(np.shape(node)[-1])
  return 0


def table_image_size(name: str, variables: Mapping[str, Any],
                     overrides: Mapping[str, Any]) -> Optional[int]:
  """The input side a model's tables were made for (v1 model directories, which do not
  record it): ViT `pos_embed` (1, 1 + g*g, D) -> g * patch; LeViT's first attention bias
  table (H, R*R) -> 16 R; None for families without such tables."""
  params = variables.get('params', {})
  pos = params.get('pos_embed') if isinstance(params, Mapping) else None
  if pos is not None:
    grid = int(round(math.sqrt(np.shape(pos)[1] - 1)))
    patch = overrides.get('patch_size', get_registration(name).kwargs.get('patch_size', 16))
    return grid * int(patch)
  bias = _attention_bias_table(params)
  return None if bias is None else int(round(math.sqrt(np.shape(bias)[1]))) * 16


def _attention_bias_table(params) -> Optional[Any]:
  """LeViT's first attention-bias table (heads, R*R), or None for other families."""
  try:
    return params['stages_0']['blocks_0']['attn']['attention_biases']
  except (KeyError, TypeError):
    return None


def _atomic_write(path: str, payload: bytes) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(payload)
  os.replace(tmp, path)


__all__ = ['save_model', 'load_model', 'read', 'fit', 'at_image_size', 'read_spec', 'run_config', 'load_variables',
           'is_model_dir', 'head_rows', 'MODEL_FILE', 'VARIABLES_FILE', 'DEPLOY_DIR']
