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
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from repvit_jax.io import checkpoint_steps
from repvit_jax.io.fit import fit
from repvit_jax.layers.posemb import resample_posemb
from repvit_jax.models.spec import ModelSpec

MODEL_FILE = 'model.json'
VARIABLES_FILE = 'variables.msgpack'
RUN_CONFIG_FILE = 'config.json'   # written by the trainer into every workdir
DEPLOY_DIR = 'deploy'             # a finished workdir's deploy model


def save_model(directory: str, variables: Mapping[str, Any], spec: ModelSpec) -> str:
  """Writes `variables` and their `spec` into `directory` (created if missing; files of the
  same names are replaced atomically).

  Args:
    directory: the model directory.
    variables: the variable tree (jax or numpy arrays; fetched to the host).
    spec: what they are (`repvit_jax.ModelSpec`, e.g. `ModelSpec.registered(name, ...)`).

  Returns:
    The directory.
  """
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
    raise ValueError(f'{path} does not say which model it holds (a checkpoint whose metadata '
                     'records no model spec); load its variables with '
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
    ValueError: a model with other parameters whose shapes follow the input size (LeViT's
      attention-bias tables); the message names one.
  """
  image_size = int(image_size)
  if image_size == spec.input.image_size:
    return spec, dict(variables)
  params = variables.get('params', {})
  _check_size_free(spec, params, image_size)
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
    spec = read_spec(path)     # model.json first: it says what the rest is
    return spec, load_variables(path)
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
  return (None if record is None else ModelSpec.from_json(record)), variables


def read_spec(directory: str) -> ModelSpec:
  """The `ModelSpec` of a model directory.

  Raises:
    ValueError: model.json is unreadable or not a model description.
  """
  path = os.path.join(directory, MODEL_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    if not isinstance(record, dict):
      raise ValueError(f'a JSON {type(record).__name__}, not an object')
    return ModelSpec.from_json(record)
  except ValueError as e:
    reason = str(e)
    if reason.startswith('not a model description (') and reason.endswith(')'):
      reason = reason[len('not a model description ('):-1]
    raise _not_a_description(path, reason) from None


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
  """Classes of a variable tree's classification head: the output width of the kernels
  under `params/head` (every family names its head so), 0 without one."""
  head = variables.get('params', {}).get('head')
  kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(head or {})
             if getattr(path[-1], 'key', None) == 'kernel']
  return int(np.shape(kernels[0])[-1]) if kernels else 0


def _check_size_free(spec: ModelSpec, params: Mapping[str, Any], image_size: int) -> None:
  """Raises ValueError when a parameter other than a learned position table changes shape
  with the input size: such a model cannot be moved to `image_size`."""
  model = spec.build()
  moved = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                         jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  for path, leaf in jax.tree_util.tree_leaves_with_path(moved['params']):
    keys = [str(getattr(k, 'key', k)) for k in path]
    if keys == ['pos_embed']:
      continue
    node = params
    for key in keys:
      node = node.get(key) if isinstance(node, Mapping) else None
    if node is not None and tuple(np.shape(node)) != tuple(leaf.shape):
      raise ValueError(f'{spec.name} has parameters made for {spec.input.image_size}x'
                       f'{spec.input.image_size} inputs ({"/".join(keys)}: '
                       f'{tuple(np.shape(node))}, {tuple(leaf.shape)} at {image_size}x'
                       f'{image_size}); it cannot be moved to {image_size}x{image_size}')


def _atomic_write(path: str, payload: bytes) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(payload)
  os.replace(tmp, path)


__all__ = ['save_model', 'load_model', 'read', 'fit', 'at_image_size', 'read_spec',
           'run_config', 'load_variables', 'is_model_dir', 'head_rows', 'MODEL_FILE',
           'VARIABLES_FILE', 'DEPLOY_DIR']
