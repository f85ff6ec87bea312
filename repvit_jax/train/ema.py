"""An exponential moving average (EMA) of the weights, as timm's `ModelEmaV3`.

The train state holds it as `state['ema'] = {'params': ..., 'batch_stats': ...}` when
`config.ema.decay` is set: BatchNorm statistics are averaged too (timm averages buffers), so
the EMA is a complete set of variables that evaluates and reparameterizes like the raw ones.
It is updated once per optimizer step, inside the compiled step, and saved and restored with
the rest of the state (a resumed run continues it exactly). The config block is
`configs/common.py`'s `ema()`, with timm's defaults.

The decay of the k-th update (k = 1, 2, ...), with s = k - 1 - update_after_step:
  s <= 0:      0 (the EMA becomes a copy of the weights)
  warm-up:     clip(1 - (1 + s / warmup_gamma) ** -warmup_power, min_decay, decay)
  otherwise:   decay
so the average forgets its random initial weights within the first steps, instead of
dragging them along for 1 / (1 - decay) steps.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

PyTree = Any


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's `config.ema` keeps an EMA (decay 0: off)."""
  if not config.decay:
    if config.deploy:
      raise ValueError('config.ema.deploy=True exports the EMA weights, but the EMA is off: '
                       'set --config.ema.decay (e.g. 0.9998)')
    return False
  decay = float(config.decay)
  if not 0.0 < decay < 1.0:
    raise ValueError(f'config.ema.decay must be in (0, 1) (or 0: off), got {decay}')
  return True


def decay_at(config: ml_collections.ConfigDict, update: jax.Array) -> jax.Array:
  """The decay of update number `update` (1 for the first; int scalar, may be traced)."""
  s = jnp.asarray(update, jnp.float32) - 1.0 - float(config.update_after_step)
  if config.warmup:
    warm = 1.0 - (1.0 + jnp.maximum(s, 0.0) / float(config.warmup_gamma)) ** (
        -float(config.warmup_power))
    decay = jnp.clip(warm, float(config.min_decay), float(config.decay))
  else:
    decay = jnp.asarray(float(config.decay), jnp.float32)
  return jnp.where(s <= 0, 0.0, decay)


def describe(config: ml_collections.ConfigDict, total_steps: int) -> str:
  """One line for the log: the decay, and when the warm-up keeps the run's last update below
  it, the decay that update reaches (a short run averages over fewer steps than asked)."""
  decay = float(config.decay)
  last = float(decay_at(config, total_steps))
  line = f'EMA of the weights: decay {decay:g}'
  if config.warmup and last < decay - 1e-6:   # (float32 decay_at)
    line += (f'; the warm-up reaches only {last:.5f} by step {total_steps} (an average over '
             f'about {1 / (1 - last):.0f} steps, not {1 / (1 - decay):.0f}): lower '
             '--config.ema.decay or set --config.ema.warmup=False')
  return line


def update(ema: PyTree, current: PyTree, decay: jax.Array) -> PyTree:
  """decay * ema + (1 - decay) * current, leaf by leaf; non-float leaves are copied."""

  def one(average, value):
    if not jnp.issubdtype(value.dtype, jnp.floating):
      return value
    d = decay.astype(average.dtype)
    return (d * average + (1 - d) * value.astype(average.dtype)).astype(average.dtype)

  return jax.tree.map(one, ema, current)


def initial(variables: Dict[str, PyTree]) -> Dict[str, PyTree]:
  """The EMA at step 0: a copy of {'params', 'batch_stats'}."""
  return {'params': jax.tree.map(jnp.copy, variables['params']),
          'batch_stats': jax.tree.map(jnp.copy, variables.get('batch_stats') or {})}


__all__ = ['enabled', 'decay_at', 'update', 'initial']
