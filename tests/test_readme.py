"""The README's commands and figures against the code and the record they come from."""

import json
import os
import re
import shlex
import subprocess
import sys

from conftest import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
readme_figures = benchmark('readme_figures')


def _readme() -> str:
  with open(os.path.join(ROOT, 'README.md')) as f:
    return f.read()


def _commands(text: str):
  """Every command line of the README's bash blocks, continuations joined, comments cut."""
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = ' '.join(line.split('#', 1)[0].split())
      if line:
        commands.extend(part.strip() for part in line.split('&&'))
  return commands


def test_the_figures_script_runs_the_readmes_own_commands():
  commands = _commands(_readme())
  for name, command, _ in readme_figures.RUNS:
    assert any(c.endswith(command) for c in commands), (name, command)
  for name, command in readme_figures.TOOLS:
    assert command in commands, (name, command)


def test_the_readmes_figures_are_those_of_the_record():
  with open(readme_figures.RECORD) as f:
    record = json.load(f)
  written = readme_figures.blocks_in(_readme())
  assert set(written) == {'demo', 'mae'}
  assert written == readme_figures.render(record)


def test_the_readme_names_the_machine_and_leaves_the_lab_notes_to_benchmarks():
  """The figures name the machine; the date, the load and commit hashes stay out of README."""
  with open(readme_figures.RECORD) as f:
    record = json.load(f)
  where, text = record['machine'], _readme()
  for body in readme_figures.render(record).values():
    assert f'time on a {where["cores"]}-core {where["cpu"]} CPU' in body
  assert not re.search(r'\b20\d\d-\d\d-\d\d\b', text)
  assert f'load {where["load_1min"]}' not in text
  assert not re.search(r'\bcommit [0-9a-f]{7,40}\b', text)


def test_render_follows_the_record():
  with open(readme_figures.RECORD) as f:
    record = json.load(f)
  record['runs']['demo']['evals'][-1]['deploy_accuracy'] = 0.1234
  record['runs']['dmae_alpha0']['train_mae_loss'] = [0.0]
  blocks = readme_figures.render(record)
  assert 'deploy form at step' in blocks['demo'] and '0.1234' in blocks['demo']
  assert 'differ from the `:demo` run' in blocks['mae']


# Parses each README train.py command with train.py's own flags: the config file and variant
# load, every override names a field, and the models it names exist. ml_collections registers
# the override flags from sys.argv when train.py is imported, so each command is parsed in a
# child forked after the heavy imports.
_PARSER = r'''
import json, os, sys
import absl.flags, ml_collections.config_flags
from repvit_jax.models import registry
argvs = json.loads(sys.argv_json)
for argv in argvs:
  pid = os.fork()
  if pid == 0:
    sys.argv = ['train.py'] + argv
    from repvit_jax.train import command
    command.parse_flags(sys.argv)
    config = command.FLAGS.config
    names = [config.model.name] + [config[t].model for t in ('teacher', 'feature_teacher')
                                   if t in config and config[t].get('model')]
    unknown = [n for n in names if n not in registry.list_models()]
    if unknown:
      print('unknown models', argv, unknown, flush=True)
      os._exit(1)
    os._exit(0)
  status = os.waitpid(pid, 0)[1]
  if status:
    print('FAILED', argv, flush=True)
    sys.exit(1)
print('PARSED', len(argvs))
'''


def test_every_readme_training_command_parses():
  argvs = []
  for command in _commands(_readme()):
    words = shlex.split(command)
    if any(w.endswith('train.py') for w in words):
      argv = words[[i for i, w in enumerate(words) if w.endswith('train.py')][0] + 1:]
      argvs.append([a.replace('$DATA_DIR', '/data') for a in argv])
  assert len(argvs) >= 15
  code = f'import sys; sys.argv_json = {json.dumps(json.dumps(argvs))}\n' + _PARSER
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert f'PARSED {len(argvs)}' in done.stdout
