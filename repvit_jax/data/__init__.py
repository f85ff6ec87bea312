"""Input pipelines: deterministic, resumable, per-host tf.data batches as numpy arrays.

    from repvit_jax import data
    config = data.default_config()            # name='digits': embedded, offline
    info = data.get_dataset_info(config)      # num_classes, num_train, num_eval, splits
    train = data.make_train_iterator(config, global_batch_size=256, seed=0, start_step=0)
    batch = next(train)                       # {'image': [b, S, S, 3] f32, 'label': [b] i32}
    for batch in data.make_eval_iterator(config, global_batch_size=256):
      ...                                     # plus 'mask' [b] f32: 1 real, 0 padding

Data sets: 'digits', 'fashion_mnist' and 'idx:/path' (MNIST-format files), 'folder:/path'
(path/<split>/<class>/<image>), or a prepared TFDS image-classification name;
`validation_size` carves a validation split from train. Every user-caused problem raises
`DataError`.

Importing this package does not import TensorFlow; the iterators and TFDS look-ups do
(with GPUs hidden from TF), so config code and the rest of repvit_jax stay TF-free.
"""

from __future__ import annotations

import importlib

from repvit_jax.data.config import default_config
from repvit_jax.data.errors import DataError
from repvit_jax.data.info import DatasetInfo, get_dataset_info

# Imported on first use: these modules import TensorFlow.
_LAZY = {
    'make_train_iterator': 'repvit_jax.data.pipeline',
    'make_eval_iterator': 'repvit_jax.data.pipeline',
}

__all__ = ['DataError', 'DatasetInfo', 'default_config', 'get_dataset_info',
           'make_eval_iterator', 'make_train_iterator']


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))
