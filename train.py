"""Train a model: `python train.py --config configs/<name>.py[:variant] --workdir DIR`.

Any config field can be overridden on the command line, e.g.
`--config.batch_size=256 --config.model.drop_path_rate=0.1`. Running again with the same
workdir resumes from its last checkpoint.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:arg]).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the deploy model.')
flags.DEFINE_bool('traceback', False, 'On error, show the full traceback instead of one line.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Orbax and TFDS log every file operation at INFO through absl; keep the console readable.
  logging.set_verbosity(logging.WARNING)
  # Imported here so that --help works without initialising JAX.
  from repvit_jax import data, train  # pylint: disable=import-outside-toplevel
  try:
    result = train.run(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, data.DataError, train.TrainingError) as e:
    if FLAGS.traceback:
      raise
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  if result['preempted']:
    print(f'stopped at step {result["step"]} on SIGTERM; resume with the same --workdir',
          flush=True)


if __name__ == '__main__':
  app.run(main)
