"""Initialising from earlier work: read variables from a path and fit them into a model.

`init_from` and `teacher.init_from` accept a training workdir (its latest checkpoint), a
checkpoint directory or one step of it, or a model directory written by `repvit_jax.io`
(for example `<workdir>/deploy`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from repvit_jax import io
from repvit_jax.train import checkpoint


def init_source(config) -> Optional[Tuple[str, str]]:
  """(path, skip regex) of the weights a fresh run starts from: `config.init_from` and
  `config.init_skip` (default: the classifier head), or None without `init_from`."""
  path = config.get('init_from')
  return (str(path), config.get('init_skip', r'^head/') or '') if path else None


def read_variables(path: str) -> Dict[str, Any]:
  """{'params': ..., 'batch_stats': ...} as host arrays from any accepted kind of path.

  Raises:
    FileNotFoundError: the path does not exist or holds neither a checkpoint nor a model.
  """
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f'init_from path {path} does not exist')
  if io.is_model_dir(path):
    variables = io.load_variables(path)
  else:
    try:
      variables = checkpoint.restore_variables(path)
    except FileNotFoundError:
      raise FileNotFoundError(
          f'{path} holds no checkpoint and no saved model: give a training workdir, its '
          "'checkpoints' directory, or a model directory (model.json + variables.msgpack)"
      ) from None
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats') or {}}


def flatten(tree: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
  """{'a/b/c': leaf} for a nested mapping."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(flatten(value, path))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  out: Dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split('/')
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return out


def fit(target: Mapping[str, Any], source: Mapping[str, Any], *, skip: str = '',
        what: str = 'checkpoint') -> Tuple[Dict[str, Any], List[str]]:
  """Takes every leaf of `target` from `source` (same path, same shape).

  Args:
    target: the model's freshly initialised tree (arrays or ShapeDtypeStructs).
    source: the loaded tree.
    skip: regex; target paths matching it keep their initial value when the source lacks
      them or has another shape (a new classification head, say).
    what: how to call the source in messages.

  Returns:
    (tree with target's structure, list of source paths that were not used).

  Raises:
    ValueError: listing every target leaf that is missing from the source or has another
      shape, outside `skip`.
  """
  skip_re = re.compile(skip) if skip else None
  want, have = flatten(target), flatten(source)
  problems, out = [], {}
  for path, leaf in want.items():
    found = have.get(path)
    if found is not None and tuple(np.shape(found)) == tuple(leaf.shape):
      out[path] = np.asarray(found).astype(leaf.dtype)
      continue
    if skip_re is not None and skip_re.search(path):
      out[path] = leaf
      continue
    problems.append(f'{path}: ' + ('missing' if found is None else
                                   f'shape {tuple(np.shape(found))} in the {what}, '
                                   f'{tuple(leaf.shape)} in the model'))
  if problems:
    shown = '; '.join(problems[:10])
    more = f'; ... and {len(problems) - 10} more' if len(problems) > 10 else ''
    raise ValueError(f'the {what} does not fit the model ({len(problems)} mismatches): '
                     f'{shown}{more}')
  unused = sorted(set(have) - set(want))
  return unflatten(out), unused


__all__ = ['read_variables', 'fit', 'flatten', 'unflatten']
