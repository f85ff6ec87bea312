"""One line, instead of a C++ stack dump, when a process of a multi-process run is lost.

When a peer dies (or never starts), JAX's coordination service stops the survivors from C++:
`Terminating process because the JAX distributed service detected fatal errors`, then a
stack dump and SIGABRT. Nothing in Python runs after that, so the line cannot come from this
process: `install` routes this process's stderr through a small helper process (this module
run as a script) that copies every line through until it sees that message, swallows the
dump, and, once the process is gone, prints one `error:` line: which process stopped (or
that not all of them joined), and which checkpoint is the last intact one.

The time to notice is `config.distributed.heartbeat_timeout_s` (a lost process) or
`join_timeout_s` (one that never joined), JAX's own timeouts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

FATAL = b'Terminating process because the JAX distributed service detected fatal errors'
# The coordination service names the processes that stopped sending heartbeats in a message
# whose next lines are their ids, one per line.
UNHEALTHY = b'The following tasks are unhealthy (stopped sending heartbeats):'
# E-lines that come just before the fatal message, part of the same dump.
DUMP_STARTS = (b'Use error polling to propagate the following error to all tasks',
               b'Shutdown barrier in coordination service has failed',
               b'Polled an error from coordination service')
TIMED_OUT_TASK = re.compile(rb'Task (\d+) heartbeat timeout')


def install(process_id: int, num_processes: int, coordinator: str, join_timeout_s: int,
            heartbeat_timeout_s: int, checkpoints: str | None) -> None:
  """From now on this process's stderr (file descriptor 2) goes through the guard.

  Args:
    process_id, num_processes, coordinator: this process and the run, for the message.
    join_timeout_s, heartbeat_timeout_s: the timeouts JAX was given, for the message.
    checkpoints: the checkpoint directory whose newest finished step the message names.
  """
  context = dict(process_id=process_id, num_processes=num_processes, coordinator=coordinator,
                 join_timeout_s=join_timeout_s, heartbeat_timeout_s=heartbeat_timeout_s,
                 checkpoints=checkpoints)
  sys.stderr.flush()
  read_end, write_end = os.pipe()
  original = os.dup(2)
  subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, os.path.abspath(__file__), json.dumps(context)], stdin=read_end,
      stdout=original, stderr=subprocess.DEVNULL, close_fds=True)
  os.close(read_end)
  os.close(original)
  os.dup2(write_end, 2)
  os.close(write_end)


def _finished_steps(directory: str | None) -> list[int]:
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if directory else []
  except OSError:
    return []


def message(context: dict, dump: bytes) -> str:
  """The one line for the fatal `dump` (everything from the first fatal message on)."""
  n = context['num_processes']
  me = context['process_id']
  steps = _finished_steps(context['checkpoints'])
  if b'RegisterTask' in dump and b'DEADLINE_EXCEEDED' in dump:
    return (f'error: not all {n} processes joined at {context["coordinator"]} within '
            f'{context["join_timeout_s"]} s (this is process {me}); start every process with '
            'the same --config.distributed settings, or raise '
            '--config.distributed.join_timeout_s')
  missing = []
  at = dump.find(UNHEALTHY)
  if at >= 0:
    for line in dump[at + len(UNHEALTHY):].splitlines()[1:]:
      if not line.strip().isdigit():
        break
      missing.append(int(line.strip()))
  missing = missing or sorted({int(t) for t in TIMED_OUT_TASK.findall(dump)})
  if missing:
    who = ', '.join(str(p) for p in missing)
    what = (f'process{"es" if len(missing) > 1 else ""} {who} of {n} stopped answering '
            f'(no heartbeat for {context["heartbeat_timeout_s"]} s)')
  elif me != 0:
    what = f'process 0 of {n}, the coordinator at {context["coordinator"]}, is gone'
  else:
    what = f'another process of the {n} stopped'
  if steps:
    kept = f'the last checkpoint, step {steps[-1]} in {context["checkpoints"]}, is intact'
  else:
    kept = 'no checkpoint had been saved yet'
  return (f'error: {what}; process {me} stopped too, and {kept}: start all {n} processes '
          'again with the same workdir to resume')


def _guard(context: dict) -> None:
  """Copies stdin to stdout until the fatal message; then, at end of input, the one line."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the trainer's to handle
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  source, sink = sys.stdin.buffer, sys.stdout.buffer
  dump = []
  for line in iter(source.readline, b''):
    if not dump and (FATAL in line or any(start in line for start in DUMP_STARTS)):
      dump.append(line)
      continue
    if dump:
      dump.append(line)
      continue
    sink.write(line)
    sink.flush()
  if dump and any(FATAL in line for line in dump):
    sink.write((message(context, b''.join(dump)) + '\n').encode())
  else:
    sink.write(b''.join(dump))     # not the fatal stop after all: nothing is lost
  sink.flush()


if __name__ == '__main__':
  _guard(json.loads(sys.argv[1]))
