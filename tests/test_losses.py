"""Tests for repvit_jax.train.losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repvit_jax.train import losses

# Compiled once per static configuration: eager beta sampling and cond are slow.
_mix = jax.jit(losses.mixup_cutmix,
               static_argnames=("mixup_alpha", "cutmix_alpha"))


def test_onehot_with_smoothing():
  t = losses.onehot(jnp.array([0, 2]), 4, smoothing=0.1)
  assert t.shape == (2, 4) and t.dtype == jnp.float32
  np.testing.assert_allclose(t.sum(-1), [1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(t[0], [0.925, 0.025, 0.025, 0.025], rtol=1e-6)
  np.testing.assert_allclose(t[1], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
  np.testing.assert_array_equal(losses.onehot(jnp.array([1]), 3), [[0.0, 1.0, 0.0]])


def test_softmax_cross_entropy_hand_value():
  logits = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
  targets = jnp.array([[0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
  ce = losses.softmax_cross_entropy(logits, targets)
  z0 = np.exp(1) + np.exp(2) + np.exp(3)
  want0 = -np.log(np.exp(3) / z0)
  logp1 = np.array([0.5, -1.0, 0.0]) - np.log(np.exp(0.5) + np.exp(-1.0) + np.exp(0.0))
  want1 = -(0.2 * logp1[0] + 0.3 * logp1[1] + 0.5 * logp1[2])
  np.testing.assert_allclose(ce, [want0, want1], rtol=1e-6)
  # bf16 logits are computed in float32.
  assert losses.softmax_cross_entropy(logits.astype(jnp.bfloat16), targets).dtype == jnp.float32


def _images(b=4, h=16, w=16, c=3, seed=0):
  return jnp.asarray(np.random.RandomState(seed).rand(b, h, w, c).astype(np.float32))


def test_mixup_equals_hand_mix():
  x = _images()
  t = losses.onehot(jnp.arange(4), 4)
  mixed, mt = _mix(jax.random.key(0), x, t, mixup_alpha=0.8, cutmix_alpha=0.0)
  lam = float(mt[0, 0])
  assert 0.0 < lam < 1.0
  np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
  # Example i is paired with B-1-i; targets mix the same way, rows still sum to 1.
  np.testing.assert_allclose(mt[0], [lam, 0, 0, 1 - lam], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(mt[1], [0, lam, 1 - lam, 0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(mt.sum(-1), np.ones(4), rtol=1e-6)
  # Same key, same result; another key, another lam.
  again = _mix(jax.random.key(0), x, t, mixup_alpha=0.8, cutmix_alpha=0.0)
  np.testing.assert_allclose(again[1], mt, rtol=1e-6)
  other = _mix(jax.random.key(1), x, t, mixup_alpha=0.8, cutmix_alpha=0.0)
  assert float(other[1][0, 0]) != pytest.approx(lam)


def _check_cutmix(mixed, mt, b, h, w):
  """Returns the box area after checking box shape and lam = 1 - area / (H*W)."""
  changed = np.asarray(mixed[0, :, :, 0]) != 0.0  # example 0 is all zeros, partner all b-1
  rows, cols = changed.any(1), changed.any(0)
  np.testing.assert_array_equal(changed, rows[:, None] & cols[None, :])  # a rectangle
  area = int(changed.sum())
  np.testing.assert_allclose(mt[0, 0], 1.0 - area / (h * w), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(mt[0, b - 1], area / (h * w), rtol=1e-6, atol=1e-7)
  # Every example gets the same box from its partner.
  np.testing.assert_array_equal(np.asarray(mixed[1, :, :, 0]) != 1.0, changed)
  return area


def test_cutmix_box_area_lambda():
  b, h, w = 4, 16, 12
  x = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, h, w, 3))
  t = losses.onehot(jnp.arange(b), b)
  areas = []
  for seed in range(6):
    mixed, mt = _mix(jax.random.key(seed), x, t, mixup_alpha=0.0, cutmix_alpha=1.0)
    # cutmix only copies pixels, never blends them
    assert set(np.unique(np.asarray(mixed))) <= set(range(b))
    areas.append(_check_cutmix(mixed, mt, b, h, w))
  assert any(0 < a < h * w for a in areas)


def test_switch_prob_selects_method():
  b, h, w = 4, 8, 8
  x = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, h, w, 1))
  t = losses.onehot(jnp.arange(b), b)
  key = jax.random.key(3)
  cut, ct = _mix(key, x, t, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
  _check_cutmix(cut, ct, b, h, w)
  mix, mt = _mix(key, x, t, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0)
  lam = float(mt[0, 0])
  np.testing.assert_allclose(mix, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)


def test_mixup_cutmix_disabled_is_identity():
  x = _images()
  t = losses.onehot(jnp.arange(4), 10, smoothing=0.1)
  out_x, out_t = losses.mixup_cutmix(jax.random.key(0), x, t, mixup_alpha=0.0, cutmix_alpha=0.0)
  assert out_x is x and out_t is t


def test_kd_soft_loss():
  s = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(losses.kd_soft_loss(s, s, 4.0), [0.0, 0.0], atol=1e-6)
  t = jnp.array([[0.0, 1.0, 3.0], [2.0, -1.0, 0.0]])
  got = losses.kd_soft_loss(s, t, 2.0)
  assert got.shape == (2,) and np.all(np.asarray(got) > 0)
  def log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  lp, lq = log_softmax(t / 2.0), log_softmax(s / 2.0)
  want = (np.exp(lp) * (lp - lq)).sum(-1) * 4.0
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_hard_distillation_is_ce_to_teacher_argmax():
  s = jnp.array([[1.0, 2.0, 0.5], [0.3, -0.2, 0.1]])
  t = jnp.array([[0.0, 1.0, 3.0], [5.0, -1.0, 0.0]])
  want = losses.softmax_cross_entropy(s, losses.onehot(jnp.array([2, 0]), 3))
  np.testing.assert_allclose(losses.hard_distillation_loss(s, t), want, rtol=1e-6)


def test_accuracy():
  logits = jnp.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0]])
  np.testing.assert_array_equal(losses.accuracy(logits, jnp.array([1, 1, 1])), [1.0, 0.0, 1.0])
  soft = losses.onehot(jnp.array([1, 0, 0]), 2, smoothing=0.1)
  np.testing.assert_array_equal(losses.accuracy(logits, soft), [1.0, 1.0, 0.0])
