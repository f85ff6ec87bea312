"""Collapsed training of a TDRL `RepLinear`: its training-mode function as one linear map.

In training mode every unit of a rep-branch is `BN(h @ W)` with batch statistics over all
leading axes. There is no nonlinearity inside the layer, so each unit's input is an affine map
of the layer input x, `h = (x - mu) A + c`, and the unit's batch statistics follow from the
first two moments of x alone:

    mean(h @ W) = c @ W,        var(h @ W) = diag((A W)^T S (A W)),

with mu = mean(x) and S = cov(x) (biased, as BatchNorm's). Folding each unit with those
statistics, exactly as `fuse.fold_batchnorm` folds running statistics, turns the whole layer
(skip + pyramid branches + rectification, the partial Q/K BatchNorm included) into

    RepLinear_train(x) == (x - mu) @ kernel + bias.

Cost: one centred Gram matrix (M x C_in x C_in for M rows) and one matmul, instead of
N(N+1)/2 + 1 matmuls and ~2N(N+1) elementwise BatchNorm passes over (M x C) tensors. Autodiff
through the fold gives the gradients of the branch form, and the statistics it returns are the
ones each BatchNorm would have computed, so the running averages update identically.

Working with x centred keeps the fold exact when |mu| >> std(x): no `E[x^2] - mu^2`
cancellation, and each branch's bias is its last BatchNorm's offset, not a difference of large
numbers. Moments and the fold are float32 (or wider) whatever the compute dtype.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from repvit_jax.reparam.fuse import BN_EPSILON

_BRANCH = re.compile(r'^branch_(\d+)$')
_HIGHEST = jax.lax.Precision.HIGHEST


def _stats_dtype(dtype) -> Any:
  """float32, or the input's dtype when it is wider (float64 tests)."""
  return jnp.promote_types(dtype, jnp.float32)


@jax.custom_vjp
def _gram(centred: jax.Array) -> jax.Array:
  """(M, C) -> (C, C) = centred^T centred, accumulated in float32 (or wider)."""
  return _gram_fwd(centred)[0]


def _gram_fwd(centred):
  out_dtype = _stats_dtype(centred.dtype)
  gram = jnp.einsum('mc,md->cd', centred, centred, precision=_HIGHEST,
                    preferred_element_type=out_dtype)
  return gram, centred


def _gram_bwd(centred, cotangent):
  # d(X^T X) = dX^T X + X^T dX, so dX = X (G + G^T): one matmul, where autodiff of the einsum
  # would do two.
  symmetric = (cotangent + cotangent.T).astype(centred.dtype)
  return (jnp.matmul(centred, symmetric, precision=_HIGHEST),)


_gram.defvjp(_gram_fwd, _gram_bwd)


def batch_moments(x: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Centres x and takes its batch moments over all leading axes.

  Args:
    x: (..., C) activations (any float dtype).

  Returns:
    (mean, cov, centred): mean (C,) and biased covariance (C, C) in float32 (or wider);
    centred = x - mean, shape (M, C) with M the product of the leading axes, in x's dtype.
  """
  stats_dtype = _stats_dtype(x.dtype)
  rows = x.reshape(-1, x.shape[-1])
  mean = jnp.mean(rows.astype(stats_dtype), axis=0)
  centred = (rows.astype(stats_dtype) - mean).astype(x.dtype)
  cov = _gram(centred) / rows.shape[0]
  return mean, cov, centred


@jax.custom_vjp
def _quadratic_diagonal(kernel: jax.Array, cov: jax.Array) -> jax.Array:
  """diag(kernel^T cov kernel) for a symmetric cov: (C, C), (C, k) -> (k,)."""
  return _quadratic_diagonal_fwd(kernel, cov)[0]


def _quadratic_diagonal_fwd(kernel, cov):
  projected = jnp.matmul(cov, kernel, precision=_HIGHEST)
  return jnp.sum(kernel * projected, axis=0), (kernel, projected)


def _quadratic_diagonal_bwd(residuals, cotangent):
  # With cov symmetric, d/dK = 2 (cov K) diag(g) reuses the forward product, where autodiff
  # would multiply by cov again.
  kernel, projected = residuals
  weighted = kernel * cotangent
  return (2.0 * projected * cotangent,
          jnp.matmul(weighted, kernel.T, precision=_HIGHEST))


_quadratic_diagonal.defvjp(_quadratic_diagonal_fwd, _quadratic_diagonal_bwd)


def _column_variance(kernel: jax.Array, cov: jax.Array) -> jax.Array:
  """Batch variance of each column of (x - mu) @ kernel: diag(kernel^T cov kernel), >= 0."""
  # As Flax's BatchNorm: round-off must not give var < 0.
  return jnp.maximum(_quadratic_diagonal(kernel, cov), 0.0)


def _normalise(kernel, var, bn: Mapping[str, Any], eps: float):
  """Folds a train-mode BatchNorm (batch statistics mean, var) after `(x - mu) @ kernel +
  mean`: the centred input makes the folded bias exactly the BatchNorm's offset."""
  factor = bn['scale'] * jax.lax.rsqrt(var + eps)
  return kernel * factor, bn['bias']


def fold_batch_statistics(params: Mapping[str, Any], mean: jax.Array, cov: jax.Array, *,
                          rectify_scale: Optional[jax.Array] = None,
                          eps: float = BN_EPSILON) -> Tuple[jax.Array, jax.Array,
                                                            Dict[str, Any]]:
  """Folds a training-mode RepLinear, given its input's batch moments, into one linear map.

  Args:
    params: the RepLinear's `params` subtree (layout in `repvit_jax.reparam.tdrl`): `skip`,
      `branch_<n>/{linear_<i>, bn_<i>}`, optional `rectify_bn` over the first k outputs.
    mean: (C_in,) batch mean of the layer input; cov: (C_in, C_in) its biased covariance
      (see `batch_moments`).
    rectify_scale: the 'scale' rectification factor, or None.
    eps: BatchNorm epsilon.

  Returns:
    (kernel (C_in, C_out), bias (C_out,), batch statistics): training-mode output
    `== (x - mean) @ kernel + bias`; the statistics mirror the `batch_stats` layout
    (`branch_<n>/bn_<i>/{mean, var}`, `rectify_bn/{mean, var}`) and hold the batch mean and
    (biased) variance each BatchNorm normalised with. All in float32 (or wider).
  """
  dtype = _stats_dtype(cov.dtype)
  cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
  matmul = lambda a, b: jnp.matmul(a, b, precision=_HIGHEST)
  skip = cast(params['skip'])
  kernel = skip['kernel']
  # The skip linear's output mean is its bias at the centred input.
  bias = matmul(mean, kernel) + skip.get('bias', 0.0)
  stats: Dict[str, Any] = {}
  for name in sorted((k for k in params if _BRANCH.match(k)),
                     key=lambda k: int(_BRANCH.match(k).group(1))):
    branch = cast(params[name])
    # The branch input is (x - mean) A + offset with A = identity and offset = mean.
    branch_kernel, offset = None, mean
    stats[name] = {}
    for i in range(len(branch) // 2):
      weight = branch[f'linear_{i}']['kernel']
      unit_kernel = weight if branch_kernel is None else matmul(branch_kernel, weight)
      unit_mean, unit_var = matmul(offset, weight), _column_variance(unit_kernel, cov)
      stats[name][f'bn_{i}'] = {'mean': unit_mean, 'var': unit_var}
      branch_kernel, offset = _normalise(unit_kernel, unit_var, branch[f'bn_{i}'], eps)
    kernel, bias = kernel + branch_kernel, bias + offset
  if rectify_scale is not None:
    scale = jnp.asarray(rectify_scale, dtype)
    kernel, bias = kernel * scale, bias * scale
  if 'rectify_bn' in params:
    bn = cast(params['rectify_bn'])
    k = bn['scale'].shape[0]
    head_mean, head_var = bias[:k], _column_variance(kernel[:, :k], cov)
    stats['rectify_bn'] = {'mean': head_mean, 'var': head_var}
    head_kernel, head_bias = _normalise(kernel[:, :k], head_var, bn, eps)
    kernel = jnp.concatenate([head_kernel, kernel[:, k:]], axis=1)
    bias = jnp.concatenate([head_bias, bias[k:]])
  return kernel, bias, stats
