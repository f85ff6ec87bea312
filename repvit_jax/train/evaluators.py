"""Evaluators: what a run measures every `config.eval_every` steps, declared in `config.evals`.

`config.evals` maps a name, the prefix of the metrics it writes, to an evaluator's kind and
options (as big_vision's `config.evals`):

    config.evals = {'eval': {'kind': 'forms', 'split': None}}     # the default

Kinds:
  'forms': one pass over an eval split with the training form and with the deploy form (the
    training form reparameterized, compiled once): `<name>/<metric>` and
    `<name>/deploy_<metric>` (metrics: the task's `summarize`), and `<name>/ema_<metric>`,
    `<name>/ema_deploy_<metric>` when the run keeps an EMA. `split`: a split of the data set
    other than `config.data.eval_split` (None: that one).

Every evaluator runs at each evaluation, in the order declared; the task's best checkpoint
is chosen on the metric it names (`eval/accuracy` or `eval/loss`), which the default writes.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Dict

import jax

from repvit_jax import data
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train import sharding
from repvit_jax.train.state import model_variables
from repvit_jax.train.step import make_eval_step, sum_metrics


class FormsEvaluator:
  """One pass over an eval split with the training form and with the deploy form."""

  description = 'training and deploy forms'

  def __init__(self, name: str, options, config, task, mesh, batch_size: int, frozen):
    self.prefix = f'{name}/'
    self.data = config.data
    if options.get('split'):
      self.data = copy.deepcopy(config.data)
      self.data.eval_split = str(options['split'])
    self.task, self.frozen, self.batch_size = task, frozen, batch_size
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.train_form = jax.jit(make_eval_step(task, deploy=False))
    self.deploy_form = jax.jit(make_eval_step(task, deploy=True))
    self.reparameterize = jax.jit(reparameterize, out_shardings=sharding.replicated(mesh))
    self.compile_seconds = None   # set by the first evaluation: its tracing and compiling

  def __call__(self, state) -> Dict[str, float]:
    results = self._both_forms(model_variables(state), self.prefix)
    if 'ema' in state:
      results.update(self._both_forms(model_variables(state['ema']), f'{self.prefix}ema_'))
    return results

  def _both_forms(self, variables, prefix: str) -> Dict[str, float]:
    started = time.perf_counter()
    deploy_variables = self.reparameterize(variables)
    compiling = time.perf_counter() - started
    sums, deploy_sums = None, None
    for batch in data.make_eval_iterator(self.data, global_batch_size=self.batch_size):
      batch = sharding.to_global(batch, self.batch_sharding)
      started = time.perf_counter()
      sums = sum_metrics(sums, self.train_form(variables, batch, self.frozen))
      deploy_sums = sum_metrics(deploy_sums, self.deploy_form(deploy_variables, batch,
                                                              self.frozen))
      if self.compile_seconds is None:
        self.compile_seconds = compiling + time.perf_counter() - started
    if sums is None:
      raise ValueError(f'the eval split of {self.data.name} is empty')
    results = self.task.summarize(jax.device_get(sums), prefix)
    results.update(self.task.summarize(jax.device_get(deploy_sums), f'{prefix}deploy_'))
    return results


KINDS = {'forms': FormsEvaluator}


def build(config, task, mesh, batch_size: int, frozen) -> Dict[str, Any]:
  """{name: evaluator} of `config.evals`, in the order declared.

  Raises:
    ValueError: an unknown kind (the message lists the known ones).
  """
  evaluators = {}
  for name, options in config.evals.items():
    kind = options.get('kind')
    if kind not in KINDS:
      raise ValueError(f'config.evals.{name}.kind={kind!r} is not an evaluator; known: '
                       f'{", ".join(sorted(KINDS))}')
    evaluators[name] = KINDS[kind](name, options, config, task, mesh, batch_size, frozen)
  return evaluators


__all__ = ['FormsEvaluator', 'KINDS', 'build']
