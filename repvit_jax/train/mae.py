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
Config: `model` (name, `mask_ratio`, decoder_*), `norm_pix_loss`, `teacher.{model, init_from,
overrides, kind, pairs, alpha, hidden_alpha, decoder_layer}`, `reconstructions` (images drawn
into `workdir/reconstructions.png` after every evaluation; 0 turns it off).

reconstructions.png shows, per image, the original | the visible patches (masked ones grey) |
the reconstruction: visible patches as they are, masked patches as predicted. A norm-pix model
predicts each patch up to its mean and contrast, so (as in MAE's figures) the prediction is
drawn with the true patch's mean and standard deviation; the pattern inside the patch is the
model's. With `norm_pix_loss=False` the prediction is drawn as it is.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from repvit_jax.models import mae as mae_lib
from repvit_jax.models.registry import create_model
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train import pretrained, recipes
from repvit_jax.train.classification import (deploy_overrides, model_overrides,
                                             teacher_overrides)
from repvit_jax.train.state import model_variables

DISTILL_KINDS = ('attention', 'g2sd')
DISTILL = 'distill'
NORM_PIX_EPS = 1e-6
# The masks of evaluation (and of the reconstructions) are the same at every evaluation, so
# that eval/loss moves only with the model.
EVAL_MASK_SEED = 20240


# ---------------------------------------------------------------------------------------------
# Losses (pure jnp).

def pixel_targets(images: jax.Array, patch_size: int, norm_pix: bool = True) -> jax.Array:
  """(B, H, W, 3) -> (B, N, p * p * 3) targets, each patch normalised by its own statistics.

  norm-pix (MAE): (x - mean) / sqrt(var + 1e-6), mean and variance over the patch's
  p * p * 3 values; the variance unbiased (divided by n - 1), as PyTorch's `Tensor.var` in
  the official MAE and MAE-Lite (the biased one moves the loss by ~1e-2 relative at patch 4).
  """
  target = mae_lib.patchify(images.astype(jnp.float32), patch_size)
  if norm_pix:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
  return target


def masked_patch_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-example MSE over the masked patches: (B, N, P), (B, N, P), (B, N) -> (B,).

  Each patch's loss is the mean over its P values; an example's loss is the mean over its
  masked patches (every example has the same number, so the batch mean equals MAE's
  `(loss * mask).sum() / mask.sum()`).
  """
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def attention_distill_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                           head_map: jax.Array) -> jax.Array:
  """MSE(A_T, M A_S): (B, H_s, T, T), (B, H_t, T, T), M (H_s, H_t) -> scalar."""
  mapped = jnp.einsum('bhqk,hg->bgqk', student_logits.astype(jnp.float32),
                      head_map.astype(jnp.float32))
  return jnp.mean((mapped - teacher_logits.astype(jnp.float32)) ** 2)


def hidden_distill_loss(student: jax.Array, teacher: jax.Array, adapter: jax.Array) -> jax.Array:
  """MSE(H_T, H_S W): (B, T, C_s), (B, T, C_t), W (C_s, C_t) -> scalar."""
  mapped = student.astype(jnp.float32) @ adapter.astype(jnp.float32)
  return jnp.mean((mapped - teacher.astype(jnp.float32)) ** 2)


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth-L1 (Huber / beta): 0.5 x^2 / beta below beta, |x| - beta / 2 above."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def g2sd_loss(student_features: jax.Array, teacher_features: jax.Array, mask: jax.Array,
              mlp: Dict[str, Any], beta: float = 2.0) -> jax.Array:
  """G2SD decoder-feature loss on the masked tokens.

  Args:
    student_features: (B, 1 + N, D_s) student decoder block output (class token first).
    teacher_features: (B, 1 + N, D_t) teacher decoder block output.
    mask: (B, N), 1 = masked.
    mlp: {'fc1': {kernel, bias}, 'fc2': {kernel, bias}} mapping D_s -> D_t -> D_t.

  Returns:
    scalar: smooth-L1(beta) between MLP(student) and LayerNorm(teacher) (no affine, eps 1e-6),
    averaged over masked tokens and channels.
  """
  x = student_features[:, 1:].astype(jnp.float32)
  x = nn.gelu(x @ mlp['fc1']['kernel'] + mlp['fc1']['bias'], approximate=False)
  x = x @ mlp['fc2']['kernel'] + mlp['fc2']['bias']
  t = teacher_features[:, 1:].astype(jnp.float32)
  t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True) + 1e-6)
  per_token = jnp.mean(smooth_l1(x - t, beta), axis=-1)
  return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------------------------------------
# The task.

def _split_params(params: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(model params, distillation params)."""
  model = {k: v for k, v in params.items() if k != DISTILL}
  return model, params.get(DISTILL, {})


def _sown(intermediates: Dict[str, Any], *path: str) -> jax.Array:
  node = intermediates
  for key in path:
    node = node[key]
  return node[0]


class MAETask:
  """MAE pre-training of `config.model` (an MAE model), optionally distilled from a teacher.

  Attributes:
    model, deploy_model: the student's training and deploy forms.
    teacher: the teacher's deploy-form module, or None.
  """

  best_metric = 'eval/loss'
  best_mode = 'min'

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.config = config
    self.num_classes = num_classes
    self.model_name = config.model.name
    self.overrides = model_overrides(config.model)
    self.model = create_model(self.model_name, num_classes=num_classes, **self.overrides)
    if not isinstance(self.model, mae_lib.MaskedAutoencoder):
      raise ValueError(f'task mae needs an MAE model (mae_vit_tiny, mae_tdrl_vit_tiny, '
                       f'mae_vit_base, ...), got {self.model_name!r}')
    self.deploy_model = create_model(self.model_name, num_classes=num_classes, deploy=True,
                                     **deploy_overrides(self.overrides))
    self.norm_pix = bool(config.get('norm_pix_loss', True))
    self.teacher_cfg = config.get('teacher') or ml_collections.ConfigDict()
    self.teacher = None
    self._recon_images = None
    if self.teacher_cfg.get('model'):
      self._build_teacher()

  # -- teacher -----------------------------------------------------------------------------

  def _build_teacher(self):
    cfg = self.teacher_cfg
    self.kind = cfg.get('kind', 'attention')
    if self.kind not in DISTILL_KINDS:
      raise ValueError(f'teacher.kind must be one of {DISTILL_KINDS}, got {self.kind!r}')
    if not cfg.get('init_from'):
      raise ValueError('teacher.model is set but teacher.init_from is not: a teacher needs '
                       'trained weights (an MAE workdir, checkpoint or model directory)')
    overrides = teacher_overrides(cfg, self.overrides)
    # The teacher sees exactly the student's visible tokens: same mask ratio, same grid.
    overrides['mask_ratio'] = self.model.mask_ratio
    self.teacher = create_model(cfg.model, num_classes=self.num_classes, deploy=True,
                                **overrides)
    if not isinstance(self.teacher, mae_lib.MaskedAutoencoder):
      raise ValueError(f'teacher.model must be an MAE model (e.g. mae_vit_base), got '
                       f'{cfg.model!r}')
    if self.teacher.patch_size != self.model.patch_size:
      raise ValueError(f'the teacher must see the same patches: teacher patch_size '
                       f'{self.teacher.patch_size}, student {self.model.patch_size}')
    self.pairs = tuple((int(s), int(t)) for s, t in (cfg.get('pairs') or ()))
    self.alpha = float(cfg.get('alpha', 1.0))
    self.hidden_alpha = float(cfg.get('hidden_alpha', 0.0) or 0.0)
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
      layer = cfg.get('decoder_layer') or self.teacher.decoder_depth
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
    source = pretrained.read_variables(self.teacher_cfg.init_from)
    deploy = reparameterize(jax.tree.map(jnp.asarray, source))
    size = int(self.config.data.image_size)
    decode = self.kind == 'g2sd'
    target = jax.eval_shape(lambda: self.teacher.init(
        {'params': jax.random.PRNGKey(0), 'mask': jax.random.PRNGKey(1)},
        jnp.zeros((1, size, size, 3)), train=False, decode=decode))
    fitted, _ = pretrained.fit(target, deploy, what=f'teacher {self.teacher_cfg.init_from}')
    return {'teacher': fitted}

  # -- the trainer's interface ---------------------------------------------------------------

  def init_source(self) -> Optional[Tuple[str, str]]:
    """(path, skip regex) of the weights a fresh run starts from, or None."""
    return pretrained.init_source(self.config)

  def adapt_pretrained(self, source: Dict[str, Any]) -> Dict[str, Any]:
    """An MAE tree initialises an MAE run as it is (distillation maps: `init_skip`)."""
    return source

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
    return jax.random.PRNGKey(EVAL_MASK_SEED + int(self.config.get('seed', 0)))

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

  @staticmethod
  def summarize(sums: Dict[str, Any], prefix: str) -> Dict[str, float]:
    """Per-eval sums -> {'<prefix>loss'}: the mean masked-patch loss."""
    return {f'{prefix}loss': float(sums['loss']) / max(float(sums['count']), 1.0)}

  # -- reconstructions -------------------------------------------------------------------------

  def after_eval(self, variables, workdir: str, step: int) -> None:
    """Draws original | masked | reconstruction of a fixed eval batch into
    `workdir/reconstructions.png` (process 0 writes; every process must call this)."""
    count = int(self.config.get('reconstructions', 8) or 0)
    if count <= 0:
      return
    if jax.process_count() > 1:
      variables = multihost_utils.process_allgather(variables, tiled=True)
    if jax.process_index() != 0:
      return
    images = self._fixed_images(count)
    variables = jax.device_get(variables)
    variables = dict(variables, params=_split_params(variables['params'])[0])
    panels = np.asarray(self._reconstruct(variables, images))      # (3, n, H, W, 3)
    mean = np.asarray(self.config.data.get('mean', (0.485, 0.456, 0.406)), np.float32)
    std = np.asarray(self.config.data.get('std', (0.229, 0.224, 0.225)), np.float32)
    pixels = np.clip(panels * std + mean, 0.0, 1.0)
    write_png(os.path.join(workdir, 'reconstructions.png'), image_grid(pixels))
    del step

  def _fixed_images(self, count: int) -> np.ndarray:
    if self._recon_images is None:
      from repvit_jax import data  # pylint: disable=import-outside-toplevel
      batch_size = int(self.config.get('eval_batch_size') or self.config.batch_size)
      batch = next(iter(data.make_eval_iterator(self.config.data,
                                                global_batch_size=batch_size)))
      real = int(np.sum(batch['mask']))
      self._recon_images = np.asarray(batch['image'][:min(count, real)])
    return self._recon_images

  @functools.partial(jax.jit, static_argnums=0)
  def _reconstruct(self, variables, images):
    """(3, B, H, W, 3): originals, masked (hidden patches grey), reconstructions (the
    prediction in the masked patches, de-normalised with each patch's true statistics, and
    the visible patches as they are)."""
    p = self.model.patch_size
    out = self.model.apply(variables, images, train=False, rngs={'mask': self._eval_rng()})
    patches = mae_lib.patchify(images, p)
    pred = out['pred'].astype(jnp.float32)
    if self.norm_pix:
      mean = patches.mean(-1, keepdims=True)
      pred = pred * jnp.sqrt(patches.var(-1, keepdims=True, ddof=1) + NORM_PIX_EPS) + mean
    hidden = out['mask'][..., None]
    # Grey in normalised units: the data mean, i.e. 0.
    masked = mae_lib.unpatchify(patches * (1 - hidden), p)
    recon = mae_lib.unpatchify(patches * (1 - hidden) + pred * hidden, p)
    return jnp.stack([images, masked, recon])


def image_grid(panels: np.ndarray, *, gap: int = 2, min_tile: int = 96) -> np.ndarray:
  """(C, n, H, W, 3) in [0, 1] -> uint8 (rows n, columns C) grid, upscaled to >= min_tile."""
  columns, rows, h, w, _ = panels.shape
  scale = max(1, -(-min_tile // max(h, w)))
  tiles = panels.repeat(scale, axis=2).repeat(scale, axis=3)
  th, tw = h * scale, w * scale
  grid = np.ones((rows * th + (rows + 1) * gap, columns * tw + (columns + 1) * gap, 3),
                 np.float32)
  for c in range(columns):
    for r in range(rows):
      y, x = gap + r * (th + gap), gap + c * (tw + gap)
      grid[y:y + th, x:x + tw] = tiles[c, r]
  return np.round(grid * 255).astype(np.uint8)


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) image atomically; Pillow when installed, else TensorFlow."""
  tmp = f'{path}.tmp'
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.fromarray(image).save(tmp, format='PNG')
  except ImportError:
    from repvit_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
    with open(tmp, 'wb') as f:
      f.write(tf.io.encode_png(image).numpy())
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Recipes (used by configs/mae_lite_tiny.py and configs/mae_tdrl_vit_tiny.py).

VARIANTS = ('', 'dmae', 'demo', 'teacher_demo', 'dmae_demo')

# The digits demo (32x32 images, 4x4 patches: 64 tokens, 16 of them visible at mask 0.75).
DEMO_MODEL = dict(patch_size=4, width=96, depth=6, num_heads=6, decoder_width=64,
                  decoder_depth=1, decoder_num_heads=4)
DEMO_TEACHER = dict(patch_size=4, width=128, depth=6, num_heads=8, decoder_width=64,
                    decoder_depth=1, decoder_num_heads=4)


def recipe(model_name: str, variant: str = '') -> ml_collections.ConfigDict:
  """MAE pre-training config for `model_name`.

  Variants: '' MAE-Lite on ImageNet-1k; 'dmae' D-MAE-Lite on ImageNet-1k (MAE-Base teacher,
  `--config.teacher.init_from` required); 'demo' on the embedded digits; 'teacher_demo' a wider
  vanilla MAE on digits to serve as the demo teacher; 'dmae_demo' = 'demo' + that teacher
  (`--config.teacher.init_from=<teacher_demo workdir>`).
  """
  variant = (variant or '').strip()
  if variant not in VARIANTS:
    raise ValueError(f'unknown config variant {variant!r}; known: '
                     f'{", ".join(repr(v) for v in VARIANTS)}')
  config = recipes.base(model_name)
  config.task = 'mae'
  config.model.mask_ratio = 0.75
  config.norm_pix_loss = True
  config.teacher = ml_collections.ConfigDict(dict(
      model=ml_collections.FieldReference(None, field_type=str),
      init_from=ml_collections.FieldReference(None, field_type=str),
      overrides=ml_collections.ConfigDict(), kind='attention', pairs=((12, 12),), alpha=1.0,
      hidden_alpha=0.0, decoder_layer=ml_collections.FieldReference(None, field_type=int)))
  config.init_skip = r'^distill/'
  config.reconstructions = 8
  if variant in ('', 'dmae'):
    _imagenet(config)
    if variant == 'dmae':
      config.teacher.model = 'mae_vit_base'
  else:
    _digits(config, variant)
  del config.label_smoothing   # classification-only fields
  del config.mixup
  return config


def _imagenet(config: ml_collections.ConfigDict) -> None:
  """MAE-Lite (REFERENCE.md): 400 epochs, batch 4096, lr 1.5e-4 * 4096 / 256, AdamW (0.9,
  0.95), wd 0.05, 40 warm-up epochs then cosine to 0; random-resized crop (0.08, 1), flip."""
  config.data.image_size = 224
  config.data.crop_scale = (0.08, 1.0)
  config.data.flip = True
  config.data.randaugment = None
  config.data.color_jitter = 0.0
  config.eval_batch_size = 1024
  recipes.imagenet_schedule(config, epochs=400, batch_size=4096, lr=1.5e-4 * 4096 / 256,
                            min_lr=0.0, warmup_epochs=40, weight_decay=0.05,
                            eval_every_epochs=20)
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.95
  config.optimizer.layer_decay = None


def _digits(config: ml_collections.ConfigDict, variant: str) -> None:
  """A few minutes on 2 CPU cores: digits at 32x32, 4x4 patches, a narrow MAE.

  Departures from MAE-Lite, for a short run on tiny images: a larger learning rate than
  1.5e-4 * batch / 256, crops of at least 40% of the image and no flips (digits are not
  symmetric, and the fixed evaluation images are whole digits).
  """
  model = DEMO_TEACHER if variant == 'teacher_demo' else DEMO_MODEL
  for key, value in model.items():
    config.model[key] = value
  if variant == 'teacher_demo':
    config.model.name = 'mae_vit_base'
  recipes.digits_data(config)
  config.data.crop_scale = (0.4, 1.0)
  config.eval_batch_size = 120
  config.optimizer.lr = 2e-3
  config.optimizer.warmup_steps = 60
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.95
  config.log_every = 10
  config.eval_every = 300
  config.checkpoint_every = 300
  if variant == 'dmae_demo':
    config.teacher.model = 'mae_vit_base'
    config.teacher.overrides = ml_collections.ConfigDict(dict(DEMO_TEACHER))
    config.teacher.pairs = ((DEMO_MODEL['depth'], DEMO_TEACHER['depth']),)


__all__ = ['MAETask', 'pixel_targets', 'masked_patch_loss', 'attention_distill_loss',
           'hidden_distill_loss', 'g2sd_loss', 'image_grid', 'write_png', 'recipe']
