"""From `data.name` to the source that reads it: digits, an image folder, or a TFDS data set.

A source has `name`, `num_classes`, `classes` (label names, or () when it has none), `default_train_split`, `default_eval_split` (None when
the data set has no evaluation split), `num_examples(split)` and `split(split, config)`, which
returns the `Split` the pipeline reads.
"""

from __future__ import annotations

from typing import Optional

from repvit_jax.data import digits, folder
from repvit_jax.data.errors import DataError


def open_source(config):
  """The source named by a resolved data config; DataError if it cannot be read."""
  name = config.name
  if name == digits.NAME:
    return digits.DigitsSource()
  if name.startswith(folder.PREFIX):
    if not name[len(folder.PREFIX):].strip():
      raise DataError("data.name='folder:' needs a path: 'folder:/abs/path' with images in "
                      'path/<split>/<class>/<image file>')
    return folder.FolderSource(name, config.train_split, skip_corrupt=config.skip_corrupt)
  from repvit_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.TfdsSource(name, config.data_dir)


def resolve_splits(source, config) -> tuple[str, Optional[str]]:
  """(train split, eval split) from the config, or the source's defaults where None."""
  train = config.train_split or source.default_train_split
  evaluation = config.eval_split or source.default_eval_split
  return train, evaluation
