"""Checking the equivalence promise: train form (eval mode) vs deploy form on the same input.

Freshly initialised BatchNorms are the identity (mean 0, var 1, scale 1, bias 0), which would
hide a wrong fold; these helpers make every statistic and parameter non-trivial first.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax.reparam.tree import reparameterize


def randomize_batch_stats(variables: Mapping[str, Any], seed: int = 0, *,
                          mean_std: float = 0.5,
                          var_range: tuple = (0.5, 2.0)) -> Dict[str, Any]:
  """Replaces every BatchNorm running `mean` by N(0, mean_std) and `var` by U(var_range).

  Other `batch_stats` entries (such as TDRL's constant `rectify_scale`) are kept. Draws on the
  host with NumPy, so it compiles nothing.
  """
  rng = np.random.default_rng(seed)

  def draw(path, value):
    name = getattr(path[-1], 'key', None)
    if name == 'mean':
      return jnp.asarray(rng.normal(0.0, mean_std, value.shape), value.dtype)
    if name == 'var':
      return jnp.asarray(rng.uniform(*var_range, value.shape), value.dtype)
    return value

  out = dict(variables)
  if 'batch_stats' in variables:
    out['batch_stats'] = jax.tree_util.tree_map_with_path(draw, variables['batch_stats'])
  return out


def perturb_params(variables: Mapping[str, Any], seed: int = 0, *, relative: float = 0.1,
                   absolute: float = 0.02) -> Dict[str, Any]:
  """Every parameter p becomes p * (1 + relative * n1) + absolute * n2, n ~ N(0, 1).

  Moves BN scales off 1 and biases off 0, so that a fold that ignores one of them fails.
  """
  rng = np.random.default_rng(seed)

  def draw(p):
    noise = rng.normal(size=(2,) + p.shape)
    return jnp.asarray(np.asarray(p, np.float64) * (1 + relative * noise[0]) +
                       absolute * noise[1], p.dtype)

  out = dict(variables)
  out['params'] = jax.tree.map(draw, variables['params'])
  return out


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|, as a Python float."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (a `params` collection, say)."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def equivalence_error(train_model, deploy_model, variables: Mapping[str, Any], images, *,
                      jit: bool = True) -> Dict[str, Any]:
  """Runs both forms in eval mode and compares them.

  Args:
    train_model, deploy_model: the two modules (see `create_model(..., deploy=True)`).
    variables: the training form's variables (already made non-trivial if desired).
    images: (B, H, W, 3) input.
    jit: compile each forward pass (best for big models; tiny ones run faster op by op).

  Returns:
    dict with 'error' (relative, see `relative_error`), 'train_params', 'deploy_params'
    (parameter counts) and 'deploy_variables'.
  """
  deploy_variables = reparameterize(variables)
  maybe_jit = jax.jit if jit else (lambda f: f)
  expected = maybe_jit(lambda v, x: train_model.apply(v, x, train=False))(variables, images)
  actual = maybe_jit(lambda v, x: deploy_model.apply(v, x, train=False))(deploy_variables,
                                                                         images)
  return {
      'error': relative_error(actual, expected),
      'train_params': count_params(variables['params']),
      'deploy_params': count_params(deploy_variables['params']),
      'deploy_variables': deploy_variables,
  }


__all__ = ['randomize_batch_stats', 'perturb_params', 'relative_error', 'count_params',
           'equivalence_error']

