"""MNIST-format (IDX) data sets: Fashion-MNIST by name, any IDX directory as 'idx:/path'.

MNIST, Fashion-MNIST, KMNIST and EMNIST ship as four IDX files, gzipped or plain:
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
`t10k-labels-idx1-ubyte` (EMNIST puts a prefix before each name, such as `emnist-balanced-`).
They are read with NumPy into host memory (Fashion-MNIST: 55 MB) and become the splits
'train' and 'test'. Grayscale images are resized (bilinear) to image_size and repeated to
three channels when read, so the usual crop/flip/RandAugment code path applies unchanged.

Names:
  'fashion_mnist'  Zalando's Fashion-MNIST (10 clothing classes, 60,000 train / 10,000 test)
                   from `data.data_dir`, else from Debian's package `dataset-fashion-mnist`
                   (`apt-get install dataset-fashion-mnist`, /usr/share/datasets/fashion-mnist).
  'idx:/path'      the IDX files in /path; 'idx:/path/prefix' picks one set among several in a
                   directory (EMNIST: 'idx:/path/emnist-balanced'). Class names come from a
                   `classes.txt` beside the files (one per line), else the label numbers.
"""

from __future__ import annotations

import functools
import gzip
import os
from typing import Optional

import numpy as np

from repvit_jax.data.errors import DataError

PREFIX = 'idx:'
SPLITS = ('train', 'test')
# The file stems of each split, as MNIST-format data sets name them.
_STEMS = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
          'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
# IDX type codes (the third byte of the magic number) -> NumPy big-endian dtypes.
_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


KNOWN = {
    'fashion_mnist': dict(
        directory='/usr/share/datasets/fashion-mnist',
        install='apt-get install dataset-fashion-mnist',
        classes=('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                 'Sneaker', 'Bag', 'Ankle boot')),
}


def read_idx(path: str) -> np.ndarray:
  """The array an IDX file holds (gzipped when the name ends in .gz), in its own dtype.

  Raises:
    DataError: the file is not IDX (bad magic number, or fewer bytes than its header says).
  """
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f'cannot read IDX file {path}: {e}; replace it with an intact copy') from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise DataError(f'{path} is not an IDX file (its magic number is {data[:4].hex() or "missing"}'
                    '); point the data set at MNIST-format files')
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(data[4:header], '>u4')) if ndim else ()
  dtype = np.dtype(_DTYPES[data[2]])
  count = int(np.prod(shape)) if shape else 1
  if len(data) - header < count * dtype.itemsize:
    raise DataError(f'{path} is truncated: its header promises shape {shape} but it holds '
                    f'{len(data) - header} bytes of data; replace it with an intact copy')
  values = np.frombuffer(data, dtype, count=count, offset=header)
  return values.reshape(shape).astype(dtype.newbyteorder('='))


def _find(directory: str, prefix: str, stem: str) -> Optional[str]:
  for name in (prefix + stem, prefix + stem + '.gz'):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  # Some copies use '.' for '-' before idx (train-images.idx3-ubyte).
  dotted = prefix + stem.replace('-idx', '.idx')
  for name in (dotted, dotted + '.gz'):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def _prefixes(directory: str) -> list[str]:
  """The set prefixes in a directory: 'emnist-balanced-' for emnist-balanced-train-images..."""
  found = set()
  for name in os.listdir(directory):
    cut = name.replace('.idx', '-idx').find('train-images-idx3-ubyte')
    if cut >= 0:
      found.add(name[:cut])
  return sorted(found)


def locate(name: str, data_dir: Optional[str]) -> tuple[str, str, tuple[str, ...], str]:
  """(directory, file prefix, class names or (), how to get the files) of an IDX data set name.

  Raises:
    DataError: an empty 'idx:' path.
  """
  if name in KNOWN:
    known = KNOWN[name]
    directory = os.path.expanduser(data_dir) if data_dir else known['directory']
    how = (f"install them with `{known['install']}` (Debian), or set data.data_dir to a "
           'directory that holds them')
    return directory, '', known['classes'], how
  path = name[len(PREFIX):].strip()
  if not path:
    raise DataError("data.name='idx:' needs a path: 'idx:/abs/path' to a directory of "
                    'MNIST-format files (train-images-idx3-ubyte[.gz], ...)')
  path = os.path.expanduser(path)
  directory, prefix = (path, '') if os.path.isdir(path) else os.path.split(path)
  if prefix and not prefix.endswith('-'):
    prefix += '-'
  return directory, prefix, (), 'point data.name at the directory that holds them'


@functools.lru_cache(maxsize=4)
def _load(directory: str, prefix: str, split: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
  del stamp  # Part of the cache key only.
  images_stem, labels_stem = _STEMS[split]
  images = read_idx(_find(directory, prefix, images_stem))
  labels = read_idx(_find(directory, prefix, labels_stem))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise DataError(f'the {split} files in {directory} do not pair up: images {images.shape} '
                    f'(want [n, height, width]) and labels {labels.shape} (want [n])')
  return np.ascontiguousarray(images.astype(np.uint8)), labels.astype(np.int32)


class IdxSource:
  """Source for 'fashion_mnist' and 'idx:/path': splits 'train' and 'test', held in memory."""

  default_train_split = 'train'
  default_eval_split = 'test'

  def __init__(self, name: str, data_dir: Optional[str]):
    self.name = name
    self.directory, self.prefix, classes, how = locate(name, data_dir)
    if not os.path.isdir(self.directory):
      raise DataError(f'{name}: {self.directory}, the directory of its IDX files, does not '
                      f'exist; {how}')
    self.files = {}
    for split, stems in _STEMS.items():
      paths = [_find(self.directory, self.prefix, stem) for stem in stems]
      if all(paths):
        self.files[split] = tuple(paths)
    if 'train' not in self.files:
      prefixes = [p for p in _prefixes(self.directory) if p]
      if prefixes and not self.prefix:
        sets = ', '.join(p.rstrip('-') for p in prefixes)
        raise DataError(f'{self.directory} holds several IDX data sets ({sets}); name one, '
                        f"e.g. data.name='idx:{os.path.join(self.directory, prefixes[0][:-1])}'")
      raise DataError(f'{name}: no {self.prefix}train-images-idx3-ubyte[.gz] and '
                      f'{self.prefix}train-labels-idx1-ubyte[.gz] in {self.directory}; {how}')
    labels = self._arrays('train')[1]
    self.num_classes = max(int(labels.max()) + 1, len(classes)) if len(labels) else len(classes)
    if not classes:
      classes = self._class_file() or tuple(str(i) for i in range(self.num_classes))
    self.classes = tuple(classes)
    self.num_classes = max(self.num_classes, len(self.classes))

  def _class_file(self) -> tuple[str, ...]:
    path = os.path.join(self.directory, self.prefix + 'classes.txt')
    if not os.path.isfile(path):
      return ()
    with open(path, encoding='utf-8') as f:
      return tuple(line.strip() for line in f if line.strip())

  def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in self.files:
      have = [s for s in SPLITS if s in self.files]
      raise DataError(f'{self.name} has splits {have}, not {split!r}')
    stamp = tuple(os.stat(p).st_mtime_ns for p in self.files[split])
    return _load(self.directory, self.prefix, split, stamp)

  def num_examples(self, split: str) -> int:
    return len(self._arrays(split)[1])

  def split(self, split: str, config):
    """The split as an in-memory indexed `Split` whose images become [S, S, 3] uint8 RGB."""
    from repvit_jax.data import split as split_lib  # pylint: disable=g-import-not-at-top
    from repvit_jax.data._tf import tf  # pylint: disable=g-import-not-at-top

    images, labels = self._arrays(split)
    size = config.image_size

    def decode_crop(raw, window_fn):
      grey = raw[:, :, None]
      if tuple(images.shape[1:]) != (size, size):
        grey = tf.cast(tf.round(tf.clip_by_value(
            tf.image.resize(tf.cast(grey, tf.float32), [size, size], method='bilinear'),
            0.0, 255.0)), tf.uint8)
      y, x, h, w = tf.unstack(window_fn(tf.constant([size, size], tf.int32)))
      return tf.tile(grey[y:y + h, x:x + w], [1, 1, 3])

    return split_lib.in_memory(images, labels, decode_crop)
