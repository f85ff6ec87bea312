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
import numpy as np

from repvit_jax.layers.posemb import resample_posemb
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train import log, losses
from repvit_jax.train.state import model_variables
from repvit_jax.train.tasks import Task

DISTILL_KINDS = ('soft', 'hard')


class ClassificationTask(Task):
  """The student (training and deploy forms) and an optional teacher from the config.

  Attributes (besides `Task`'s):
    teacher: the teacher's deploy-form module, or None.
    teacher_input: the input contract the teacher is fed with (after `load_frozen`).
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    super().__init__(config, num_classes)
    teacher_cfg = config.teacher
    self.teacher = None
    self.teacher_input = None   # the teacher's input contract, known once load_frozen ran
    self.teacher_cfg = teacher_cfg
    if teacher_cfg.model:
      if teacher_cfg.kind not in DISTILL_KINDS:
        raise ValueError(f'teacher.kind must be one of {DISTILL_KINDS}, got '
                         f'{teacher_cfg.kind!r}')
      if not teacher_cfg.init_from:
        raise ValueError('teacher.model is set but teacher.init_from is not: a teacher needs '
                         'trained weights (a workdir, checkpoint or model directory)')
      self.teacher = self.teacher_spec(teacher_cfg).build()

  def adapt_pretrained(self, source: Dict[str, Any]) -> Dict[str, Any]:
    """Variables read from `init_from`, renamed into this model's layout.

    A classifier tree is used as it is, except that a learned `pos_embed` made for another
    patch grid is resampled to this run's (`resample_posemb`: fine-tuning at another
    resolution). An MAE pre-training tree (decoder_*, mask_token) becomes its encoder:
    decoder and distillation params are dropped, a learned `pos_embed` starts from the sin-cos
    table the encoder was trained with, TDRL branches are kept (or folded, for a classifier
    without TDRL); `head`/`fc_norm` stay fresh (`init_skip`).
    """
    from repvit_jax.models import mae  # pylint: disable=import-outside-toplevel
    learned = getattr(self.model, 'pos_embed', None) == 'learn'
    grid = int(self.config.data.image_size) // self.model.patch_size if learned else None
    if mae.is_mae_tree(source.get('params', {})):
      if getattr(self.model, 'tdrl', True) is None:
        source = reparameterize(source)
      return mae.to_classifier(source, num_patches=grid * grid if learned else None)
    table = source.get('params', {}).get('pos_embed')
    if learned and table is not None and np.shape(table)[1] != 1 + grid * grid:
      old = int(round((np.shape(table)[1] - 1) ** 0.5))
      log.info(f'init_from: position embeddings resampled from a {old}x{old} to a '
               f'{grid}x{grid} patch grid (bicubic)')
      source = dict(source, params=dict(source['params'],
                                        pos_embed=resample_posemb(table, grid)))
    return source

  def load_frozen(self) -> Dict[str, Any]:
    """Frozen inputs of the loss: the teacher's deploy variables (host arrays), or {}.

    The teacher is fed at its own input contract (`teacher_input`: its saved image size and
    mean/std, or `teacher.image_size`); a teacher near chance on the first eval batch is a
    warning line.
    """
    if self.teacher is None:
      return {}
    init = lambda size: self.teacher.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                          train=False)
    variables, self.teacher_input = self.load_teacher(
        self.teacher_cfg.init_from, init, what='teacher',
        image_size=self.teacher_cfg.image_size)
    self._check_teacher(variables)
    return {'teacher': variables}

  def teacher_logits(self, frozen, images) -> jax.Array:
    """The frozen teacher's logits for the student's (B, H, W, 3) batch, resized and
    re-normalised to the teacher's own input contract."""
    images = self.spec.input.adapt(images, self.teacher_input or self.spec.input)
    return jax.lax.stop_gradient(self.teacher.apply(frozen['teacher'], images, train=False))

  def _check_teacher(self, variables) -> None:
    """The teacher's line with its accuracy on the first eval batch, and a warning line when
    it is near chance (<= 2 / classes): wrong weights, size or normalisation teach the
    student noise."""
    from repvit_jax import data  # pylint: disable=import-outside-toplevel
    batch_size = int(self.config.eval_batch_size or self.config.batch_size)
    batch = next(iter(data.make_eval_iterator(self.config.data, global_batch_size=batch_size)))
    logits = jax.jit(self.teacher_logits)({'teacher': variables}, jnp.asarray(batch['image']))
    mask = np.asarray(batch['mask'])
    right = np.asarray(losses.accuracy(logits, jnp.asarray(batch['label'])))
    accuracy = float(np.sum(right * mask) / max(np.sum(mask), 1.0))
    size = self.teacher_input.image_size
    self.announce_teacher('teacher', self.teacher_cfg.model, self.teacher_cfg.init_from, size,
                          f' ({self.teacher_cfg.kind} distillation, alpha '
                          f'{self.teacher_cfg.alpha}): right on {accuracy:.1%} of '
                          f'the first eval batch ({int(np.sum(mask))} images)')
    if accuracy <= 2.0 / self.num_classes:
      log.warn(f'warning: the teacher ({self.teacher_cfg.model}, {self.teacher_cfg.init_from}) '
               f'is right on {accuracy:.1%} of the first eval batch (chance: '
               f'{1 / self.num_classes:.1%}), fed at {self.teacher_input.image_size}x'
               f'{self.teacher_input.image_size}: check teacher.init_from, teacher.image_size '
               'and the data set')

  def training_inputs(self, batch, rng):
    """(images, soft targets, dropout rng) of a train batch: label smoothing and on-device
    mixup/cutmix, deterministic from the step `rng`. Shapes (B, H, W, 3), (B, K)."""
    cfg = self.config
    mix_rng, dropout_rng = jax.random.split(rng)
    targets = losses.onehot(batch['label'], self.num_classes, cfg.label_smoothing)
    images = batch['image']
    mix = cfg.mixup
    if mix.mixup_alpha or mix.cutmix_alpha:
      images, targets = losses.mixup_cutmix(mix_rng, images, targets,
                                            mixup_alpha=mix.mixup_alpha,
                                            cutmix_alpha=mix.cutmix_alpha,
                                            switch_prob=mix.switch_prob)
    return images, targets, dropout_rng

  def loss(self, params, batch_stats, batch, rng, frozen):
    """Mean loss over the batch -> (loss, (new batch_stats, metrics))."""
    images, targets, dropout_rng = self.training_inputs(batch, rng)
    logits, updates = self.model.apply(model_variables(params, batch_stats), images, train=True,
                                       rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    # A model with a distillation head (LeViT) returns (class logits, distillation logits) in
    # training: the class head learns from the labels, the distillation head from the teacher
    # (DeiT), or from the labels as well when no teacher is configured.
    dist_logits = None
    if isinstance(logits, tuple):
      logits, dist_logits = logits
    ce = losses.softmax_cross_entropy(logits, targets).mean()
    mean_logits = logits if dist_logits is None else (logits + dist_logits) / 2
    metrics = {'train/ce': ce,
               'train/accuracy': losses.accuracy(mean_logits, batch['label']).mean()}
    loss = ce
    if self.teacher is not None:
      teacher_logits = self.teacher_logits(frozen, images)
      distill = self.distill_loss(logits if dist_logits is None else dist_logits,
                                  teacher_logits)
      alpha = self.teacher_cfg.alpha
      loss = (1.0 - alpha) * ce + alpha * distill
      metrics['train/distill_loss'] = distill
    elif dist_logits is not None:
      dist_ce = losses.softmax_cross_entropy(dist_logits, targets).mean()
      loss = (ce + dist_ce) / 2
      metrics['train/dist_ce'] = dist_ce
    return loss, (updates.get('batch_stats', {}), metrics)

  def distill_loss(self, logits, teacher_logits):
    """Mean distillation loss of (B, K) student logits against the teacher's (teacher.kind)."""
    if self.teacher_cfg.kind == 'hard':
      return losses.hard_distillation_loss(logits, teacher_logits).mean()
    return losses.kd_soft_loss(logits, teacher_logits, self.teacher_cfg.temperature).mean()

  def evaluate(self, variables, batch, frozen, *, deploy: bool) -> Dict[str, jax.Array]:
    """Sums over the real (mask = 1) examples of a batch: correct, loss, count."""
    del frozen
    model = self.deploy_model if deploy else self.model
    logits = model.apply(variables, batch['image'], train=False)
    mask = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
    ce = losses.softmax_cross_entropy(logits, losses.onehot(batch['label'], self.num_classes))
    return {'correct': jnp.sum(losses.accuracy(logits, batch['label']) * mask),
            'loss': jnp.sum(ce * mask), 'count': jnp.sum(mask)}

  def summarize(self, sums: Dict[str, Any], prefix: str) -> Dict[str, float]:
    """Per-eval sums -> {'<prefix>accuracy', '<prefix>loss'} means."""
    count = max(float(sums['count']), 1.0)
    return {f'{prefix}accuracy': float(sums['correct']) / count,
            f'{prefix}loss': float(sums['loss']) / count}


__all__ = ['ClassificationTask']
