"""The compiled train and eval steps, generic over tasks.

A task provides `loss(params, batch_stats, batch, rng, frozen) -> (loss, (batch_stats,
metrics))` and `evaluate(variables, batch, frozen, deploy) -> per-batch sums`. `frozen` holds
variables that are inputs but never trained (teachers), passed as arguments so that they are
not baked into the compiled program as constants.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import optax


def make_train_step(task, tx: optax.GradientTransformation):
  """(state, batch, frozen) -> (state, metrics); jit it with shardings and donated state."""

  def train_step(state: Dict[str, Any], batch: Dict[str, jax.Array], frozen: Any):
    rng = jax.random.fold_in(state['rng'], state['step'])
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    (loss, (batch_stats, metrics)), grads = grad_fn(state['params'], state['batch_stats'],
                                                    batch, rng, frozen)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = dict(metrics)
    metrics['train/loss'] = loss
    metrics['train/grad_norm'] = optax.global_norm(grads)
    # Watched with the loss: a finite loss can still come with an update that overflowed.
    metrics['train/param_norm'] = optax.global_norm(params)
    new_state = dict(state, params=params, batch_stats=batch_stats, opt_state=opt_state,
                     step=state['step'] + 1)
    return new_state, metrics

  return train_step


def make_eval_step(task, *, deploy: bool):
  """(variables, batch, frozen) -> dict of sums over the batch (masked), incl. 'count'."""

  def eval_step(variables, batch, frozen):
    return task.evaluate(variables, batch, frozen, deploy=deploy)

  return eval_step


def sum_metrics(totals: Dict[str, Any] | None, batch_sums: Dict[str, Any]) -> Dict[str, Any]:
  """Adds per-batch sums (device arrays) without leaving the device."""
  if totals is None:
    return dict(batch_sums)
  return {k: totals[k] + v for k, v in batch_sums.items()}


__all__ = ['make_train_step', 'make_eval_step', 'sum_metrics']
