"""`DatasetInfo`: the numbers a trainer needs about a data set before reading any of it."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from repvit_jax.data import config as config_lib
from repvit_jax.data import sources


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Size and splits of the data set a data config names.

  Attributes:
    num_classes: labels are ints in [0, num_classes).
    num_train: examples in the train split (all hosts together).
    num_eval: examples in the eval split; 0 when there is none.
    train_split, eval_split: the split names in use (eval_split None when there is none).
    name: `data.name`.
    class_names: the name of each label, or () when the data set has none.
  """
  num_classes: int
  num_train: int
  num_eval: int
  train_split: str
  eval_split: Optional[str]
  name: str
  class_names: Tuple[str, ...] = ()


def get_dataset_info(data_config) -> DatasetInfo:
  """Opens the data set a data config names and reports its classes and split sizes.

  Reads metadata and file listings only, no images. Raises DataError when the data set is
  unknown, missing, not prepared, or a split does not exist.
  """
  config = config_lib.resolve(data_config)
  source = sources.open_source(config)
  train, evaluation = sources.resolve_splits(source, config)
  return DatasetInfo(
      num_classes=int(source.num_classes),
      num_train=source.num_examples(train),
      num_eval=source.num_examples(evaluation) if evaluation else 0,
      train_split=train,
      eval_split=evaluation,
      name=config.name,
      class_names=tuple(str(c) for c in getattr(source, 'classes', ()) or ()),
  )
