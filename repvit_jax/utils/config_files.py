"""Loading a trainer config file (`configs/<name>.py[:arg]`) outside `train.py`.

Config files import their shared helpers as `from configs import common`; `train.py`, at the
repository root, has that root on `sys.path`. `load` gives the same result from anywhere: it
puts the directory that holds the file's `configs/` package on the path first.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections


def load(spec: str) -> ml_collections.ConfigDict:
  """'configs/x.py[:arg]' -> `get_config(arg)` of that file.

  Raises:
    FileNotFoundError: no such file. ValueError: an unknown variant (the file's message).
  """
  path, _, arg = str(spec).partition(':')
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} not found')
  root = os.path.dirname(os.path.dirname(path))
  if root not in sys.path:
    sys.path.insert(0, root)
  name = '_config_' + os.path.splitext(os.path.basename(path))[0]
  loader_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(loader_spec)
  loader_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


__all__ = ['load']
