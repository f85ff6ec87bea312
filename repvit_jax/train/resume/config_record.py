"""`workdir/config.json`: the config a run was started (or last resumed) with.

On resume the new config is compared with it. A difference in what is trained (the model,
the data, the task and its losses) is an error listing the fields, unless
`config.allow_config_change=True`; a difference in how long, how fast or how often (optimizer,
schedule, batch size, cadence, devices) is one warning line.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List

import ml_collections

from repvit_jax.utils.treepath import flatten

CONFIG_FILE = 'config.json'
# Fields that say how to resume, not what the run is: never compared.
NOT_COMPARED = ('resume_step', 'allow_config_change')
# Top-level fields that may change on resume with a warning only; every other field (model,
# data, task, teacher, losses, augmentation) defines what is trained.
ADJUSTABLE = frozenset({
    'optimizer', 'total_steps', 'batch_size', 'grad_accum_steps', 'eval_batch_size', 'seed',
    'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints', 'mesh', 'distributed',
    'init_from', 'init_skip', 'reconstructions',
})


def as_json(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as plain JSON data (tuples become lists, as they are read back)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
  """'key: old -> new' for every leaf that differs, sorted."""
  flat_old, flat_new = flatten(old, separator='.'), flatten(new, separator='.')
  missing = object()
  lines = []
  for key in sorted(flat_old.keys() | flat_new.keys()):
    a, b = flat_old.get(key, missing), flat_new.get(key, missing)
    if a != b:
      show = lambda v: 'unset' if v is missing else json.dumps(v)
      lines.append(f'{key}: {show(a)} -> {show(b)}')
  return lines


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 warn: Callable[[str], None]) -> None:
  """Compares `config` with the recorded one before a resume.

  Raises:
    ValueError: model, data or task fields differ and `config.allow_config_change` is not set.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      old = json.load(f)
  except (OSError, ValueError):
    return    # a run from before config.json, or one killed while writing it
  new = as_json(config)
  for key in NOT_COMPARED:
    old.pop(key, None)
    new.pop(key, None)
  changes = differences(old, new)
  fixed = [c for c in changes if c.split('.')[0].split(':')[0] not in ADJUSTABLE]
  adjustable = [c for c in changes if c not in fixed]
  if fixed and not config.allow_config_change:
    raise ValueError(f'the config differs from the one this workdir was trained with ({path}) '
                     f'in what is trained: {"; ".join(fixed)}. Use a fresh --workdir, or add '
                     '--config.allow_config_change=True to resume anyway')
  if fixed:
    warn(f'warning: resuming with a changed config (allow_config_change): {"; ".join(fixed)}')
  if adjustable:
    warn(f'warning: resuming with changed settings: {"; ".join(adjustable)}')


def write(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes `workdir/config.json` (atomically); returns its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(as_json(config), f, indent=1, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)
  return path


__all__ = ['check_resume', 'write', 'differences', 'as_json', 'ADJUSTABLE', 'CONFIG_FILE']
