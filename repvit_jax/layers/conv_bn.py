"""Linear and convolution layers with BatchNorm that fold into one plain layer at deploy.

Training form (`deploy=False`) and the variables it owns, by module:

  ConvBN    params {conv: {kernel (kh, kw, in/groups, out), bias (out,)?}, bn: {scale, bias}}
            batch_stats {bn: {mean, var}}                       conv, then BatchNorm
  LinearBN  params {linear: {kernel (in, out), bias?}, bn: {scale, bias}}
            batch_stats {bn: {mean, var}}                       dense, then BatchNorm
  BNLinear  params {pre_bn: {scale, bias}, linear: {kernel (in, out), bias}}
            batch_stats {pre_bn: {mean, var}}                   BatchNorm, then dense

Deploy form (`deploy=True`): params {kernel, bias}, exactly the variables of `nn.Conv` /
`nn.Dense` with a bias, and no batch_stats. `repvit_jax.reparameterize` turns the first into
the second (see `repvit_jax/reparam/conv_bn.py`). BatchNorm over (..., C) inputs normalises
per channel with statistics over every leading axis (for tokens (B, N, C): batch x tokens).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from repvit_jax.layers.dense import Dense
from repvit_jax.reparam.fuse import BN_EPSILON

Padding = Union[int, Sequence[Tuple[int, int]], str]

default_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
default_dense_init = nn.initializers.truncated_normal(stddev=0.02)


def _pairs(padding: Padding):
  """An int p means p pixels on every side (PyTorch's convention), not 'SAME'."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  if isinstance(padding, str):
    return padding
  return tuple(tuple(p) for p in padding)


def _batchnorm(module: nn.Module, name: str, train: bool, scale_init=nn.initializers.ones):
  return nn.BatchNorm(use_running_average=not train, momentum=module.bn_momentum,
                      epsilon=BN_EPSILON, scale_init=scale_init, dtype=module.dtype,
                      param_dtype=module.param_dtype, name=name)


def _plain_dense(module: nn.Module, x):
  """The deploy form's own {kernel, bias}: what `nn.Dense(features)` would hold."""
  kernel = module.param('kernel', module.kernel_init, (x.shape[-1], module.features),
                        module.param_dtype)
  bias = module.param('bias', nn.initializers.zeros, (module.features,), module.param_dtype)
  return jnp.dot(x.astype(module.dtype), kernel.astype(module.dtype)) + bias.astype(module.dtype)


class ConvBN(nn.Module):
  """Conv2d (NHWC) followed by BatchNorm; deploys as one conv with a bias.

  Attributes:
    features: output channels.
    kernel_size, strides, padding: as PyTorch's Conv2d (an int padding pads every side).
    groups: feature groups (groups == in channels: depthwise).
    use_bias: whether the training-form conv has a bias (usually not: BN follows).
    bn_scale_init: init of BN's gamma (zeros makes a residual branch start as identity).
    deploy: build the folded form.
  """
  features: int
  kernel_size: Tuple[int, int] = (1, 1)
  strides: int = 1
  padding: Padding = 0
  groups: int = 1
  use_bias: bool = False
  bn_scale_init: Callable = nn.initializers.ones
  bn_momentum: float = 0.9
  kernel_init: Callable = default_conv_init
  deploy: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, H, W, C_in) -> (B, H', W', features)."""
    kernel_size = tuple(self.kernel_size)
    strides = (self.strides, self.strides) if isinstance(self.strides, int) else self.strides
    padding = _pairs(self.padding)
    if self.deploy:
      in_features = x.shape[-1]
      if in_features % self.groups:
        raise ValueError(f'{in_features} input channels do not split into {self.groups} groups')
      kernel = self.param('kernel', self.kernel_init,
                          kernel_size + (in_features // self.groups, self.features),
                          self.param_dtype)
      bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
      y = jax.lax.conv_general_dilated(
          x.astype(self.dtype), kernel.astype(self.dtype), strides, padding,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=self.groups)
      return y + bias.astype(self.dtype)
    y = nn.Conv(self.features, kernel_size, strides=strides, padding=padding,
                feature_group_count=self.groups, use_bias=self.use_bias,
                kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
                name='conv')(x)
    return _batchnorm(self, 'bn', train, self.bn_scale_init)(y)


class LinearBN(nn.Module):
  """Dense followed by BatchNorm over all leading axes; deploys as one dense with a bias.

  Attributes:
    features: output width.
    use_bias: whether the training-form dense has a bias (LeViT: no).
    bn_scale_init: init of BN's gamma (zeros on residual branches, as LeViT).
    deploy: build the folded form.
  """
  features: int
  use_bias: bool = False
  bn_scale_init: Callable = nn.initializers.ones
  bn_momentum: float = 0.9
  kernel_init: Callable = default_dense_init
  deploy: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(..., C_in) -> (..., features)."""
    if self.deploy:
      return _plain_dense(self, x)
    y = Dense(self.features, use_bias=self.use_bias, kernel_init=self.kernel_init,
                 dtype=self.dtype, param_dtype=self.param_dtype, name='linear')(x)
    return _batchnorm(self, 'bn', train, self.bn_scale_init)(y)


class BNLinear(nn.Module):
  """BatchNorm over all leading axes, (dropout,) then dense with bias; deploys as one dense.

  LeViT's classification head. Dropout sits between the two and is off in eval mode, so
  it does not affect the fold.
  """
  features: int
  drop_rate: float = 0.0
  bn_momentum: float = 0.9
  kernel_init: Callable = default_dense_init
  deploy: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(..., C_in) -> (..., features)."""
    if self.deploy:
      return _plain_dense(self, x)
    x = _batchnorm(self, 'pre_bn', train)(x)
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return Dense(self.features, kernel_init=self.kernel_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name='linear')(x)


__all__ = ['ConvBN', 'LinearBN', 'BNLinear']
