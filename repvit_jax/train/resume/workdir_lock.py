"""One training run per workdir: `workdir/.lock`, held for the duration of `train.run`.

The lock file is JSON, `{"host", "pid", "started", "processes"}`, written by process 0 for the
whole process group (the other processes of a multi-host run learn the outcome from it, so all
of them stop together). A second run finds it and stops with one line naming the holder. A lock
left by a run that died without releasing it is taken over with a warning: on the same host
when its pid is gone; from another host when it has not been refreshed (the holder touches it
as it logs) for `STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Callable, Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = '.lock'
# A run refreshes its lock at every log line; a lock from another host this old is a dead run's.
STALE_AFTER_S = 900.0


class WorkdirInUse(ValueError):
  """Another live training run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True      # someone else's live process
  return True


def _read(path: str) -> Optional[dict]:
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    return record if isinstance(record, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}        # a lock being written, or a torn one: its mtime still tells its age


def _stale(record: dict, path: str) -> bool:
  try:
    age = time.time() - os.path.getmtime(path)
  except OSError:
    return True
  if record.get('host') == socket.gethostname() and isinstance(record.get('pid'), int):
    return not _pid_alive(record['pid'])
  return age > STALE_AFTER_S


def _describe(record: dict) -> str:
  started = record.get('started')
  when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started)) if isinstance(
      started, (int, float)) else 'unknown time'
  return f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, started {when}"


class WorkdirLock:
  """The lock of one run (see the module docstring). Use `hold(workdir)`."""

  def __init__(self, workdir: str, warn: Callable[[str], None]):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.warn = warn
    self.owned = False

  def acquire(self) -> None:
    """Takes the lock (process 0) and shares the outcome with every process.

    Raises:
      WorkdirInUse: a live run holds it (the message names it and what to do).
    """
    error = ''
    if jax.process_index() == 0:
      error = self._acquire_here()
    if jax.process_count() > 1:
      flag = multihost_utils.broadcast_one_to_all(np.asarray(bool(error)))
      if bool(flag) and not error:
        error = f'{self.path}: the workdir is held by another run (see process 0)'
    if error:
      raise WorkdirInUse(error)

  def _acquire_here(self) -> str:
    record = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time(),
              'processes': jax.process_count()}
    payload = json.dumps(record).encode()
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(self.path)
        if holder is None:
          continue                     # released meanwhile: try again
        if not _stale(holder, self.path):
          return (f'workdir {os.path.dirname(self.path)} is in use by another training run '
                  f'({_describe(holder)}; lock file {self.path}); wait for it to finish or use '
                  'another --workdir (delete the lock file only if that run is gone)')
        self.warn(f'warning: taking over the lock of a training run that is gone '
                  f'({_describe(holder)}; {self.path})')
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      with os.fdopen(fd, 'wb') as f:
        f.write(payload)
      self.owned = True
      return ''
    return f'could not take the lock {self.path} (another run is starting?); try again'

  def refresh(self) -> None:
    """Marks the lock as alive (its mtime), for runs on other hosts judging staleness."""
    if self.owned:
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    if self.owned:
      holder = _read(self.path) or {}
      if holder.get('pid') == os.getpid() and holder.get('host') == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
      self.owned = False


@contextlib.contextmanager
def hold(workdir: str, warn: Callable[[str], None]) -> Iterator[WorkdirLock]:
  """Holds `workdir`'s lock for the duration of the block (raises WorkdirInUse)."""
  lock = WorkdirLock(workdir, warn)
  lock.acquire()
  try:
    yield lock
  finally:
    lock.release()


__all__ = ['hold', 'WorkdirLock', 'WorkdirInUse', 'LOCK_FILE', 'STALE_AFTER_S']
