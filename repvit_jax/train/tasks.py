"""Task registry: `config.task` -> the object that owns the model(s) and the loss."""

from __future__ import annotations

from repvit_jax.train.classification import ClassificationTask
from repvit_jax.train.mae import MAETask
from repvit_jax.train.module_imitation import ModuleImitationTask

TASKS = {'classification': ClassificationTask, 'mae': MAETask,
         'module_imitation': ModuleImitationTask}


def build(config, info):
  """The task for `config.task` on a data set described by `info` (a data.DatasetInfo)."""
  name = config.get('task', 'classification')
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known tasks: {", ".join(sorted(TASKS))}')
  return TASKS[name](config, info.num_classes)
