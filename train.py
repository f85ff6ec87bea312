"""Train a model: `python train.py --config configs/<name>.py[:variant] --workdir DIR`.

The `repvit-train` command of an installed repvit-jax, run from a checkout; its flags and
behaviour are in `repvit_jax/train/command.py`.
"""

import os

# TensorFlow's C++ warnings (a failed read inside the input pipeline, before the one error line
# that names the file) are noise to a JAX user. Set before anything imports JAX, which sets
# its own default level (1) for the variable.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from repvit_jax.train import command  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  command.cli()
