"""The notebooks in notebooks/ run top to bottom on CPU in smoke mode (REPVIT_SMOKE=1).

Each notebook runs in a fresh Python process, its code cells executed in order in one
namespace, as a kernel would (no Jupyter needed). Smoke mode picks tiny configs and the
embedded digits data, and installs or downloads nothing.
"""

import json
import os
import subprocess
import sys

import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'notebooks')
RUNNER = r'''
import json, sys
notebook = json.load(open(sys.argv[1]))
namespace = {'__name__': '__main__'}
for index, cell in enumerate(notebook['cells']):
  if cell['cell_type'] == 'code':
    source = ''.join(cell['source'])
    exec(compile(source, f'{sys.argv[1]} [cell {index}]', 'exec'), namespace)
print('NOTEBOOK OK')
'''


def _code_cells(name):
  with open(os.path.join(NOTEBOOKS, name)) as f:
    notebook = json.load(f)
  assert notebook['nbformat'] == 4
  return [''.join(c['source']) for c in notebook['cells'] if c['cell_type'] == 'code']


@pytest.mark.parametrize('name', ['fuse_your_own_model.ipynb', 'tdrl_vit_tpu_colab.ipynb'])
def test_notebook_runs_in_smoke_mode(name, tmp_path):
  env = dict(os.environ, REPVIT_SMOKE='1', TF_CPP_MIN_LOG_LEVEL='2')
  # The timeout only guards against a hang; the smoke runs take well under a minute each.
  result = subprocess.run([sys.executable, '-c', RUNNER, os.path.join(NOTEBOOKS, name)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  assert 'NOTEBOOK OK' in result.stdout


def test_colab_notebook_installs_only_outside_smoke_mode():
  first = _code_cells('tdrl_vit_tpu_colab.ipynb')[0]
  assert "REPVIT_SMOKE" in first and 'pip' in first and 'if not SMOKE' in first
  for name in ('tdrl_vit_tpu_colab.ipynb', 'fuse_your_own_model.ipynb'):
    for source in _code_cells(name):
      assert not any(line.lstrip().startswith(('!', '%')) for line in source.splitlines()), (
          f'{name}: shell/magic lines do not run outside IPython')
