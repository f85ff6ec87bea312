"""The trainer's config files, shipped with the package (as big_vision's are).

Each `<name>.py` here has `get_config(arg)`, where `arg` names a variant (`'demo'`,
`'fashion'`, ...; `''` is the ImageNet recipe); `common.py` holds what they share and the
defaults of every field the trainer reads. A config is named by a spec,
`<file>[:<variant>]`, where the file is a path that exists (a copy you edited), or the name
of a packaged config with or without its directory and `.py`: `configs/vit_tiny.py:demo`,
`vit_tiny.py:demo` and `vit_tiny:demo` are the same config wherever repvit-jax is installed.

    from repvit_jax import configs
    config = configs.load('tdrl_vit_tiny:demo')   # an ml_collections.ConfigDict
"""

from __future__ import annotations

import importlib.util
import os
from typing import List

import ml_collections

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
# Files here that are not configs.
_HELPERS = ('__init__.py', 'common.py')


def names() -> List[str]:
  """The packaged configs' names (file names without `.py`), sorted."""
  return sorted(f[:-3] for f in os.listdir(DIRECTORY)
                if f.endswith('.py') and f not in _HELPERS)


def resolve(spec: str) -> str:
  """'<file>[:<variant>]' -> '<path of an existing file>[:<variant>]'.

  Raises:
    FileNotFoundError: no such file, and no packaged config of that name (the message lists
      them).
  """
  path, colon, variant = str(spec).partition(':')
  expanded = os.path.expanduser(path)
  if os.path.isfile(expanded):
    return os.path.abspath(expanded) + colon + variant
  name = os.path.basename(path)
  name = name[:-3] if name.endswith('.py') else name
  if name in names() and os.path.dirname(path) in ('', 'configs'):
    return os.path.join(DIRECTORY, name + '.py') + colon + variant
  raise FileNotFoundError(f'config file {path} not found, and no packaged config is named '
                          f'{name!r} (packaged: {", ".join(names())})')


def load(spec: str) -> ml_collections.ConfigDict:
  """'<file>[:<variant>]' -> that file's `get_config(variant)` (see `resolve`).

  Raises:
    FileNotFoundError: no such config. ValueError: an unknown variant (the file's message).
  """
  path, _, variant = resolve(spec).partition(':')
  name = '_config_' + os.path.splitext(os.path.basename(path))[0]
  loader_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(loader_spec)
  loader_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


__all__ = ['DIRECTORY', 'load', 'names', 'resolve']
