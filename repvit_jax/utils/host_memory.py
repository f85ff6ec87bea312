"""Huge pages for XLA:CPU's per-step buffers, so that a step does not fault in every 4 KiB page.

XLA:CPU allocates a compiled step's temporary buffer with `malloc` on every call and frees it
after. glibc serves an allocation that large with a fresh `mmap` and returns it with `munmap`,
so every step the kernel faults in and zeroes every page again.

glibc's tunable `glibc.malloc.hugetlb=1` (glibc 2.35+) makes malloc ask for transparent huge
pages (`madvise(MADV_HUGEPAGE)`) on the memory it maps: one fault per 2 MiB instead of per
4 KiB. glibc reads its tunables only when a process starts, so `restart_with_huge_pages()`
re-executes the process (same interpreter, arguments and process id) with the tunable added
to `GLIBC_TUNABLES`; the trainer does it first thing on CPU hosts.

An earlier design made malloc keep freed memory instead (`mallopt`: one arena, no `mmap`, no
trimming): no page faults, but every thread of XLA and tf.data then takes the one arena's lock,
which slowed small models' training (benchmarks/README.md, "Host memory on the CPU").
Set REPVIT_JAX_HUGE_PAGES=0 to leave malloc as it is.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Optional, Sequence

ENV_SWITCH = 'REPVIT_JAX_HUGE_PAGES'
TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def runs_on_cpu(platforms: Optional[str] = None) -> bool:
  """Whether JAX will compute on the CPU, decided without importing JAX or starting a backend.

  Args:
    platforms: JAX's platform list; None reads the `JAX_PLATFORMS` environment variable.
  Returns:
    True if the list names only cpu, or, with no list, if no accelerator plugin (CUDA, ROCm,
    TPU) is installed.
  """
  if platforms is None:
    platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms.strip():
    return all(p.strip() == 'cpu' for p in platforms.split(','))
  if importlib.util.find_spec('libtpu') is not None:
    return False
  return not list(importlib.metadata.entry_points(group='jax_plugins'))


def huge_pages_state(environ=None, thp_mode_file: str = _THP_MODE) -> str:
  """'on' if this process's malloc asks for huge pages; otherwise why it does not and whether
  a restart would change that: 'restart' (it would), or a reason ('switched off by ...',
  'GLIBC_TUNABLES sets glibc.malloc.hugetlb=0', 'not glibc',
  'glibc 2.31 has no hugetlb tunable (2.35+)', 'transparent huge pages are off')."""
  environ = os.environ if environ is None else environ
  if environ.get(ENV_SWITCH, '1') == '0':
    return f'switched off by {ENV_SWITCH}=0'
  for tunable in environ.get('GLIBC_TUNABLES', '').split(':'):
    if tunable == TUNABLE:
      return 'on'
    if tunable.startswith('glibc.malloc.hugetlb='):
      return f'GLIBC_TUNABLES sets {tunable}'
  libc, version = platform.libc_ver()
  if platform.system() != 'Linux' or libc != 'glibc':
    return 'not glibc'
  if tuple(int(part) for part in version.split('.')[:2]) < (2, 35):
    return f'glibc {version} has no hugetlb tunable (2.35+)'
  try:
    with open(thp_mode_file, encoding='utf-8') as f:
      if '[never]' in f.read():
        return 'transparent huge pages are off'
  except OSError:
    return 'transparent huge pages are off'
  return 'restart'


def restart_with_huge_pages(argv: Optional[Sequence[str]] = None) -> str:
  """Re-executes this process with `glibc.malloc.hugetlb=1` when that would change anything.

  Call it before JAX starts a backend and before any thread exists (first thing in a command):
  the process is replaced, keeping its id, environment and command line (`argv`, default the
  interpreter's own `sys.orig_argv`). Returns only when no restart happens, with
  `huge_pages_state()`: 'on' in the restarted process.
  """
  state = huge_pages_state()
  if state != 'restart':
    return state
  argv = list(sys.orig_argv if argv is None else argv)
  tunables = [t for t in os.environ.get('GLIBC_TUNABLES', '').split(':') if t] + [TUNABLE]
  os.environ['GLIBC_TUNABLES'] = ':'.join(tunables)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable] + argv[1:])
  raise AssertionError('os.execv returned')   # unreachable: execv replaces the process
