"""`Split`: how the pipeline reads one split of a data set, whatever its source.

A source (digits, folder, TFDS) describes each split by how examples are reached:
  - by index (`read_index`): any example at any time, so training can follow an exact
    global permutation per epoch;
  - or as a stream (`stream`): contiguous ranges of the split in file order (TFDS record
    files), which training shuffles by files and with a buffer.
and by how a stored image becomes pixels (`decode_crop`), so that JPEGs can be cropped
while decoding.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import numpy as np

from repvit_jax.data._tf import tf

# (raw image, int32 label); what `raw` is depends on the source (encoded bytes, an array).
Example = tuple
WindowFn = Callable[[tf.Tensor], tf.Tensor]  # [2] int32 (height, width) -> [4] (y, x, h, w)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a data set, as the pipeline reads it.

  Attributes:
    num_examples: examples in the split.
    decode_crop: (raw, window_fn) -> uint8 [h, w, 3], the crop window_fn picks from the image
      size.
    read_index: int64 scalar index -> (raw, int32 label); None for streamed splits.
    stream: (start, stop, file_seed) -> tf.data.Dataset of records for examples
      [start, stop) of the split; file_seed (a key [2] or None) shuffles the file order,
      None keeps the split's order. None for indexed splits.
    parse: record -> (raw, int32 label), applied to `stream` elements.
    resident: the examples already live in host memory (nothing for `cache` to do).
    describe: example index -> where it is stored (a file path), for error messages; None
      names it by index.
    labels: int [num_examples], every example's label, where the source knows them without
      reading the examples (in-memory arrays, folders); None otherwise.
  """
  num_examples: int
  decode_crop: Callable[[tf.Tensor, WindowFn], tf.Tensor]
  read_index: Optional[Callable[[tf.Tensor], Example]] = None
  stream: Optional[Callable[[int, int, Optional[tf.Tensor]], tf.data.Dataset]] = None
  parse: Optional[Callable[[tf.Tensor], Example]] = None
  resident: bool = False
  describe: Optional[Callable[[int], str]] = None
  labels: Optional[np.ndarray] = None

  @property
  def indexed(self) -> bool:
    return self.read_index is not None

  def examples(self, start: int, stop: int) -> tf.data.Dataset:
    """Examples [start, stop) in split order, as (raw, label)."""
    if self.indexed:
      return tf.data.Dataset.range(start, stop).map(
          self.read_index, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return self.stream(start, stop, None).map(
        self.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def whole_image(shape: tf.Tensor) -> tf.Tensor:
  """A `WindowFn` that keeps the whole image: (0, 0, height, width)."""
  return tf.concat([tf.zeros([2], tf.int32), tf.cast(shape, tf.int32)], 0)


def op_error_text(error) -> str:
  """TF's error message without its '{{function_node ...}}', '[Op:...]' and 'name:' wrapping;
  'Input is empty.' (the decoder's word for a file of 0 bytes) as 'the file is empty'."""
  text = re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\]|\bname:\s*\S*\s*$', '',
                getattr(error, 'message', '') or str(error))
  text = ' '.join(text.split()).rstrip(' ;')
  if text == 'Input is empty.':
    text = 'the file is empty'
  return text[:200]


def undecodable(split: Split, items) -> list[tuple[str, str]]:
  """(where, why) for each example among `items` (read_index arguments) whose image does not
  decode; where is `describe(index)` or 'example <index>'. Eager: for locating a failure."""
  bad = []
  for item in items:
    try:
      raw, _ = split.read_index(tf.constant(item, tf.int64))
      split.decode_crop(raw, whole_image)
    except tf.errors.OpError as e:
      where = split.describe(int(item)) if split.describe else f'example {int(item)}'
      bad.append((where, op_error_text(e)))
  return bad


def in_memory(raw: np.ndarray, labels: np.ndarray,
              decode_crop: Callable[[tf.Tensor, WindowFn], tf.Tensor]) -> Split:
  """An indexed split over arrays held in host memory: raw [n, ...], labels [n] ints."""
  raw_t = tf.constant(raw)
  labels = np.asarray(labels, np.int32)
  labels_t = tf.constant(labels)

  def read_index(index):
    return tf.gather(raw_t, index), tf.gather(labels_t, index)

  return Split(num_examples=len(labels), decode_crop=decode_crop, read_index=read_index,
               resident=True, labels=labels)


def materialise(split: Split) -> Split:
  """Reads every example of `split` into host memory and returns it as an indexed split.

  This is `cache=True`: one pass over the (encoded) split, after which training shuffles
  exactly and never touches the files again. Memory: the size of the split's stored images.
  """
  raws, labels = [], []
  for raw, label in split.examples(0, split.num_examples).batch(4096).as_numpy_iterator():
    raws.append(raw)
    labels.append(label)
  return in_memory(np.concatenate(raws), np.concatenate(labels), split.decode_crop)


def subset(split: Split, indices: np.ndarray) -> Split:
  """An indexed view of `indices` (ints into `split`): example i of the view is example
  indices[i] of `split`."""
  if not split.indexed:
    raise ValueError('subset needs an indexed split; use window() for a streamed one')
  indices = np.asarray(indices, np.int64)
  indices_t = tf.constant(indices)

  def read_index(index):
    return split.read_index(tf.gather(indices_t, index))

  describe = split.describe
  return dataclasses.replace(
      split, num_examples=len(indices), read_index=read_index,
      describe=(lambda index: describe(int(indices[index]))) if describe else None,
      labels=None if split.labels is None else split.labels[indices])


def window(split: Split, start: int, stop: int) -> Split:
  """A view of examples [start, stop) of `split` (indexed or streamed), in split order."""
  if split.indexed:
    return subset(split, np.arange(start, stop))
  stream = split.stream

  def windowed(a, b, file_seed=None):
    return stream(start + a, start + b, file_seed)

  return dataclasses.replace(split, num_examples=stop - start, stream=windowed)
