"""The package layout keeps its dependency rules (ARCHITECTURE.md, Rules)."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'repvit_jax')


def _imports(path):
  """Every repvit_jax module a file imports, at the top or inside functions."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{a.name}' for a in node.names)
  return {name for name in found if name.startswith('repvit_jax')}


def _files(package):
  root = os.path.join(PACKAGE, package)
  return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith('.py')]


@pytest.mark.parametrize('package,forbidden', [
    ('tools', 'repvit_jax.train'), ('deploy', 'repvit_jax.train'), ('io', 'repvit_jax.train'),
    ('convert', 'repvit_jax.train'), ('models', 'repvit_jax.train'),
    ('layers', 'repvit_jax.deploy'), ('utils', 'repvit_jax.'), ('reparam', 'repvit_jax.train'),
    ('data', 'repvit_jax.tools'), ('train', 'repvit_jax.tools')])
def test_no_package_imports_one_above_it(package, forbidden):
  files = _files(package)
  assert files
  offending = {os.path.relpath(f, PACKAGE): sorted(n for n in _imports(f)
                                                    if n.startswith(forbidden)
                                                    and not n.startswith(f'repvit_jax.{package}'))
               for f in files}
  assert not {k: v for k, v in offending.items() if v}


def test_the_top_of_the_package_holds_packages_and_at_most_four_modules():
  modules = [f for f in os.listdir(PACKAGE) if f.endswith('.py')]
  assert len(modules) <= 4, modules
  assert '__init__.py' in modules


def test_the_configs_import_only_each_other_and_the_data_defaults():
  """Config files are data: a pip-installed config loads without the trainer or the tools."""
  files = _files('configs')
  assert len(files) >= 9
  offending = {os.path.relpath(f, PACKAGE): sorted(
      n for n in _imports(f) - {'repvit_jax'}
      if not n.startswith(('repvit_jax.configs', 'repvit_jax.data')))
               for f in files}
  assert not {k: v for k, v in offending.items() if v}
