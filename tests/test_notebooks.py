"""The notebooks in notebooks/ run top to bottom on CPU in smoke mode (REPVIT_SMOKE=1).

Each notebook runs in a fresh Python process, its code cells executed in order in one
namespace, as a kernel would (no Jupyter needed). Smoke mode picks tiny configs and the
embedded digits data, and installs or downloads nothing.
"""

import json
import os
from importlib import metadata
import subprocess
import sys

import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'notebooks')
# With SIMULATE_NO_TF=1 the runtime starts without TensorFlow, as Colab's TPU runtimes now do:
# until the cell that installs packages has run, `import tensorflow` fails and find_spec finds
# nothing (None in sys.modules); the install itself is simulated by lifting that.
RUNNER = r'''
import json, os, sys
WITHOUT = ('tensorflow', 'tensorflow_datasets')
simulate = os.environ.get('SIMULATE_NO_TF') == '1'
if simulate:
  assert not any(name in sys.modules for name in WITHOUT)
  sys.modules.update({name: None for name in WITHOUT})
notebook = json.load(open(sys.argv[1]))
namespace = {'__name__': '__main__'}
for index, cell in enumerate(notebook['cells']):
  if cell['cell_type'] == 'code':
    source = ''.join(cell['source'])
    exec(compile(source, f'{sys.argv[1]} [cell {index}]', 'exec'), namespace)
    if simulate and 'pip_install_command' in namespace:
      simulate = False
      for name in WITHOUT:
        del sys.modules[name]
      print('SIMULATED INSTALL after cell', index)
print('NOTEBOOK OK')
'''


def _code_cells(name):
  with open(os.path.join(NOTEBOOKS, name)) as f:
    notebook = json.load(f)
  assert notebook['nbformat'] == 4
  return [''.join(c['source']) for c in notebook['cells'] if c['cell_type'] == 'code']


@pytest.mark.parametrize('name', ['fuse_your_own_model.ipynb', 'tdrl_vit_tpu_colab.ipynb'])
def test_notebook_runs_in_smoke_mode(name, tmp_path):
  temp = tmp_path / 'temp'
  temp.mkdir()
  env = dict(os.environ, REPVIT_SMOKE='1', TF_CPP_MIN_LOG_LEVEL='2', TMPDIR=str(temp),
             SIMULATE_NO_TF='1' if name == 'tdrl_vit_tpu_colab.ipynb' else '0')
  # The timeout only guards against a hang; the smoke runs take well under a minute each.
  result = subprocess.run([sys.executable, '-c', RUNNER, os.path.join(NOTEBOOKS, name)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  assert 'NOTEBOOK OK' in result.stdout
  if name == 'tdrl_vit_tpu_colab.ipynb':
    # Started without TensorFlow: its settings and install cells ran without it, the install
    # asks for TensorFlow's CPU build and TFDS, and everything after ran once they were there.
    assert 'SIMULATED INSTALL after cell 3' in result.stdout
    would_run = next(l for l in result.stdout.splitlines() if 'would run:' in l)
    assert ' tensorflow-cpu ' in would_run and 'tensorflow-datasets' in would_run
  assert not [p for p in os.listdir(temp) if 'smoke' in p]     # its workdir is cleaned up


def _colab_cells(names):
  """Runs the Colab notebook's settings and install cells in smoke mode; `names` from them."""
  cells = _code_cells('tdrl_vit_tpu_colab.ipynb')
  namespace = {'__name__': '__main__'}
  old = os.environ.get('REPVIT_SMOKE')
  os.environ['REPVIT_SMOKE'] = '1'
  try:
    for source in cells[:2]:
      exec(compile(source, 'colab', 'exec'), namespace)  # pylint: disable=exec-used
  finally:
    if old is None:
      del os.environ['REPVIT_SMOKE']
    else:
      os.environ['REPVIT_SMOKE'] = old
  return [namespace[n] for n in names]


def test_colab_notebook_keeps_the_runtimes_packages_and_finds_its_source(tmp_path):
  find_source, pip_install_command = _colab_cells(['find_source', 'pip_install_command'])
  constraints = tmp_path / 'constraints.txt'
  command = pip_install_command('repvit_jax @ git+https://host/repvit-jax', str(constraints))
  assert command[command.index('-c') + 1] == str(constraints)
  assert 'repvit_jax @ git+https://host/repvit-jax' in command
  # With TensorFlow installed, no extra that would pull tensorflow-cpu beside it; the
  # installed JAX and TensorFlow are pinned.
  assert not any('[' in part or part.startswith('tensorflow-cpu') for part in command)
  pins = dict(line.split('==') for line in constraints.read_text().split())
  assert pins['jax'] == metadata.version('jax') and pins['numpy'] == metadata.version('numpy')
  assert any(name in pins for name in ('tensorflow', 'tensorflow-cpu'))
  # A runtime without TensorFlow (Colab's TPU runtimes now): its CPU build is added, once.
  bare = pip_install_command('repvit_jax @ git+https://host/repvit-jax', str(constraints),
                             has_tensorflow=False)
  assert bare.count('tensorflow-cpu') == 1 and 'tensorflow-datasets' in bare
  # The source: given, else the first checkout found, else one line saying what to do.
  assert find_source('git+https://host/r', ()) == 'repvit_jax @ git+https://host/r'
  assert find_source('/w/repvit_jax-1.0-py3-none-any.whl', ()) == (
      '/w/repvit_jax-1.0-py3-none-any.whl')
  empty, checkout = tmp_path / 'empty', tmp_path / 'repvit-jax'
  empty.mkdir()
  checkout.mkdir()
  (checkout / 'pyproject.toml').write_text('')
  assert find_source('', (str(empty), str(checkout))) == str(checkout)
  with pytest.raises(SystemExit, match='upload the repository to /content/repvit-jax'):
    find_source('', (str(empty),))


def test_colab_notebook_asks_for_a_tpu_and_targets_the_current_runtime():
  with open(os.path.join(NOTEBOOKS, 'tdrl_vit_tpu_colab.ipynb')) as f:
    info = json.load(f)['metadata']
  assert info['accelerator'] == 'TPU' and info['colab']['gpuType'] == 'V5E1'
  cells = _code_cells('tdrl_vit_tpu_colab.ipynb')
  namespace = {}
  advice_cell = next(c for c in cells if 'def accelerator_advice' in c)
  source = advice_cell[advice_cell.index('def accelerator_advice'):]
  exec(compile(source.split('\n\n\n')[0], 'advice', 'exec'), namespace)  # the function
  assert namespace['accelerator_advice']('tpu') is None
  assert 'Runtime > Change runtime type > v5e-1 TPU' in namespace['accelerator_advice']('cpu')
  for name in ('tdrl_vit_tpu_colab.ipynb', 'fuse_your_own_model.ipynb'):
    for source in _code_cells(name):
      assert not any(line.lstrip().startswith(('!', '%')) for line in source.splitlines()), (
          f'{name}: shell/magic lines do not run outside IPython')
