"""Which example each training batch slot holds, as a pure function of (seed, step, host).

Two orders, for the two ways a split can be read (see `split.Split`):

indexed_order (digits, folders, cached TFDS): one global stream of example slots. Slot p
  (p = step * global_batch + process_index * host_batch + j) holds example
  perm_e[p mod N] of epoch e = p // N, where perm_e is a stateless permutation
  (`index_shuffle`) keyed by (seed, e). Every epoch is an exact permutation, the hosts of a
  step take disjoint consecutive slices of the global batch, and the global batch does not
  depend on how many hosts there are. Slot p's augmentation key is (seed, p).

streamed_order (TFDS record files): host h owns the contiguous range
  [h N / P, (h + 1) N / P) of the split. Each epoch reads that range with the file order
  permuted by (seed, h, epoch), 16 files interleaved, then permutes windows of
  `shuffle_buffer` records (boundaries shifted per epoch) by (seed, h, epoch). Host-local
  slot q = step * host_batch + j; augmentation key (seed, h, q). Batches mix examples that
  are within about `shuffle_buffer` of each other in that stream, as with a shuffle buffer;
  data sets that fit in memory shuffle exactly with `cache=True`.

Repeated augmentation (`repeats` R > 1, DeiT's RASampler): R consecutive slots hold the same
example, each with its own augmentation key: slot p reads position p // R of the order above,
so each example comes R times in every R x N slots.

Resuming at step k is cheap in both: the indexed order computes slot positions directly; the
streamed order starts at epoch q // N_h and skips q mod N_h undecoded records.
"""

from __future__ import annotations

from repvit_jax.data import rng
from repvit_jax.data._tf import tf
from repvit_jax.data.split import Split


def indexed_order(num_examples: int, seed: int, global_batch: int, host_batch: int,
                  process_index: int, start_step: int, repeats: int = 1) -> tf.data.Dataset:
  """Infinite dataset of (example index int64, augmentation key [2] int64) for this host.

  Element i is slot j = i mod host_batch of this host's share of step start_step + i //
  host_batch. `repeats`: consecutive slots per example (repeated augmentation).
  """
  order_key = rng.root_key(seed, rng.ORDER)
  augment_key = rng.root_key(seed, rng.AUGMENT)
  n = tf.constant(num_examples, tf.int64)

  def locate(q):
    step, j = q // host_batch, q % host_batch
    p = step * global_batch + process_index * host_batch + j
    epoch, i = (p // repeats) // n, (p // repeats) % n
    index = tf.random.experimental.index_shuffle(i, rng.fold_in(order_key, epoch), n - 1)
    return index, rng.fold_in(augment_key, p)

  return tf.data.Dataset.counter(start_step * host_batch, dtype=tf.int64).map(locate)


def _window_shuffle(records: tf.data.Dataset, window: int, key: tf.Tensor) -> tf.data.Dataset:
  """Permutes consecutive windows of `window` serialized records, statelessly by `key`.

  Stands in for `Dataset.shuffle`, whose draws also depend on TF's global seed; this one
  depends on `key` only. The window boundaries move with the key (a random number of empty
  placeholder records goes first and is dropped after the shuffle), so that each epoch
  groups different neighbours together, as a shuffle buffer would.
  """
  shift = rng.uniform(rng.fold_in(key, 0), (), 0, window, dtype=tf.int64)
  window_key = rng.fold_in(key, 1)

  def permute(w, batch):
    size = tf.shape(batch, out_type=tf.int64)[0]
    order = tf.random.experimental.index_shuffle(
        tf.range(size), rng.fold_in(window_key, w), size - 1)
    return tf.data.Dataset.from_tensor_slices(tf.gather(batch, order))

  # Serialized examples are never empty, so '' marks the placeholders unambiguously.
  placeholders = tf.data.Dataset.from_tensors(tf.constant('')).repeat(shift)
  # prefetch(1): the next window is read while this one is consumed, instead of stalling
  # the pipeline for a whole window's worth of reads. Memory: up to three windows of records.
  windows = placeholders.concatenate(records).batch(window).prefetch(1)
  shuffled = windows.enumerate().flat_map(permute)
  return shuffled.filter(lambda record: tf.strings.length(record) > 0)


def streamed_order(split: Split, start: int, stop: int, seed: int, host_batch: int,
                   process_index: int, start_step: int,
                   shuffle_buffer: int, repeats: int = 1) -> tf.data.Dataset:
  """Infinite dataset of (serialized record, augmentation key [2] int64) for this host.

  Args:
    split: a streamed split. start, stop: this host's example range [start, stop).
    repeats: consecutive slots per record (repeated augmentation).
  """
  n = stop - start
  first = start_step * host_batch
  first_record, first_repeat = divmod(first, repeats)
  first_epoch, offset = divmod(first_record, n)
  file_key = rng.fold_in(rng.root_key(seed, rng.FILE_ORDER), process_index)
  window_key = rng.fold_in(rng.root_key(seed, rng.SHUFFLE_BUFFER), process_index)
  augment_key = rng.fold_in(rng.root_key(seed, rng.AUGMENT), process_index)

  def epoch(e):
    records = split.stream(start, stop, rng.fold_in(file_key, e))
    if shuffle_buffer > 1:
      records = _window_shuffle(records, shuffle_buffer, rng.fold_in(window_key, e))
    return records

  records = tf.data.Dataset.counter(first_epoch, dtype=tf.int64).flat_map(epoch).skip(offset)
  if repeats > 1:
    records = records.flat_map(
        lambda record: tf.data.Dataset.from_tensors(record).repeat(repeats)).skip(first_repeat)

  def with_key(q, record):
    return record, rng.fold_in(augment_key, q)

  return records.enumerate(first).map(with_key)
