"""The command lines' shared checks: destinations and numbers refused before any work, and
every mistake as one `error:` line."""

import errno
import os
import pickle
import sys
import types

import pytest

from repvit_jax.tools import analyze, cli, export
from repvit_jax.tools.convert import main as convert_main


def one_error_line(capsys) -> str:
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in err, err
  return lines[0]


@pytest.fixture
def a_file(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('x')
  return path


@pytest.mark.parametrize('command,out,message', [
    ('export', 'a_file/out', 'a_file is a file, not a directory'),
    ('export', 'a_file', 'is an existing file; give a directory'),
    ('export', 'a_dir.tflite', 'a_dir.tflite is a directory; give a file name'),
    ('analyze', 'a_file/out', 'a_file is a file, not a directory'),
    ('convert', 'a_file/deit', 'a_file is a file, not a directory'),
    ('convert', 'a_file', 'is an existing file; give a directory'),
])
def test_a_destination_that_cannot_be_written_is_refused_first(tmp_path, a_file, capsys,
                                                               command, out, message):
  (tmp_path / 'a_dir.tflite').mkdir()
  destination = str(tmp_path / out)
  # The source does not exist either: the destination is checked before anything is read.
  source = str(tmp_path / 'no_such_model')
  main = {'export': lambda: export.main([source, destination]),
          'analyze': lambda: analyze.main(['attention', source, destination]),
          'convert': lambda: convert_main([source, destination, '--model', 'vit_tiny'])}
  assert main[command]() == 1
  assert message in one_error_line(capsys)


@pytest.mark.parametrize('argv', [
    lambda tmp: export.main([str(tmp), str(tmp / 'o'), '--batch-size', '0']),
    lambda tmp: analyze.main(['attention', str(tmp), str(tmp / 'o'), '--num-images', '0']),
])
def test_counts_below_one_are_refused_by_the_parser(tmp_path, capsys, argv):
  with pytest.raises(SystemExit) as exit_:
    argv(tmp_path)
  assert exit_.value.code == 2
  assert '0 must be at least 1' in capsys.readouterr().err


def test_a_garbage_pytorch_file_is_one_line(tmp_path, capsys, monkeypatch):
  def load(path, map_location=None, weights_only=True):
    raise pickle.UnpicklingError("invalid load key, '\\x9f'.")
  monkeypatch.setitem(sys.modules, 'torch', types.SimpleNamespace(load=load))
  garbage = tmp_path / 'deit.pth'
  garbage.write_bytes(b'\x9f' * 100)
  assert convert_main([str(garbage), str(tmp_path / 'out'), '--model', 'vit_tiny']) == 1
  line = one_error_line(capsys)
  assert f'{garbage} is not a readable PyTorch checkpoint (UnpicklingError' in line


def test_os_errors_read_as_path_and_reason():
  full = OSError(errno.ENOSPC, 'No space left on device', '/runs/x/checkpoints/20')
  assert cli.one_line(full) == ('/runs/x/checkpoints/20: No space left on device (the disk is '
                                'full: free space or write elsewhere)')
  assert cli.one_line(IsADirectoryError(errno.EISDIR, 'Is a directory', 'pics')) == (
      'pics: Is a directory')
  assert cli.run(lambda: (_ for _ in ()).throw(KeyboardInterrupt())) == 130


def test_every_benchmark_option_has_help_and_help_shows_the_whole_docstring():
  """--help is what a user reads first: the full module docstring (its examples) and each
  option's help and default (repvit_jax.tools.cli.parser)."""
  import ast  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  scripts = sorted(glob.glob(os.path.join(root, 'benchmarks', '*.py')))
  for path in scripts:
    tree = ast.parse(open(path, encoding='utf-8').read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for call in calls:
      if getattr(call.func, 'attr', '') == 'add_argument':
        assert any(k.arg == 'help' for k in call.keywords), (path, call.lineno)
      if getattr(call.func, 'attr', '') == 'ArgumentParser':
        raise AssertionError(f'{path}:{call.lineno}: use repvit_jax.tools.cli.parser(__doc__)')
  parser = cli.parser('First line.\n\n    python x.py --n 3   # an example\n')
  parser.add_argument('--n', type=int, default=3, help='how many')
  text = parser.format_help()
  assert '    python x.py --n 3   # an example' in text and 'how many (default: 3)' in text
