"""What a training run says about itself, for the tools: the data set it was trained on and
its eval split, the model a training config describes."""

from __future__ import annotations

from typing import Optional

import numpy as np

from repvit_jax import io
from repvit_jax.models.spec import ModelSpec


def eval_split(data_config, batch_size: int = 128):
  """The whole eval split of a data config, preprocessed as in training's evaluation:
  (images (N, S, S, 3) float32, labels (N,) int32)."""
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  images, labels = [], []
  for batch in data.make_eval_iterator(data_config, global_batch_size=batch_size):
    keep = np.asarray(batch['mask']) > 0
    images.append(np.asarray(batch['image'])[keep])
    labels.append(np.asarray(batch['label'])[keep])
  return np.concatenate(images), np.concatenate(labels)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy of (N, classes) logits."""
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def config_spec(config: str) -> ModelSpec:
  """The student spec of a training config file ('configs/x.py[:arg]')."""
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  from repvit_jax import configs  # pylint: disable=import-outside-toplevel
  loaded = configs.load(config)
  return ModelSpec.from_config(loaded, data.get_dataset_info(loaded.data).num_classes)


def data_config_for(source: str, config: Optional[str] = None):
  """The data config whose eval split tests a model: `config` ('configs/x.py[:arg]') when
  given, else the one the run at `source` was trained with (its workdir's config.json);
  None when neither exists."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  if config:
    from repvit_jax import configs  # pylint: disable=import-outside-toplevel
    return configs.load(config).data
  recorded = io.run_config(source)
  return ml_collections.ConfigDict(recorded['data']) if recorded else None


__all__ = ['eval_split', 'accuracy', 'config_spec', 'data_config_for']
