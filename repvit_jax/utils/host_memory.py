"""A malloc that keeps XLA:CPU's per-step buffers, so that a step does not fault them in again.

XLA:CPU allocates a compiled step's temporary buffer (all of a train step's activations) with
`malloc` on every call, on one of its worker threads, and frees it after. glibc serves a block
that large from a fresh `mmap` (a worker thread's arena cannot hold it) and returns it with
`munmap`, so every step the kernel faults in and zeroes every page again, system time taken
from the step (figures: benchmarks/README.md, "Host memory on the CPU").

So the trainer restarts itself once, first thing on CPU hosts (same interpreter, arguments and
process id), with one of:

1. **mimalloc** (the `cmeel-mimalloc` package, a dependency on Linux) preloaded
   (`LD_PRELOAD`), told to keep freed memory mapped for a second before it goes back to the
   system (`MIMALLOC_PURGE_DELAY=1000`): the next step reuses the same pages, with few
   faults, and each thread allocates from its own heap, without a shared lock.
2. Where mimalloc is not installed, glibc's `glibc.malloc.hugetlb=1` tunable (glibc 2.35+):
   transparent huge pages, one fault per 2 MiB instead of per 4 KiB; the kernel still zeroes
   every page each step.

Keeping freed memory with glibc alone needs one arena (`mallopt`: one arena, no `mmap`, no
trimming; the trainer's first design): no faults, but every thread of XLA and tf.data then
takes that arena's lock, which halved small models' training speed.

`REPVIT_JAX_MALLOC` chooses: `auto` (the default: mimalloc if installed, else huge pages),
`mimalloc`, `huge_pages`, or `default` (leave malloc as it is). An `LD_PRELOAD` that already
names an allocator (jemalloc, tcmalloc, mimalloc) is left as it is.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Mapping, Optional, Sequence

CHOICE = 'REPVIT_JAX_MALLOC'
CHOICES = ('auto', 'mimalloc', 'huge_pages', 'default')
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
# mimalloc's option: milliseconds freed memory stays mapped before it goes back to the system.
PURGE_DELAY = 'MIMALLOC_PURGE_DELAY'
# A second outlasts the gap between two steps, so the next step reuses the buffers, and a
# buffer no thread takes again goes back soon: with never (-1) the resident memory grew by a
# whole temporary buffer each time another worker thread happened to allocate it.
TRAINER_PURGE_DELAY_MS = 1000
MIMALLOC_PACKAGE = 'cmeel-mimalloc'
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


def mimalloc_library() -> Optional[str]:
  """The path of the installed `cmeel-mimalloc` package's `libmimalloc.so`, or None (also
  where the path has a space or colon, which `LD_PRELOAD` would split)."""
  try:
    files = importlib.metadata.files(MIMALLOC_PACKAGE) or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    if file.name == 'libmimalloc.so':
      path = os.path.realpath(file.locate())
      if os.path.isfile(path) and not any(c in path for c in ' :\t'):
        return path
  return None


def _preloaded(environ: Mapping[str, str]):
  """The allocator libraries named in `LD_PRELOAD`."""
  entries = environ.get('LD_PRELOAD', '').replace(':', ' ').split()
  return [e for e in entries if 'malloc' in os.path.basename(e)]   # jemalloc, tcmalloc, ...


def _huge_pages_state(environ: Mapping[str, str], thp_mode_file: str) -> str:
  for tunable in environ.get('GLIBC_TUNABLES', '').split(':'):
    if tunable == HUGE_PAGES_TUNABLE:
      return 'huge pages'
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
  return 'restart for huge pages'


def malloc_state(environ: Optional[Mapping[str, str]] = None, thp_mode_file: str = _THP_MODE,
                 library: Optional[str] = 'installed') -> str:
  """What this process's malloc is, or what a restart would make it.

  Args:
    environ: the environment to judge (default this process's).
    thp_mode_file: the kernel's transparent huge page mode.
    library: mimalloc's library path; 'installed' looks for the `cmeel-mimalloc` package,
      None means it is not installed.
  Returns:
    'mimalloc' or 'huge pages' (this process has it), 'restart for mimalloc' or 'restart for
    huge pages' (`restart_with_fast_malloc` would restart), or why it leaves malloc as it is
    (e.g. 'left as it is by REPVIT_JAX_MALLOC=default', 'LD_PRELOAD already sets
    /usr/lib/libjemalloc.so.2', 'transparent huge pages are off').
  Raises:
    ValueError: `REPVIT_JAX_MALLOC` is not one of `CHOICES`, or asks for mimalloc where it is
      not installed.
  """
  environ = os.environ if environ is None else environ
  choice = environ.get(CHOICE, 'auto')
  if choice not in CHOICES:
    raise ValueError(f'{CHOICE}={choice!r}: choose one of {", ".join(CHOICES)}')
  if choice == 'default':
    return f'left as it is by {CHOICE}=default'
  preloaded = _preloaded(environ)
  if preloaded:
    if any('mimalloc' in os.path.basename(p) for p in preloaded):
      return 'mimalloc'
    return f'LD_PRELOAD already sets {" ".join(preloaded)}'
  if choice in ('auto', 'mimalloc'):
    library = mimalloc_library() if library == 'installed' else library
    if library:
      return 'restart for mimalloc'
    if choice == 'mimalloc':
      raise ValueError(f'{CHOICE}=mimalloc but the {MIMALLOC_PACKAGE} package is not '
                       f'installed: pip install {MIMALLOC_PACKAGE}, or unset {CHOICE}')
  return _huge_pages_state(environ, thp_mode_file)


def describe(environ: Optional[Mapping[str, str]] = None) -> str:
  """This process's malloc in a few words, for the trainer's log: 'mimalloc', 'glibc, huge
  pages', or "glibc's default (<why>)"."""
  try:
    state = malloc_state(environ)
  except ValueError as error:
    return f"glibc's default ({error})"
  if state == 'mimalloc':
    return state
  if state == 'huge pages':
    return 'glibc, huge pages'
  if state.startswith('restart for '):
    state = f'{state[len("restart for "):]} needs host_memory.restart_with_fast_malloc() first'
  return f"glibc's default ({state})"


def restart_with_fast_malloc(argv: Optional[Sequence[str]] = None,
                             purge_delay_ms: int = TRAINER_PURGE_DELAY_MS) -> str:
  """Re-executes this process with mimalloc (else huge pages) when that would change anything.

  Call it before JAX starts a backend and before any thread exists (first thing in a command):
  the process is replaced, keeping its id, environment and command line (`argv`, default the
  interpreter's own `sys.orig_argv`). `purge_delay_ms`: how long mimalloc keeps freed memory
  mapped (`MIMALLOC_PURGE_DELAY`, unless the environment sets it already). Returns only when
  no restart happens, with `malloc_state()`: 'mimalloc' or 'huge pages' in the restarted
  process.
  """
  state = malloc_state()
  if not state.startswith('restart for '):
    return state
  if state == 'restart for mimalloc':
    os.environ['LD_PRELOAD'] = ' '.join(
        [mimalloc_library()] + os.environ.get('LD_PRELOAD', '').split())
    os.environ.setdefault(PURGE_DELAY, str(purge_delay_ms))
  else:
    tunables = [t for t in os.environ.get('GLIBC_TUNABLES', '').split(':') if t]
    os.environ['GLIBC_TUNABLES'] = ':'.join(tunables + [HUGE_PAGES_TUNABLE])
  argv = list(sys.orig_argv if argv is None else argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable] + argv[1:])
  raise AssertionError('os.execv returned')   # unreachable: execv replaces the process
