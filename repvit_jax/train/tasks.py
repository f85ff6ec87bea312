"""The Task protocol the training loop calls, and `build(config, info)` for `config.task`.

A task owns the model(s) and the loss. The loop calls its hooks in this order:

    set-up, on every process:   task = build(config, info)
                                frozen = task.load_frozen()
                                task.init_variables(rng, images)        (inside jit)
                                task.init_source(); task.adapt_pretrained(source)
    a fresh run, before step 1: task.before_training(variables, workdir)   COLLECTIVE
    every step (compiled):      task.loss(params, batch_stats, batch, rng, frozen)
    every evaluation:           task.evaluate(variables, batch, frozen, deploy=...)  (compiled)
                                task.summarize(sums, prefix)             (host)
                                task.after_eval(variables, workdir, step)   COLLECTIVE

A hook marked COLLECTIVE may gather across processes, so the loop calls it on every process
(a task writes its files from process 0 only). The others are local and deterministic: every
process computes the same thing. `Task` gives each hook its default; a task overrides what it
needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from repvit_jax import io
from repvit_jax.models.inputs import InputSpec
from repvit_jax.models.spec import ModelSpec
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train import log, pretrained

TASKS = ('classification', 'mae', 'module_imitation')


class Task:
  """Base class of the tasks: the models from `config.model`, and every hook's default.

  Attributes:
    config: the run's config. num_classes: classes of the data set.
    spec, deploy_spec: the student's `ModelSpec` (training form, from `config.model` and
      `config.data`) and that of its deploy form (what `workdir/deploy` holds).
    model, deploy_model: the modules they build.
    best_metric, best_mode: the eval metric that ranks checkpoints, and 'max' or 'min'.
  """

  best_metric: str = 'eval/accuracy'
  best_mode: str = 'max'

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.config = config
    self.num_classes = num_classes
    self.spec = ModelSpec.from_config(config, num_classes)
    self.deploy_spec = self.spec.deploy_form()
    self.model = self.spec.build()
    self.deploy_model = self.deploy_spec.build()

  # -- set-up (every process, outside the compiled steps) ---------------------------------

  def init_source(self) -> Optional[Tuple[str, str]]:
    """(path, skip regex) of the weights a fresh run starts from, or None."""
    return pretrained.init_source(self.config)

  def adapt_pretrained(self, source: Dict[str, Any]) -> Dict[str, Any]:
    """Variables read from `init_source()`, renamed into this model's layout (default: as is)."""
    return source

  def init_variables(self, rng: jax.Array, images: jax.Array) -> Dict[str, Any]:
    """The initial variables for (B, H, W, 3) images: {'params', 'batch_stats', ...}."""
    return self.model.init(rng, images, train=False)

  def load_frozen(self) -> Dict[str, Any]:
    """Inputs of the loss that are never trained (teachers' variables, host arrays)."""
    return {}

  # -- compiled ---------------------------------------------------------------------------

  def loss(self, params, batch_stats, batch, rng, frozen):
    """Mean loss over the batch -> (loss, (new batch_stats, {'train/...': scalar}))."""
    raise NotImplementedError

  def evaluate(self, variables, batch, frozen, *, deploy: bool) -> Dict[str, jax.Array]:
    """Sums over the real examples (batch['mask'] = 1) of one eval batch, incl. 'count'."""
    raise NotImplementedError

  # -- host ----------------------------------------------------------------------------------

  def summarize(self, sums: Dict[str, Any], prefix: str) -> Dict[str, float]:
    """Sums of one evaluation pass -> {'<prefix>metric': value}."""
    raise NotImplementedError

  def after_eval(self, variables, workdir: str, step: int) -> None:
    """COLLECTIVE: runs on every process after each evaluation (pictures, say)."""
    del variables, workdir, step

  def before_training(self, variables, workdir: str) -> None:
    """COLLECTIVE: runs on every process once before the first step of a fresh run (not on
    resume), with the initial variables (a step-0 picture to compare the later ones with)."""
    del variables, workdir

  # -- shared by the tasks -----------------------------------------------------------------

  @staticmethod
  def announce_teacher(what: str, model: str, path: str, image_size: int,
                       detail: str = '') -> None:
    """The one console line (process 0) saying which teacher was loaded and how it is fed."""
    log.info(f'{what}: {model} from {path}, fed {image_size}x{image_size} images{detail}')

  def teacher_spec(self, teacher_config, *, deploy: bool = True) -> ModelSpec:
    """The spec of a teacher block (`model`, `overrides`): the student's classes and input;
    it computes in the student's dtype unless its overrides give one."""
    overrides = teacher_config.overrides or {}
    overrides = dict(overrides.to_dict() if hasattr(overrides, 'to_dict') else overrides)
    dtype = overrides.pop('dtype', self.spec.dtype)
    return ModelSpec(name=teacher_config.model, num_classes=self.num_classes,
                     overrides=overrides, deploy=deploy, input=self.spec.input, dtype=dtype,
                     trained_dtype=dtype)

  def load_teacher(self, path: str, init: Callable[[int], Dict[str, Any]], *, what: str,
                   fold: bool = True, own_input: bool = True,
                   image_size: Optional[int] = None) -> Tuple[Dict[str, Any], InputSpec]:
    """A frozen model's variables from `path` and the input contract it is fed with.

    Args:
      path: anything `repvit_jax.io.read` reads.
      init: image side -> the variable tree of the module (evaluated abstractly); the loaded
        variables are fitted to it.
      what: how the config calls it, for messages ('teacher', 'feature teacher').
      fold: reparameterize a training-form source first (teachers run in deploy form:
        cheaper, same outputs).
      own_input: feed it images as its own saved input contract says (size, mean/std; the
        student's when the source records none); False for teachers that must see exactly
        the student's images (feature and token-level distillation).
      image_size: overrides the contract's size (config `teacher.image_size`).

    Returns:
      (variables as host-side arrays, the input contract to give it).
    """
    saved, source = pretrained.read(path, what)
    contract = self.spec.input
    if own_input and saved is not None:
      contract = saved.input
    if own_input and image_size:
      contract = dataclasses.replace(contract, image_size=int(image_size))
    if fold:
      source = reparameterize(jax.tree.map(jnp.asarray, source))
    target = jax.eval_shape(lambda: init(contract.image_size))
    fitted, _ = io.fit(target, source, what=f'{what} {path}')
    return fitted, contract


def build(config, info) -> Task:
  """The task for `config.task` on a data set described by `info` (a data.DatasetInfo)."""
  # pylint: disable=import-outside-toplevel  (the tasks import this module for `Task`)
  from repvit_jax.train.classification import ClassificationTask
  from repvit_jax.train.mae import MAETask
  from repvit_jax.train.module_imitation import ModuleImitationTask
  classes = {'classification': ClassificationTask, 'mae': MAETask,
             'module_imitation': ModuleImitationTask}
  name = config.task
  if name not in classes:
    raise ValueError(f'unknown task {name!r}; known tasks: {", ".join(sorted(classes))}')
  task = classes[name](config, info.num_classes)
  names = tuple(getattr(info, 'class_names', ()) or ())
  if names and len(names) == task.spec.num_classes:
    # Saved with every checkpoint and model directory: a copied `deploy/` says what it
    # predicts without the data set.
    task.spec = task.spec.replace(class_names=names)
    task.deploy_spec = task.deploy_spec.replace(class_names=names)
  return task


__all__ = ['Task', 'build', 'TASKS']
