"""Classification losses, label mixing (mixup / cutmix) and distillation losses.

Pure jnp functions, all jit-able with static shapes. Logits are (B, K); targets are
(B, K) probability rows; per-example losses are (B,) float32 (the caller averages).
Losses are computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
