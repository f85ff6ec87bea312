"""Shared test helpers: tiny model configs and non-trivial variables; one XLA cache for the
train.py processes the tests start."""

import importlib.util
import math
import os
import shutil
import sys
import tempfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repvit_jax import configs

CONFIGS = configs.DIRECTORY
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'benchmarks')


def benchmark(name: str):
  """A script of benchmarks/ as a module (`benchmark('models')`), loaded from its path once
  per process: benchmarks/ is a folder of scripts, not a package on the path."""
  module_name = f'benchmarks_{name}'
  if module_name not in sys.modules:
    spec = importlib.util.spec_from_file_location(module_name,
                                                  os.path.join(BENCHMARKS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
  return sys.modules[module_name]


@pytest.fixture(autouse=True)
def _rng_per_test(request):
  """A test module's global `RNG`, where it has one, is reseeded from each test's name, so
  that its values do not depend on which tests ran before it in the same worker."""
  if hasattr(request.module, 'RNG'):
    request.module.RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def load_config(name: str):
  """A packaged config by name and variant: load_config('vit_tiny.py:demo')."""
  return configs.load(name)

# A ViT small enough to compile in about a second: 32x32 images, 4x4 patches -> 64 tokens.
TINY_VIT = dict(patch_size=8, width=16, depth=2, num_heads=2, mlp_ratio=2.0)


def nontrivial_variables(model, images, seed=0):
  """Non-trivial variables for `model`, drawn with NumPy from its abstract tree: nothing is
  compiled or run op by op (an eager `init` of a small LeViT takes ~15 s on 2 cores).

  Kernels ~ N(0, 1 / fan_in); norm/BN scales ~ 1 + N(0, 0.2); other vectors (biases, layer
  scales, affine shifts, tokens) ~ N(0, 0.5); BN running means ~ N(0, 0.5), variances ~
  U(0.5, 2). Every floating leaf takes the images' dtype (float64 tests get float64 weights).
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = getattr(path[-1], 'key', '')
    shape = leaf.shape
    if name == 'var':
      value = rng.uniform(0.5, 2.0, shape)
    elif len(shape) >= 2:
      value = rng.normal(0.0, 1.0 / math.sqrt(np.prod(shape[:-1])), shape)
    elif name == 'scale':
      value = 1.0 + rng.normal(0.0, 0.2, shape)
    else:
      value = rng.normal(0.0, 0.5, shape)
    dtype = images.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.dtype
    return jnp.asarray(value, dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture
def tiny_images():
  return jax.random.normal(jax.random.key(42), (2, 32, 32, 3))


#: XLA's CPU backend at optimisation level 0 for everything the tests compile, in the workers
#: and in the processes they start: compiling is most of the suite's time (a small module-
#: imitation train step: 10.8 -> 6.8 s; a train-state init: 8.4 -> 1.9 s), the programs are
#: tiny, and LLVM's level changes how fast the code runs, at most the last bits of rounding,
#: not what it computes. Benchmarks never run with it.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a test's subprocess with `devices` CPU devices."""
  return f'{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}'


def pytest_configure(config):
  """The tests start ~40 train.py processes, most compiling the same tiny programs: JAX's
  persistent compilation cache (keyed by the program, so it never changes what runs) lets
  them compile each once. Set in the first pytest process (the xdist controller, before it
  starts its workers), it reaches workers and their subprocesses through the environment."""
  del config
  if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    cache = tempfile.mkdtemp(prefix='repvit-jax-tests-xla-cache-')
    os.environ['REPVIT_JAX_TEST_XLA_CACHE'] = cache
    os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


def pytest_unconfigure(config):
  if not hasattr(config, 'workerinput') and os.environ.get('REPVIT_JAX_TEST_XLA_CACHE'):
    # Only the process that made it (the controller) removes it.
    shutil.rmtree(os.environ['REPVIT_JAX_TEST_XLA_CACHE'], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Longest first: grouped (xdist_group) tests, then slow ones, then the rest, so that no
  worker starts a two-minute test when the others are about to finish."""
  del config
  def rank(item):
    if item.get_closest_marker('xdist_group'):
      return 0
    return 1 if item.get_closest_marker('slow') else 2
  items.sort(key=rank)     # stable: the order within each rank is kept
