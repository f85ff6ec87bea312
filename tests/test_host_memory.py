"""The train command restarts with huge pages for malloc on CPU hosts (repvit_jax/utils/host_memory.py)."""

import os
import platform
import subprocess
import sys

import pytest

from repvit_jax.utils import host_memory

# A child process: optionally restarts with huge pages (printing its process id before and
# after), then runs a computation whose 64 MiB result XLA allocates on each call (and Python
# frees before the next), and prints the state and the page faults of the third call.
CHILD = r'''
import os, resource, sys
from repvit_jax.utils import host_memory
print('pid', os.getpid(), flush=True)
state = host_memory.restart_with_huge_pages() if sys.argv[1] == 'restart' else 'default'
import jax, jax.numpy as jnp
step = jax.jit(lambda x: jnp.sin(jnp.tile(x, (64, 1))))
x = jnp.ones((1 << 12, 64), jnp.float32)
for _ in range(2):
  step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(x).block_until_ready()
print(state, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, sep='|')
'''


def _child(mode: str, **env):
  environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  lines = subprocess.run([sys.executable, '-c', CHILD, mode], capture_output=True, text=True,
                         check=True, env={**environ, **env}, timeout=120).stdout.splitlines()
  pids = [line.split()[1] for line in lines if line.startswith('pid ')]
  state, faults = lines[-1].split('|')
  return pids, state, int(faults)


@pytest.mark.skipif(host_memory.huge_pages_state({}) != 'restart',
                    reason=f'no huge pages for malloc here: {host_memory.huge_pages_state({})}')
def test_restarted_process_maps_its_buffers_in_huge_pages():
  pids, state, huge_faults = _child('restart')
  # The same process, restarted once, now with the tunable.
  assert len(pids) == 2 and pids[0] == pids[1], pids
  assert state == 'on'
  _, state, default_faults = _child('default')
  # 64 MiB is 16384 pages of 4 KiB: glibc's default maps and faults them in on every call;
  # in 2 MiB pages it is 32 faults (more where the kernel has no free huge page at hand).
  assert default_faults > 8000, default_faults
  assert huge_faults < default_faults / 4, (huge_faults, default_faults)
  pids, state, _ = _child('restart', REPVIT_JAX_HUGE_PAGES='0')
  assert len(pids) == 1 and state == 'switched off by REPVIT_JAX_HUGE_PAGES=0'


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
@pytest.mark.parametrize('environ,thp,state', [
    ({}, 'always [madvise] never', 'restart'),
    ({}, 'always madvise [never]', 'transparent huge pages are off'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1'}, 'never', 'on'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, '[madvise]',
     'GLIBC_TUNABLES sets glibc.malloc.hugetlb=0'),
    ({'REPVIT_JAX_HUGE_PAGES': '0'}, '[always]', 'switched off by REPVIT_JAX_HUGE_PAGES=0'),
])
def test_huge_pages_state(tmp_path, environ, thp, state):
  if tuple(map(int, platform.libc_ver()[1].split('.')[:2])) < (2, 35) and state == 'restart':
    state = f'glibc {platform.libc_ver()[1]} has no hugetlb tunable (2.35+)'
  mode_file = tmp_path / 'enabled'
  mode_file.write_text(thp + '\n')
  assert host_memory.huge_pages_state(environ, str(mode_file)) == state


def test_train_command_restarts_before_importing_jax():
  # The restart re-runs the interpreter's start: cheap only while nothing heavy is imported.
  code = ('import sys, repvit_jax.train.command; '
          'print(sorted(m for m in ("jax", "flax", "tensorflow") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       timeout=120).stdout
  assert out.strip() == '[]', out


@pytest.mark.parametrize('platforms,cpu', [('cpu', True), ('cuda,cpu', False), ('tpu', False),
                                           ('', True)])
def test_runs_on_cpu_follows_jax_platforms(platforms, cpu):
  # '' (unset) here: no accelerator plugin is installed on a CPU-only machine.
  assert host_memory.runs_on_cpu(platforms) is cpu
