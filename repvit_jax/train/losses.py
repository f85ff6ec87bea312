"""Every training loss, pure jnp, by the task that uses it.

- Classification: label smoothing, softmax cross-entropy, mixup / cutmix, and the
  distillation losses (soft, DeiT's hard). Logits are (B, K); targets (B, K) probability
  rows; per-example losses (B,) float32 (the caller averages).
- MAE pre-training: the norm-pix masked-patch MSE; D-MAE's attention-logit (and hidden-state)
  distillation through learnable maps; G2SD's smooth-L1 between decoder features.
- RIFormer's module imitation: feature MSE and the token-relation loss.

All jit-able with static shapes; computed in float32 whatever the inputs' dtype. The tasks
(`classification`, `mae`, `module_imitation`) combine them.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp

from repvit_jax.layers import gelu
from repvit_jax.models import mae as mae_lib

Array = jnp.ndarray


def onehot(labels: Array, num_classes: int, smoothing: float = 0.0) -> Array:
  """One-hot targets with label smoothing.

  Args:
    labels: (B,) integer class ids.
    num_classes: K.
    smoothing: s; the target row is `(1 - s) * onehot + s / K` (timm semantics).

  Returns:
    (B, K) float32, each row summing to 1.
  """
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if smoothing:
    hot = hot * (1.0 - smoothing) + smoothing / num_classes
  return hot


def softmax_cross_entropy(logits: Array, targets: Array) -> Array:
  """Cross-entropy of softmax(logits) against target distributions.

  Args:
    logits: (B, K).
    targets: (B, K) probabilities (one-hot, smoothed or mixed).

  Returns:
    (B,) float32, `-sum_k targets * log_softmax(logits)`.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets.astype(jnp.float32) * logp, axis=-1)


def _cutmix_mask(rng: Array, lam: Array, height: int, width: int) -> tuple[Array, Array]:
  """timm `rand_bbox` as a static-shape mask.

  The box has sides int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam)), is centred on a
  uniformly drawn pixel and clipped to the image.

  Returns:
    (mask (H, W) bool, True inside the box; corrected lam = 1 - box area / (H * W)).
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0 = jnp.clip(cy - cut_h // 2, 0, height)
  y1 = jnp.clip(cy + cut_h // 2, 0, height)
  x0 = jnp.clip(cx - cut_w // 2, 0, width)
  x1 = jnp.clip(cx + cut_w // 2, 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  mask = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  area = (y1 - y0) * (x1 - x0)
  return mask, 1.0 - area.astype(jnp.float32) / (height * width)


def mixup_cutmix(rng: Array, images: Array, targets: Array, *, mixup_alpha: float,
                 cutmix_alpha: float, switch_prob: float = 0.5) -> tuple[Array, Array]:
  """Batch-level mixup or cutmix with timm semantics.

  One lam ~ Beta(alpha, alpha) for the whole batch; example i is mixed with example
  B - 1 - i (the flipped batch). With both alphas > 0, cutmix is chosen with
  probability `switch_prob`, else mixup. Cutmix pastes a box of the partner image
  and corrects lam to the exact fraction of pixels kept. An alpha of 0 disables
  that method; both 0 returns the inputs unchanged.

  Args:
    rng: a PRNG key.
    images: (B, H, W, C) floating point.
    targets: (B, K) probabilities (e.g. from `onehot`).
    mixup_alpha, cutmix_alpha: Beta parameters (python floats, static).
    switch_prob: probability of cutmix when both are enabled.

  Returns:
    (images (B, H, W, C), same dtype; targets (B, K) float32 = lam * t + (1 - lam) * t_flipped).
  """
  if mixup_alpha < 0 or cutmix_alpha < 0:
    raise ValueError(f"alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return images, targets
  k_choice, k_mix, k_cut, k_box = jax.random.split(rng, 4)
  _, height, width, _ = images.shape
  flipped = images[::-1]
  targets = targets.astype(jnp.float32)

  def do_mixup(_):
    lam = jax.random.beta(k_mix, mixup_alpha, mixup_alpha)
    lam_x = lam.astype(images.dtype)
    return lam_x * images + (1 - lam_x) * flipped, lam

  def do_cutmix(_):
    lam = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha)
    mask, lam = _cutmix_mask(k_box, lam, height, width)
    return jnp.where(mask[None, :, :, None], flipped, images), lam

  if cutmix_alpha == 0:
    mixed, lam = do_mixup(None)
  elif mixup_alpha == 0:
    mixed, lam = do_cutmix(None)
  else:
    use_cutmix = jax.random.uniform(k_choice) < switch_prob
    mixed, lam = jax.lax.cond(use_cutmix, do_cutmix, do_mixup, None)
  lam = lam.astype(jnp.float32)
  return mixed, lam * targets + (1.0 - lam) * targets[::-1]


def kd_soft_loss(student_logits: Array, teacher_logits: Array,
                 temperature: float = 1.0) -> Array:
  """Soft distillation: KL(softmax(t / T) || softmax(s / T)) * T^2 per example.

  Args:
    student_logits, teacher_logits: (B, K).
    temperature: T > 0.

  Returns:
    (B,) float32, >= 0, zero where the two agree.
  """
  t = temperature
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  p = jnp.exp(log_p)
  return jnp.sum(p * (log_p - log_q), axis=-1) * (t * t)


def hard_distillation_loss(student_logits: Array, teacher_logits: Array) -> Array:
  """DeiT hard distillation: cross-entropy to the teacher's argmax class.

  Args:
    student_logits, teacher_logits: (B, K).

  Returns:
    (B,) float32.
  """
  labels = jnp.argmax(teacher_logits, axis=-1)
  return softmax_cross_entropy(student_logits, onehot(labels, student_logits.shape[-1]))


def accuracy(logits: Array, labels: Array) -> Array:
  """Top-1 correctness per example.

  Args:
    logits: (B, K).
    labels: (B,) integer ids, or (B, K) target rows (their argmax is the label).

  Returns:
    (B,) float32 of 0.0 / 1.0.
  """
  if labels.ndim == logits.ndim:
    labels = jnp.argmax(labels, axis=-1)
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# MAE pre-training and its distillations.

NORM_PIX_EPS = 1e-6


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
  x = gelu(x @ mlp['fc1']['kernel'] + mlp['fc1']['bias'])
  x = x @ mlp['fc2']['kernel'] + mlp['fc2']['bias']
  t = teacher_features[:, 1:].astype(jnp.float32)
  t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True) + 1e-6)
  per_token = jnp.mean(smooth_l1(x - t, beta), axis=-1)
  return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------------------------------------
# RIFormer's module imitation.


def mse(a, b):
  """Mean squared error over every element, in float32."""
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def _tokens(x):
  """(B, H, W, C) or (B, N, C) -> L2-normalised tokens (B, N, C), float32."""
  x = x.astype(jnp.float32).reshape(x.shape[0], -1, x.shape[-1])
  # rsqrt of a clamped square: finite gradients for all-zero tokens (an affine mixer at
  # its initial value outputs exactly zero), where the gradient of a norm would be NaN.
  squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, 1e-12))


def relation_loss(student, teacher):
  """MSE between token-relation matrices R = T^ T^T (B, N, N) of L2-normalised tokens.

  Args:
    student, teacher: (B, H, W, C) or (B, N, C) features of one shape.

  Returns:
    mean over B * N * N of (R_s - R_t)^2. When N > C it uses
    ||A A^T - B B^T||_F^2 = ||A^T A||^2 - 2 ||A^T B||^2 + ||B^T B||^2 (C x C matrices), which
    keeps memory at O(N C) for high-resolution stages.
  """
  a, b = _tokens(student), _tokens(teacher)
  n, c = a.shape[1], a.shape[2]
  hp = jax.lax.Precision.HIGHEST
  if n <= c:
    ra = jnp.einsum('bnc,bmc->bnm', a, a, precision=hp)
    rb = jnp.einsum('bnc,bmc->bnm', b, b, precision=hp)
    return jnp.mean(jnp.square(ra - rb))
  gram = lambda u, v: jnp.sum(jnp.square(jnp.einsum('bnc,bnd->bcd', u, v, precision=hp)),
                              axis=(1, 2))
  total = gram(a, a) - 2 * gram(a, b) + gram(b, b)
  return jnp.mean(jnp.maximum(total, 0.0)) / (n * n)


__all__ = ['onehot', 'softmax_cross_entropy', 'mixup_cutmix', 'kd_soft_loss',
           'hard_distillation_loss', 'accuracy', 'NORM_PIX_EPS', 'pixel_targets',
           'masked_patch_loss', 'attention_distill_loss', 'hidden_distill_loss', 'smooth_l1',
           'g2sd_loss', 'mse', 'relation_loss']
