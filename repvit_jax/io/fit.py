"""Fitting a loaded variable tree into a model's: the same paths, the same shapes."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from repvit_jax.utils.treepath import flatten, unflatten


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


__all__ = ['fit']
