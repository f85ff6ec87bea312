"""The embedded default data set: scikit-learn's 1,797 real 8x8 handwritten digits.

Shipped inside scikit-learn, so it works offline and in tests. Pixels 0..16 are scaled to
[0, 1]; each image is resized (bilinear) to image_size and made RGB when it is read, so the
usual crop/flip/RandAugment code path applies unchanged. A fixed permutation (seed 0) puts
1,437 digits in 'train' and 360 in 'test'.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os

import numpy as np

from repvit_jax.data.errors import DataError

NAME = 'digits'
NUM_CLASSES = 10
NUM_TRAIN = 1437
SPLITS = ('train', 'test')


def _read_csv() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits file, read as `load_digits` reads it (the same float64 values),
  without importing scikit-learn: that import costs more than a second of every run's
  start-up. Falls back to `load_digits` if a scikit-learn release moves the file."""
  spec = importlib.util.find_spec('sklearn')        # locates the package, imports nothing
  for location in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(location, 'datasets', 'data', 'digits.csv.gz')
    if os.path.isfile(path):
      with gzip.open(path, 'rt', encoding='utf-8') as f:
        data = np.loadtxt(f, delimiter=',')
      return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  return digits.images, digits.target


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
  images, targets = _read_csv()
  # RandomState, not default_rng: its streams are frozen across numpy versions.
  order = np.random.RandomState(0).permutation(len(targets))
  images = (images[order] / 16.0).astype(np.float32)
  return images, targets[order].astype(np.int32)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The digits of one split: float32 images [n, 8, 8] in [0, 1] and int32 labels [n]."""
  images, labels = _load()
  if split == 'train':
    return images[:NUM_TRAIN], labels[:NUM_TRAIN]
  if split == 'test':
    return images[NUM_TRAIN:], labels[NUM_TRAIN:]
  raise DataError(f"the digits data set has splits {list(SPLITS)}, not {split!r}")


class DigitsSource:
  """Source for `name='digits'`."""

  name = NAME
  num_classes = NUM_CLASSES
  classes = tuple(str(i) for i in range(NUM_CLASSES))
  default_train_split = 'train'
  default_eval_split = 'test'

  def num_examples(self, split: str) -> int:
    return len(load_split(split)[1])

  def split(self, split: str, config):
    """The split as an in-memory indexed `Split` whose images become [S, S, 3] uint8 RGB."""
    from repvit_jax.data import split as split_lib  # pylint: disable=g-import-not-at-top
    from repvit_jax.data._tf import tf  # pylint: disable=g-import-not-at-top

    images, labels = load_split(split)
    size = config.image_size

    def decode_crop(raw, window_fn):
      grey = tf.image.resize(raw[:, :, None], [size, size], method='bilinear')
      image = tf.cast(tf.round(tf.clip_by_value(grey, 0.0, 1.0) * 255.0), tf.uint8)
      y, x, h, w = tf.unstack(window_fn(tf.constant([size, size], tf.int32)))
      return tf.tile(image[y:y + h, x:x + w], [1, 1, 3])

    return split_lib.in_memory(images, labels, decode_crop)
