"""The losses of masked-autoencoder pre-training and its distillations (pure jnp).

MAE: MSE between predicted and true pixels of the masked patches, the target being each patch
normalised by its own mean and variance (norm-pix). D-MAE: MSE between attention logits (and
optionally block outputs) of teacher and student through learnable maps. G2SD: smooth-L1
between decoder features. `repvit_jax.train.mae` combines them.
"""

from __future__ import annotations

from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from repvit_jax.models import mae as mae_lib

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
  x = nn.gelu(x @ mlp['fc1']['kernel'] + mlp['fc1']['bias'], approximate=False)
  x = x @ mlp['fc2']['kernel'] + mlp['fc2']['bias']
  t = teacher_features[:, 1:].astype(jnp.float32)
  t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True) + 1e-6)
  per_token = jnp.mean(smooth_l1(x - t, beta), axis=-1)
  return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)


__all__ = ['pixel_targets', 'masked_patch_loss', 'attention_distill_loss',
           'hidden_distill_loss', 'smooth_l1', 'g2sd_loss', 'NORM_PIX_EPS']
