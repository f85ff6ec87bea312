"""The compiled train and eval steps, generic over tasks.

A task provides `loss(params, batch_stats, batch, rng, frozen) -> (loss, (batch_stats,
metrics))` and `evaluate(variables, batch, frozen, deploy) -> per-batch sums`. `frozen` holds
variables that are inputs but never trained (teachers), passed as arguments so that they are
not baked into the compiled program as constants.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import optax

from repvit_jax.train import ema as ema_lib


def make_train_step(task, tx: optax.GradientTransformation, accum_steps: int = 1,
                    ema_config=None):
  """(state, batch, frozen) -> (state, metrics); jit it with shardings and donated state.

  A state with an 'ema' entry has its EMA updated after the optimizer step, with the decay
  `ema_lib.decay_at(ema_config, new step)` (metric `train/ema_decay`).

  With `accum_steps` k > 1 the batch of B examples is cut into k micro-batches of B / k (the
  examples j, j + k, j + 2k, ...: each micro-batch spans every device of the data axis), run
  one after the other in a `lax.scan`, and their mean gradient makes one update: the update of
  the whole batch for models without BatchNorm, in a k-th of the activation memory. BatchNorm
  statistics are those of each micro-batch, updated k times (as PyTorch's `accum_iter`).
  """
  if accum_steps < 1:
    raise ValueError(f'grad_accum_steps must be >= 1, got {accum_steps}')

  def gradients(params, batch_stats, batch, rng, frozen):
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    if accum_steps == 1:
      return grad_fn(params, batch_stats, batch, rng, frozen)
    size = next(iter(batch.values())).shape[0]
    if size % accum_steps:
      raise ValueError(f'a batch of {size} does not split into grad_accum_steps={accum_steps} '
                       'micro-batches; make batch_size a multiple of it')
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((size // accum_steps, accum_steps) + x.shape[1:]),
                               0, 1), batch)

    def one(carry, inputs):
      stats, grad_sum = carry
      index, micro_batch = inputs
      (loss, (stats, metrics)), grads = grad_fn(params, stats, micro_batch,
                                                jax.random.fold_in(rng, index), frozen)
      return (stats, jax.tree.map(jnp.add, grad_sum, grads)), (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    (batch_stats, grad_sum), (losses, metrics) = jax.lax.scan(
        one, (batch_stats, zeros), (jnp.arange(accum_steps), micro))
    grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
    mean = lambda x: jnp.mean(x, axis=0)
    return (mean(losses), (batch_stats, jax.tree.map(mean, metrics))), grads

  def train_step(state: Dict[str, Any], batch: Dict[str, jax.Array], frozen: Any):
    rng = jax.random.fold_in(state['rng'], state['step'])
    (loss, (batch_stats, metrics)), grads = gradients(state['params'], state['batch_stats'],
                                                      batch, rng, frozen)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = dict(metrics)
    metrics['train/loss'] = loss
    metrics['train/grad_norm'] = optax.tree.norm(grads)
    # Watched with the loss: a finite loss can still come with an update that overflowed.
    metrics['train/param_norm'] = optax.tree.norm(params)
    new_state = dict(state, params=params, batch_stats=batch_stats, opt_state=opt_state,
                     step=state['step'] + 1)
    if 'ema' in state:
      decay = ema_lib.decay_at(ema_config, new_state['step'])
      new_state['ema'] = ema_lib.update(state['ema'], {'params': params,
                                                       'batch_stats': batch_stats}, decay)
      metrics['train/ema_decay'] = decay
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
