"""The conversion machinery: rules that tie each Flax leaf to one PyTorch key, applied both ways.

A *rule* says: the Flax leaf `params/blocks_0/attn/qkv/kernel` is the PyTorch tensor
`blocks.0.attn.qkv.weight` under a *transform* (transpose a Linear weight, OIHW -> HWIO for a
conv, a reshape, ...). A family module (vit, levit, ...) makes the rules for every leaf of the
target model's variable tree; `apply_rules` then fills the tree from a state dict and reports
every missing key, unexpected key and shape mismatch at once; `invert_rules` turns a variable
tree back into a state dict (used to write synthetic checkpoints in tests, and to hand our
weights to PyTorch code).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

# Slash-joined paths, the same helpers init_from fitting uses.
from repvit_jax.utils.treepath import flatten, unflatten

Shape = Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
  """A pair of array maps: PyTorch layout -> Flax layout and back, with the shape rule.

  Attributes:
    name: shown in messages.
    forward: (torch array, flax shape) -> flax array.
    inverse: (flax array) -> torch array.
    torch_shape: flax shape -> the PyTorch shape that `forward` accepts.
  """
  name: str
  forward: Callable[[np.ndarray, Shape], np.ndarray]
  inverse: Callable[[np.ndarray], np.ndarray]
  torch_shape: Callable[[Shape], Shape]


def _permute(name: str, perm: Sequence[int]) -> Transform:
  inv = tuple(int(i) for i in np.argsort(perm))
  return Transform(name, lambda a, shape: np.transpose(a, perm),
                   lambda a: np.transpose(a, inv),
                   lambda shape: tuple(shape[i] for i in inv))


SAME = Transform('same', lambda a, shape: a, lambda a: a, lambda shape: tuple(shape))
# nn.Linear weight (out, in) -> nn.Dense kernel (in, out).
LINEAR = _permute('linear', (1, 0))
# nn.Conv2d weight (out, in/groups, kh, kw) -> nn.Conv kernel (kh, kw, in/groups, out).
CONV = _permute('conv', (2, 3, 1, 0))


def reshape_to(torch_shape: Shape) -> Transform:
  """A reshape between a PyTorch shape and the Flax shape (same size, same element order)."""
  torch_shape = tuple(int(s) for s in torch_shape)
  return Transform(f'reshape{torch_shape}', lambda a, shape: np.reshape(a, shape),
                   lambda a: np.reshape(a, torch_shape), lambda shape: torch_shape)


def conv1x1_to_dense() -> Transform:
  """A 1x1 nn.Conv2d weight (out, in, 1, 1) -> nn.Dense kernel (in, out)."""
  return Transform('conv1x1->dense', lambda a, shape: np.transpose(a[:, :, 0, 0]),
                   lambda a: np.transpose(a)[:, :, None, None],
                   lambda shape: (shape[1], shape[0], 1, 1))


@dataclasses.dataclass(frozen=True)
class Rule:
  """Flax leaf `flax_path` ('params/...' or 'batch_stats/...') <- PyTorch key `torch_key`."""
  flax_path: str
  torch_key: str
  transform: Transform = SAME


_INDEXED = re.compile(r'^(.*)_(\d+)$')


def timm_key(flax_path: str, renames: Iterable[Tuple[str, str]] = ()) -> Tuple[str, Transform]:
  """The PyTorch key and transform of a Flax leaf under timm's naming conventions.

  'params/blocks_3/attn/qkv/kernel' -> ('blocks.3.attn.qkv.weight', LINEAR): `name_<i>` is
  `name.<i>` (a ModuleList / Sequential entry); `kernel` is `weight` (transposed as a Linear
  for a 2-d kernel, OIHW -> HWIO for a 4-d one); LayerNorm/BatchNorm `scale` is `weight`;
  BatchNorm `mean` / `var` are `running_mean` / `running_var`. `renames` are (regex,
  replacement) pairs applied to the dotted key afterwards, in order.
  """
  collection, *parts = flax_path.split('/')
  *modules, leaf = parts
  names = []
  for module in modules:
    match = _INDEXED.match(module)
    names.append(f'{match.group(1)}.{match.group(2)}' if match else module)
  transform = SAME
  if collection == 'batch_stats':
    leaf = {'mean': 'running_mean', 'var': 'running_var'}.get(leaf, leaf)
  elif leaf == 'kernel':
    leaf = 'weight'
    transform = None  # decided by rank in `rules_from_target`
  elif leaf == 'scale':
    leaf = 'weight'
  key = '.'.join(names + [leaf])
  for pattern, replacement in renames:
    key = re.sub(pattern, replacement, key)
  return key, transform


def rules_from_target(target: Mapping[str, Any], key_fn: Callable[[str], Tuple[str, Any]]
                      ) -> List[Rule]:
  """One rule per leaf of `target` (a flat {path: shape-like}) with `key_fn(path)`.

  `key_fn` returns (torch key, transform); a transform of None means "a kernel: LINEAR for a
  2-d one, CONV for a 4-d one".
  """
  rules = []
  for path, leaf in target.items():
    key, transform = key_fn(path)
    if transform is None:
      ndim = len(_shape(leaf))
      transform = {2: LINEAR, 4: CONV}.get(ndim, SAME)
    rules.append(Rule(path, key, transform))
  return rules


@dataclasses.dataclass
class Constant:
  """A PyTorch buffer with a known value that has no Flax leaf (a fixed sin-cos table, an
  index table). It is checked when present; `invert_rules` writes it when `write`."""
  torch_key: str
  value: np.ndarray
  atol: float = 1e-5
  required: bool = False
  write: bool = True


class ConversionError(ValueError):
  """A state dict does not fit the model; the message lists every problem."""


def apply_rules(rules: Sequence[Rule], state_dict: Mapping[str, np.ndarray],
                target: Mapping[str, Any], *, ignore: Sequence[str] = (),
                constants: Sequence[Constant] = (), what: str = 'checkpoint',
                model: str = 'model', max_listed: int = 20) -> Dict[str, np.ndarray]:
  """Fills the flat Flax tree `target` ({path: array or ShapeDtypeStruct}) from `state_dict`.

  Args:
    rules: one per target leaf.
    state_dict: flat {torch key: array}.
    target: flat {flax path: leaf with .shape and .dtype}; the dtype of the result.
    ignore: regexes of PyTorch keys that may be present and are not used
      (`num_batches_tracked`, a discarded head, ...).
    constants: buffers checked against their known value when present.
    what, model: names for the messages.

  Returns:
    flat {flax path: numpy array} with the target's shapes and dtypes.

  Raises:
    ConversionError: listing (first `max_listed`, then a count) every PyTorch key the model
      needs and the file lacks, every key of the file the model does not use, every shape
      mismatch and every constant with another value.
  """
  ignore_re = [re.compile(p) for p in ignore]
  missing, mismatched, out, used = [], [], {}, set()
  for rule in rules:
    leaf = target[rule.flax_path]
    want = tuple(rule.transform.torch_shape(_shape(leaf)))
    if rule.torch_key not in state_dict:
      missing.append(f'{rule.torch_key} {want} (for {rule.flax_path})')
      continue
    used.add(rule.torch_key)
    array = np.asarray(state_dict[rule.torch_key])
    if tuple(array.shape) != want:
      mismatched.append(f'{rule.torch_key}: shape {tuple(array.shape)} in the {what}, '
                        f'{want} expected by {rule.flax_path}')
      continue
    value = rule.transform.forward(array, _shape(leaf))
    out[rule.flax_path] = np.asarray(value).astype(_dtype(leaf))
  for const in constants:
    if const.torch_key not in state_dict:
      if const.required:
        missing.append(f'{const.torch_key} {tuple(const.value.shape)} (a constant buffer)')
      continue
    used.add(const.torch_key)
    array = np.asarray(state_dict[const.torch_key])
    if tuple(array.shape) != tuple(const.value.shape):
      mismatched.append(f'{const.torch_key}: shape {tuple(array.shape)} in the {what}, '
                        f'{tuple(const.value.shape)} expected (a constant buffer)')
    elif not np.allclose(array.astype(np.float64), const.value.astype(np.float64),
                         atol=const.atol, rtol=0):
      mismatched.append(f'{const.torch_key}: differs from the fixed value this model uses '
                        f'(max abs difference '
                        f'{np.max(np.abs(array.astype(np.float64) - const.value)):.3g})')
  unexpected = sorted(k for k in state_dict
                      if k not in used and not any(r.search(k) for r in ignore_re))
  problems = ([f'missing: {m}' for m in missing] + [f'unexpected: {k} '
              f'{tuple(np.shape(state_dict[k]))}' for k in unexpected] +
              [f'shape: {m}' for m in mismatched])
  if problems:
    shown = '\n  '.join(problems[:max_listed])
    more = (f'\n  ... and {len(problems) - max_listed} more' if len(problems) > max_listed
            else '')
    raise ConversionError(
        f'the {what} does not fit {model}: {len(missing)} missing, {len(unexpected)} '
        f'unexpected, {len(mismatched)} mismatched key(s):\n  {shown}{more}\n'
        'Check --model (and its size), or pass --num-classes / --set key=value for the '
        'parts that differ; --ignore REGEX skips unexpected keys you do not need.')
  return out


def invert_rules(rules: Sequence[Rule], flat_variables: Mapping[str, Any],
                 constants: Sequence[Constant] = ()) -> Dict[str, np.ndarray]:
  """The PyTorch state dict of a flat Flax tree: the inverse of `apply_rules`."""
  out = {}
  for rule in rules:
    if rule.flax_path not in flat_variables:
      raise ValueError(f'{rule.flax_path} is missing from the variables')
    out[rule.torch_key] = np.ascontiguousarray(
        rule.transform.inverse(np.asarray(flat_variables[rule.flax_path])))
  for const in constants:
    if const.write:
      out[const.torch_key] = np.asarray(const.value)
  return out


def _shape(leaf: Any) -> Shape:
  return tuple(int(s) for s in np.shape(leaf)) if not hasattr(leaf, 'shape') else tuple(
      int(s) for s in leaf.shape)


def _dtype(leaf: Any):
  return getattr(leaf, 'dtype', np.float32)


__all__ = ['Transform', 'SAME', 'LINEAR', 'CONV', 'reshape_to', 'conv1x1_to_dense', 'Rule',
           'Constant', 'ConversionError', 'timm_key', 'rules_from_target', 'apply_rules',
           'invert_rules', 'flatten', 'unflatten']
