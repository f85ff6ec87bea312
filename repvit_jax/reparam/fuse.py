"""Pure fusion algebra on arrays: BatchNorm folding, linear chains, parallel branches.

Every function here works on plain arrays (jax or numpy) and knows nothing about modules or
variable trees. Kernels use the Flax layout with the output features on the LAST axis:
a dense kernel is (in, out), a conv kernel is (kh, kw, in, out). A layer computes
`y = x @ kernel + bias` (or the convolution equivalent); `bias=None` means no bias.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

#: BatchNorm epsilon used by every BatchNorm in this project (PyTorch's default). The fuse
#: functions take it as an argument; the tree walk uses this value, because a variable tree
#: does not record the epsilon of the module that produced it.
BN_EPSILON = 1e-5

Array = jnp.ndarray
KernelBias = Tuple[Array, Array]


def _bias_or_zeros(kernel: Array, bias: Optional[Array]) -> Array:
  # float64 numpy weights: float64 zeros where x64 is on, float32 (without a warning) where not.
  return jnp.zeros(kernel.shape[-1], jnp.result_type(kernel)) if bias is None else bias


def batchnorm_to_affine(scale: Array, offset: Array, mean: Array, var: Array,
                        eps: float = BN_EPSILON) -> KernelBias:
  """Turns eval-mode BatchNorm into a per-channel affine map `y = a * x + b`.

  Args:
    scale, offset: BN's learned gamma and beta, shape (C,).
    mean, var: BN's running statistics, shape (C,).
    eps: the epsilon inside the square root.

  Returns:
    (a, b), each (C,), with a = gamma / sqrt(var + eps) and b = beta - a * mean.
  """
  # Work in the widest input dtype: Flax keeps running statistics in float32 even when the
  # parameters are float64, and a float32 sqrt would cap the fold's precision.
  dtype = jnp.result_type(scale, offset, mean, var)
  scale, offset, mean, var = (jnp.asarray(t, dtype) for t in (scale, offset, mean, var))
  a = scale / jnp.sqrt(var + jnp.asarray(eps, dtype))
  return a, offset - a * mean


def fold_batchnorm(kernel: Array, bias: Optional[Array], scale: Array, offset: Array,
                   mean: Array, var: Array, eps: float = BN_EPSILON) -> KernelBias:
  """Folds an eval-mode BatchNorm that follows a linear (or conv) layer into that layer.

  `BN(x @ W + b) == x @ W' + b'` with
  W'[..., i] = gamma_i / sqrt(var_i + eps) * W[..., i] and
  b'_i = gamma_i * (b_i - mean_i) / sqrt(var_i + eps) + beta_i.

  Args:
    kernel: (..., C) with the output channels last: (in, C) dense, (kh, kw, in, C) conv.
    bias: (C,) or None (no bias).
    scale, offset, mean, var: BN parameters and running statistics, each (C,).
    eps: BN epsilon.

  Returns:
    (kernel', bias') with shapes (..., C) and (C,).
  """
  _check_channels(kernel, scale, offset, mean, var)
  a, b = batchnorm_to_affine(scale, offset, mean, var, eps)
  return kernel * a, _bias_or_zeros(kernel, bias) * a + b


def fold_partial_batchnorm(kernel: Array, bias: Optional[Array], scale: Array, offset: Array,
                           mean: Array, var: Array, eps: float = BN_EPSILON) -> KernelBias:
  """Folds a BatchNorm that normalises only the FIRST `k = len(scale)` output features.

  This is TDRL's rectification of a qkv layer: BN on the Q and K outputs (the first 2*D of
  3*D features), with V left as it is.

  Args:
    kernel: (in, C) with C >= k.
    bias: (C,) or None.
    scale, offset, mean, var: (k,).
    eps: BN epsilon.

  Returns:
    (kernel', bias'), (in, C) and (C,): features [0, k) normalised, [k, C) unchanged.
  """
  k = scale.shape[0]
  if k > kernel.shape[-1]:
    raise ValueError(f'BatchNorm over {k} features cannot follow a layer with '
                     f'{kernel.shape[-1]} outputs')
  bias = _bias_or_zeros(kernel, bias)
  head_kernel, head_bias = fold_batchnorm(kernel[..., :k], bias[:k], scale, offset, mean, var,
                                          eps)
  return (jnp.concatenate([head_kernel, kernel[..., k:]], axis=-1),
          jnp.concatenate([head_bias, bias[k:]], axis=-1))


def merge_linear_chain(layers: Sequence[Tuple[Array, Optional[Array]]]) -> KernelBias:
  """Merges linear layers applied one after the other into one linear layer.

  For x -> x @ W1 + b1 -> (.) @ W2 + b2: W = W1 @ W2 and b = b1 @ W2 + b2; longer chains fold
  left to right.

  Args:
    layers: [(kernel_i, bias_i)], kernel_i (d_i, d_{i+1}), bias_i (d_{i+1},) or None.

  Returns:
    (kernel, bias): (d_0, d_n) and (d_n,).
  """
  if not layers:
    raise ValueError('merge_linear_chain needs at least one layer')
  kernel, bias = layers[0]
  bias = _bias_or_zeros(kernel, bias)
  for next_kernel, next_bias in layers[1:]:
    if next_kernel.ndim != 2 or next_kernel.shape[0] != kernel.shape[-1]:
      raise ValueError(f'cannot chain a layer with {kernel.shape[-1]} outputs into a kernel of '
                       f'shape {next_kernel.shape}')
    # Full precision: TPUs and TF32 GPUs would otherwise fuse with ~1e-3 error.
    matmul = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    kernel, bias = (matmul(kernel, next_kernel),
                    matmul(bias, next_kernel) + _bias_or_zeros(next_kernel, next_bias))
  return kernel, bias


def sum_branches(branches: Sequence[Tuple[Array, Optional[Array]]],
                 scale: float | Array = 1.0) -> KernelBias:
  """Merges parallel linear branches whose outputs are added (and optionally scaled).

  `scale * sum_n (x @ W_n + b_n) == x @ W + b` with W = scale * sum W_n, b = scale * sum b_n.

  Args:
    branches: [(kernel_n, bias_n)], all kernels of one shape (..., C), biases (C,) or None.
    scale: scalar multiplying the sum (TDRL's 1/sqrt(number of branches) rectification).

  Returns:
    (kernel, bias) with shapes (..., C) and (C,).
  """
  if not branches:
    raise ValueError('sum_branches needs at least one branch')
  shape = branches[0][0].shape
  for kernel, _ in branches:
    if kernel.shape != shape:
      raise ValueError(f'parallel branches must have one kernel shape, got {shape} and '
                       f'{kernel.shape}')
  kernel = sum(k for k, _ in branches)
  bias = sum(_bias_or_zeros(k, b) for k, b in branches)
  return kernel * scale, bias * scale


def fold_preceding_batchnorm(kernel: Array, bias: Optional[Array], scale: Array,
                             offset: Array, mean: Array, var: Array,
                             eps: float = BN_EPSILON) -> KernelBias:
  """Folds an eval-mode BatchNorm that comes BEFORE a dense layer into that layer.

  `BN(x) @ W + c == x @ W' + c'` with BN(x) = a * x + b (see `batchnorm_to_affine`):
  W'[i, :] = a_i * W[i, :] and c' = b @ W + c. (LeViT's classification heads.) Only for
  dense layers: before a padded convolution the zero padding would not be normalised.

  Args:
    kernel: (C, out), the dense kernel whose INPUT features the BN normalises.
    bias: (out,) or None.
    scale, offset, mean, var: BN parameters and running statistics, each (C,).
    eps: BN epsilon.

  Returns:
    (kernel', bias') with shapes (C, out) and (out,).
  """
  if kernel.ndim != 2:
    raise ValueError(f'a BatchNorm can only be folded into a following dense kernel (in, out), '
                     f'got shape {tuple(kernel.shape)}')
  channels = kernel.shape[0]
  for array in (scale, offset, mean, var):
    if array.shape != (channels,):
      raise ValueError(f'BatchNorm parameters of shape {array.shape} do not match a layer with '
                       f'{channels} input features')
  a, b = batchnorm_to_affine(scale, offset, mean, var, eps)
  matmul = lambda u, w: jnp.matmul(u, w, precision=jax.lax.Precision.HIGHEST)
  return kernel * a[:, None], matmul(b, kernel) + _bias_or_zeros(kernel, bias)


def fold_affine_into_norm(norm_scale: Array, norm_bias: Array, affine_scale: Array,
                          affine_shift: Array, *, minus_input: bool = True) -> KernelBias:
  """Folds a per-channel affine map that follows a normalisation into the norm's affine.

  A norm ends in `n = gamma * x_hat + beta`; the map is `s * n + t`, minus `n` itself when
  `minus_input` (RIFormer's training-time token mixer `affine(n) - n`). Then
  `gamma' = gamma * (s - 1)`, `beta' = beta * (s - 1) + t` (or `gamma * s`, `beta * s + t`),
  and `norm'(x) = gamma' * x_hat + beta'` equals the map applied to the norm's output.
  Valid for any norm whose output is `gamma * x_hat + beta` per channel (GroupNorm,
  LayerNorm, eval-mode BatchNorm).

  Args:
    norm_scale, norm_bias: gamma and beta of the norm, each (C,).
    affine_scale, affine_shift: s and t of the map, each (C,).
    minus_input: whether the map subtracts its input (`s * n + t - n`).

  Returns:
    (gamma', beta'), each (C,).
  """
  shape = norm_scale.shape
  for array in (norm_bias, affine_scale, affine_shift):
    if array.shape != shape:
      raise ValueError(f'norm and affine parameters must have one shape (C,), got {shape} and '
                       f'{array.shape}')
  factor = affine_scale - 1 if minus_input else affine_scale
  return norm_scale * factor, norm_bias * factor + affine_shift


def _check_channels(kernel: Array, *per_channel: Array) -> None:
  channels = kernel.shape[-1]
  for array in per_channel:
    if array.shape != (channels,):
      raise ValueError(f'BatchNorm parameters of shape {array.shape} do not match a layer with '
                       f'{channels} output channels')
