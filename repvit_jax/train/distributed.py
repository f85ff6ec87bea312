"""Joining the processes of a multi-host run: `initialize(config.distributed)`.

`config.distributed` is a ConfigDict:

  enabled              False: one process (the default).
  coordinator_address  'host:port' of process 0's coordinator, or None.
  num_processes        how many processes take part, or None.
  process_id           this process's index in [0, num_processes), or None.

A field left at None is read from the environment (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) and, failing that, left to JAX's auto-detection
(SLURM, Open MPI, Kubernetes, Cloud TPU). Outside those environments, on plain machines, give
all three. On CPU the processes exchange data with gloo over TCP.

A plain bool (`config.distributed = True`) is accepted too: enabled, everything detected.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax

FIELDS = ('coordinator_address', 'num_processes', 'process_id')
ENVIRONMENT = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS',
               'num_processes': 'JAX_NUM_PROCESSES', 'process_id': 'JAX_PROCESS_ID'}


def settings(distributed: Any) -> Optional[dict]:
  """The keyword arguments for `jax.distributed.initialize`, or None when not enabled.

  Args:
    distributed: `config.distributed` (a ConfigDict/dict as above, a bool, or None).

  Raises:
    ValueError: a field has a value of the wrong kind (named in the message).
  """
  if not distributed:
    return None
  if isinstance(distributed, bool):
    distributed = {'enabled': True}
  if not distributed.get('enabled', False):
    return None
  kwargs = {}
  for field in FIELDS:
    value = distributed.get(field)
    source = f'config.distributed.{field}'
    if value is None and os.environ.get(ENVIRONMENT[field], '').strip():
      value, source = os.environ[ENVIRONMENT[field]].strip(), ENVIRONMENT[field]
    if value is None:
      continue
    if field != 'coordinator_address':
      try:
        value = int(value)
      except (TypeError, ValueError):
        raise ValueError(f'{source}={value!r} is not an integer') from None
      if value < 0:
        raise ValueError(f'{source}={value} must not be negative')
    kwargs[field] = value
  if 'process_id' in kwargs and 'num_processes' in kwargs:
    if kwargs['process_id'] >= kwargs['num_processes']:
      raise ValueError(f'process_id {kwargs["process_id"]} is not below num_processes '
                       f'{kwargs["num_processes"]}; ids run from 0 to num_processes - 1')
  return kwargs


def initialize(distributed: Any, warn: Optional[Callable[[str], None]] = None) -> bool:
  """Joins the other processes when `distributed` is enabled; returns whether it did.

  When it is not enabled but the JAX_* variables above are set (a launcher meant several
  processes), `warn` gets one line: each process will train alone.

  Raises:
    ValueError: the environment does not say how many processes there are, or who this one
      is, and the config does not either (the message names the fields to set).
  """
  kwargs = settings(distributed)
  if kwargs is None:
    present = [f'{name}={os.environ[name].strip()}' for name in ENVIRONMENT.values()
               if os.environ.get(name, '').strip()]
    if present and warn is not None:
      warn(f'warning: {", ".join(present)} set, but config.distributed.enabled is False: '
           'this process trains alone; add --config.distributed.enabled=True to join the others')
    return False
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    missing = [f for f in FIELDS if f not in kwargs]
    if not missing:
      raise ValueError(f'jax.distributed.initialize({kwargs}) failed: {e}') from None
    fields = ', '.join(f'--config.distributed.{f} (or {ENVIRONMENT[f]})' for f in missing)
    raise ValueError(f'could not join the other processes ({e}); outside SLURM, MPI, '
                     f'Kubernetes or a Cloud TPU set {fields}') from None
  return True


__all__ = ['initialize', 'settings', 'FIELDS']
