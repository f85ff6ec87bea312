"""Joining the processes of a multi-host run: `initialize(config.distributed)`.

`config.distributed` is a ConfigDict:

  enabled              False: one process (the default).
  coordinator_address  'host:port' of process 0's coordinator, or None.
  num_processes        how many processes take part, or None.
  process_id           this process's index in [0, num_processes), or None.
  join_timeout_s       how long a process waits for all of them to join (default 300).
  heartbeat_timeout_s  how soon a process that stopped answering stops the others
                       (default 100): each survivor exits with one `error:` line naming it
                       and the last intact checkpoint (peer_guard.py).

A field left at None is read from the environment (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) and, failing that, left to JAX's auto-detection
(SLURM, Open MPI, Kubernetes, Cloud TPU). Outside those environments, on plain machines, give
all three. On CPU the processes exchange data with gloo over TCP.

A plain bool (`config.distributed = True`) is accepted too: enabled, everything detected.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any, Callable, Optional

import jax

from repvit_jax.train import peer_guard

FIELDS = ('coordinator_address', 'num_processes', 'process_id')
# (config field, jax.distributed.initialize argument)
TIMEOUTS = (('join_timeout_s', 'initialization_timeout'),
            ('heartbeat_timeout_s', 'heartbeat_timeout_seconds'))
# jax.distributed's own heartbeat timeout, for processes it initialised without this module.
JAX_HEARTBEAT_TIMEOUT_S = 100
# This process's counter in JAX's key-value store (see _beat), and the timeout JAX was given.
_HEARTBEAT_KEY = 'repvit_jax/alive/'
_heartbeat_timeout_s = None
ENVIRONMENT = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS',
               'num_processes': 'JAX_NUM_PROCESSES', 'process_id': 'JAX_PROCESS_ID'}


def settings(distributed: Any) -> Optional[dict]:
  """The keyword arguments for `jax.distributed.initialize`, or None when not enabled.

  Args:
    distributed: `config.distributed` (its fields: repvit_jax.configs.common.run_config).

  Raises:
    ValueError: a field has a value of the wrong kind (named in the message).
  """
  if not distributed.enabled:
    return None
  kwargs = {}
  for field in FIELDS:
    value = distributed[field]
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
  for field, jax_name in TIMEOUTS:
    value = distributed[field]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 1:
      raise ValueError(f'config.distributed.{field}={value!r} must be a number of seconds >= 1')
    kwargs[jax_name] = int(value)
  if 'process_id' in kwargs and 'num_processes' in kwargs:
    if kwargs['process_id'] >= kwargs['num_processes']:
      raise ValueError(f'process_id {kwargs["process_id"]} is not below num_processes '
                       f'{kwargs["num_processes"]}; ids run from 0 to num_processes - 1')
  return kwargs


def initialize(distributed: Any, warn: Optional[Callable[[str], None]] = None,
               checkpoints: Optional[str] = None) -> bool:
  """Joins the other processes when `distributed` is enabled; returns whether it did.

  Before joining, this process's stderr is routed through `peer_guard` (when the process id,
  count and coordinator are known), so that a process that never joins or is lost later
  ends the others with one line naming `checkpoints`' last intact step.

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
  if all(f in kwargs for f in FIELDS):
    print(f'joining {kwargs["num_processes"]} processes at {kwargs["coordinator_address"]} as '
          f'process {kwargs["process_id"]} (waiting up to {kwargs["initialization_timeout"]} s)',
          flush=True)
    peer_guard.install(kwargs['process_id'], kwargs['num_processes'],
                       kwargs['coordinator_address'], kwargs['initialization_timeout'],
                       kwargs['heartbeat_timeout_seconds'], checkpoints)
  global _heartbeat_timeout_s
  _heartbeat_timeout_s = kwargs['heartbeat_timeout_seconds']
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    missing = [f for f in FIELDS if f not in kwargs]
    if not missing:
      raise ValueError(f'jax.distributed.initialize({kwargs}) failed: {e}') from None
    fields = ', '.join(f'--config.distributed.{f} (or {ENVIRONMENT[f]})' for f in missing)
    raise ValueError(f'could not join the other processes ({e}); outside SLURM, MPI, '
                     f'Kubernetes or a Cloud TPU set {fields}') from None
  if jax.process_count() > 1:
    from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
    beat = threading.Thread(target=_beat, args=(jax_distributed.global_state.client,
                                                jax.process_index()),
                            name='repvit_jax-heartbeat', daemon=True)
    beat.start()

    def stop_beating():
      _stop_beating.set()
      beat.join()

    # Registered after JAX's own exit hook, so it runs first: JAX's shutdown waits for a
    # client that no thread is using.
    atexit.register(stop_beating)
  return True


def _beat(client, process_id: int) -> None:
  """A counter in JAX's key-value store that this process raises every second: a process
  whose counter stands still is gone, whatever its clock says."""
  count = 0
  while not _stop_beating.is_set():
    count += 1
    try:
      client.key_value_set(f'{_HEARTBEAT_KEY}{process_id}', str(count), allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      return      # the coordinator is gone; JAX ends this process
    _stop_beating.wait(1.0)


_stop_beating = threading.Event()


def _counters(client) -> dict:
  return dict(client.key_value_dir_get(_HEARTBEAT_KEY))


def wait_if_a_peer_was_lost(error: BaseException) -> None:
  """In a multi-process run, first makes sure that `error` is not the echo of a lost process.

  A collective or a checkpoint write whose peer died fails with an error of its own (a gloo
  read error, a missing file) before JAX's coordination service names the lost process and
  ends this one (peer_guard prints that line). When a peer's heartbeat counter stands still
  for 3 s, this waits for that end (the heartbeat timeout plus a margin); otherwise it returns
  at once, and the caller reports `error`.
  """
  del error   # whatever it says, a lost peer explains it
  if jax.process_count() < 2:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  client = jax_distributed.global_state.client
  try:
    before = _counters(client)
    time.sleep(3.0)
    after = _counters(client)
    lost = len(after) < jax.process_count() or any(after[k] == v for k, v in before.items())
  except Exception:  # pylint: disable=broad-except
    lost = True        # the coordinator itself is gone
  if lost:
    time.sleep((_heartbeat_timeout_s or JAX_HEARTBEAT_TIMEOUT_S) + 30)


__all__ = ['initialize', 'settings', 'wait_if_a_peer_was_lost', 'FIELDS']
