"""Initialising from earlier work: read variables from a path and fit them into a model.

`init_from` and `teacher.init_from` accept whatever `repvit_jax.io.open` reads: a training
workdir (its latest checkpoint), a checkpoint directory or one step of it, or a model
directory (for example `<workdir>/deploy`, or `python -m repvit_jax.convert`'s output).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from repvit_jax import io
from repvit_jax.treepath import flatten, unflatten


def init_source(config) -> Optional[Tuple[str, str]]:
  """(path, skip regex) of the weights a fresh run starts from: `config.init_from` and
  `config.init_skip` (default: the classifier head), or None without `init_from`."""
  path = config.get('init_from')
  return (str(path), config.get('init_skip', r'^head/') or '') if path else None


def read(path: str, what: str = 'init_from') -> Tuple[Optional[Any], Dict[str, Any]]:
  """(spec or None, {'params', 'batch_stats'}) of any path `repvit_jax.io.open` accepts; its
  errors name `what` (the config field that gave the path)."""
  try:
    return io.open(path)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f'{what}: {e}') from None


def check_heads(source_spec, target_spec, what: str = 'init_from') -> None:
  """Raises ValueError when the source's attention has another number of heads than the
  model's: the weights have the same shapes either way, so they would load and attend
  differently from how they were trained (MAE-Lite's ViT-Tiny has 12 heads, DeiT's 3)."""
  if source_spec is None:
    return
  heads = [getattr(s.build(), 'num_heads', None) for s in (source_spec, target_spec)]
  if None not in heads and heads[0] != heads[1]:
    raise ValueError(f'{what}: the weights were trained with {heads[0]} attention heads and '
                     f'the model has {heads[1]} (same shapes, different attention): add '
                     f'--config.model.num_heads={heads[0]}')


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


__all__ = ['read', 'fit', 'init_source', 'check_heads']
