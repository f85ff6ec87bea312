"""From `data.name` to the source that reads it: digits, IDX files, an image folder, or TFDS.

A source has `name`, `num_classes`, `classes` (label names, or () when it has none),
`default_train_split`, `default_eval_split` (None when the data set has no evaluation split), `num_examples(split)` and `split(split, config)`, which
returns the `Split` the pipeline reads.

`data.validation_size` > 0 wraps any source in `HeldOut`: that many examples of the train
split become a 'validation' split, to choose hyper-parameters on while the test split stays
for reporting.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from repvit_jax.data import digits, folder, idx
from repvit_jax.data.errors import DataError


VALIDATION = 'validation'


def open_source(config):
  """The source named by a resolved data config; DataError if it cannot be read."""
  source = _open(config)
  if config.validation_size:
    source = HeldOut(source, config.validation_size)
  return source


def _open(config):
  name = config.name
  if name == digits.NAME:
    return digits.DigitsSource()
  if name.startswith(folder.PREFIX):
    if not name[len(folder.PREFIX):].strip():
      raise DataError("data.name='folder:' needs a path: 'folder:/abs/path' with images in "
                      'path/<split>/<class>/<image file>')
    return folder.FolderSource(name, config.train_split, config.eval_split,
                               skip_corrupt=config.skip_corrupt)
  if name in idx.KNOWN or name.startswith(idx.PREFIX):
    return idx.IdxSource(name, config.data_dir)
  from repvit_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.TfdsSource(name, config.data_dir)


def resolve_splits(source, config) -> tuple[str, Optional[str]]:
  """(train split, eval split) from the config, or the source's defaults where None."""
  train = config.train_split or source.default_train_split
  evaluation = config.eval_split or source.default_eval_split
  return train, evaluation


class HeldOut:
  """`source` with `size` examples of its train split moved to a new 'validation' split.

  Indexed train splits (digits, IDX, folders, cached TFDS) give up a fixed random subset
  (numpy RandomState(0), the same in every run and numpy version); streamed TFDS splits give
  up their last `size` examples (TFDS shuffles examples when it prepares a data set). Both
  remaining parts keep the split's order. Every other split is the source's own.
  """

  def __init__(self, source, size: int):
    self.source = source
    self.size = int(size)
    self.name = source.name
    self.num_classes = source.num_classes
    self.classes = getattr(source, 'classes', ())
    self.default_train_split = source.default_train_split
    self.default_eval_split = VALIDATION
    try:
      source.num_examples(VALIDATION)
    except DataError:
      pass
    else:
      raise DataError(f"data set {source.name!r} has its own {VALIDATION!r} split; "
                      'data.validation_size carves one from train only for data sets without '
                      'one: set data.validation_size=0 (TFDS can slice one instead: '
                      "data.train_split='train[:98%]', data.eval_split='train[98%:]')")
    available = source.num_examples(self.default_train_split)
    if not 0 < self.size < available:
      raise DataError(f'data.validation_size={self.size} must be between 1 and '
                      f'{available - 1}: the train split of {source.name!r} has {available} '
                      'examples')
    self._available = available

  def num_examples(self, split: str) -> int:
    if split == VALIDATION:
      return self.size
    if split == self.default_train_split:
      return self._available - self.size
    return self.source.num_examples(split)

  def _parts(self, whole):
    """(train part, validation part) of the source's whole train split."""
    from repvit_jax.data import split as split_lib  # pylint: disable=g-import-not-at-top
    if whole.indexed:
      # RandomState, not default_rng: its streams are frozen across numpy versions.
      order = np.random.RandomState(0).permutation(whole.num_examples)
      return (split_lib.subset(whole, np.sort(order[self.size:])),
              split_lib.subset(whole, np.sort(order[:self.size])))
    cut = whole.num_examples - self.size
    return (split_lib.window(whole, 0, cut),
            split_lib.window(whole, cut, whole.num_examples))

  def split(self, split: str, config):
    if split not in (VALIDATION, self.default_train_split):
      return self.source.split(split, config)
    train, validation = self._parts(self.source.split(self.default_train_split, config))
    return validation if split == VALIDATION else train
