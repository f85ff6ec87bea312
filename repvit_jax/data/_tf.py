"""TensorFlow for the input pipeline only, kept off the accelerators.

Every data module that needs TensorFlow imports it from here, so that the first import also
hides GPUs from TF: otherwise TF would reserve most of the accelerator memory JAX needs.
"""

import os

# TF's C++ start-up chatter (oneDNN notices, CPU feature lines) is noise for a JAX user.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=wrong-import-position

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  # TF was already initialised by someone else; its device list can no longer change.
  pass

__all__ = ['tf']
