"""The train and eval iterators: per-host numpy batches, deterministic and resumable.

Each host builds its own tf.data pipeline and yields its share of every global batch;
the trainer turns those into global arrays (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np

from repvit_jax.data import config as config_lib
from repvit_jax.data import multiscale, order, preprocess, sources
from repvit_jax.data import split as split_lib
from repvit_jax.data._tf import tf
from repvit_jax.data.errors import DataError

Batch = dict  # str -> np.ndarray


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _host(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not (_is_int(process_count) and process_count >= 1):
    raise DataError(f'process_count must be an int >= 1, got {process_count!r}')
  if not (_is_int(process_index) and 0 <= process_index < process_count):
    raise DataError(f'process_index must be an int in [0, {process_count}), '
                    f'got {process_index!r}')
  return int(process_index), int(process_count)


def _host_batch(global_batch_size: int, process_count: int) -> int:
  if not _is_int(global_batch_size):
    raise DataError(f'global_batch_size must be an int, got {global_batch_size!r}')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise DataError(f'global_batch_size={global_batch_size} must be a positive multiple of the '
                    f'number of processes ({process_count}): each process feeds '
                    'global_batch_size / process_count examples per step')
  return int(global_batch_size) // process_count


def _host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """This host's contiguous slice of a split; sizes differ by at most one between hosts."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def _finish(ds: tf.data.Dataset, host_batch: int, prefetch: int) -> tf.data.Dataset:
  ds = ds.batch(host_batch, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  if prefetch:
    ds = ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)
  options = tf.data.Options()
  options.deterministic = True
  # Per-example ops are small; parallelism comes from the parallel map, not from inside ops.
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _iterate(ds: tf.data.Dataset, examples_of_batch=None, split=None,
             what: str = '') -> Iterator[Batch]:
  """Yields numpy batches; an image that fails to decode becomes one DataError naming it.

  examples_of_batch: k -> the read_index items of batch k (to find the file), or None.
  """
  batch_number = 0
  iterator = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      raise DataError(_decode_failure(e, batch_number, examples_of_batch, split, what)) from None
    batch_number += 1
    yield batch


def _decode_failure(error, batch_number: int, examples_of_batch, split, what: str) -> str:
  reason = split_lib.op_error_text(error)
  bad = []
  if examples_of_batch is not None and split is not None and split.indexed:
    # The failing batch, or (with parallel reads) a neighbour.
    for k in (batch_number, batch_number + 1, batch_number - 1):
      if k >= 0 and not bad:
        bad = split_lib.undecodable(split, examples_of_batch(k))
  if bad:
    (where, reason), more = bad[0], len(bad) - 1
    where = f'{where} does not decode'
  else:
    where, more = f'an image of the {what} does not decode', 0
  more = f' ({more} more in the same batch)' if more else ''
  return (f'{where}{more} ({reason}); replace or remove the file, or set '
          '--config.data.skip_corrupt=True to leave out images that do not decode')


def make_train_iterator(data_config, global_batch_size: int, seed: int = 0, start_step: int = 0,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> Iterator[Batch]:
  """Infinite iterator of this host's training batches, from step `start_step` on.

  Batch k is a pure function of (data config, seed, k, process_index, process_count): a run
  started with start_step=k yields exactly batches k, k+1, ... of a run started at 0, images
  and augmentations alike.

  Args:
    data_config: a data ConfigDict (see `default_config`).
    global_batch_size: examples per step over all processes; a multiple of process_count.
    seed: int seed of the example order and the augmentations.
    start_step: index of the first batch to yield.
    process_index, process_count: this host and the number of hosts (default: JAX's).
  Yields:
    {'image': float32 [b, S, S, 3] normalised, 'label': int32 [b]} with
    b = global_batch_size // process_count and S = image_size; with `data.multiscale`,
    [b_k, h_k, w_k, 3] batches whose resolution and size vary per step (see
    repvit_jax/data/multiscale.py).
  Raises:
    DataError: bad config, unreadable data set, or a batch size that does not split.
  """
  config = config_lib.resolve(data_config)
  index, count = _host(process_index, process_count)
  host_batch = _host_batch(global_batch_size, count)
  if not _is_int(start_step) or start_step < 0:
    raise DataError(f'start_step must be an int >= 0, got {start_step!r}')
  if not _is_int(seed):
    raise DataError(f'seed must be an int, got {seed!r}')
  start_step, seed = int(start_step), int(seed)
  source = sources.open_source(config)
  train_split, _ = sources.resolve_splits(source, config)
  split = source.split(train_split, config)
  if config.cache and not split.resident:
    split = split_lib.materialise(split)

  if config.multiscale:
    # MobileViT's multi-scale sampler: batches of varying resolution and size.
    start, stop = (0, None) if split.indexed else _host_range(split.num_examples, index, count)
    return _iterate(multiscale.train_dataset(
        split, config, seed=seed, start_step=start_step, host_batch=host_batch,
        process_index=index, process_count=count, global_batch=int(global_batch_size),
        start=start, stop=stop))

  if split.indexed:
    slots = order.indexed_order(split.num_examples, seed, int(global_batch_size), host_batch,
                                index, start_step, config.repeated_augmentation)
    read = split.read_index

    def examples_of_batch(k):
      items = slots.skip(k * host_batch).take(host_batch)
      return [int(item) for item, _ in items.as_numpy_iterator()]
  else:
    start, stop = _host_range(split.num_examples, index, count)
    if stop <= start:
      raise DataError(f'train split {train_split!r} has {split.num_examples} examples, fewer '
                      f'than the {count} processes that each need a share')
    slots = order.streamed_order(split, start, stop, seed, host_batch, index, start_step,
                                 config.shuffle_buffer, config.repeated_augmentation)
    read = split.parse
    examples_of_batch = None

  def example(item, key):
    raw, label = read(item)
    image = preprocess.train_image(raw, key, split.decode_crop, config)
    return {'image': image, 'label': label}

  # Plain graph code with no Python control flow on tensors: autograph would only add tracing.
  example = tf.autograph.experimental.do_not_convert(example)
  ds = slots.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _iterate(_finish(ds, host_batch, config.prefetch), examples_of_batch, split,
                  f'train split {train_split!r} of {config.name}')


def make_eval_iterator(data_config, global_batch_size: int, process_index: Optional[int] = None,
                       process_count: Optional[int] = None) -> Iterator[Batch]:
  """One pass over the eval split, this host's contiguous share of it, in split order.

  Every host yields the same number of batches, ceil(ceil(N / process_count) / b), all of
  the full size b = global_batch_size // process_count; slots past the host's examples are
  padding (zero image, label 0) with mask 0, so real examples are those with mask 1 and every
  example of the split is in exactly one host's batches exactly once.

  Yields:
    {'image': float32 [b, S, S, 3] normalised, 'label': int32 [b], 'mask': float32 [b]}.
  Raises:
    DataError: bad config, unreadable data set, no eval split, or a batch size that does not
      split.
  """
  config = config_lib.resolve(data_config)
  index, count = _host(process_index, process_count)
  host_batch = _host_batch(global_batch_size, count)
  source = sources.open_source(config)
  _, eval_split = sources.resolve_splits(source, config)
  if eval_split is None:
    raise DataError(f'data set {config.name!r} has no evaluation split (looked for the '
                    "usual names); set data.eval_split to one of its splits")
  split = source.split(eval_split, config)
  start, stop = _host_range(split.num_examples, index, count)
  num_batches = math.ceil(math.ceil(split.num_examples / count) / host_batch)
  size = config.image_size

  def example(raw, label):
    image = preprocess.eval_image(raw, split.decode_crop, config)
    return {'image': image, 'label': label, 'mask': tf.constant(1.0, tf.float32)}

  ds = split.examples(start, stop).map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)
  padding = {'image': tf.zeros([size, size, 3], tf.float32),
             'label': tf.constant(0, tf.int32),
             'mask': tf.constant(0.0, tf.float32)}
  ds = ds.concatenate(
      tf.data.Dataset.from_tensors(padding).repeat(num_batches * host_batch - (stop - start)))
  return _iterate(_finish(ds, host_batch, config.prefetch),
                  lambda k: list(range(start + k * host_batch,
                                       min(stop, start + (k + 1) * host_batch))),
                  split, f'eval split {eval_split!r} of {config.name}')
