"""Keeping freed host memory for reuse, so that XLA:CPU's per-step buffers cost no page faults.

XLA:CPU allocates a compiled step's temporary buffer (about 2 GiB for ViT-Tiny's train step at
batch 32 and 224x224) with `malloc` on every call and frees it after. glibc's malloc serves an
allocation that large with a fresh `mmap` and returns it with `munmap`, so every step the
kernel faults in and zeroes every page again: half a million page faults per ViT-Tiny step,
about a quarter of the CPU time (figures: benchmarks/README.md). PyTorch's eager steps, made of
many smaller allocations, reuse glibc's heap and pay almost none.

`keep_freed_memory()` tells glibc to serve every thread from its main heap (one arena), never
to `mmap` an allocation, and never to return freed memory to the system, so the second step
reuses the first step's pages. The process then keeps its peak heap until it exits, which a
training process does anyway.

It must run before JAX starts its CPU client: the client's threads take their malloc arena at
their first allocation, and a thread that already has one keeps it. The trainer calls it when
JAX will compute on the CPU (`runs_on_cpu`); on GPU and TPU hosts the steps' buffers are in
device memory, and many input-pipeline threads are better served by glibc's per-thread arenas.
Set REPVIT_JAX_KEEP_HOST_MEMORY=0 to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
from typing import Optional

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1

ENV_SWITCH = 'REPVIT_JAX_KEEP_HOST_MEMORY'


def runs_on_cpu(platforms: Optional[str] = None) -> bool:
  """Whether JAX will compute on the CPU, decided without starting a backend.

  Args:
    platforms: JAX's platform list (`JAX_PLATFORMS`); None reads JAX's setting.
  Returns:
    True if the list names only cpu, or, with no list, if no accelerator plugin (CUDA, ROCm,
    TPU) is installed.
  """
  if platforms is None:
    import jax  # pylint: disable=import-outside-toplevel
    platforms = jax.config.jax_platforms or ''
  if platforms.strip():
    return all(p.strip() == 'cpu' for p in platforms.split(','))
  if importlib.util.find_spec('libtpu') is not None:
    return False
  return not list(importlib.metadata.entry_points(group='jax_plugins'))


def keep_freed_memory() -> str:
  """Makes glibc's malloc keep and reuse freed memory (one arena, no mmap, no trimming).

  Returns what was done, for the log: 'kept', or why not ('switched off by
  REPVIT_JAX_KEEP_HOST_MEMORY=0', 'not glibc', 'too late: JAX's backend is already running').
  """
  if os.environ.get(ENV_SWITCH, '1') == '0':
    return f'switched off by {ENV_SWITCH}=0'
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return 'not glibc'
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if xla_bridge.backends_are_initialized():
    return "too late: JAX's backend is already running"
  libc = ctypes.CDLL(None)
  done = [libc.mallopt(_M_ARENA_MAX, 1), libc.mallopt(_M_MMAP_MAX, 0),
          libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)]
  return 'kept' if all(done) else 'mallopt refused'
