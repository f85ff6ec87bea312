"""The train command restarts with a malloc that keeps XLA:CPU's step buffers on CPU hosts
(repvit_jax/utils/host_memory.py)."""

import os
import platform
import subprocess
import sys

import pytest

from repvit_jax.utils import host_memory

# A child process: optionally restarts (printing its process id before and after), then runs a
# computation whose 64 MiB result XLA allocates on each call (and Python frees before the
# next), and prints the state, whether mimalloc is mapped, the page faults of the third call
# and mimalloc's purge delay.
CHILD = r'''
import os, resource, sys
from repvit_jax.utils import host_memory
print('pid', os.getpid(), flush=True)
state = host_memory.restart_with_fast_malloc() if sys.argv[1] == 'restart' else 'default'
import jax, jax.numpy as jnp
step = jax.jit(lambda x: jnp.sin(jnp.tile(x, (64, 1))))
x = jnp.ones((1 << 12, 64), jnp.float32)
for _ in range(2):
  step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
with open('/proc/self/maps') as f:
  mapped = 'libmimalloc' in f.read()
print(state, mapped, faults, os.environ.get('MIMALLOC_PURGE_DELAY'), sep='|')
'''
# The variables a restart sets, cleared so that each child starts from glibc's default.
_SET_BY_RESTART = ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MIMALLOC_PURGE_DELAY', host_memory.CHOICE)


def _child(mode: str, **env):
  environ = {k: v for k, v in os.environ.items() if k not in _SET_BY_RESTART}
  lines = subprocess.run([sys.executable, '-c', CHILD, mode], capture_output=True, text=True,
                         check=True, env={**environ, **env}, timeout=120).stdout.splitlines()
  pids = [line.split()[1] for line in lines if line.startswith('pid ')]
  state, mapped, faults, purge_delay = lines[-1].split('|')
  return pids, state, mapped == 'True', int(faults), purge_delay


@pytest.fixture(scope='module')
def default_faults():
  """Page faults of the third call with glibc's malloc as it is."""
  return _child('default')[3]


@pytest.mark.skipif(host_memory.mimalloc_library() is None,
                    reason=f'{host_memory.MIMALLOC_PACKAGE} is not installed here')
def test_restarted_process_reuses_its_buffers_with_mimalloc(default_faults):
  pids, state, mapped, faults, purge_delay = _child('restart')
  # The same process, restarted once, now with mimalloc loaded.
  assert len(pids) == 2 and pids[0] == pids[1], pids
  assert state == 'mimalloc' and mapped and purge_delay == '1000'
  # 64 MiB is 16384 pages of 4 KiB: glibc's default maps and faults them in on every call;
  # mimalloc hands the freed block to the next call, already mapped.
  assert default_faults > 8000, default_faults
  assert faults < 200, faults


@pytest.mark.skipif(host_memory.malloc_state({host_memory.CHOICE: 'huge_pages'})
                    != 'restart for huge pages', reason='no huge pages for malloc here: '
                    f"{host_memory.malloc_state({host_memory.CHOICE: 'huge_pages'})}")
def test_restarted_process_maps_its_buffers_in_huge_pages(default_faults):
  pids, state, mapped, faults, _ = _child('restart', REPVIT_JAX_MALLOC='huge_pages')
  assert len(pids) == 2 and pids[0] == pids[1], pids
  assert state == 'huge pages' and not mapped
  # In 2 MiB pages it is 32 faults (more where the kernel has no free huge page at hand).
  assert faults < default_faults / 4, (faults, default_faults)


def test_malloc_left_as_it_is_when_asked():
  pids, state, mapped, _, _ = _child('restart', REPVIT_JAX_MALLOC='default')
  assert len(pids) == 1 and state == 'left as it is by REPVIT_JAX_MALLOC=default' and not mapped


LIB = '/site-packages/cmeel.prefix/lib/libmimalloc.so'


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
@pytest.mark.parametrize('environ,thp,library,state', [
    ({}, 'always [madvise] never', LIB, 'restart for mimalloc'),
    ({'REPVIT_JAX_MALLOC': 'mimalloc'}, '[never]', LIB, 'restart for mimalloc'),
    ({}, 'always [madvise] never', None, 'restart for huge pages'),
    ({'REPVIT_JAX_MALLOC': 'huge_pages'}, '[madvise]', LIB, 'restart for huge pages'),
    ({}, 'always madvise [never]', None, 'transparent huge pages are off'),
    ({'LD_PRELOAD': LIB}, '[madvise]', LIB, 'mimalloc'),
    ({'LD_PRELOAD': '/usr/lib/libjemalloc.so.2 /lib/x.so'}, '[madvise]', LIB,
     'LD_PRELOAD already sets /usr/lib/libjemalloc.so.2'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1'}, 'never', None,
     'huge pages'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, '[madvise]', None,
     'GLIBC_TUNABLES sets glibc.malloc.hugetlb=0'),
    ({'REPVIT_JAX_MALLOC': 'default'}, '[always]', LIB,
     'left as it is by REPVIT_JAX_MALLOC=default'),
])
def test_malloc_state(tmp_path, environ, thp, library, state):
  if (tuple(map(int, platform.libc_ver()[1].split('.')[:2])) < (2, 35)
      and state == 'restart for huge pages'):
    state = f'glibc {platform.libc_ver()[1]} has no hugetlb tunable (2.35+)'
  mode_file = tmp_path / 'enabled'
  mode_file.write_text(thp + '\n')
  assert host_memory.malloc_state(environ, str(mode_file), library) == state


@pytest.mark.parametrize('environ,message', [
    ({'REPVIT_JAX_MALLOC': 'jemalloc'},
     "REPVIT_JAX_MALLOC='jemalloc': choose one of auto, mimalloc, huge_pages, default"),
    ({'REPVIT_JAX_MALLOC': 'mimalloc'}, 'REPVIT_JAX_MALLOC=mimalloc but the cmeel-mimalloc '
     'package is not installed: pip install cmeel-mimalloc, or unset REPVIT_JAX_MALLOC'),
])
def test_malloc_choice_errors_say_what_to_do(environ, message):
  with pytest.raises(ValueError) as caught:
    host_memory.malloc_state(environ, library=None)
  assert str(caught.value) == message


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


@pytest.mark.parametrize('environ,words', [
    ({'LD_PRELOAD': LIB}, 'mimalloc'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1', 'REPVIT_JAX_MALLOC': 'huge_pages'},
     'glibc, huge pages'),
    ({'REPVIT_JAX_MALLOC': 'default'},
     "glibc's default (left as it is by REPVIT_JAX_MALLOC=default)"),
    ({'REPVIT_JAX_MALLOC': 'jemalloc'}, "glibc's default (REPVIT_JAX_MALLOC='jemalloc': choose "
     'one of auto, mimalloc, huge_pages, default)'),
])
def test_describe_names_the_malloc_for_the_log(environ, words):
  assert host_memory.describe(environ) == words
