"""Paths into variable trees: 'blocks_3/attn/qkv/kernel' names, and flat {path: leaf} maps.

One place for the naming that checkpoints, the optimizer's masks, `init_from` fitting and
checkpoint conversion share. Pure Python; imports neither the trainer nor TensorFlow.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

SEPARATOR = '/'


def key_names(path) -> Tuple[str, ...]:
  """('blocks_3', 'attn', 'qkv', 'kernel') for a JAX key path (dict keys, attributes, indices)."""
  names = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return tuple(names)


def path_str(path) -> str:
  """'blocks_3/attn/qkv/kernel' for a JAX key path."""
  return SEPARATOR.join(key_names(path))


def flatten(tree: Mapping[str, Any], prefix: str = '',
            separator: str = SEPARATOR) -> Dict[str, Any]:
  """{'a/b/c': leaf} for a nested mapping (leaves: anything that is not a mapping; an empty
  mapping has none); `separator` '.' gives config paths ('a.b.c')."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{separator}{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(flatten(value, path, separator))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """The nested dict of a {'a/b/c': leaf} map (the inverse of `flatten`)."""
  out: Dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split(SEPARATOR)
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return out


__all__ = ['key_names', 'path_str', 'flatten', 'unflatten']
