"""TDRL's re-parameterizable linear layer: a skip linear plus a pyramid of linear+BN branches.

Training form of `RepLinear(features)` on tokens x of shape (..., C_in):

    y = Rectify(skip(x) + sum_{n=1..N} branch_n(x))

where `skip` is a plain linear with bias and `branch_n` is a stack of n units, each a
bias-free linear followed by BatchNorm over all leading axes (for (B, T, C) tokens: per
channel, statistics over batch x tokens). No nonlinearity anywhere, so after training the whole
layer collapses into one `nn.Dense(features)` (see `repvit_jax.reparameterize`).

Rectification (TDRL's answer to the variance that summing branches adds):
  'scale': multiply by 1/sqrt(N + 1), the number of summed branches;
  'bn':    BatchNorm on the first `rectify_features` outputs (for qkv: Q and K), rest as is;
  'none':  nothing.

The variable tree records everything the fusion needs, so that `reparameterize` is a pure
function of the tree: the 'scale' factor is stored as the constant `rectify_scale` in the
`batch_stats` collection (it is never updated).

How it is computed (`train_path`, same variables and the same function either way):
'collapsed' (default) trains with one matmul, `(x - mean(x)) @ W_eff + b_eff`, where W_eff and
b_eff are folded from the parameters and the batch statistics that follow from x's mean and
covariance (`repvit_jax.reparam.collapse`), and evaluates with the deploy fold itself;
'branches' applies every branch and BatchNorm as written (the reference in tests).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from repvit_jax.layers.dense import Dense
from repvit_jax.reparam import collapse
from repvit_jax.reparam.fuse import BN_EPSILON
from repvit_jax.reparam.tdrl import fuse_rep_linear

RECTIFY_MODES = ('none', 'scale', 'bn')
TRAIN_PATHS = ('collapsed', 'branches')
TDRL_LAYERS = ('qkv', 'proj', 'fc1', 'fc2')

default_kernel_init = nn.initializers.truncated_normal(stddev=0.02)


class LinearBNStack(nn.Module):
  """n bias-free linears, each followed by BatchNorm: one pyramid branch of `RepLinear`.

  Attributes:
    widths: output width of each unit; the last one is the layer's output width.
  """
  widths: Tuple[int, ...]
  bn_momentum: float = 0.9
  kernel_init: Callable = default_kernel_init
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(..., C_in) -> (..., widths[-1])."""
    for i, width in enumerate(self.widths):
      x = Dense(width, use_bias=False, kernel_init=self.kernel_init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=f'linear_{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=BN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f'bn_{i}')(x)
    return x


class _DenseVariables(nn.Module):
  """Declares `nn.Dense`'s variables (same names, shapes, initialisers, order) and returns
  their values without applying the layer: the collapsed path's view of a linear unit."""
  in_features: int
  features: int
  use_bias: bool
  kernel_init: Callable
  param_dtype: Any

  @nn.compact
  def __call__(self):
    """-> {'kernel': (in, out)[, 'bias': (out,)]}."""
    out = {'kernel': self.param('kernel', self.kernel_init, (self.in_features, self.features),
                                self.param_dtype)}
    if self.use_bias:
      out['bias'] = self.param('bias', nn.initializers.zeros_init(), (self.features,),
                               self.param_dtype)
    return out


class _BatchNormVariables(nn.Module):
  """Declares `nn.BatchNorm`'s variables as it does (float32 running statistics first) and
  returns ({scale, bias} values, {mean, var} `Variable`s that the caller may update)."""
  features: int
  param_dtype: Any

  @nn.compact
  def __call__(self):
    shape = (self.features,)
    running = {'mean': self.variable('batch_stats', 'mean', jnp.zeros, shape, jnp.float32),
               'var': self.variable('batch_stats', 'var', jnp.ones, shape, jnp.float32)}
    params = {'scale': self.param('scale', nn.initializers.ones_init(), shape,
                                  self.param_dtype),
              'bias': self.param('bias', nn.initializers.zeros_init(), shape, self.param_dtype)}
    return params, running


class _BranchVariables(nn.Module):
  """The variables of a `LinearBNStack` (linear_0, bn_0, linear_1, ...), declared only."""
  in_features: int
  widths: Tuple[int, ...]
  kernel_init: Callable
  param_dtype: Any

  @nn.compact
  def __call__(self):
    """-> (params subtree, {bn_<i>: {mean, var} Variables})."""
    params, running = {}, {}
    width = self.in_features
    for i, out in enumerate(self.widths):
      params[f'linear_{i}'] = _DenseVariables(width, out, False, self.kernel_init,
                                              self.param_dtype, name=f'linear_{i}')()
      params[f'bn_{i}'], running[f'bn_{i}'] = _BatchNormVariables(
          out, self.param_dtype, name=f'bn_{i}')()
      width = out
    return params, running


class RepLinear(nn.Module):
  """Training form of a TDRL linear layer; deploys as `nn.Dense(features)` (with bias).

  Two ways to compute the same function, over the same variables:
    'collapsed' (default): training mode folds every BatchNorm with the batch statistics
      that follow from the input's mean and covariance (`repvit_jax.reparam.collapse`) and
      applies one matmul; eval mode folds with the running statistics (the deploy fuser) and
      applies one matmul. Same outputs, gradients and running-statistic updates as 'branches'.
    'branches': every branch and BatchNorm applied as written (the reference).

  Attributes:
    features: output width C_out.
    num_branches: N, the number of pyramid rep-branches; branch n has n linear+BN units.
    hidden_features: width between units of a branch (None: the input width C_in).
    use_bias: bias on the skip linear. (The deployed layer always has a bias, because the
      BatchNorms contribute one.)
    rectify: 'none' | 'scale' | 'bn' (see the module docstring).
    rectify_features: with 'bn', the number of leading output features normalised
      (None: all of them).
    train_path: 'collapsed' | 'branches'.
  """
  features: int
  num_branches: int = 2
  hidden_features: Optional[int] = None
  use_bias: bool = True
  rectify: str = 'scale'
  rectify_features: Optional[int] = None
  bn_momentum: float = 0.9
  train_path: str = 'collapsed'
  kernel_init: Callable = default_kernel_init
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(..., C_in) -> (..., features)."""
    if self.rectify not in RECTIFY_MODES:
      raise ValueError(f'RepLinear rectify must be one of {RECTIFY_MODES}, got {self.rectify!r}')
    if self.num_branches < 1:
      raise ValueError(f'RepLinear needs num_branches >= 1, got {self.num_branches}')
    if self.train_path not in TRAIN_PATHS:
      raise ValueError(f'RepLinear train_path must be one of {TRAIN_PATHS}, got '
                       f'{self.train_path!r}')
    rectify_features = self.rectify_features or self.features
    if self.rectify == 'bn' and not 0 < rectify_features <= self.features:
      raise ValueError(f'rectify_features must be in (0, {self.features}], got '
                       f'{rectify_features}')
    if self.train_path == 'branches':
      return self._branches(x, train=train)
    return self._collapsed(x, train=train)

  def _branch_widths(self, in_features: int):
    hidden = self.hidden_features or in_features
    return [(hidden,) * (n - 1) + (self.features,) for n in range(1, self.num_branches + 1)]

  def _rectify_scale(self):
    return self.variable('batch_stats', 'rectify_scale',
                         lambda: jnp.asarray(1.0 / math.sqrt(self.num_branches + 1),
                                             self.param_dtype))

  def _branches(self, x, *, train: bool):
    common = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
    y = Dense(self.features, use_bias=self.use_bias, name='skip', **common)(x)
    for n, widths in enumerate(self._branch_widths(x.shape[-1]), start=1):
      y = y + LinearBNStack(widths, bn_momentum=self.bn_momentum, name=f'branch_{n}',
                            **common)(x, train=train)
    if self.rectify == 'scale':
      y = y * self._rectify_scale().value.astype(y.dtype)
    elif self.rectify == 'bn':
      k = self.rectify_features or self.features
      head = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                          epsilon=BN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
                          name='rectify_bn')(y[..., :k])
      y = jnp.concatenate([head, y[..., k:]], axis=-1) if k < self.features else head
    return y

  def _collapsed(self, x, *, train: bool):
    in_features = x.shape[-1]
    params = {'skip': _DenseVariables(in_features, self.features, self.use_bias,
                                      self.kernel_init, self.param_dtype, name='skip')()}
    running = {}
    for n, widths in enumerate(self._branch_widths(in_features), start=1):
      params[f'branch_{n}'], running[f'branch_{n}'] = _BranchVariables(
          in_features, widths, self.kernel_init, self.param_dtype, name=f'branch_{n}')()
    scale = self._rectify_scale().value if self.rectify == 'scale' else None
    if self.rectify == 'bn':
      params['rectify_bn'], running['rectify_bn'] = _BatchNormVariables(
          self.rectify_features or self.features, self.param_dtype, name='rectify_bn')()

    if not train:
      # Eval: exactly the deploy layer, folded by the same fuser as `reparameterize`.
      stats = jax.tree.map(lambda v: v.value, running,
                           is_leaf=lambda v: isinstance(v, nn.Variable))
      if scale is not None:
        stats['rectify_scale'] = scale
      folded, _ = fuse_rep_linear(params, stats, self.name or 'RepLinear')
      return (jnp.matmul(x.astype(self.dtype), folded['kernel'].astype(self.dtype)) +
              folded['bias'].astype(self.dtype))

    mean, cov, centred = collapse.batch_moments(x.astype(self.dtype))
    kernel, bias, batch_stats = collapse.fold_batch_statistics(params, mean, cov,
                                                               rectify_scale=scale)
    if not self.is_initializing():  # as nn.BatchNorm: init leaves the statistics as they are
      _update_running_averages(running, batch_stats, self.bn_momentum)
    y = jnp.matmul(centred, kernel.astype(self.dtype)) + bias.astype(self.dtype)
    return y.reshape(x.shape[:-1] + (self.features,))


def _update_running_averages(running: Dict[str, Any], batch: Dict[str, Any],
                             momentum: float) -> None:
  """Flax BatchNorm's update, `r = momentum * r + (1 - momentum) * batch`, for every
  {mean, var} `Variable` in the nested dict `running`."""
  for name, node in running.items():
    if isinstance(node, nn.Variable):
      node.value = momentum * node.value + (1 - momentum) * batch[name].astype(node.value.dtype)
    else:
      _update_running_averages(node, batch[name], momentum)


@dataclasses.dataclass(frozen=True)
class TDRL:
  """Where and how a model uses TDRL. A model field; `None` there means a plain model.

  Attributes:
    layers: which linears of each transformer block become `RepLinear`
      (any subset of 'qkv', 'proj', 'fc1', 'fc2').
    num_branches: N pyramid branches per layer.
    hidden_ratio: intermediate width of a branch, as a multiple of the layer's input width.
    qkv_rectify: rectification of the qkv layer: 'bn' (BN on Q and K), 'scale' or 'none'.
    rectify: rectification of the other layers: 'scale', 'bn' or 'none'.
    bn_momentum: Flax momentum (weight of the old running statistic) of every TDRL BatchNorm.
    train_path: 'collapsed' (one matmul from the batch moments, the default) or 'branches'
      (every branch as written, the reference); the same function and variables.
  """
  layers: Tuple[str, ...] = TDRL_LAYERS
  num_branches: int = 2
  hidden_ratio: float = 1.0
  qkv_rectify: str = 'bn'
  rectify: str = 'scale'
  bn_momentum: float = 0.9
  train_path: str = 'collapsed'

  def __post_init__(self):
    object.__setattr__(self, 'layers', tuple(self.layers))
    unknown = sorted(set(self.layers) - set(TDRL_LAYERS))
    if unknown:
      raise ValueError(f'unknown TDRL layers {unknown}; choose from {list(TDRL_LAYERS)}')
    for field in ('qkv_rectify', 'rectify'):
      if getattr(self, field) is None:   # `--config.model.tdrl.rectify=none` parses as None
        object.__setattr__(self, field, 'none')
      if getattr(self, field) not in RECTIFY_MODES:
        raise ValueError(f'TDRL {field} must be one of {RECTIFY_MODES}, got '
                         f'{getattr(self, field)!r}')
    if self.train_path not in TRAIN_PATHS:
      raise ValueError(f'TDRL train_path must be one of {TRAIN_PATHS}, got {self.train_path!r}')
    if self.num_branches < 1:
      raise ValueError(f'TDRL num_branches must be >= 1, got {self.num_branches}')
    if self.hidden_ratio <= 0:
      raise ValueError(f'TDRL hidden_ratio must be > 0, got {self.hidden_ratio}')


def is_reparameterized(tdrl: Optional[TDRL], role: str) -> bool:
  """Whether `make_linear` builds a `RepLinear` for `role` (else a plain `nn.Dense`)."""
  return tdrl is not None and role in tdrl.layers


def make_linear(tdrl: Optional[TDRL], role: str, features: int, in_features: int, *,
                name: str, use_bias: bool = True, qk_features: Optional[int] = None,
                kernel_init: Callable = default_kernel_init, dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32) -> nn.Module:
  """The linear layer for `role` ('qkv', 'proj', 'fc1', 'fc2') of a transformer block.

  A `RepLinear` when `tdrl` covers that role, else `nn.Dense`; both deploy to the same
  `{kernel, bias}` variables under `name`.

  Args:
    qk_features: for 'qkv', the number of leading outputs that are Q and K (BN rectified).
  """
  common = dict(use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
                name=name)
  if not is_reparameterized(tdrl, role):
    return Dense(features, **common)
  rectify = tdrl.qkv_rectify if role == 'qkv' else tdrl.rectify
  rectify_features = qk_features if (role == 'qkv' and rectify == 'bn') else None
  return RepLinear(features, num_branches=tdrl.num_branches,
                   hidden_features=max(1, int(round(in_features * tdrl.hidden_ratio))),
                   rectify=rectify, rectify_features=rectify_features,
                   bn_momentum=tdrl.bn_momentum, train_path=tdrl.train_path, **common)


def apply_linear(layer: nn.Module, x, *, train: bool):
  """Calls a layer from `make_linear`: only `RepLinear` takes the `train` flag."""
  return layer(x, train=train) if isinstance(layer, RepLinear) else layer(x)
