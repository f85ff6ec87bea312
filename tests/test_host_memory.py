"""glibc keeps freed memory for XLA:CPU's next call (repvit_jax/utils/host_memory.py)."""

import os
import platform
import subprocess
import sys

import jax
import pytest

from repvit_jax.utils import host_memory

# A child process: optionally keeps freed memory, then runs a computation whose 64 MiB result
# XLA allocates on each call (and Python frees before the next), and prints what was done and
# the page faults of the third call.
CHILD = r'''
import resource, sys
from repvit_jax.utils import host_memory
done = host_memory.keep_freed_memory() if sys.argv[1] == 'keep' else 'default'
import jax, jax.numpy as jnp
step = jax.jit(lambda x: jnp.sin(jnp.tile(x, (64, 1))))
x = jnp.ones((1 << 12, 64), jnp.float32)
for _ in range(2):
  step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(x).block_until_ready()
print(done, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _faults(mode: str, **env):
  out = subprocess.run([sys.executable, '-c', CHILD, mode], capture_output=True, text=True,
                       check=True, env={**os.environ, **env}, timeout=120).stdout.split()
  return ' '.join(out[:-1]), int(out[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
def test_kept_memory_is_reused_without_page_faults():
  done, kept_faults = _faults('keep')
  assert done == 'kept'
  _, default_faults = _faults('default')
  # 64 MiB is 16384 pages of 4 KiB: glibc's default maps and faults them in on every call.
  assert default_faults > 8000, default_faults
  assert kept_faults < 1000, kept_faults
  done, _ = _faults('keep', REPVIT_JAX_KEEP_HOST_MEMORY='0')
  assert done == 'switched off by REPVIT_JAX_KEEP_HOST_MEMORY=0'


def test_too_late_once_jax_runs():
  jax.devices()
  assert host_memory.keep_freed_memory().startswith('too late')


@pytest.mark.parametrize('platforms,cpu', [('cpu', True), ('cuda,cpu', False), ('tpu', False),
                                           ('', True)])
def test_runs_on_cpu_follows_jax_platforms(platforms, cpu):
  # '' (unset) here: no accelerator plugin is installed on a CPU-only machine.
  assert host_memory.runs_on_cpu(platforms) is cpu
