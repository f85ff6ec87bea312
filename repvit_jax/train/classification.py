"""Supervised classification task: cross-entropy with label smoothing and mixup/cutmix, and
optional distillation from a frozen teacher (soft KD with a temperature, or DeiT-style hard).

Config fields read here: `model` (name + overrides), `label_smoothing`, `mixup.{mixup_alpha,
cutmix_alpha, switch_prob}`, `teacher.{model, init_from, kind, temperature, alpha}`.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

from repvit_jax.models.registry import create_model
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train import losses, pretrained
from repvit_jax.train.state import model_variables

DISTILL_KINDS = ('soft', 'hard')


def model_overrides(model_config) -> Dict[str, Any]:
  """The module overrides in a `config.model` block: every field but `name`."""
  cfg = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  cfg.pop('name', None)
  return cfg


class ClassificationTask:
  """Builds the student (training and deploy forms) and an optional teacher from the config.

  Attributes:
    model, deploy_model: the student's two forms.
    teacher: the teacher's deploy-form module, or None.
    num_classes: classes of the data set.
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.config = config
    self.num_classes = num_classes
    self.model_name = config.model.name
    self.overrides = model_overrides(config.model)
    self.model = create_model(self.model_name, num_classes=num_classes, **self.overrides)
    self.deploy_model = create_model(self.model_name, num_classes=num_classes, deploy=True,
                                     **self.overrides)
    teacher_cfg = config.get('teacher') or ml_collections.ConfigDict()
    self.teacher = None
    self.teacher_cfg = teacher_cfg
    if teacher_cfg.get('model'):
      if teacher_cfg.get('kind', 'soft') not in DISTILL_KINDS:
        raise ValueError(f'teacher.kind must be one of {DISTILL_KINDS}, got '
                         f'{teacher_cfg.kind!r}')
      if not teacher_cfg.get('init_from'):
        raise ValueError('teacher.model is set but teacher.init_from is not: a teacher needs '
                         'trained weights (a workdir, checkpoint or model directory)')
      # Teachers run in deploy form: cheaper, and identical outputs.
      self.teacher = create_model(teacher_cfg.model, num_classes=num_classes, deploy=True,
                                  **model_overrides(teacher_cfg.get('overrides') or {}))

  best_metric = 'eval/accuracy'

  def adapt_pretrained(self, source: Dict[str, Any]) -> Dict[str, Any]:
    """Variables read from `init_from`, renamed into this model's layout (here: as they are)."""
    return source

  def init_variables(self, rng: jax.Array, images: jax.Array) -> Dict[str, Any]:
    """The student's initial variables for (B, H, W, 3) images."""
    return self.model.init(rng, images, train=False)

  def load_frozen(self) -> Dict[str, Any]:
    """Frozen inputs of the loss: the teacher's deploy variables (host arrays), or {}."""
    if self.teacher is None:
      return {}
    source = pretrained.read_variables(self.teacher_cfg.init_from)
    source = jax.tree.map(jnp.asarray, source)
    deploy = reparameterize(source)
    image_size = self.config.data.image_size
    target = jax.eval_shape(lambda: self.teacher.init(
        jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
    target = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), target)
    fitted, _ = pretrained.fit(target, deploy, what=f'teacher {self.teacher_cfg.init_from}')
    return {'teacher': fitted}

  def loss(self, params, batch_stats, batch, rng, frozen):
    """Mean loss over the batch -> (loss, (new batch_stats, metrics))."""
    cfg = self.config
    mix_rng, dropout_rng = jax.random.split(rng)
    targets = losses.onehot(batch['label'], self.num_classes, cfg.get('label_smoothing', 0.0))
    images = batch['image']
    mix = cfg.get('mixup') or {}
    if mix.get('mixup_alpha', 0.0) or mix.get('cutmix_alpha', 0.0):
      images, targets = losses.mixup_cutmix(mix_rng, images, targets,
                                            mixup_alpha=mix.get('mixup_alpha', 0.0),
                                            cutmix_alpha=mix.get('cutmix_alpha', 0.0),
                                            switch_prob=mix.get('switch_prob', 0.5))
    logits, updates = self.model.apply(model_variables(params, batch_stats), images, train=True,
                                       rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    ce = losses.softmax_cross_entropy(logits, targets).mean()
    metrics = {'train/ce': ce,
               'train/accuracy': losses.accuracy(logits, batch['label']).mean()}
    loss = ce
    if self.teacher is not None:
      teacher_logits = jax.lax.stop_gradient(
          self.teacher.apply(frozen['teacher'], images, train=False))
      if self.teacher_cfg.get('kind', 'soft') == 'hard':
        distill = losses.hard_distillation_loss(logits, teacher_logits).mean()
      else:
        distill = losses.kd_soft_loss(logits, teacher_logits,
                                      self.teacher_cfg.get('temperature', 1.0)).mean()
      alpha = self.teacher_cfg.get('alpha', 0.5)
      loss = (1.0 - alpha) * ce + alpha * distill
      metrics['train/distill_loss'] = distill
    return loss, (updates.get('batch_stats', {}), metrics)

  def evaluate(self, variables, batch, frozen, *, deploy: bool) -> Dict[str, jax.Array]:
    """Sums over the real (mask = 1) examples of a batch: correct, loss, count."""
    del frozen
    model = self.deploy_model if deploy else self.model
    logits = model.apply(variables, batch['image'], train=False)
    mask = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
    ce = losses.softmax_cross_entropy(logits, losses.onehot(batch['label'], self.num_classes))
    return {'correct': jnp.sum(losses.accuracy(logits, batch['label']) * mask),
            'loss': jnp.sum(ce * mask), 'count': jnp.sum(mask)}

  @staticmethod
  def summarize(sums: Dict[str, Any], prefix: str) -> Dict[str, float]:
    """Per-eval sums -> {'<prefix>accuracy', '<prefix>loss'} means."""
    count = max(float(sums['count']), 1.0)
    return {f'{prefix}accuracy': float(sums['correct']) / count,
            f'{prefix}loss': float(sums['loss']) / count}


__all__ = ['ClassificationTask', 'model_overrides']
