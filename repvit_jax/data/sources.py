"""From `data.name` to the source that reads it: digits, IDX files, an image folder, or TFDS.

A source has `name`, `num_classes`, `classes` (label names, or () when it has none),
`default_train_split`, `default_eval_split` (None when the data set has no evaluation split), `num_examples(split)` and `split(split, config)`, which
returns the `Split` the pipeline reads.

`data.validation_size` > 0 wraps any source in `HeldOut`: that many examples of the train
split become a 'validation' split, to choose hyper-parameters on while the test split stays
for reporting. `data.train_fraction` < 1 then wraps it in `TrainFraction`: training sees a fixed
class-balanced part of what is left of the train split.
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
  if config.train_fraction < 1:
    source = TrainFraction(source, config.train_fraction, config)
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


class _SourceView:
  """A source seen through a change of its train split: the same name, classes and splits
  unless the view says otherwise."""

  def __init__(self, source):
    self.source = source
    self.name = source.name
    self.num_classes = source.num_classes
    self.classes = getattr(source, 'classes', ())
    self.default_train_split = source.default_train_split
    self.default_eval_split = source.default_eval_split


class HeldOut(_SourceView):
  """`source` with `size` examples of its train split moved to a new 'validation' split.

  Indexed train splits (digits, IDX, folders, cached TFDS) give up a fixed random subset
  (numpy RandomState(0), the same in every run and numpy version); streamed TFDS splits give
  up their last `size` examples (TFDS shuffles examples when it prepares a data set). Both
  remaining parts keep the split's order. Every other split is the source's own.
  """

  def __init__(self, source, size: int):
    super().__init__(source)
    self.size = int(size)
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


class TrainFraction(_SourceView):
  """`source` whose train split keeps round(fraction x n_c) examples of each class c (at
  least one), the same examples in every run: per class a fixed random choice
  (numpy RandomState(1)), kept in the split's order. Every other split is the source's own.
  """

  def __init__(self, source, fraction: float, config):
    super().__init__(source)
    self.fraction = float(fraction)
    self._config = config
    self._kept = None
    self._whole_split = None

  def _whole(self):
    """The source's whole train split, read into memory first when only that gives labels
    (a streamed TFDS split with data.cache=True)."""
    if self._whole_split is None:
      whole = self.source.split(self.default_train_split, self._config)
      if whole.labels is None and self._config.cache:
        from repvit_jax.data import split as split_lib  # pylint: disable=g-import-not-at-top
        whole = split_lib.materialise(whole)
      if whole.labels is None:
        raise DataError(f'data.train_fraction={self.fraction} needs the labels of the train '
                        f'split of {self.name!r} before reading it, which a streamed TFDS '
                        'split does not give: set data.cache=True (the split must fit in host '
                        'memory), or data.train_fraction=1')
      self._whole_split = whole
    return self._whole_split

  def kept(self) -> np.ndarray:
    """Indices into the source's train split of the examples kept, sorted."""
    if self._kept is None:
      labels = self._whole().labels
      rng = np.random.RandomState(1)
      kept = []
      for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, int(round(self.fraction * len(members))))
        kept.append(members[rng.permutation(len(members))[:count]])
      self._kept = np.sort(np.concatenate(kept))
    return self._kept

  def num_examples(self, split: str) -> int:
    if split == self.default_train_split:
      return len(self.kept())
    return self.source.num_examples(split)

  def split(self, split: str, config):
    if split != self.default_train_split:
      return self.source.split(split, config)
    from repvit_jax.data import split as split_lib  # pylint: disable=g-import-not-at-top
    return split_lib.subset(self._whole(), self.kept())
