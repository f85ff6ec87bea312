"""`reparameterize`: the structure-driven walk that fuses a variable tree into its deploy form.

The walk knows no models. Each re-parameterizable layer type registers a *fuser*: a predicate
that recognises the layer's training-form subtree in `params`, and a pure function that turns
that subtree (and the matching `batch_stats` subtree) into the deploy subtree. The walk visits
`params` top-down; the fuser that matches a node replaces it (two that match the same node are
an error: the fold would depend on registration order), and the walk does not descend into
it. Everything else is kept as it is, so running the walk twice changes nothing. BatchNorm
statistics that no fuser consumed are an error unless `strict=False`: a deploy form that still
needs them is not the folded model its caller asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

Tree = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Fuser:
  """A re-parameterizable layer type.

  Attributes:
    name: for error messages ("TDRL RepLinear", ...).
    matches: params subtree -> whether it is this layer's training form.
    fuse: (params subtree, batch_stats subtree or None, path) -> (deploy params subtree,
      batch_stats subtree that remains, or None). It raises ValueError naming `path` when the
      subtree is inconsistent or the statistics it needs are missing.
  """
  name: str
  matches: Callable[[Tree], bool]
  fuse: Callable[[Tree, Optional[Tree], str], Tuple[Dict[str, Any], Optional[Dict[str, Any]]]]


_FUSERS: List[Fuser] = []


def register_fuser(fuser: Fuser, *, replace: bool = False) -> Fuser:
  """Adds a layer type to the walk.

  Raises:
    ValueError: a fuser of the same name is registered and `replace` is False (re-running a
      notebook cell that registers one: pass `replace=True`).
  """
  same = [f for f in _FUSERS if f.name == fuser.name]
  if same and not replace:
    raise ValueError(f'a fuser named {fuser.name!r} is already registered; give yours another '
                     'name, or register_fuser(..., replace=True) to replace it')
  for old in same:
    _FUSERS.remove(old)
  _FUSERS.append(fuser)
  return fuser


def reparameterize(variables: Tree, *, strict: bool = True) -> Dict[str, Any]:
  """Folds every re-parameterizable layer of a variable tree into its deploy form.

  A pure function of the tree: no module, config or global state. Recognised subtrees (for
  example TDRL `RepLinear`: `skip` + `branch_<n>` [+ `rectify_bn`]) become plain layers
  (`{kernel, bias}`); their `batch_stats` are consumed, and a collection left empty is
  dropped. Everything else is returned unchanged; a tree with nothing to fuse comes back
  equal to the input, so the function is idempotent.

  Args:
    variables: `{'params': ..., 'batch_stats': ..., <other collections>}` of the training form.
    strict: raise when `batch_stats` remain that no fuser folded (a BatchNorm of a layer type
      without a fuser); False keeps them in the result.

  Returns:
    The deploy form's variables, as plain nested dicts.

  Raises:
    ValueError: a recognised subtree lacks its `batch_stats` or has inconsistent shapes, or
      (outside jit) a running variance is negative or not finite, or two fusers match one
      subtree, or (strict) statistics remain; the message names the paths.
  """
  if not isinstance(variables, Mapping) or 'params' not in variables:
    raise ValueError("reparameterize expects a variable tree {'params': ..., 'batch_stats': "
                     f"...}}, got {type(variables).__name__} with keys "
                     f"{sorted(variables) if isinstance(variables, Mapping) else '-'}")
  stats = variables.get('batch_stats')
  _check_running_variances(stats, '')
  params, stats = _walk(variables['params'], stats, '')
  if stats and strict:
    left = _leaf_parents(stats, '')
    raise ValueError(f'reparameterize found no fuser for the BatchNorm statistics at '
                     f'{", ".join(left[:4])}{" and more" if len(left) > 4 else ""}: register '
                     'one for that layer type (repvit_jax.reparam.register_fuser), or pass '
                     'strict=False to keep them')
  result = {k: _plain(v) for k, v in variables.items() if k not in ('params', 'batch_stats')}
  result['params'] = params
  if stats:
    result['batch_stats'] = stats
  return result


def _check_running_variances(stats: Optional[Tree], path: str) -> None:
  """A NaN or negative running variance would fold into NaN weights without a word.

  Checked on concrete arrays only: under jit (the trainer's evaluation) values are unknown.
  """
  if not isinstance(stats, Mapping):
    return
  for key, child in stats.items():
    where = f'{path}/{key}'
    if isinstance(child, Mapping):
      _check_running_variances(child, where)
    elif key == 'var' and not isinstance(child, jax.core.Tracer):
      values = np.asarray(child, np.float64)
      bad = ~np.isfinite(values) | (values < 0)
      if np.any(bad):
        raise ValueError(f'batch_stats{where} has {int(bad.sum())} invalid running variances '
                         f'(e.g. {values[bad].flat[0]}); the training that produced them '
                         'diverged: use an earlier checkpoint')


def _leaf_parents(tree: Tree, path: str) -> List[str]:
  """'batch_stats/<path>' of every subtree holding arrays (one per BatchNorm)."""
  found = []
  if any(not isinstance(v, Mapping) for v in tree.values()):
    found.append(f'batch_stats{path}')
  for key, child in tree.items():
    if isinstance(child, Mapping):
      found.extend(_leaf_parents(child, f'{path}/{key}'))
  return found


def _walk(params: Tree, stats: Optional[Tree], path: str):
  matching = [fuser for fuser in _FUSERS if fuser.matches(params)]
  if len(matching) > 1:
    raise ValueError(f'params{path or "/"} matches several fusers '
                     f'({", ".join(repr(f.name) for f in matching)}); make their `matches` '
                     'exclusive')
  if matching:
    return matching[0].fuse(params, stats, path or '/')
  new_params, new_stats = {}, {}
  stats = stats if isinstance(stats, Mapping) else None
  for key, child in params.items():
    child_stats = stats.get(key) if stats is not None else None
    if isinstance(child, Mapping):
      new_params[key], remaining = _walk(child, child_stats, f'{path}/{key}')
    else:
      new_params[key], remaining = child, child_stats
    if remaining is not None and (not isinstance(remaining, Mapping) or remaining):
      new_stats[key] = remaining
  if stats is not None:
    # Statistics with no params beside them (for example a stats-only constant) stay.
    for key, value in stats.items():
      if key not in params:
        new_stats[key] = _plain(value)
  return new_params, (new_stats or None)


def _plain(tree: Any) -> Any:
  """Nested mappings (FrozenDict included) as plain dicts; leaves as they are."""
  if isinstance(tree, Mapping):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def subtree(tree: Optional[Tree], key: str, path: str, what: str) -> Tree:
  """`tree[key]` as a mapping, or ValueError naming `path/key` and what was expected there."""
  value = tree.get(key) if isinstance(tree, Mapping) else None
  if not isinstance(value, Mapping):
    raise ValueError(f'{path}/{key}: expected {what}, found '
                     f'{"nothing" if value is None else type(value).__name__}')
  return value


def leaf(tree: Tree, key: str, path: str, shape: Optional[Tuple[int, ...]] = None,
         ndim: Optional[int] = None):
  """`tree[key]` as an array with the expected shape or rank, or ValueError naming the path."""
  value = tree.get(key) if isinstance(tree, Mapping) else None
  if value is None or not hasattr(value, 'shape'):
    raise ValueError(f'{path}/{key}: missing array')
  if shape is not None and tuple(value.shape) != tuple(shape):
    raise ValueError(f'{path}/{key}: expected shape {tuple(shape)}, found {tuple(value.shape)}')
  if ndim is not None and value.ndim != ndim:
    raise ValueError(f'{path}/{key}: expected a {ndim}-d array, found shape '
                     f'{tuple(value.shape)}')
  return value
