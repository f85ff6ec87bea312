"""Shared benchmark plumbing: timing compiled functions, the machine record, table and JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, Dict, List, Sequence

import jax


def cpu_model() -> str:
  """The host CPU's model name ('Intel(R) Xeon(R) Processor', 'AMD EPYC 7B13', ...): CPU
  timings are comparable only within one model."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def machine() -> Dict[str, Any]:
  """What the numbers were measured on."""
  devices = jax.devices()
  return {
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [d.device_kind for d in devices],
      'cpu_model': cpu_model(),
      'cpu_count': os.cpu_count(),
      'platform': platform.platform(),
      'python': platform.python_version(),
  }


def time_call(fn: Callable[[], Any], *, warmup: int = 2, min_seconds: float = 2.0,
              min_iters: int = 5) -> float:
  """Seconds per call of an already-compiled `fn` (median of timed calls after warm-up)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times: List[float] = []
  start = time.perf_counter()
  while len(times) < min_iters or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  times.sort()
  return times[len(times) // 2]


# How long mimalloc keeps freed memory mapped in a benchmark that restarts with it
# (host_memory; the trainer: a second). Contenders take turns of seconds: a longer delay keeps
# each one's buffers through the others' turns, as consecutive steps keep them in the trainer.
PURGE_DELAY_MS = 10_000


def time_interleaved(fns: Dict[str, Callable[[], Any]], *, warmup: int = 2,
                     rounds: int = 7, calls_per_turn: int = 1,
                     settle_s: float = 0.1) -> Dict[str, float]:
  """Median seconds per call of several compiled functions, timed in alternation.

  Alternating A, B, C, A, B, C, ... spreads any background load evenly over the contenders,
  so their ratio is fair even on a busy machine. Each round starts one contender later (A B C,
  B C A, C A B, ...), so no contender is always the one after a given other. Each turn starts
  `settle_s` after the last: a runtime's idle worker threads keep spinning for a while after
  its call returns (PyTorch's OpenMP threads: GOMP's default spin count of PAUSE instructions),
  and on a machine with few cores they take a core from whatever is timed next; the pause lets
  them go to sleep first. A turn is `calls_per_turn` calls (for functions of a few
  milliseconds), timed together.
  """
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  names = list(fns)
  times: Dict[str, List[float]] = {name: [] for name in fns}
  for round_index in range(rounds):
    start = round_index % len(names)
    for name in names[start:] + names[:start]:
      time.sleep(settle_s)
      t0 = time.perf_counter()
      for _ in range(calls_per_turn):
        jax.block_until_ready(fns[name]())
      times[name].append((time.perf_counter() - t0) / calls_per_turn)
  return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def print_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> None:
  """Prints rows as an aligned text table with the given columns."""
  cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  print('  '.join(c.ljust(w) for c, w in zip(columns, widths)))
  for r in cells:
    print('  '.join(v.ljust(w) for v, w in zip(r, widths)))


def write_json(path: str, payload: Dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(payload, f, indent=2)
  print(f'wrote {path}')


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:,.1f}' if abs(value) >= 10 else f'{value:.3g}'
  if isinstance(value, int):
    return f'{value:,}'
  return '' if value is None else str(value)
