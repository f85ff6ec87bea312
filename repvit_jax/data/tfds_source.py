"""Prepared TFDS image-classification data sets, read from their TFRecord files, never downloaded.

Examples are reached as contiguous ranges of the split's record files (`Split.stream`), so
that each host reads only its own slice and training can shuffle the file order per epoch
with a stateless seed. Images stay encoded until the pipeline decodes (and crops) them.
"""

from __future__ import annotations

import os
from typing import Optional

from repvit_jax.data.errors import DataError

EVAL_SPLIT_CANDIDATES = ('validation', 'val', 'test')
# Files read at once when training shuffles the file order; more mixes better, costs memory.
INTERLEAVE_FILES = 16
ACCEPTED_NAMES = ("'digits' (embedded, offline), 'fashion_mnist', 'idx:/abs/path' (MNIST-format "
                  "files), 'folder:/abs/path' (images in "
                  "path/<split>/<class>/<image file>), or a prepared TFDS image-classification "
                  "data set such as 'imagenet2012', 'cifar10', 'cifar100', 'imagenette'")


def _tfds():
  from repvit_jax.data import _tf  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _data_root(builder, data_dir: Optional[str]) -> str:
  if data_dir:
    return os.path.abspath(os.path.expanduser(data_dir))
  # TFDS resolves None to $TFDS_DATA_DIR or ~/tensorflow_datasets; report what it chose.
  return str(getattr(builder, '_data_dir_root', None) or
             os.path.dirname(os.path.dirname(str(builder.data_dir))))


def not_prepared_message(name: str, root: str, looked_in: str) -> str:
  """What to do when `name` has no prepared files under the TFDS data dir `root`."""
  base = name.split(':')[0].split('/')[0]
  head = f'TFDS data set {name!r} is not prepared in data_dir {root!r} (looked in {looked_in}). '
  if base.startswith('imagenet2012'):
    manual = os.path.join(root, 'downloads', 'manual')
    return head + (
        'ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and '
        f'ILSVRC2012_img_val.tar at {manual}/ILSVRC2012_img_train.tar and '
        f'{manual}/ILSVRC2012_img_val.tar, run `tfds build {base} --data_dir={root}` once '
        '(about 150 GB of disk, hours), then start again with the same data_dir.')
  return head + (
      f'Nothing is downloaded at run time: run `tfds build {base} --data_dir={root}` on a '
      f'machine with internet access and copy {root}/{base} here, or set data.data_dir to '
      'the directory where it is prepared.')


def open_builder(name: str, data_dir: Optional[str]):
  """The TFDS builder of a prepared image-classification data set, or DataError."""
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'unknown data set {name!r}: it is not a TFDS builder. Accepted: '
                    f'{ACCEPTED_NAMES}.') from None
  except Exception as e:  # pylint: disable=broad-except
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f'cannot open TFDS data set {name!r} (data_dir={data_dir!r}): '
                    f'{first_line}') from e
  features = builder.info.features
  keys = sorted(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else []
  image = features['image'] if 'image' in keys else None
  label = features['label'] if 'label' in keys else None
  if not (isinstance(image, tfds.features.Image) and isinstance(label, tfds.features.ClassLabel)):
    raise DataError(f'TFDS data set {name!r} is not image classification as repvit_jax.data '
                    f"reads it: it needs an 'image' Image and a 'label' ClassLabel feature, "
                    f'it has {keys or features}')
  if not builder.is_prepared():
    root = _data_root(builder, data_dir)
    raise DataError(not_prepared_message(name, root, str(builder.data_dir)))
  file_format = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
  if 'tfrecord' not in file_format.lower():
    raise DataError(f'TFDS data set {name!r} is prepared as {file_format}; repvit_jax.data reads '
                    f'TFRecord files: rebuild it with `tfds build {name} --file_format=tfrecord '
                    f'--data_dir={_data_root(builder, data_dir)}`')
  return builder


def slice_files(files: list[tuple[str, int, int]], start: int, stop: int):
  """The (filename, skip, take) pieces holding examples [start, stop) of `files` end to end."""
  pieces, offset = [], 0
  for filename, skip, take in files:
    lo, hi = max(start, offset), min(stop, offset + take)
    if lo < hi:
      pieces.append((filename, skip + lo - offset, hi - lo))
    offset += take
  return pieces


class TfdsSource:
  """Source for a prepared TFDS data set."""

  def __init__(self, name: str, data_dir: Optional[str]):
    self.name = name
    self.builder = open_builder(name, data_dir)
    info = self.builder.info
    self.num_classes = int(info.features['label'].num_classes)
    self.classes = tuple(info.features['label'].names or ())
    self.splits = tuple(info.splits.keys())
    self.default_train_split = 'train'
    self.default_eval_split = next((s for s in EVAL_SPLIT_CANDIDATES if s in self.splits), None)

  def _split_info(self, split: str):
    try:
      split_info = self.builder.info.splits[split]
    except Exception:  # pylint: disable=broad-except
      raise DataError(f'TFDS data set {self.name!r} has no split {split!r}; its splits are '
                      f"{list(self.splits)} (slices such as 'train[:90%]' work too)") from None
    if split_info.num_examples == 0:
      raise DataError(f'split {split!r} of TFDS data set {self.name!r} is empty')
    return split_info

  def num_examples(self, split: str) -> int:
    return int(self._split_info(split).num_examples)

  def split(self, split: str, config):
    """The split as a streamed `Split` of serialized records."""
    from repvit_jax.data import decode, split as split_lib  # pylint: disable=g-import-not-at-top
    from repvit_jax.data._tf import tf  # pylint: disable=g-import-not-at-top
    del config
    tfds = _tfds()
    split_info = self._split_info(split)
    files = []
    for fi in split_info.file_instructions:
      # Older TFDS writes take=-1 for "to the end of the file".
      take = fi.take if fi.take >= 0 else fi.examples_in_shard - fi.skip
      files.append((os.fspath(fi.filename), int(fi.skip), int(take)))

    def read_piece(filename, skip, take):
      return tf.data.TFRecordDataset(filename).skip(skip).take(take)

    def stream(start: int, stop: int, file_seed=None):
      pieces = slice_files(files, start, stop)
      names = tf.constant([p[0] for p in pieces])
      skips = tf.constant([p[1] for p in pieces], tf.int64)
      takes = tf.constant([p[2] for p in pieces], tf.int64)
      if file_seed is None or len(pieces) == 1:
        return tf.data.Dataset.from_tensor_slices((names, skips, takes)).flat_map(read_piece)
      count = len(pieces)
      order = tf.random.experimental.index_shuffle(
          tf.range(count, dtype=tf.int64), file_seed, tf.constant(count - 1, tf.int64))
      pieces_ds = tf.data.Dataset.from_tensor_slices(
          (tf.gather(names, order), tf.gather(skips, order), tf.gather(takes, order)))
      return pieces_ds.interleave(read_piece, cycle_length=min(INTERLEAVE_FILES, count),
                                  block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True)

    features = self.builder.info.features
    skip_image = {'image': tfds.decode.SkipDecoding()}

    def parse(record):
      example = features.deserialize_example(record, decoders=skip_image)
      return example['image'], tf.cast(example['label'], tf.int32)

    return split_lib.Split(num_examples=int(split_info.num_examples),
                           decode_crop=decode.decode_encoded_crop, stream=stream, parse=parse)
