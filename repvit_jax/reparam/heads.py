"""Fuser for averaged classification heads (LeViT's class + distillation heads) -> one dense.

Training-form subtree: `{cls: <head>, dist: <head>}`, where each head is
`{pre_bn: {scale, bias}, linear: {kernel (in, K), bias (K,)}}` (BatchNorm then dense, see
`repvit_jax.layers.conv_bn.BNLinear`) or already a plain `{kernel, bias}`. At inference the
model returns the mean of the two heads' logits; both are affine in the same features, so
the mean is one dense layer: kernel = (W_cls + W_dist) / 2, bias = (b_cls + b_dist) / 2.
Deploy subtree: `{kernel (in, K), bias (K,)}`, the variables of `nn.Dense(K)`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from repvit_jax.reparam import conv_bn
from repvit_jax.reparam.tree import Fuser, leaf, register_fuser

HEADS = ('cls', 'dist')


def _is_plain(node: Any) -> bool:
  return isinstance(node, Mapping) and set(node) == {'kernel', 'bias'}


def _is_head(node: Any) -> bool:
  return isinstance(node, Mapping) and (
      _is_plain(node) or conv_bn.matches_bn_then_linear(node) or
      conv_bn.matches_layer_then_bn(node))


def matches(params: Mapping[str, Any]) -> bool:
  """`{cls: head, dist: head}` with nothing else beside them."""
  return set(params) == set(HEADS) and all(_is_head(params[k]) for k in HEADS)


def _fold_head(node: Mapping[str, Any], stats: Optional[Mapping[str, Any]], path: str):
  if _is_plain(node):
    return leaf(node, 'kernel', path, ndim=2), leaf(node, 'bias', path)
  fold = (conv_bn.fuse_bn_then_linear if conv_bn.matches_bn_then_linear(node)
          else conv_bn.fuse_layer_then_bn)
  folded, _ = fold(node, stats, path)
  if folded['kernel'].ndim != 2:
    raise ValueError(f'{path}: a classification head must be dense, found a kernel of shape '
                     f'{tuple(folded["kernel"].shape)}')
  return folded['kernel'], folded['bias']


def fuse_heads(params: Mapping[str, Any], stats: Optional[Mapping[str, Any]], path: str):
  """`{cls, dist}` -> ({kernel, bias} of the averaged head, None)."""
  stats = stats if isinstance(stats, Mapping) else {}
  (k1, b1), (k2, b2) = (_fold_head(params[name], stats.get(name), f'{path}/{name}')
                        for name in HEADS)
  if k1.shape != k2.shape or b1.shape != b2.shape:
    raise ValueError(f'{path}: the two heads differ in shape ({tuple(k1.shape)} and '
                     f'{tuple(k2.shape)}) and cannot be averaged')
  return {'kernel': (k1 + k2) / 2, 'bias': (b1 + b2) / 2}, None


register_fuser(Fuser('averaged heads (class + distillation)', matches, fuse_heads))
