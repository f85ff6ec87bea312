"""RIFormer's module-imitation distillation: a RIFormer student learns from a PoolFormer.

    L = (1 - alpha) CE + alpha L_soft + w_in L'_in + w_out L_out + w_rel L_rel

  L_soft  soft distillation (KL at `teacher.temperature`) to a logits teacher: `teacher.model`
          when set, else the feature teacher's own logits. `teacher.alpha = 1.0` (the
          default here) trains on the soft labels only, as the paper recommends.
  L'_in   MSE between the student's and the feature teacher's block outputs.
  L_out   MSE between the student's affine mixer and the teacher's token mixer applied to the
          same input: the teacher's normalised mixer input (the student's affine is run on
          it with the student's parameters), so the affine imitates the pooling module.
  L_rel   MSE between token-relation matrices of those two mixer outputs, R(T) = T^ T^T with
          T^ the L2-normalised tokens (B, N, C) (our choice; the paper's code is not public).
          Computed without forming the N x N matrices when N > C (see `losses.relation_loss`).
  The three feature terms are averaged over `feature_teacher.blocks` (global block indices;
  default: the last block of every stage) and logged unweighted as train/in_loss,
  train/out_loss and train/rel_loss; the soft term as train/soft_loss.

Config (besides the classification task's):
  feature_teacher.model, .init_from, .overrides: the feature teacher (a MetaFormer, e.g. a
    trained PoolFormer of the student's size), run in eval mode.
  feature_teacher.blocks: block indices to imitate (None: last block of every stage).
  feature_teacher.weights.{in, out, rel}: w_in, w_out, w_rel.
  feature_teacher.init_student: initialise the student from the feature teacher's weights,
    all but the token mixers (and a head of another shape): the task's `init_source()` names the
    teacher and adds the mixers to `init_skip`; the config is left as it is, and a resumed run
    restores its checkpoint as usual.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from repvit_jax.models.metaformer import AffineMixer, MetaFormer
from repvit_jax.train import losses
from repvit_jax.train.classification import ClassificationTask
from repvit_jax.train.state import model_variables

MIXER_SKIP = r'(^|/)mixer/'


def default_blocks(depths: Sequence[int]):
  """The last block of every stage, as global block indices."""
  ends, total = [], 0
  for depth in depths:
    total += depth
    ends.append(total - 1)
  return tuple(ends)


class ModuleImitationTask(ClassificationTask):
  """Classification with RIFormer's module imitation (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    super().__init__(config, num_classes)
    cfg = config.feature_teacher
    if not cfg.model or not cfg.init_from:
      raise ValueError('the module_imitation task needs feature_teacher.model and '
                       'feature_teacher.init_from (e.g. a trained poolformer_s12 workdir)')
    if not isinstance(self.model, MetaFormer) or self.model.mixer != 'affine':
      raise ValueError(f'module imitation trains a RIFormer (a MetaFormer with the affine '
                       f'mixer), got {self.spec.name}; use e.g. riformer_s12')
    self.feature_cfg = cfg
    self.feature_teacher = self.teacher_spec(cfg, deploy=False).build()
    if not isinstance(self.feature_teacher, MetaFormer):
      raise ValueError(f'feature_teacher.model must be a MetaFormer (poolformer_* or '
                       f'riformer_*), got {cfg.model}')
    depth = sum(self.model.depths)
    self.blocks = tuple(int(b) for b in (cfg.blocks if cfg.blocks is not None else
                                          default_blocks(self.model.depths)))
    if not self.blocks or any(not 0 <= b < depth for b in self.blocks):
      raise ValueError(f'feature_teacher.blocks must be block indices in [0, {depth}), got '
                       f'{self.blocks}')
    self.weights = {k: float(cfg.weights[k]) for k in ('in', 'out', 'rel')}
    self.init_source()   # a clash of init_student with init_from is an error before training

  def init_source(self) -> Optional[Tuple[str, str]]:
    """With `feature_teacher.init_student`: the feature teacher's weights, token mixers and
    head excepted (the mixers keep their initial values); otherwise `init_from`."""
    if not self.feature_cfg.init_student:
      return super().init_source()
    path = str(self.feature_cfg.init_from)
    current = self.config.init_from
    if current and current != path:
      raise ValueError(f'feature_teacher.init_student loads {path}, but init_from is '
                       f'{current}: set only one of them')
    skip = self.config.init_skip or ''
    return path, (f'(?:{skip})|{MIXER_SKIP}' if skip else MIXER_SKIP)

  def load_frozen(self) -> Dict[str, Any]:
    """The logits teacher (if any) and the feature teacher's variables, as host arrays."""
    frozen = super().load_frozen()
    image_size = self.config.data.image_size
    sample = jnp.zeros((1, image_size, image_size, 3))
    # It must see the student's own images: its features are compared block by block.
    init = lambda _: self.feature_teacher.init(jax.random.PRNGKey(0), sample, train=False)
    fitted, _ = self.load_teacher(self.feature_cfg.init_from, init, what='feature teacher',
                                  fold=False, own_input=False)
    self._check_shapes(fitted, sample)
    self.announce_teacher('feature teacher', self.feature_cfg.model, self.feature_cfg.init_from,
                          image_size, f' (module imitation of blocks {list(self.blocks)})')
    frozen['feature_teacher'] = fitted
    return frozen

  def _check_shapes(self, teacher_variables, sample) -> None:
    """The imitated blocks must have one feature shape in student and teacher."""
    def shapes(model, variables):
      _, state = jax.eval_shape(lambda v: model.apply(v, sample, train=False,
                                                      mutable=['intermediates']), variables)
      return state['intermediates']
    student_vars = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), sample,
                                                          train=False))
    mine, theirs = shapes(self.model, student_vars), shapes(self.feature_teacher,
                                                             teacher_variables)
    for b in self.blocks:
      name = f'blocks_{b}'
      if name not in theirs:
        raise ValueError(f'feature teacher {self.feature_cfg.model} has no block {b}')
      got, want = mine[name]['features'][0].shape, theirs[name]['features'][0].shape
      if got != want:
        raise ValueError(f'block {b}: student features {got} and teacher features {want} '
                         'differ; choose a feature teacher of the student\'s size')

  def loss(self, params, batch_stats, batch, rng, frozen):
    """Mean loss over the batch -> (loss, (new batch_stats, metrics))."""
    images, targets, dropout_rng = self.training_inputs(batch, rng)
    logits, state = self.model.apply(model_variables(params, batch_stats), images, train=True,
                                     rngs={'dropout': dropout_rng},
                                     mutable=['batch_stats', 'intermediates'])
    student = state['intermediates']
    teacher_logits, teacher_state = self.feature_teacher.apply(
        frozen['feature_teacher'], images, train=False, mutable=['intermediates'])
    teacher_logits, teacher = jax.lax.stop_gradient(
        (teacher_logits, teacher_state['intermediates']))
    if self.teacher is not None:
      teacher_logits = self.teacher_logits(frozen, images)

    ce = losses.softmax_cross_entropy(logits, targets).mean()
    soft = self.distill_loss(logits, teacher_logits)
    alpha = float(self.teacher_cfg.alpha)
    terms = {'in': 0.0, 'out': 0.0, 'rel': 0.0}
    for b in self.blocks:
      name = f'blocks_{b}'
      mine, theirs = student[name], teacher[name]
      terms['in'] += losses.mse(mine['features'][0], theirs['features'][0])
      # The student's affine mixer on the teacher's normalised input.
      imitated = AffineMixer().apply({'params': params[name]['mixer']}, theirs['mixer_in'][0])
      terms['out'] += losses.mse(imitated, theirs['mixer_out'][0])
      terms['rel'] += losses.relation_loss(imitated, theirs['mixer_out'][0])
    terms = {k: v / len(self.blocks) for k, v in terms.items()}
    loss = (1.0 - alpha) * ce + alpha * soft + sum(self.weights[k] * terms[k] for k in terms)
    metrics = {'train/ce': ce, 'train/soft_loss': soft,
               'train/accuracy': losses.accuracy(logits, batch['label']).mean()}
    metrics.update({f'train/{k}_loss': v for k, v in terms.items()})
    return loss, (state.get('batch_stats', {}), metrics)


__all__ = ['ModuleImitationTask', 'default_blocks']
