"""TensorFlow for the input pipeline only, kept off the accelerators, imported quietly.

Every data module that needs TensorFlow imports it from here, so that the first import also
hides GPUs from TF: otherwise TF would reserve most of the accelerator memory JAX needs.

TF's C++ libraries log while they load, before absl logging is initialised, so
`TF_CPP_MIN_LOG_LEVEL` does not stop those lines ("All log messages before
absl::InitializeLog() ...", the oneDNN notice, once per library), and the TFLite converter
and interpreter log the same way. Those calls run in `quiet_stderr`: file descriptor 2 is
captured, the known lines are dropped and anything else is written to stderr as it came.
"""

import importlib
import os
import sys

from repvit_jax.utils.stderr import captured_stderr

# TF's C++ start-up chatter (oneDNN notices, CPU feature lines) is noise for a JAX user.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# Lines TF's libraries print (while loading, converting to TFLite, creating an interpreter)
# that say nothing to a user of this package.
NOISE = ('All log messages before absl::InitializeLog() is called',
         'oneDNN custom operations are on',
         'This TensorFlow binary is optimized to use available CPU instructions',
         'rebuild TensorFlow with the appropriate compiler flags',
         'Ignored output_format.', 'Ignored drop_control_dependency.',
         'Created TensorFlow Lite XNNPACK delegate for CPU.')


def _pass_on_all_but_noise(captured: bytes) -> None:
  for line in captured.decode('utf-8', 'replace').splitlines(keepends=True):
    if not any(noise in line for noise in NOISE):
      sys.stderr.write(line)
  sys.stderr.flush()


def quiet_stderr():
  """A context manager: the block's stderr (file descriptor 2) is captured, then written out
  less the lines in `NOISE`; nothing unexpected is lost, only later."""
  return captured_stderr(_pass_on_all_but_noise)


def import_quietly(module: str = 'tensorflow'):
  """`importlib.import_module(module)` inside `quiet_stderr`."""
  if module in sys.modules:
    return sys.modules[module]
  with quiet_stderr():
    return importlib.import_module(module)


tf = import_quietly()

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  # TF was already initialised by someone else; its device list can no longer change.
  pass

__all__ = ['tf', 'import_quietly', 'quiet_stderr', 'NOISE']
