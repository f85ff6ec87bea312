"""Masked-autoencoder pre-training task (MAE-Lite), with D-MAE or G2SD distillation.

Loss: MSE between predicted and true pixels of the masked patches only, the target being each
patch normalised by its own mean and variance (norm-pix, eps 1e-6). With a frozen teacher
(`teacher.model`, `teacher.init_from`), the teacher runs on the student's visible tokens (the
same per-example shuffle) plus its class token, and one of:

* `teacher.kind='attention'` (D-MAE-Lite): at each (student layer, teacher layer) of
  `teacher.pairs` (1-based), MSE between the teacher's pre-softmax attention logits
  (B, H_t, T, T) and the student's mapped over heads by a learnable bias-free linear map
  (H_s -> H_t), weight `teacher.alpha`; optionally (`teacher.hidden_alpha` > 0) MSE between
  the teacher's block outputs and the student's through a bias-free linear adapter;
* `teacher.kind='g2sd'`: the student's decoder features (last decoder block), through a
  two-layer MLP, regress the teacher's decoder features at `teacher.decoder_layer`
  (LayerNorm without affine) on the masked tokens, smooth-L1 with beta 2, weight alpha.
  (G2SD's own generic-distillation stage drops the pixel loss; here it stays, with alpha
  setting the balance.)

The trainable maps are params of the task under `params['distill']` (so the optimizer trains
them; `init_skip='^distill/'` lets an MAE tree without them initialise a distillation run).
The losses are in `repvit_jax.train.losses`; the recipes in configs/mae_lite_tiny.py.
Config: `model` (name, `mask_ratio`, decoder_*), `norm_pix_loss`, `teacher.{model, init_from,
overrides, kind, pairs, alpha, hidden_alpha, decoder_layer}`, `reconstructions` (how many eval
images are drawn into `workdir/reconstructions/step_<N>.png` after every evaluation; 0: none).

The reconstruction picture (see `MAETask.reconstruction_picture`) shows, per image, the
original | the model's input | the masked patches' target and prediction in the units of the
loss (norm-pix: each patch's own standardisation) | the reconstruction. The prediction is
brought back to pixels with the visible patches' statistics only: drawing it with each masked
patch's true mean and standard deviation (MAE's figures) leaks the answer (at 4x4 patches an
untrained model then "draws" the digit).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from repvit_jax.train import log, pictures
from repvit_jax.models import mae as mae_lib
from repvit_jax.train.losses import (NORM_PIX_EPS, attention_distill_loss, g2sd_loss,
                                     hidden_distill_loss, masked_patch_loss, pixel_targets)
from repvit_jax.train.state import model_variables
from repvit_jax.train.tasks import Task

DISTILL_KINDS = ('attention', 'g2sd')
DISTILL = 'distill'
# The masks of evaluation (and of the reconstructions) are the same at every evaluation, so
# that eval/loss moves only with the model.
EVAL_MASK_SEED = 20240


def _split_params(params: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(model params, distillation params)."""
  model = {k: v for k, v in params.items() if k != DISTILL}
  return model, params.get(DISTILL, {})


def _sown(intermediates: Dict[str, Any], *path: str) -> jax.Array:
  node = intermediates
  for key in path:
    node = node[key]
  return node[0]


class MAETask(Task):
  """MAE pre-training of `config.model` (an MAE model), optionally distilled from a teacher.

  Attributes (besides `Task`'s):
    teacher: the teacher's deploy-form module, or None.
  """

  best_metric = 'eval/loss'
  best_mode = 'min'

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    super().__init__(config, num_classes)
    if not isinstance(self.model, mae_lib.MaskedAutoencoder):
      raise ValueError(f'task mae needs an MAE model (mae_vit_tiny, mae_tdrl_vit_tiny, '
                       f'mae_vit_base, ...), got {self.spec.name!r}')
    self.norm_pix = bool(config.norm_pix_loss)
    self.teacher_cfg = config.teacher
    self.teacher = None
    self._recon_images = None
    if self.teacher_cfg.model:
      self._build_teacher()

  # -- teacher -----------------------------------------------------------------------------

  def _build_teacher(self):
    cfg = self.teacher_cfg
    self.kind = cfg.kind
    if self.kind not in DISTILL_KINDS:
      raise ValueError(f'teacher.kind must be one of {DISTILL_KINDS}, got {self.kind!r}')
    if not cfg.init_from:
      raise ValueError('teacher.model is set but teacher.init_from is not: a teacher needs '
                       'trained weights (an MAE workdir, checkpoint or model directory)')
    # The teacher sees exactly the student's visible tokens: same mask ratio, same grid.
    self.teacher = self.teacher_spec(cfg).build(mask_ratio=self.model.mask_ratio)
    if not isinstance(self.teacher, mae_lib.MaskedAutoencoder):
      raise ValueError(f'teacher.model must be an MAE model (e.g. mae_vit_base), got '
                       f'{cfg.model!r}')
    if self.teacher.patch_size != self.model.patch_size:
      raise ValueError(f'the teacher must see the same patches: teacher patch_size '
                       f'{self.teacher.patch_size}, student {self.model.patch_size}')
    self.pairs = tuple((int(s), int(t)) for s, t in (cfg.pairs or ()))
    self.alpha = float(cfg.alpha)
    self.hidden_alpha = float(cfg.hidden_alpha or 0.0)
    if self.kind == 'attention':
      if not self.pairs:
        raise ValueError('teacher.pairs is empty: give (student layer, teacher layer) pairs, '
                         'e.g. ((12, 12),)')
      for s, t in self.pairs:
        if not (1 <= s <= self.model.depth and 1 <= t <= self.teacher.depth):
          raise ValueError(f'teacher.pairs entry ({s}, {t}) is out of range: student layers '
                           f'are 1..{self.model.depth}, teacher layers 1..{self.teacher.depth}')
      # Only the paired layers materialise their (B, H, T, T) attention logits.
      self.model = self.model.clone(
          attention_logits_layers=tuple(sorted({s - 1 for s, _ in self.pairs})))
      self.teacher = self.teacher.clone(
          attention_logits_layers=tuple(sorted({t - 1 for _, t in self.pairs})))
    else:
      if self.hidden_alpha:
        raise ValueError("teacher.hidden_alpha (hidden-state distillation at teacher.pairs) "
                         "goes with teacher.kind='attention'; set it to 0 for 'g2sd'")
      layer = cfg.decoder_layer or self.teacher.decoder_depth
      if not 1 <= layer <= self.teacher.decoder_depth:
        raise ValueError(f'teacher.decoder_layer must be in 1..{self.teacher.decoder_depth}, '
                         f'got {layer}')
      self.decoder_layer = int(layer)

  def _init_distill(self, rng: jax.Array) -> Dict[str, Any]:
    """The trainable maps of the distillation (PyTorch-default-like uniform init)."""
    init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    out = {}
    if self.kind == 'attention':
      for i, _ in enumerate(self.pairs):
        rng, k1, k2 = jax.random.split(rng, 3)
        out[f'attn_{i}'] = {'kernel': init(k1, (self.model.num_heads, self.teacher.num_heads))}
        if self.hidden_alpha:
          out[f'hidden_{i}'] = {'kernel': init(k2, (self.model.width, self.teacher.width))}
    else:
      k1, k2 = jax.random.split(rng)
      d_s, d_t = self.model.decoder_width, self.teacher.decoder_width
      out['decoder_mlp'] = {
          'fc1': {'kernel': init(k1, (d_s, d_t)), 'bias': jnp.zeros((d_t,))},
          'fc2': {'kernel': init(k2, (d_t, d_t)), 'bias': jnp.zeros((d_t,))}}
    return out

  def load_frozen(self) -> Dict[str, Any]:
    """The teacher's deploy variables (host arrays) for the loss, or {} without a teacher.

    The teacher may be any MAE checkpoint of this project (a workdir, checkpoint or model
    directory); its TDRL layers are folded. For attention distillation only its encoder is
    needed, so a tree without a decoder (converted encoder weights) also fits.
    """
    if self.teacher is None:
      return {}
    size = int(self.config.data.image_size)
    decode = self.kind == 'g2sd'
    # The teacher sees the student's visible tokens: the student's images, as they are.
    init = lambda _: self.teacher.init(
        {'params': jax.random.PRNGKey(0), 'mask': jax.random.PRNGKey(1)},
        jnp.zeros((1, size, size, 3)), train=False, decode=decode)
    variables, _ = self.load_teacher(self.teacher_cfg.init_from, init, what='teacher',
                                     own_input=False)
    self.announce_teacher('teacher', self.teacher_cfg.model, self.teacher_cfg.init_from, size,
                          f' ({self.kind} distillation)')
    return {'teacher': variables}

  # -- the trainer's interface ---------------------------------------------------------------

  def init_variables(self, rng: jax.Array, images: jax.Array) -> Dict[str, Any]:
    """The student's initial variables; with a teacher, `params['distill']` too.

    The model's own initialisation does not depend on whether there is a teacher.
    """
    variables = dict(self.model.init({'params': rng, 'mask': jax.random.fold_in(rng, 1)},
                                     images, train=False))
    if self.teacher is not None:
      variables['params'] = dict(variables['params'])
      variables['params'][DISTILL] = self._init_distill(jax.random.fold_in(rng, 2))
    return variables

  def loss(self, params, batch_stats, batch, rng, frozen):
    """Mean loss over the batch -> (loss, (new batch_stats, metrics))."""
    mask_rng, dropout_rng = jax.random.split(rng)
    images = batch['image']
    model_params, distill = _split_params(params)
    mutable = ['batch_stats'] + (['intermediates'] if self.teacher is not None else [])
    out, updates = self.model.apply(model_variables(model_params, batch_stats), images,
                                    train=True, rngs={'mask': mask_rng, 'dropout': dropout_rng},
                                    mutable=mutable)
    target = pixel_targets(images, self.model.patch_size, self.norm_pix)
    mae = masked_patch_loss(out['pred'], target, out['mask']).mean()
    metrics = {'train/mae_loss': mae}
    loss = mae
    if self.teacher is not None:
      terms = self._distill_terms(out, updates['intermediates'], distill, images, frozen)
      loss = loss + self.alpha * terms['train/distill_loss']
      if 'train/hidden_loss' in terms:
        loss = loss + self.hidden_alpha * terms['train/hidden_loss']
      metrics.update(terms)
    return loss, (updates.get('batch_stats', {}), metrics)

  def _distill_terms(self, out, student, distill, images, frozen) -> Dict[str, jax.Array]:
    decode = self.kind == 'g2sd'
    _, teacher = self.teacher.apply(frozen['teacher'], images, train=False,
                                    ids_shuffle=jax.lax.stop_gradient(out['ids_shuffle']),
                                    decode=decode, mutable=['intermediates'])
    teacher = jax.lax.stop_gradient(teacher['intermediates'])
    if decode:
      s = _sown(student, f'decoder_blocks_{self.model.decoder_depth - 1}', 'features')
      t = _sown(teacher, f'decoder_blocks_{self.decoder_layer - 1}', 'features')
      return {'train/distill_loss': g2sd_loss(s, t, out['mask'], distill['decoder_mlp'])}
    attn, hidden = [], []
    for i, (s, t) in enumerate(self.pairs):
      attn.append(attention_distill_loss(
          _sown(student, f'blocks_{s - 1}', 'attn', 'attn_logits'),
          _sown(teacher, f'blocks_{t - 1}', 'attn', 'attn_logits'), distill[f'attn_{i}']['kernel']))
      if self.hidden_alpha:
        hidden.append(hidden_distill_loss(_sown(student, f'blocks_{s - 1}', 'features'),
                                          _sown(teacher, f'blocks_{t - 1}', 'features'),
                                          distill[f'hidden_{i}']['kernel']))
    terms = {'train/distill_loss': sum(attn)}
    if hidden:
      terms['train/hidden_loss'] = sum(hidden)
    return terms

  def _eval_rng(self) -> jax.Array:
    return jax.random.PRNGKey(EVAL_MASK_SEED + int(self.config.seed))

  def evaluate(self, variables, batch, frozen, *, deploy: bool) -> Dict[str, jax.Array]:
    """Sums over the real examples of a batch: masked-patch loss, count (fixed masks)."""
    del frozen
    model = self.deploy_model if deploy else self.model
    variables = dict(variables, params=_split_params(variables['params'])[0])
    out = model.apply(variables, batch['image'], train=False, rngs={'mask': self._eval_rng()})
    target = pixel_targets(batch['image'], model.patch_size, self.norm_pix)
    per_example = masked_patch_loss(out['pred'], target, out['mask'])
    real = batch.get('mask', jnp.ones(per_example.shape, jnp.float32))
    return {'loss': jnp.sum(per_example * real), 'count': jnp.sum(real)}

  def summarize(self, sums: Dict[str, Any], prefix: str) -> Dict[str, float]:
    """Per-eval sums -> {'<prefix>loss'}: the mean masked-patch loss."""
    return {f'{prefix}loss': float(sums['loss']) / max(float(sums['count']), 1.0)}

  # -- reconstructions -------------------------------------------------------------------------

  def after_eval(self, variables, workdir: str, step: int) -> None:
    """Draws the reconstructions of a fixed eval batch into
    `workdir/reconstructions/step_<step>.png` (process 0 writes; every process must call
    this: with several processes it gathers the weights)."""
    count = int(self.config.reconstructions or 0)
    if count <= 0:
      return
    if jax.process_count() > 1:
      variables = multihost_utils.process_allgather(variables, tiled=True)
    if jax.process_index() != 0:
      return
    image, losses = self.reconstruction_picture(jax.device_get(variables),
                                                self._fixed_images(count), step)
    directory = os.path.join(workdir, 'reconstructions')
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f'step_{step}.png')
    pictures.write_png(path, image)
    log.info(f'reconstructions: {path} (masked-patch loss {float(np.mean(losses)):.4f} on '
             f'{len(losses)} images)')

  def before_training(self, variables, workdir: str) -> None:
    """`reconstructions/step_0.png`: the model as initialised (or as `init_from` left it),
    the picture each later one is compared with."""
    if int(self.config.eval_every or 0) > 0:
      self.after_eval(variables, workdir, 0)

  def reconstruction_picture(self, variables, images: np.ndarray,
                             step: int) -> Tuple[np.ndarray, np.ndarray]:
    """The labelled picture of `images` (n, H, W, 3), data-normalised, and each image's
    masked-patch loss (n,) under the fixed evaluation masks: `compare` with one model."""
    image, losses = self.compare({f'step {step}': variables}, images, title=self.spec.name)
    return image, losses[0]

  def compare(self, models: Dict[str, Any], images: np.ndarray, *,
              title: str) -> Tuple[np.ndarray, List[np.ndarray]]:
    """One picture of several models' reconstructions of the same images under the same
    masks (e.g. untrained beside pre-trained), and each model's per-image loss [(n,), ...].

    Columns: the original | the input (masked patches grey) | for each model (name -> model
    variables), its reconstruction in pixels: visible patches as they are, masked ones its
    prediction, brought back to pixels with the statistics of the visible patches only, so
    nothing drawn in the hidden patches depends on a masked pixel. Rows are labelled with
    each model's masked-patch loss of that image.
    """
    mean = np.asarray(self.config.data.mean, np.float32)
    std = np.asarray(self.config.data.std, np.float32)
    pixels = lambda x: np.clip(x * std + mean, 0.0, 1.0)
    columns, losses = [], []
    for variables in models.values():
      variables = dict(variables, params=_split_params(variables['params'])[0])
      panels, loss = jax.device_get(self.reconstruction_panels(variables, jnp.asarray(images)))
      if not columns:
        columns += [pixels(panels['original']), pixels(panels['masked'])]
        ratio = float(np.mean(panels['hidden']))
      columns.append(pixels(panels['reconstruction']))
      losses.append(np.asarray(loss))
    unit = 'norm-pix' if self.norm_pix else 'pixels'
    summary = ', '.join(f'{name} {float(np.mean(loss)):.4f}'
                        for name, loss in zip(models, losses))
    image = pictures.labelled_grid(
        np.stack(columns), title=f'{title}: masked-patch loss ({unit}, {ratio:.0%} masked) '
                                 f'{summary}',
        column_titles=('original', 'input', *models),
        row_labels=[' / '.join(f'{loss[i]:.3f}' for loss in losses)
                    for i in range(len(images))])
    return image, losses

  def _fixed_images(self, count: int) -> np.ndarray:
    """The first `count` real images of the first eval batch (n, H, W, 3), normalised."""
    if self._recon_images is None:
      from repvit_jax import data  # pylint: disable=import-outside-toplevel
      batch_size = int(self.config.eval_batch_size or self.config.batch_size)
      batch = next(iter(data.make_eval_iterator(self.config.data,
                                                global_batch_size=batch_size)))
      self._recon_images = np.asarray(batch['image'][:int(np.sum(batch['mask']))])
    return self._recon_images[:count]

  @functools.partial(jax.jit, static_argnums=0)
  def reconstruction_panels(self, variables, images):
    """The panels of `reconstruction_picture` for model variables (no distillation maps)
    and data-normalised images (n, H, W, C), under the fixed evaluation masks.

    Returns ({'original', 'masked', 'target', 'prediction', 'reconstruction'}: (n, H, W, C)
    each, 'hidden': (n, H, W, 1) 1.0 on masked pixels}, the per-image masked-patch loss (n,)).
    'target' and 'prediction' are in the loss's units, the others data-normalised pixels.
    """
    p = self.model.patch_size
    channels = images.shape[-1]
    out = self.model.apply(variables, images, train=False, rngs={'mask': self._eval_rng()})
    patches = mae_lib.patchify(images.astype(jnp.float32), p)      # (n, N, p*p*C)
    pred = out['pred'].astype(jnp.float32)
    target = pixel_targets(images, p, self.norm_pix)
    hidden = out['mask'][..., None]                                  # (n, N, 1)
    pred_pixels = pred
    if self.norm_pix:
      # Back to pixels as MAE draws them (each patch's mean + its standard deviation times
      # the prediction), but with the mean and the standard deviation of the visible
      # patches, averaged, in place of the masked patch's own (which would leak it).
      visible = 1 - hidden                                           # (n, N, 1)
      count = jnp.sum(visible, axis=1, keepdims=True)                # (n, 1, 1)
      patch_mean = patches.mean(-1, keepdims=True)
      patch_std = jnp.sqrt(patches.var(-1, keepdims=True, ddof=1) + NORM_PIX_EPS)
      mean = jnp.sum(patch_mean * visible, axis=1, keepdims=True) / count
      scale = jnp.sum(patch_std * visible, axis=1, keepdims=True) / count
      pred_pixels = pred * scale + mean
    picture = lambda x: mae_lib.unpatchify(x, p, channels)
    # The grey of hidden patches in the input: the data mean, 0 in normalised units.
    panels = {
        'original': images.astype(jnp.float32),
        'masked': picture(patches * (1 - hidden)),
        'target': picture(target),
        'prediction': picture(pred),
        'reconstruction': picture(patches * (1 - hidden) + pred_pixels * hidden),
        'hidden': mae_lib.unpatchify(jnp.broadcast_to(hidden, hidden.shape[:2] + (p * p,)),
                                     p, 1),
    }
    return panels, masked_patch_loss(pred, target, out['mask'])


__all__ = ['MAETask', 'DISTILL', 'DISTILL_KINDS', 'EVAL_MASK_SEED']
