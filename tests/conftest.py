"""Shared test helpers: tiny model configs and non-trivial variables; one XLA cache for the
train.py processes the tests start."""

import os
import shutil
import tempfile

import jax
import pytest

from repvit_jax import config_files
from repvit_jax.reparam import check

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def load_config(name: str):
  """A config file of configs/ by name and variant: load_config('vit_tiny.py:demo')."""
  return config_files.load(os.path.join(CONFIGS, name))

# A ViT small enough to compile in about a second: 32x32 images, 4x4 patches -> 64 tokens.
TINY_VIT = dict(patch_size=8, width=16, depth=2, num_heads=2, mlp_ratio=2.0)


def nontrivial_variables(model, images, seed=0):
  """Initialises `model` and makes every parameter and BN statistic non-trivial.

  All floating leaves take the images' dtype (Flax keeps BN statistics in float32 otherwise).
  """
  variables = model.init(jax.random.key(seed), images, train=False)
  variables = jax.tree.map(lambda v: v.astype(images.dtype), variables)
  variables = check.perturb_params(variables, seed)
  return check.randomize_batch_stats(variables, seed + 1)


@pytest.fixture
def tiny_images():
  return jax.random.normal(jax.random.key(42), (2, 32, 32, 3))


def pytest_configure(config):
  """The tests start ~40 train.py processes, most compiling the same tiny programs: JAX's
  persistent compilation cache (keyed by the program, so it never changes what runs) lets
  them compile each once. Set in the first pytest process (the xdist controller, before it
  starts its workers), it reaches workers and their subprocesses through the environment."""
  del config
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
