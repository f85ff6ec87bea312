"""Initialising from earlier work: read variables from a path and fit them into a model.

`init_from` and `teacher.init_from` accept whatever `repvit_jax.io.read` reads: a training
workdir (its latest checkpoint), a checkpoint directory or one step of it, or a model
directory (for example `<workdir>/deploy`, or `repvit-convert`'s output).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from repvit_jax import io


def init_source(config) -> Optional[Tuple[str, str]]:
  """(path, skip regex) of the weights a fresh run starts from: `config.init_from` and
  `config.init_skip` (the parameters it may lack, e.g. a new head), or None without
  `init_from`."""
  path = config.init_from
  return (str(path), config.init_skip or '') if path else None


def read(path: str, what: str = 'init_from') -> Tuple[Optional[Any], Dict[str, Any]]:
  """(spec or None, {'params', 'batch_stats'}) of any path `repvit_jax.io.read` accepts; its
  errors name `what` (the config field that gave the path)."""
  try:
    return io.read(path)
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


__all__ = ['read', 'init_source', 'check_heads']
