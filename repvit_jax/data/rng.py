"""Stateless random keys: every random draw of the pipeline is a pure function of its key.

A key is an int64 tensor of shape [2], the seed format of `tf.random.stateless_*`. Keys are
derived from (seed, purpose, ...) with `fold_in`, so that resuming at any step recomputes
exactly the draws an uninterrupted run made, on any number of threads.
"""

from __future__ import annotations

from repvit_jax.data._tf import tf

# One stream per purpose, so that the example order, the augmentations and the shuffles of
# streamed data never reuse each other's random numbers.
ORDER = 1
AUGMENT = 2
FILE_ORDER = 3
SHUFFLE_BUFFER = 4

# Philox is the same on every platform; 'auto_select' could differ between CPU and GPU.
_ALG = 'philox'


def root_key(seed: int, purpose: int) -> tf.Tensor:
  """Key [2] int64 for one purpose of a run with the given integer seed."""
  # Only the low 63 bits of the seed matter: int64 holds them, and users pass small ints.
  return tf.constant([int(seed) & (2**63 - 1), purpose], tf.int64)


def fold_in(key: tf.Tensor, data) -> tf.Tensor:
  """A new key [2] int64 determined by `key` and the integer (tensor) `data`."""
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64), alg=_ALG)


def uniform(key: tf.Tensor, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32) -> tf.Tensor:
  """Uniform draws in [minval, maxval) of `shape`; for int dtypes maxval is exclusive."""
  return tf.random.stateless_uniform(shape, key, minval=minval, maxval=maxval, dtype=dtype,
                                     alg=_ALG)


def normal(key: tf.Tensor, shape=()) -> tf.Tensor:
  """Standard normal float32 draws of `shape`."""
  return tf.random.stateless_normal(shape, key, alg=_ALG)
