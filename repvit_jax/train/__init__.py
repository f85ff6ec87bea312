"""Training: sharded steps, checkpoints, metrics and the loop (`run(config, workdir)`)."""

import importlib
import importlib.util

__all__ = ['run', 'TrainingError']


def __getattr__(name: str):
  # Imported when first used, so that the train command's first lines (host_memory's restart)
  # run before JAX, Flax and TensorFlow are imported.
  if name in __all__:
    return getattr(importlib.import_module('repvit_jax.train.loop'), name)
  if importlib.util.find_spec(f'repvit_jax.train.{name}') is not None:
    return importlib.import_module(f'repvit_jax.train.{name}')
  raise AttributeError(f'module repvit_jax.train has no attribute {name!r}')
