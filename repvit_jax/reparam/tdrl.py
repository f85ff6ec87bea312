"""Fuser for TDRL `RepLinear` subtrees: skip + pyramid branches (+ rectification) -> one linear.

Training-form subtree (see `repvit_jax.layers.rep_linear`):

  params:      skip/{kernel (in, out), bias (out,)?}
               branch_<n>/{linear_<i>/kernel, bn_<i>/{scale, bias}}   for n = 1..N, i = 0..
               rectify_bn/{scale, bias}                               (optional, k <= out)
  batch_stats: branch_<n>/bn_<i>/{mean, var}, rectify_bn/{mean, var}, rectify_scale ()

Deploy subtree: {kernel (in, out), bias (out,)}, the variables of `nn.Dense(out)`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from repvit_jax.reparam import fuse
from repvit_jax.reparam.tree import Fuser, leaf, register_fuser, subtree

_BRANCH = re.compile(r'^branch_(\d+)$')
_UNIT = re.compile(r'^(linear|bn)_(\d+)$')


def matches(params: Mapping[str, Any]) -> bool:
  """A node is a RepLinear when it has a `skip` linear and at least one `branch_<n>`."""
  skip = params.get('skip')
  return (isinstance(skip, Mapping) and 'kernel' in skip and
          any(_BRANCH.match(k) for k in params))


def fuse_rep_linear(params: Mapping[str, Any], stats: Optional[Mapping[str, Any]],
                    path: str):
  """Folds one RepLinear subtree; returns ({kernel, bias}, None)."""
  if not isinstance(stats, Mapping):
    raise ValueError(f'{path}: a TDRL RepLinear needs its BatchNorm statistics, but the tree '
                     "has no batch_stats here; pass the full variables {'params': ..., "
                     "'batch_stats': ...} of the training form")
  unexpected = sorted(k for k in params
                      if k not in ('skip', 'rectify_bn') and not _BRANCH.match(k))
  if unexpected:
    raise ValueError(f'{path}: unexpected entries {unexpected} in a TDRL RepLinear')
  skip = subtree(params, 'skip', path, 'the skip linear')
  skip_kernel = leaf(skip, 'kernel', f'{path}/skip', ndim=2)
  in_features, out_features = skip_kernel.shape
  skip_bias = (leaf(skip, 'bias', f'{path}/skip', shape=(out_features,))
               if 'bias' in skip else None)

  branches = [(skip_kernel, skip_bias)]
  for name in sorted((k for k in params if _BRANCH.match(k)),
                     key=lambda k: int(_BRANCH.match(k).group(1))):
    branches.append(_fold_branch(params[name], stats.get(name), f'{path}/{name}',
                                 in_features, out_features))

  scale = stats.get('rectify_scale', 1.0)
  if hasattr(scale, 'shape') and scale.shape != ():
    raise ValueError(f'{path}/rectify_scale: expected a scalar, found shape {scale.shape}')
  kernel, bias = fuse.sum_branches(branches, scale)

  if 'rectify_bn' in params:
    kernel, bias = _fold_bn(kernel, bias, params, stats, 'rectify_bn', path, partial=True)
  dtype = skip_kernel.dtype
  return {'kernel': kernel.astype(dtype), 'bias': bias.astype(dtype)}, None


def _fold_branch(branch: Any, stats: Any, path: str, in_features: int, out_features: int):
  """One pyramid branch (linear_0, bn_0, linear_1, bn_1, ...) -> (kernel, bias)."""
  if not isinstance(branch, Mapping):
    raise ValueError(f'{path}: expected a branch of linear+BN units, found '
                     f'{type(branch).__name__}')
  indices = sorted({int(m.group(2)) for m in map(_UNIT.match, branch) if m})
  if not indices or indices != list(range(len(indices))) or len(branch) != 2 * len(indices):
    raise ValueError(f'{path}: expected units linear_0, bn_0, ..., linear_<n-1>, bn_<n-1>, '
                     f'found {sorted(branch)}')
  units = []
  width = in_features
  for i in indices:
    linear = subtree(branch, f'linear_{i}', path, 'a linear unit')
    kernel = leaf(linear, 'kernel', f'{path}/linear_{i}', ndim=2)
    if kernel.shape[0] != width:
      raise ValueError(f'{path}/linear_{i}/kernel: expected {width} input features, found '
                       f'shape {tuple(kernel.shape)}')
    width = kernel.shape[1]
    units.append(_fold_bn(kernel, None, branch, stats, f'bn_{i}', path, partial=False))
  if width != out_features:
    raise ValueError(f'{path}: the branch ends with {width} features but the skip linear has '
                     f'{out_features}')
  return fuse.merge_linear_chain(units)


def _fold_bn(kernel, bias, params, stats, name: str, path: str, *, partial: bool):
  """Folds BatchNorm `name` (params and stats under `path`) into (kernel, bias)."""
  bn = subtree(params, name, path, 'BatchNorm parameters')
  bn_stats = subtree(stats, name, path, 'BatchNorm statistics in batch_stats')
  where = f'{path}/{name}'
  channels = kernel.shape[-1]
  size = leaf(bn, 'scale', where, ndim=1).shape[0]
  if partial and not 0 < size <= channels or not partial and size != channels:
    raise ValueError(f'{where}: BatchNorm over {size} features cannot follow a layer with '
                     f'{channels} outputs')
  arrays = [leaf(bn, 'scale', where, (size,)), leaf(bn, 'bias', where, (size,)),
            leaf(bn_stats, 'mean', f'{where} (batch_stats)', (size,)),
            leaf(bn_stats, 'var', f'{where} (batch_stats)', (size,))]
  fold = fuse.fold_partial_batchnorm if partial else fuse.fold_batchnorm
  return fold(kernel, bias, *arrays, eps=fuse.BN_EPSILON)


register_fuser(Fuser('TDRL RepLinear', matches, fuse_rep_linear))
