"""MobileViT's multi-scale sampler: a training resolution per step, the batch scaled to match.

With `data.multiscale = ((h1, w1), (h2, w2), ...)` (or plain ints for squares), step k trains
at resolution (h, w) = sizes[c_k], where c_k is a pure function of (seed, k), and each host
feeds b_k = round(b * S^2 / (h w)) examples, rounded to a multiple of its local device count
(b: the configured per-host batch, S: `data.image_size`, the base resolution). Pixels per step
stay about constant: small images come in large batches (Mehta & Rastegari,
b_t = H_n W_n b / (H_t W_t)). Evaluation keeps `image_size`.

Determinism and resumption: c_k comes from a counter-based hash of (seed, k) (no state), so
a run restarted at step k recomputes the number of examples consumed before it (the sum of
b_i, i < k, vectorised) and continues with exactly the examples, augmentation keys and
resolutions an uninterrupted run would have used. Example slots are laid out as in
`order.py`, with one slot per example instead of per fixed-size batch.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from repvit_jax.data import order, preprocess
from repvit_jax.data._tf import tf
from repvit_jax.data.errors import DataError

Size = Tuple[int, int]

_MASK64 = (1 << 64) - 1
_PURPOSE = 0x6D756C7469736361  # 'multisca': separates this stream from other uses of the seed
_CHUNK = 1 << 20


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def size_choices(seed: int, steps: np.ndarray, num_sizes: int) -> np.ndarray:
  """Index into the size list for each step: int64 array shaped like `steps`."""
  with np.errstate(over='ignore'):
    key = _mix(np.asarray([(int(seed) ^ _PURPOSE) & _MASK64], np.uint64))
    x = _mix(key ^ (np.asarray(steps).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
  return (x % np.uint64(num_sizes)).astype(np.int64)


def batch_sizes(sizes: Sequence[Size], base: int, host_batch: int, multiple: int) -> np.ndarray:
  """Per-host batch for each size: host_batch * base^2 / (h w), to a multiple of `multiple`."""
  out = []
  for h, w in sizes:
    scaled = host_batch * base * base / (h * w)
    out.append(max(multiple, int(round(scaled / multiple)) * multiple))
  return np.asarray(out, np.int64)


def examples_before(step: int, seed: int, table: np.ndarray) -> int:
  """Examples one host consumed in steps [0, step): sum of its per-step batch sizes."""
  total, start = 0, 0
  while start < step:
    stop = min(step, start + _CHUNK)
    total += int(table[size_choices(seed, np.arange(start, stop), len(table))].sum())
    start = stop
  return total


def train_dataset(split, config, *, seed: int, start_step: int, host_batch: int,
                  process_index: int, process_count: int, global_batch: int,
                  batch_multiple: Optional[int] = None,
                  start: int = 0, stop: Optional[int] = None) -> tf.data.Dataset:
  """The multi-scale training dataset of one host: batches of varying size and resolution.

  Args:
    split: the train `Split`. config: the resolved data config (with `multiscale`).
    seed, start_step: as `make_train_iterator`.
    host_batch: the configured per-host batch b (at the base resolution `image_size`).
    process_index, process_count: this host and the number of hosts.
    global_batch: unused by the layout but checked to be host_batch * process_count.
    batch_multiple: each per-host batch is a multiple of this (default: JAX's local device
      count, so that the batch splits over this host's devices).
    start, stop: this host's example range of a streamed split.

  Returns:
    A dataset of {'image': float32 [b_k, h_k, w_k, 3], 'label': int32 [b_k]}.
  """
  sizes = config.multiscale
  if batch_multiple is None:
    import jax  # pylint: disable=import-outside-toplevel
    batch_multiple = jax.local_device_count()
  if global_batch != host_batch * process_count:
    raise DataError(f'global batch {global_batch} != {host_batch} x {process_count} processes')
  table = batch_sizes(sizes, config.image_size, host_batch, int(batch_multiple))
  first = examples_before(start_step, seed, table)

  if split.indexed:
    # One slot per example, interleaved over hosts: host h's j-th example of step k is global
    # slot (first_k + j) * process_count + h, where first_k is the per-host count before k.
    slots = order.indexed_order(split.num_examples, seed, process_count, 1, process_index,
                                first, config.repeated_augmentation)
    read = split.read_index
  else:
    slots = order.streamed_order(split, start, split.num_examples if stop is None else stop,
                                 seed, 1, process_index, first, config.shuffle_buffer,
                                 config.repeated_augmentation)
    read = split.parse

  n = len(sizes)
  heights = tf.constant([h for h, _ in sizes], tf.int32)
  widths = tf.constant([w for _, w in sizes], tf.int32)
  batches = tf.constant(table, tf.int64)

  def choose(step):
    return size_choices(seed, np.asarray([step]), n)[0]

  def plan_step(step):
    c = tf.numpy_function(choose, [step], tf.int64, stateful=False)
    c.set_shape(())
    return step, c

  plan = tf.data.Dataset.counter(start_step, dtype=tf.int64).map(plan_step)
  # One element per example: the group key (step * n + size index) tells its batch apart.
  per_example = plan.flat_map(
      lambda step, c: tf.data.Dataset.from_tensors(step * n + c).repeat(batches[c]))

  def example(group, slot):
    item, key = slot
    raw, label = read(item)
    c = tf.cast(group % n, tf.int32)
    image = preprocess.train_image(raw, key, split.decode_crop, config,
                                   size=(heights[c], widths[c]))
    return group, {'image': image, 'label': label}

  example = tf.autograph.experimental.do_not_convert(example)
  ds = tf.data.Dataset.zip((per_example, slots)).map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.group_by_window(
      key_func=lambda group, _: group,
      reduce_func=lambda group, window: window.map(lambda _, e: e).batch(batches[group % n]),
      window_size_func=lambda group: batches[group % n])
  if config.prefetch:
    ds = ds.prefetch(tf.data.AUTOTUNE if config.prefetch < 0 else config.prefetch)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def pixels_per_step(sizes: Sequence[Size], table: np.ndarray) -> list:
  """h * w * b_k for each size: about constant by construction (for reports and tests)."""
  return [h * w * int(b) for (h, w), b in zip(sizes, table)]


__all__ = ['size_choices', 'batch_sizes', 'examples_before',
           'train_dataset', 'pixels_per_step']
