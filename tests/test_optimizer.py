"""Tests for repvit_jax.train.optimizer: schedule, decay mask, layer decay, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from repvit_jax.configs import common
from repvit_jax.train import optimizer as opt_lib


def _cfg(**overrides):
  cfg = common.adamw(base_lr=4e-3, min_lr=1e-6, warmup_steps=0, weight_decay=0.05)
  cfg.lr = 1e-3
  cfg.update(overrides)
  return cfg


def test_the_config_builder_has_every_field_the_optimizer_reads():
  cfg = common.adamw(base_lr=4e-3, min_lr=1e-6, warmup_steps=0, weight_decay=0.05)
  for key in ("lr", "base_lr", "min_lr", "warmup_steps", "b1", "b2", "eps", "weight_decay",
              "layer_decay", "grad_clip"):
    assert key in cfg
  assert cfg.lr is None and cfg.layer_decay is None and cfg.grad_clip is None
  cfg.layer_decay = 0.85  # typed placeholder accepts a float override
  assert cfg.layer_decay == 0.85
  assert (cfg.b1, cfg.b2, cfg.eps) == (0.9, 0.999, 1e-8)


def test_the_recipe_lr_follows_the_batch_size():
  """base_lr is per 256 images (MAE's --blr); an explicit lr wins; the rule is logged."""
  from conftest import load_config  # pylint: disable=import-outside-toplevel
  recipe = load_config("tdrl_vit_tiny.py").optimizer        # base_lr 1e-3 at batch 1024
  assert recipe.lr is None and recipe.base_lr == 1e-3
  cfg, how = opt_lib.with_peak_lr(recipe, 1024)
  assert cfg.lr == pytest.approx(4e-3) and how == "lr 0.004 = base_lr 0.001 x batch 1024 / 256"
  assert opt_lib.with_peak_lr(recipe, 256)[0].lr == pytest.approx(1e-3)
  assert recipe.lr is None                                    # the config is not changed
  recipe.lr = 5e-4
  assert opt_lib.with_peak_lr(recipe, 1024) == (recipe, "lr 0.0005 (config.optimizer.lr)")
  recipe.lr = recipe.base_lr = None
  with pytest.raises(ValueError, match="set --config.optimizer.base_lr"):
    opt_lib.with_peak_lr(recipe, 1024)
  # The demos keep their lr at their batch: 1e-3 at 64 (digits), 2e-3 at 2048 (LeViT).
  assert opt_lib.with_peak_lr(load_config("vit_tiny.py:demo").optimizer, 64)[0].lr == 1e-3
  assert opt_lib.with_peak_lr(load_config("levit_128s.py").optimizer, 2048)[0].lr == 2e-3


def test_schedule_values():
  sched = opt_lib.make_schedule(_cfg(lr=1.0, min_lr=0.1, warmup_steps=10), total_steps=110)
  np.testing.assert_allclose(sched(0), 0.0, atol=1e-7)
  np.testing.assert_allclose(sched(5), 0.5, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 1.0, rtol=1e-6)  # end of warm-up: peak
  np.testing.assert_allclose(sched(60), 0.1 + 0.45, rtol=1e-6)  # half-way down the cosine
  np.testing.assert_allclose(sched(110), 0.1, rtol=1e-6)  # end: min_lr
  np.testing.assert_allclose(sched(500), 0.1, rtol=1e-6)  # and stays there
  np.testing.assert_allclose(jax.jit(sched)(jnp.int32(10)), 1.0, rtol=1e-6)


def test_schedule_without_warmup_starts_at_peak():
  sched = opt_lib.make_schedule(_cfg(lr=3e-3, min_lr=0.0, warmup_steps=0), total_steps=100)
  np.testing.assert_allclose(sched(0), 3e-3, rtol=1e-6)
  np.testing.assert_allclose(sched(100), 0.0, atol=1e-9)


def _toy_params():
  rng = np.random.RandomState(0)
  f = lambda *s: jnp.asarray(rng.randn(*s).astype(np.float32))
  return {
      "patch_embed": {"kernel": f(2, 2, 3, 4), "bias": f(4)},
      "cls_token": f(1, 1, 4),
      "pos_embed": f(1, 5, 4),
      "blocks_0": {"norm1": {"scale": f(4), "bias": f(4)},
                   "attn": {"qkv": {"kernel": f(4, 12), "bias": f(12)}},
                   "token_mixer": {"kernel": f(4, 4)}},
      "head": {"kernel": f(4, 3), "bias": f(3)},
  }


def test_decay_mask():
  mask = opt_lib.decay_mask(_toy_params())
  assert mask == {
      "patch_embed": {"kernel": True, "bias": False},
      "cls_token": False,
      "pos_embed": False,
      "blocks_0": {"norm1": {"scale": False, "bias": False},
                   "attn": {"qkv": {"kernel": True, "bias": False}},
                   # `token_mixer` holds ordinary kernels: decayed.
                   "token_mixer": {"kernel": True}},
      "head": {"kernel": True, "bias": False},
  }


def test_single_adamw_update_matches_hand_computation():
  params = _toy_params()
  lr, wd, eps = 0.1, 0.5, 1e-8
  tx, sched = opt_lib.make_optimizer(
      _cfg(lr=lr, min_lr=0.0, warmup_steps=0, weight_decay=wd, eps=eps), params, 100)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3) * jnp.sign(p), params)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  mask = opt_lib.decay_mask(params)
  # First Adam step: bias-corrected m = g and v = g^2, so the direction is g / (|g| + eps).
  def expected(p, g, m):
    p, g = np.asarray(p), np.asarray(g)
    return -float(sched(0)) * (g / (np.abs(g) + eps) + (wd * p if m else 0.0))
  jax.tree.map(lambda u, p, g, m: np.testing.assert_allclose(u, expected(p, g, m),
                                                             rtol=1e-5, atol=1e-7),
               updates, params, grads, mask)
  # Sanity on the two cases: a kernel moved by the decay term, a bias not.
  k = np.asarray(params["head"]["kernel"])
  np.testing.assert_allclose(updates["head"]["kernel"],
                             -lr * (0.3 * np.sign(k) / (0.3 + eps) + wd * k), rtol=1e-5)
  np.testing.assert_allclose(updates["head"]["bias"],
                             -lr * np.sign(np.asarray(params["head"]["bias"])), rtol=1e-5)


def _layered_params():
  z = lambda *s: jnp.ones(s, jnp.float32)
  return {
      "patch_embed": {"kernel": z(2, 2, 3, 4)},
      "cls_token": z(1, 1, 4),
      "pos_embed": z(1, 5, 4),
      "blocks_0": {"mlp": {"fc1": {"kernel": z(4, 8)}}},
      "blocks_1": {"mlp": {"fc1": {"kernel": z(4, 8)}}},
      "blocks_2": {"attn": {"qkv": {"kernel": z(4, 12), "bias": z(12)}}},
      "fc_norm": {"scale": z(4)},
      "head": {"kernel": z(4, 3)},
  }


def test_layer_ids_and_scales():
  params = _layered_params()
  assert opt_lib.num_blocks(params) == 3
  labels = opt_lib.param_labels(params)
  assert labels["patch_embed"]["kernel"] == "layer_0"
  assert labels["cls_token"] == "layer_0" and labels["pos_embed"] == "layer_0"
  assert labels["blocks_0"]["mlp"]["fc1"]["kernel"] == "layer_1"
  assert labels["blocks_2"]["attn"]["qkv"]["bias"] == "layer_3"
  assert labels["head"]["kernel"] == "layer_4" and labels["fc_norm"]["scale"] == "layer_4"
  d, num_layers = 0.5, 3
  scales = opt_lib.layer_decay_scales(params, d)
  assert scales["patch_embed"]["kernel"] == d ** (num_layers + 1)
  assert scales["cls_token"] == d ** 4 and scales["pos_embed"] == d ** 4
  for i in range(3):
    block = scales[f"blocks_{i}"]
    leaf = jax.tree.leaves(block)[0]
    assert leaf == d ** (num_layers + 1 - (i + 1))
  assert scales["head"]["kernel"] == 1.0 and scales["fc_norm"]["scale"] == 1.0


def test_layer_decay_scales_the_update():
  params = _layered_params()
  lr, d = 0.01, 0.5
  tx, _ = opt_lib.make_optimizer(
      _cfg(lr=lr, warmup_steps=0, weight_decay=0.0, layer_decay=d), params, 10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  expected_scale = opt_lib.layer_decay_scales(params, d)
  # Without weight decay the first Adam step is -lr * g / (|g| + eps) = -lr per element.
  jax.tree.map(lambda u, s: np.testing.assert_allclose(u, -lr * s, rtol=1e-5),
               updates, expected_scale)
  np.testing.assert_allclose(updates["blocks_0"]["mlp"]["fc1"]["kernel"], -lr * 0.125,
                             rtol=1e-5)


def test_layer_decay_needs_blocks():
  with pytest.raises(ValueError, match="blocks_"):
    opt_lib.make_optimizer(_cfg(layer_decay=0.8), {"head": {"kernel": jnp.ones((2, 2))}}, 10)


def test_grad_clipping_bounds_the_gradient_seen_by_adam():
  params = {"w": {"kernel": jnp.ones((3, 4))}, "b": {"bias": jnp.zeros(4)}}
  b1, clip = 0.9, 1.0
  tx, _ = opt_lib.make_optimizer(_cfg(lr=0.1, warmup_steps=0, b1=b1, grad_clip=clip),
                                 params, 10)
  big = {"w": {"kernel": jnp.full((3, 4), 10.0)}, "b": {"bias": jnp.full((4,), -10.0)}}
  norm = float(optax.tree.norm(big))
  _, state = tx.update(big, tx.init(params), params)
  mu = optax.tree_utils.tree_get(state, "mu")
  # The first moment is (1 - b1) * g with g rescaled to global norm `clip`.
  np.testing.assert_allclose(float(optax.tree.norm(mu)), (1 - b1) * clip, rtol=1e-5)
  np.testing.assert_allclose(mu["w"]["kernel"], (1 - b1) * 10.0 * clip / norm, rtol=1e-5)
  # A gradient already inside the ball is untouched.
  small = jax.tree.map(lambda g: g / (2 * norm), big)
  _, state = tx.update(small, tx.init(params), params)
  mu = optax.tree_utils.tree_get(state, "mu")
  np.testing.assert_allclose(mu["b"]["bias"], (1 - b1) * small["b"]["bias"], rtol=1e-5)


def test_grad_clip_with_large_eps_bounds_update_norm():
  # With eps >> |g| Adam is ~ SGD with lr / eps, so the update norm follows the
  # clipped gradient norm: lr * clip / eps.
  params = {"w": {"kernel": jnp.ones((8, 8))}}
  lr, eps, clip = 1.0, 1e6, 2.0
  tx, _ = opt_lib.make_optimizer(
      _cfg(lr=lr, warmup_steps=0, eps=eps, weight_decay=0.0, grad_clip=clip), params, 10)
  grads = {"w": {"kernel": jnp.full((8, 8), 1e3)}}  # global norm 8e3
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(float(optax.tree.norm(updates)), lr * clip / eps, rtol=1e-3)
