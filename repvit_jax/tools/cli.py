"""What every command line (`evaluate`, `predict`, `export`, `analyze`, `convert`) shares:
checks of its arguments before any work, and every mistake a user can make as one line.

    def main(argv=None) -> int:
      args = parser.parse_args(argv)
      return cli.run(lambda: _main(args))

`run` turns the errors a user causes (a bad path, a file that is not what it should be, a
full disk, Ctrl-C) into one `error: ...` line on stderr and exit status 1 (130 for Ctrl-C);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import ast
import errno
import os
import pickle
import sys
from typing import Any, Callable, Dict, List


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """--help shows each option's default and keeps the docstring's own line breaks."""


def parser(doc: str, **kwargs) -> argparse.ArgumentParser:
  """An argument parser whose --help is the whole module docstring `doc` (its examples kept
  as written) and every option's default."""
  return argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter, **kwargs)


def user_errors() -> tuple:
  """The exception types a user's input or machine can cause."""
  errors = [ValueError, OSError, EOFError, ImportError, pickle.UnpicklingError]
  try:
    from repvit_jax.data import DataError  # pylint: disable=import-outside-toplevel
    errors.append(DataError)
  except ImportError:
    pass
  return tuple(errors)


def one_line(error: BaseException) -> str:
  """The error as one line: an OSError as 'PATH: reason', others as their first line."""
  if isinstance(error, OSError) and error.strerror:
    where = error.filename if error.filename is not None else ''
    text = f'{where}: {error.strerror}' if where else error.strerror
    if error.errno == errno.ENOSPC:
      text += ' (the disk is full: free space or write elsewhere)'
    return text
  text = str(error).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  return line


def run(body: Callable[[], int]) -> int:
  """Runs a command's body; user errors become one line and exit status 1."""
  try:
    return body()
  except KeyboardInterrupt:
    print('error: interrupted (Ctrl-C)', file=sys.stderr, flush=True)
    return 130
  except user_errors() as e:  # pylint: disable=catching-non-exception
    print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
    return 1


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
  if value < 1:
    raise argparse.ArgumentTypeError(f'{value} must be at least 1')
  return value


def check_output(path: str, kind: str, flag: str = 'OUT') -> str:
  """Checks, before any work, that `path` can be written as a `kind` ('file' or 'directory').

  Raises:
    ValueError: a parent of `path` is a file, or `path` exists as the other kind.
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if kind == 'file' and os.path.isdir(path):
    raise ValueError(f'{flag} {path} is a directory; give a file name')
  if kind == 'directory' and os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'{flag} {path} is an existing file; give a directory (new or to update)')
  parent = os.path.dirname(path)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ''
  if parent and not os.path.isdir(parent):
    raise ValueError(f'{flag} {path}: {parent} is a file, not a directory; give a path in a '
                     'directory')
  if parent and not os.access(parent, os.W_OK):
    raise ValueError(f'{flag} {path}: cannot write in {parent}; give a path you can write to')
  return path


def parse_overrides(items: List[str]) -> Dict[str, Any]:
  """['num_heads=12', 'tdrl.num_branches=3'] -> {'num_heads': 12, 'tdrl': {'num_branches': 3}}."""
  out: Dict[str, Any] = {}
  for item in items:
    if '=' not in item:
      raise SystemExit(f'--set expects key=value, got {item!r}')
    key, raw = item.split('=', 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = out
    *parents, leaf = key.strip().split('.')
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return out


__all__ = ['parser', 'run', 'one_line', 'user_errors', 'positive_int', 'check_output',
           'parse_overrides']
