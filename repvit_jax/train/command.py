"""The train command: `repvit-train --config <config>[:variant] --workdir DIR`.

`python train.py ...` in a checkout and `python -m repvit_jax.train ...` are the same command.
The config is a config file or the name of a packaged one (`repvit_jax.configs`), e.g.
`configs/tdrl_vit_tiny.py:demo` or `tdrl_vit_tiny:demo`. Any config field can be overridden
on the command line, e.g. `--config.batch_size=256 --config.model.drop_path_rate=0.1`.
Running again with the same workdir resumes from its last checkpoint.
"""

import gc
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from repvit_jax import configs
from repvit_jax.utils import host_memory

config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: a file or a packaged config\'s name, [:variant].',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the deploy model.')
flags.DEFINE_bool('traceback', False, 'On error, show the full traceback instead of one line.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


# `--config.a.b=None`: absl parses a float or int field's value as a number, so None is set
# after parsing (for fields that allow it, such as optimizer.grad_clip).
_NONE_OVERRIDE = re.compile(r'^--config\.([\w.]+)=(?i:none)$')


def _error_line(error: BaseException, argv) -> str:
  """One line for a flag or config-file error: the innermost message, with its flag."""
  key_error = error
  while key_error is not None and not isinstance(key_error, KeyError):
    key_error = key_error.__cause__ or key_error.__context__
  if key_error is not None and key_error.args:
    error = key_error
    # ml_collections: "'optimzer'\nDid you mean "optimizer" instead of "optimzer"?"
    lines = str(error.args[0]).splitlines()
    key = lines[0].strip("'")
    hint = f'; {lines[1][0].lower()}{lines[1][1:]}' if len(lines) > 1 else ''
    flag = next((a.split('=')[0] for a in argv
                 if a.startswith('--config.') and key in a.split('=')[0].split('.')), '--config')
    return f'{flag}: the config has no field {key!r}{hint}'
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  first, last = (lines[0], lines[-1]) if lines else (type(error).__name__, '')
  if len(lines) > 1:   # a traceback from the config file: its last line is the error
    flag = first.split(': ')[0] if first.startswith('flag --') else '--config'
    return f'{flag.replace("flag ", "")}: {last}'
  if first.startswith('Unknown command line flag \'config.'):
    return f'{first} (give --config=configs/<name>.py before its --config.* overrides)'
  return first


def _resolve_config(argv):
  """argv with `--config`'s value made a file path (`configs.resolve`): a packaged config's
  name loads wherever the package is installed."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    try:
      if arg.startswith('--config='):
        argv[i] = '--config=' + configs.resolve(arg[len('--config='):])
      elif arg == '--config' and i + 1 < len(argv):
        argv[i + 1] = configs.resolve(argv[i + 1])
    except FileNotFoundError as e:
      raise ValueError(f'--config: {e}') from None
  return argv


def parse_flags(argv):
  """absl's flag parsing, with every mistake reported as one `error:` line (exit 2)."""
  nones = [m.group(1) for m in map(_NONE_OVERRIDE.match, argv[1:]) if m]
  argv = [a for a in argv if not _NONE_OVERRIDE.match(a)]
  try:
    argv = _resolve_config(argv)
    remaining = FLAGS(argv)
    config = FLAGS.config
    list(config.keys())        # a config file that failed to load raises here
    for path in nones:
      config_path.set_value(path, config, None)
  except (flags.Error, KeyError, OSError, ValueError, TypeError, AttributeError) as e:
    if '--traceback' in argv:
      raise
    print(f'error: {_error_line(e, argv)}', file=sys.stderr, flush=True)
    sys.exit(2)
  return remaining


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Orbax and TFDS log every file operation at INFO through absl; keep the console readable.
  logging.set_verbosity(logging.WARNING)
  from repvit_jax import data, train  # pylint: disable=import-outside-toplevel
  from repvit_jax.train import distributed  # pylint: disable=import-outside-toplevel
  try:
    result = train.run(FLAGS.config, FLAGS.workdir)
  except KeyboardInterrupt:
    # Ctrl-C before the first step or after the last: the training loop saves on its own.
    if FLAGS.traceback:
      raise
    print('error: interrupted (Ctrl-C) outside the training steps; run again with the same '
          '--workdir to resume from its last saved checkpoint', file=sys.stderr, flush=True)
    sys.exit(130)
  except (ValueError, FileNotFoundError, data.DataError, train.TrainingError) as e:
    if FLAGS.traceback:
      raise
    distributed.wait_if_a_peer_was_lost(e)
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    distributed.wait_if_a_peer_was_lost(e)   # a lost process is named in one line
    raise
  if result['preempted']:
    print(f'stopped at step {result["step"]} on {result["stopped_by"]}; resume with the same '
          '--workdir', flush=True)
    # Not finished, so not 0: a scheduler, or a script that runs train.py, must not take a
    # pre-empted run for a finished one. 128 + the signal's number, as the shell reports a
    # process the signal ended.
    sys.exit(130 if result['stopped_by'] == 'Ctrl-C' else 143)
  # Everything is written. The interpreter's last garbage collection would now walk every
  # object JAX and TensorFlow made (seconds on a small machine); freezing them skips that.
  gc.freeze()


def cli():
  """The `repvit-train` console script."""
  if host_memory.runs_on_cpu():
    # First thing, before any thread or JAX backend exists: the process restarts once with a
    # malloc that keeps XLA:CPU's step buffers from one step to the next (see host_memory).
    try:
      host_memory.restart_with_fast_malloc()
    except ValueError as error:
      sys.exit(f'error: {error}')
  app.run(main, flags_parser=parse_flags)
