"""Fusers for a linear/conv layer next to a BatchNorm (see `repvit_jax.layers.conv_bn`).

Recognised training-form subtrees (params; the BN's running statistics under the same names
in batch_stats), each becoming a plain `{kernel, bias}`:

  {conv: {kernel (kh, kw, in, C), bias?}, bn: {scale (C,), bias (C,)}}   conv, then BN
  {linear: {kernel (in, C), bias?}, bn: {scale (C,), bias (C,)}}         dense, then BN
  {pre_bn: {scale (in,), bias (in,)}, linear: {kernel (in, C), bias?}}  BN, then dense

The key sets must match exactly, so no other layer is mistaken for one of these.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from repvit_jax.reparam import fuse
from repvit_jax.reparam.tree import Fuser, leaf, register_fuser, subtree

_LAYER_THEN_BN = ({'conv', 'bn'}, {'linear', 'bn'})
_BN_THEN_LINEAR = {'pre_bn', 'linear'}


def _has_kernel(node: Any) -> bool:
  return isinstance(node, Mapping) and 'kernel' in node


def _is_bn(node: Any) -> bool:
  return isinstance(node, Mapping) and set(node) == {'scale', 'bias'}


def matches_layer_then_bn(params: Mapping[str, Any]) -> bool:
  """`{conv|linear: {kernel, bias?}, bn: {scale, bias}}`."""
  keys = set(params)
  if keys not in _LAYER_THEN_BN:
    return False
  layer = params['conv' if 'conv' in keys else 'linear']
  return _has_kernel(layer) and set(layer) <= {'kernel', 'bias'} and _is_bn(params['bn'])


def matches_bn_then_linear(params: Mapping[str, Any]) -> bool:
  """`{pre_bn: {scale, bias}, linear: {kernel, bias?}}`."""
  return (set(params) == _BN_THEN_LINEAR and _is_bn(params['pre_bn']) and
          _has_kernel(params['linear']) and set(params['linear']) <= {'kernel', 'bias'})


def _bn_arrays(params, stats, name: str, path: str, channels: int, what: str):
  if not isinstance(stats, Mapping):
    raise ValueError(f'{path}: {what} needs the BatchNorm statistics of {name!r}, but the tree '
                     "has no batch_stats here; pass the full variables {'params': ..., "
                     "'batch_stats': ...} of the training form")
  bn = subtree(params, name, path, 'BatchNorm parameters')
  bn_stats = subtree(stats, name, path, 'BatchNorm statistics in batch_stats')
  where = f'{path}/{name}'
  return [leaf(bn, 'scale', where, (channels,)), leaf(bn, 'bias', where, (channels,)),
          leaf(bn_stats, 'mean', f'{where} (batch_stats)', (channels,)),
          leaf(bn_stats, 'var', f'{where} (batch_stats)', (channels,))]


def fuse_layer_then_bn(params: Mapping[str, Any], stats: Optional[Mapping[str, Any]],
                       path: str):
  """`{conv|linear, bn}` -> ({kernel, bias}, None)."""
  name = 'conv' if 'conv' in params else 'linear'
  layer = params[name]
  kernel = leaf(layer, 'kernel', f'{path}/{name}')
  if kernel.ndim not in (2, 4):
    raise ValueError(f'{path}/{name}/kernel: expected a dense (in, out) or conv (kh, kw, in, '
                     f'out) kernel, found shape {tuple(kernel.shape)}')
  channels = kernel.shape[-1]
  bias = leaf(layer, 'bias', f'{path}/{name}', (channels,)) if 'bias' in layer else None
  arrays = _bn_arrays(params, stats, 'bn', path, channels, f'a {name} followed by BatchNorm')
  kernel_out, bias_out = fuse.fold_batchnorm(kernel, bias, *arrays, eps=fuse.BN_EPSILON)
  return {'kernel': kernel_out.astype(kernel.dtype), 'bias': bias_out.astype(kernel.dtype)}, None


def fuse_bn_then_linear(params: Mapping[str, Any], stats: Optional[Mapping[str, Any]],
                        path: str):
  """`{pre_bn, linear}` -> ({kernel, bias}, None)."""
  layer = params['linear']
  kernel = leaf(layer, 'kernel', f'{path}/linear', ndim=2)
  bias = (leaf(layer, 'bias', f'{path}/linear', (kernel.shape[1],)) if 'bias' in layer
          else None)
  arrays = _bn_arrays(params, stats, 'pre_bn', path, kernel.shape[0],
                      'a BatchNorm followed by a linear')
  kernel_out, bias_out = fuse.fold_preceding_batchnorm(kernel, bias, *arrays,
                                                       eps=fuse.BN_EPSILON)
  return {'kernel': kernel_out.astype(kernel.dtype), 'bias': bias_out.astype(kernel.dtype)}, None


register_fuser(Fuser('conv/linear + BatchNorm', matches_layer_then_bn, fuse_layer_then_bn))
register_fuser(Fuser('BatchNorm + linear', matches_bn_then_linear, fuse_bn_then_linear))
