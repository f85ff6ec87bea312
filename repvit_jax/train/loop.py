"""The training loop: `run(config, workdir)`.

One run per workdir (`workdir/.lock`, workdir_lock.py). One compiled train step over a
device mesh; resumes from `workdir/checkpoints` when it holds
a checkpoint (the newest that reads back, unreadable ones set aside; or `config.resume_step`),
after comparing the config with `workdir/config.json`; SIGTERM saves and returns; a
first Ctrl-C does the same (a second exits at once); a
non-finite loss stops the run (`TrainingError`) without saving, naming the latest checkpoint
from before the divergence (`checkpoints/health.json`); evaluates the training form and the
reparameterized deploy form (and both forms of the EMA of the weights, with `config.ema`); at
the end exports the deploy model to `workdir/deploy` (load it
with `repvit_jax.load_model`). Every process runs every step, evaluation and collective; only
process 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from repvit_jax import data, io
from repvit_jax.configs import common
from repvit_jax.reparam.check import count_params
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train import optimizer as optimizer_lib
from repvit_jax.train import distributed, evaluators, log, pretrained, sharding, tasks
from repvit_jax.train import ema as ema_lib
from repvit_jax.train.resume import checkpoint as checkpoint_lib
from repvit_jax.train.resume import config_record, workdir_lock
from repvit_jax.train.resume.checkpoint import Checkpointer
from repvit_jax.train.resume.health import HealthLog
from repvit_jax.train.metrics import MetricWriter, Progress
from repvit_jax.train.state import create_state, model_variables
from repvit_jax.train.step import make_train_step
from repvit_jax.utils import host_memory


REQUIRED = ('task', 'model', 'data', 'batch_size', 'total_steps', 'seed', 'optimizer')


class TrainingError(RuntimeError):
  """The run cannot go on (for example a non-finite loss); the message says what to do."""


class _Preemption:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a flag checked between steps (all processes agree
  on it); the loop then saves and returns. A second Ctrl-C exits at once, without saving."""

  SIGNALS = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C'}

  def __init__(self):
    self.received = None       # the first signal this process received (set by the handler)
    self.requested = None      # the signal that stops the run, the same on every process
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received and signum == signal.SIGINT:
      log.warn('error: stopped at once on a second Ctrl-C, without saving; run again with the '
               'same --workdir to resume from its last saved checkpoint')
      os._exit(130)    # pylint: disable=protected-access
    if not self.received:
      self.received = self.SIGNALS[signum]
      if signum == signal.SIGINT:
        log.warn('Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again '
                 'stops at once, without saving)')

  def should_stop(self) -> bool:
    """Whether to save and stop after this step; every process gets the same answer.

    The answer comes from one snapshot of `received`: a signal that arrives while the
    processes compare notes counts at the next step, not at this one on this process only.
    """
    received = self.received
    if jax.process_count() > 1:
      names = [None, *self.SIGNALS.values()]
      codes = multihost_utils.process_allgather(np.asarray(names.index(received)))
      received = names[int(np.max(codes))]
    self.requested = self.requested or received
    return bool(self.requested)

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def loss_parts(row: Dict[str, Any]) -> Dict[str, float]:
  """The terms of a composite objective (`train/ce`, `train/dist_ce`, `train/<part>_loss`:
  unweighted, as metrics.jsonl has them) for the console line beside the total; {} when the
  loss has fewer than two."""
  parts = {k[len('train/'):]: v for k, v in row.items()
           if k in ('train/ce', 'train/dist_ce')
           or (k.startswith('train/') and k.endswith('_loss'))}
  return parts if len(parts) >= 2 else {}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming what a config lacks: every field the trainer reads has its
  default in `repvit_jax.configs.common.run_config(task)`, which configs start from."""
  missing = [k for k in REQUIRED if k not in config]
  if not missing:
    missing = common.missing_fields(config)
  if missing:
    task = config.get('task', 'classification')
    raise ValueError(f'config lacks {", ".join(missing)}: build it on repvit_jax.configs.'
                     f'common.run_config({task!r}), or load a packaged config '
                     '(repvit_jax.configs.load)')
  if 'name' not in config.model:
    raise ValueError('config.model.name is not set (e.g. tdrl_vit_tiny)')
  for key in ('batch_size', 'total_steps'):
    if config[key] is None or int(config[key]) <= 0:
      raise ValueError(f'config.{key} must be positive, got {config[key]}')


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) according to `config`, writing everything into `workdir`.

  Returns:
    {'step': last step done, 'preempted': bool (stopped by SIGTERM or Ctrl-C, after saving),
     'stopped_by': 'SIGTERM', 'Ctrl-C' or None, 'metrics': last eval metrics (dict)}.

  Raises:
    ValueError / FileNotFoundError / data.DataError: a problem with the config or inputs.
    TrainingError: the loss became NaN or infinite.
  """
  check_config(config)
  distributed.initialize(config.distributed, warn=log.warn,
                         checkpoints=os.path.join(os.path.abspath(workdir), 'checkpoints'))
  _make_workdir(workdir)
  with workdir_lock.hold(workdir, log.warn) as lock:
    return _train(config, workdir, lock)


def _train(config: ml_collections.ConfigDict, workdir: str,
           lock: workdir_lock.WorkdirLock) -> Dict[str, Any]:
  """`run` once the workdir is this run's."""
  is_chief = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.batch_size, mesh)
  accum_steps = int(config.grad_accum_steps)
  if accum_steps < 1 or config.batch_size % accum_steps:
    raise ValueError(f'config.grad_accum_steps={accum_steps} must be >= 1 and divide '
                     f'batch_size {config.batch_size}')
  sharding.check_batch_size(config.batch_size // accum_steps, mesh,
                            name='batch_size / grad_accum_steps')
  eval_batch_size = int(config.eval_batch_size or config.batch_size)
  sharding.check_batch_size(eval_batch_size, mesh, name='eval_batch_size')
  total_steps = int(config.total_steps)
  image_size = int(config.data.image_size)
  info = data.get_dataset_info(config.data)
  log.info(f'data: {info.name}, {info.num_train} train / {info.num_eval} eval images '
                  f'({info.train_split} / {info.eval_split}), {image_size}x{image_size}')
  platform = jax.devices()[0].platform
  log.info(f'devices: {mesh.devices.size} x {platform}, {jax.process_count()} process(es), mesh '
           + ' x '.join(f'{k} {v}' for k, v in mesh.shape.items())
           + (f'; malloc: {host_memory.describe()}' if platform == 'cpu' else ''))
  task = tasks.build(config, info)
  frozen = jax.device_put(task.load_frozen(), sharding.replicated(mesh))

  tx, schedule, lr_rule = _optimizer(config, task, image_size, total_steps)
  ema_config = config.ema
  with_ema = ema_lib.enabled(ema_config)

  def init_state():
    sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return create_state(lambda rng: task.init_variables(rng, sample), tx, int(config.seed),
                        with_ema=with_ema)

  abstract = jax.eval_shape(init_state)
  log.info(f'model: {_describe_model(task, abstract)}; batch {config.batch_size}'
                  f'{f" ({accum_steps} micro-batches)" if accum_steps > 1 else ""}, '
                  f'{total_steps} step{"s" if total_steps != 1 else ""}, {lr_rule}')
  if with_ema:
    log.info(ema_lib.describe(ema_config, total_steps))
  state_sharding = sharding.state_shardings(mesh, abstract)
  batch_sharding = sharding.batch_sharding(mesh)

  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                              max_to_keep=int(config.keep_checkpoints),
                              best_metric=task.best_metric, best_mode=task.best_mode,
                              warn=log.warn, metadata={'model': task.spec.to_json()})
  health = HealthLog(checkpointer.directory, is_chief)
  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        abstract, state_sharding)
  state, start_step = _resume(config, workdir, checkpointer, health, target)
  if state is None:
    log.info(f'initialising the train state (seed {config.seed}) ...')
    started = time.perf_counter()
    state = jax.block_until_ready(jax.jit(init_state, out_shardings=state_sharding)())
    log.info(f'initialised the train state (seed {config.seed}) in '
                    f'{time.perf_counter() - started:.1f} s')
    source = task.init_source()
    if source:
      state = _init_from(source, task, state, state_sharding)
  if is_chief:
    config_record.write(workdir, config)
  health.start(start_step)
  if start_step == 0:
    task.before_training(model_variables(state), workdir)   # collective: every process

  train_step = jax.jit(make_train_step(task, tx, accum_steps,
                                       ema_config if with_ema else None), donate_argnums=(0,),
                       in_shardings=(state_sharding, batch_sharding, None),
                       out_shardings=(state_sharding, None))
  evals = evaluators.build(config, task, mesh, eval_batch_size, frozen)
  fold = jax.jit(reparameterize, out_shardings=sharding.replicated(mesh))
  writer = MetricWriter(workdir, is_chief=is_chief, resume_step=start_step)
  progress = Progress(total_steps, config.batch_size, start_step,
                      print_fn=log.info)
  log_every = int(config.log_every)
  eval_every = int(config.eval_every or 0)
  checkpoint_every = int(config.checkpoint_every or 0)

  started = time.perf_counter()
  train_iter = data.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                        seed=int(config.seed), start_step=start_step)
  log.info(f'input pipeline ready in {time.perf_counter() - started:.1f} s')
  pending: List[Dict[str, jax.Array]] = []
  last_eval: Dict[str, float] = {}
  step, preempted, stopped_by = start_step, False, None
  images_since_log = 0   # the multi-scale sampler varies the batch size from step to step
  compiled_shapes = set()
  try:
    with _Preemption() as preemption, _save_errors_stop_training():
      while step < total_steps:
        batch = sharding.to_global(next(train_iter), batch_sharding)
        shape = tuple(batch['image'].shape)
        if shape not in compiled_shapes:
          log.info(f'compiling the train step for {"x".join(map(str, shape))} images ...')
        dispatched = time.perf_counter()
        state, metrics = train_step(state, batch, frozen)
        images_since_log += int(batch['image'].shape[0])
        step += 1
        pending.append(metrics)
        if shape not in compiled_shapes:
          # Tracing and compiling happen in the call; the step itself runs asynchronously.
          compiled_shapes.add(shape)
          seconds = time.perf_counter() - dispatched
          progress.exclude(seconds)
          log.info(f'compiled the train step for {"x".join(map(str, shape))} images '
                          f'in {seconds:.1f} s')
        if step == start_step + 1 and step % log_every and step != total_steps:
          # A first line at once, instead of after log_every steps; the rate from here on.
          loss = float(jax.device_get(metrics['train/loss']))
          progress.log(step, {'loss': loss}, rate=False)
          images_since_log = 0
        stop = preemption.should_stop()
        is_last = step == total_steps
        do_log = step % log_every == 0 or is_last or stop
        do_checkpoint = (checkpoint_every and step % checkpoint_every == 0) or is_last or stop
        do_eval = (eval_every and step % eval_every == 0) or is_last
        row = {}
        if do_log or do_checkpoint:
          fetched = jax.device_get(pending)
          _check_health(fetched, step, checkpointer, health, config)
          row = _means(fetched)
          pending = []
          row['train/lr'] = float(schedule(step - 1))
          progress.log(step, {'loss': row['train/loss'], **loss_parts(row), 'lr': row['train/lr']},
                       images=images_since_log)
          images_since_log = 0
          lock.refresh()
          checkpointer.check_saves()    # a failed background save stops the run here
        if do_eval:
          last_eval = {}
          for name, evaluator in evals.items():
            compiling = evaluator.compile_seconds is None
            if compiling:
              log.info(f'compiling the evaluation{_named(name)} ({evaluator.description}) ...')
            try:
              last_eval.update(evaluator(state))
            except data.DataError as e:
              # An eval image that does not decode: keep the steps trained so far.
              checkpointer.save(step, state, force=True)
              checkpointer.wait_until_finished()
              health.checkpoint_saved(step)
              raise data.DataError(f'{e} (the evaluation at step {step} stopped; step {step} is '
                                   'saved, so the same command resumes from it)') from None
            if compiling:
              progress.exclude(evaluator.compile_seconds)
              log.info(f'compiled the evaluation{_named(name)} ({evaluator.description}) in '
                       f'{evaluator.compile_seconds:.1f} s')
          row.update(last_eval)
          log.info(' | '.join(f'{k} {v:.4f}' for k, v in last_eval.items()))
          task.after_eval(model_variables(state), workdir, step)   # collective: every process
        if row:
          writer.write(step, row)
        if do_checkpoint:
          checkpointer.save(step, state, metrics=last_eval if do_eval else None, force=True)
          health.checkpoint_saved(step)
        if stop:
          preempted = True
          stopped_by = preemption.requested or 'a stop request'
          log.info(f'{stopped_by}: saved step {step} in {checkpointer.directory}; '
                          'run again with the same workdir to resume')
          break
    if not preempted:
      # Every process runs the compiled fold (its inputs span all of them); the chief saves.
      exported = state['ema'] if with_ema and ema_config.deploy else state
      deploy_variables = fold(model_variables(exported))
      if is_chief:
        _export(task, deploy_variables, workdir, ema=exported is not state)
  finally:
    with _save_errors_stop_training():
      try:
        checkpointer.close()
      finally:
        writer.close()
  return {'step': step, 'preempted': preempted, 'stopped_by': stopped_by, 'metrics': last_eval}


@contextlib.contextmanager
def _save_errors_stop_training():
  """A checkpoint that cannot be written (a full disk) stops the run with its one line."""
  try:
    yield
  except checkpoint_lib.SaveError as e:
    raise TrainingError(str(e)) from None


def _optimizer(config, task, image_size: int, total_steps: int):
  """(optimizer, schedule, the lr rule as a log line)."""
  sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), sample))['params']
  cfg, lr_rule = optimizer_lib.with_peak_lr(config.optimizer, int(config.batch_size))
  return (*optimizer_lib.make_optimizer(cfg, params, total_steps), lr_rule)


def _describe_model(task, abstract_state) -> str:
  """'tdrl_vit_tiny, 2.83M parameters in training (0.71M deployed)', from shapes only."""
  variables = model_variables(abstract_state)
  trained = count_params(variables['params'])
  text = f'{task.spec.name}, {trained / 1e6:.2f}M parameters'
  deployed = count_params(jax.eval_shape(reparameterize, variables)['params'])
  if deployed != trained:
    text += f' in training ({deployed / 1e6:.2f}M deployed)'
  return text


def _means(fetched: List[Dict[str, Any]]) -> Dict[str, float]:
  """The mean of each metric over the steps since the last summary."""
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _check_health(fetched: List[Dict[str, Any]], step: int, checkpointer: Checkpointer,
                  health: HealthLog, config) -> None:
  """Records the steps' loss and gradient norm in the health log; raises TrainingError, with
  the kept checkpoint to resume from, on the first non-finite loss or norm."""
  watched = np.asarray([[m['train/loss'], m['train/grad_norm'], m['train/param_norm']]
                        for m in fetched], np.float64)
  first_step = step - len(fetched) + 1
  health.observe((first_step + i, w[0], w[1]) for i, w in enumerate(watched))
  finite = np.all(np.isfinite(watched), axis=1)
  if not np.all(finite):
    first = int(np.argmin(finite))
    what = ['training loss', 'gradient norm', 'parameter norm'][
        int(np.argmin(np.isfinite(watched[first])))]
    value = watched[first][~np.isfinite(watched[first])][0]
    raise TrainingError(f'the {what} became {value} at step {first_step + first}; '
                        + _divergence_advice(checkpointer, health, config))


def _divergence_advice(checkpointer: Checkpointer, health: HealthLog, config) -> str:
  """Which kept checkpoint predates the divergence, and the flags that resume from it."""
  checkpointer.wait_until_finished()
  kept = checkpointer.all_steps()
  lr, base_lr = config.optimizer.lr, config.optimizer.base_lr
  if lr is not None:
    lower = f'a lower --config.optimizer.lr (now {lr:g})'
  elif base_lr is not None:
    lower = f'a lower --config.optimizer.base_lr (now {base_lr:g}, per 256 images)'
  else:
    lower = 'a lower lr'
  remedy = (f'{lower}, or set --config.optimizer.grad_clip, or check the data')
  health.diverged()     # the resume step advised below is honoured on the next run
  good = health.latest_healthy(kept)
  after = [health.describe(s) for s in kept if good is None or s > good]
  diverged = f' (later checkpoints had diverged: {", ".join(after)})' if after else ''
  if good is not None:
    return (f'the latest checkpoint from before the divergence is step {good} in '
            f'{checkpointer.directory}{diverged}. Run again with '
            f'--config.resume_step={good} and {remedy}')
  if kept:
    return (f'no kept checkpoint predates the divergence{diverged}. Run again with '
            f'--config.resume_step=0 (starts over in this workdir) and {remedy}')
  return (f'no checkpoint had been saved. Run again with {remedy} '
          '(the same workdir starts over)')


def _resume(config, workdir: str, checkpointer: Checkpointer, health: HealthLog, target):
  """(restored state or None, start step): the latest readable checkpoint, or
  `config.resume_step` (newer checkpoints set aside), or nothing (a fresh start).

  Everything that can refuse the command (the resume step, config drift) is checked before
  any checkpoint is moved.
  """
  kept = checkpointer.all_steps()
  resume_step = config.resume_step
  if resume_step is not None and not health.should_apply(int(resume_step)):
    if kept and max(kept) > int(resume_step):
      log.warn(f'warning: config.resume_step={resume_step} was applied before in this workdir and '
            'no divergence has happened since (a restarted job?); resuming from the latest '
            f'checkpoint (step {max(kept)}) instead')
    resume_step = None
  if resume_step is not None:
    resume_step = int(resume_step)
    if resume_step < 0 or (resume_step > 0 and resume_step not in kept):
      raise ValueError(f'config.resume_step={resume_step} is not a kept checkpoint of '
                       f'{checkpointer.directory} (kept: {kept or "none"}; 0 starts over)')
  if kept and resume_step != 0:
    config_record.check_resume(workdir, config, log.warn)
  if resume_step is not None:
    for step in kept:
      if step > resume_step:
        moved = checkpointer.set_aside(step, f'after_resume_step_{resume_step}')
        log.info(f'resume_step={resume_step}: moved checkpoint step {step} to {moved}')
    health.forget_after(resume_step)
    health.mark_applied(resume_step)
    kept = checkpointer.all_steps()
  if not kept:
    return None, 0
  state, step = checkpointer.restore_newest_readable(target)
  log.info(f'resumed from {checkpointer.directory} at step {step}')
  return state, step


def _make_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir {workdir} is a file; give a directory (new or a run to resume)')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{os.getpid()}')
    with open(probe, 'w', encoding='utf-8'):
      pass
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'cannot write to --workdir {workdir} ({e.strerror or e}); give a '
                     'directory you can write to') from None


def _named(name: str) -> str:
  """' <name>' for an evaluator the config names other than the default 'eval'."""
  return '' if name == 'eval' else f' {name}'


def _init_from(init_source, task, state, state_sharding):
  """Loads the task's `init_source()` (path, skip regex) into the fresh params/batch_stats."""
  path, skip = init_source
  source_spec, source = pretrained.read(path, 'init_from')
  pretrained.check_heads(source_spec, task.spec, f'init_from {path}')
  source = task.adapt_pretrained(source)
  params, unused_params = io.fit(jax.device_get(state['params']), source['params'],
                                         skip=skip, what=f'init_from {path}')
  batch_stats, _ = io.fit(jax.device_get(state['batch_stats']),
                                  source.get('batch_stats', {}), skip=skip,
                                  what=f'init_from {path} (batch_stats)')
  if unused_params:
    log.info(f'init_from: {len(unused_params)} checkpoint arrays not used by the model '
                    f'(e.g. {unused_params[0]})')
  state = dict(state, params=params, batch_stats=batch_stats)
  if 'ema' in state:     # the average starts from the loaded weights
    state['ema'] = ema_lib.initial(state)
  return jax.device_put(state, state_sharding)


def _export(task, deploy_variables, workdir: str, ema: bool) -> None:
  """Saves the deploy form (reparameterized by the run's compiled fold)."""
  variables = jax.device_get(deploy_variables)
  path = io.save_model(os.path.join(workdir, io.DEPLOY_DIR), variables, task.deploy_spec)
  of = ' (of the EMA weights)' if ema else ''
  log.info(f'deploy model{of} saved to {path}; load it with repvit_jax.load_model({path!r})')


__all__ = ['run', 'TrainingError', 'check_config']
