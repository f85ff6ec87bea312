"""The train state: a plain pytree, created once under jit with its final shardings.

    {'params': ..., 'batch_stats': ..., 'opt_state': ..., 'step': int32 (), 'rng': uint32 (2,),
     'ema': {'params': ..., 'batch_stats': ...}   (only with config.ema.decay; ema.py)}

`batch_stats` is an empty dict for models without BatchNorm. The per-step randomness is
`fold_in(rng, step)`, so a restored state replays the same random numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import optax

from repvit_jax.train import ema as ema_lib


def create_state(init_variables: Callable[[jax.Array], Dict[str, Any]],
                 tx: optax.GradientTransformation, seed: int,
                 with_ema: bool = False) -> Dict[str, Any]:
  """Initialises variables and optimizer state.

  Args:
    init_variables: rng -> {'params': ..., 'batch_stats': ... (optional)}.
    tx: the optimizer.
    seed: the run's seed; the same seed gives the same initial state.
    with_ema: add an EMA of the weights (a copy of them at step 0).
  """
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = init_variables(init_rng)
  params = variables['params']
  state = {
      'params': params,
      'batch_stats': variables.get('batch_stats', {}),
      'opt_state': tx.init(params),
      'step': jnp.zeros((), jnp.int32),
      'rng': step_rng,
  }
  if with_ema:
    state['ema'] = ema_lib.initial(state)
  return state


def model_variables(state_or_params: Dict[str, Any], batch_stats: Any = None) -> Dict[str, Any]:
  """{'params', 'batch_stats'} for `module.apply`, leaving out empty statistics."""
  if batch_stats is None:
    params, batch_stats = state_or_params['params'], state_or_params['batch_stats']
  else:
    params = state_or_params
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return variables
