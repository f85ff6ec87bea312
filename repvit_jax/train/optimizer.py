"""AdamW with warm-up + cosine schedule, a no-decay mask and layer-wise lr decay.

The optimizer is `clip -> adamw(schedule, mask) -> layer scale`:

* the learning rate rises linearly from 0 to `lr` over `warmup_steps`, then follows a
  half cosine down to `min_lr` at `total_steps` (and stays there); recipes give `base_lr`,
  the lr per 256 images, and `lr = base_lr * batch_size / 256` follows the batch size
  (MAE's `--blr`; `with_peak_lr`), unless `lr` itself is set;
* weight decay is decoupled (AdamW) and skipped for biases, every parameter with
  ndim <= 1 (norm scales/offsets, BN), and position embeddings / tokens;
* with `layer_decay` set, each update is multiplied by `layer_decay ** (L + 1 - id)`
  (BEiT / MAE fine-tuning), which is the same as scaling that group's learning rate,
  weight-decay term included, as PyTorch per-group lrs do.

Parameter trees are nested dicts as flax produces them; paths are joined with '/',
e.g. `blocks_3/attn/qkv/kernel`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from repvit_jax.utils.treepath import key_names

PyTree = Any

_BLOCK_RE = re.compile(r"^blocks_(\d+)$")
# Path components (substrings) that are never weight-decayed: position embeddings and
# LeViT-style learned attention biases (timm excludes those too).
_NO_DECAY_SUBSTRINGS = ("pos_embed", "attention_bias", "relative_position_bias")


REFERENCE_BATCH = 256


def with_peak_lr(cfg, batch_size: int) -> tuple[ml_collections.ConfigDict, str]:
  """(a copy of `cfg` with `lr` set, how it was set: a line for the log).

  `lr` when the config sets it (explicit wins, as MAE's `--lr` over `--blr`); otherwise
  `base_lr * batch_size / 256`, so that a recipe's lr follows an overridden batch size.
  `batch_size` is the batch of one update (all micro-batches of gradient accumulation).

  Raises:
    ValueError: neither is set, or one is not positive.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  lr, base_lr = cfg.lr, cfg.base_lr
  if lr is not None:
    how = f'lr {float(lr):g} (config.optimizer.lr)'
  elif base_lr is not None:
    lr = float(base_lr) * batch_size / REFERENCE_BATCH
    how = (f'lr {lr:g} = base_lr {float(base_lr):g} x batch {batch_size} / '
           f'{REFERENCE_BATCH}')
  else:
    raise ValueError('the optimizer config sets neither lr nor base_lr: set '
                     '--config.optimizer.base_lr (lr per 256 images)')
  if not float(lr) > 0:
    raise ValueError(f'the learning rate must be positive, got {how}')
  cfg.lr = float(lr)
  return cfg, how


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `cfg.lr`, then cosine to `cfg.min_lr` at `total_steps`.

  Args:
    cfg: `lr`, `min_lr`, `warmup_steps` (repvit_jax.configs.common.adamw).
    total_steps: number of optimizer steps in the run.

  Returns:
    step (int or scalar array) -> learning rate (float32 scalar); jit-able.
  """
  peak = float(cfg.lr)
  floor = float(cfg.min_lr or 0.0)
  warmup = int(cfg.warmup_steps or 0)
  total = int(total_steps)
  if warmup < 0 or total <= 0:
    raise ValueError(f"need warmup_steps >= 0 and total_steps > 0, got {warmup}, {total}")
  decay_len = max(total - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup, 1)
    progress = jnp.clip((step - warmup) / decay_len, 0.0, 1.0)
    cosine = floor + 0.5 * (peak - floor) * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def _is_token(name: str) -> bool:
  # cls_token, mask_token, dist_token, reg_tokens -- but not `token_mixer`, which
  # holds ordinary conv/linear kernels in MetaFormer-style models.
  return name.endswith("token") or name.endswith("tokens")


def _is_embedding(names: tuple[str, ...]) -> bool:
  return any(n == "patch_embed" or "pos_embed" in n or _is_token(n) for n in names)


def _ndim(p) -> int:
  return len(p.shape) if hasattr(p, "shape") else int(np.ndim(p))


def decay_mask(params: PyTree) -> PyTree:
  """Tree of bools: True where weight decay applies (kernels / embeddings matrices).

  False for biases, every leaf with ndim <= 1, tokens (a path component ending in
  `token`/`tokens`: cls/mask/dist/register tokens), and anything under a component
  containing `pos_embed`, `attention_bias` or `relative_position_bias`.
  """

  def leaf(path, p):
    names = key_names(path)
    if names and names[-1] == "bias":
      return False
    if _ndim(p) <= 1:
      return False
    if any(_is_token(n) or any(s in n for s in _NO_DECAY_SUBSTRINGS) for n in names):
      return False
    return True

  return jax.tree_util.tree_map_with_path(leaf, params)


def _layer_id(names: tuple[str, ...], num_layers: int) -> int:
  for n in names:
    m = _BLOCK_RE.match(n)
    if m:
      return int(m.group(1)) + 1
  if _is_embedding(names):
    return 0
  return num_layers + 1


def num_blocks(params: PyTree) -> int:
  """Number of distinct `blocks_<i>` path components in the tree."""
  ids = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    for n in key_names(path):
      m = _BLOCK_RE.match(n)
      if m:
        ids.add(int(m.group(1)))
  return len(ids)


def param_labels(params: PyTree) -> PyTree:
  """Tree of strings `layer_<id>` (BEiT layer ids) matching `params`.

  Embeddings (`patch_embed`, `cls_token`, `pos_embed`, `mask_token`) are layer 0,
  `blocks_<i>/...` is layer i + 1, everything else (norm, fc_norm, head) L + 1.
  """
  num_layers = num_blocks(params)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: f"layer_{_layer_id(key_names(path), num_layers)}", params)


def layer_decay_scales(params: PyTree, layer_decay: float) -> PyTree:
  """Tree of python floats `layer_decay ** (L + 1 - layer_id)` matching `params`."""
  num_layers = num_blocks(params)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: float(layer_decay) ** (
          num_layers + 1 - _layer_id(key_names(path), num_layers)), params)


class ScaleByTreeState(NamedTuple):
  """Stateless."""


def scale_by_tree(scales_fn: Callable[[PyTree], PyTree]) -> optax.GradientTransformation:
  """Multiplies each update by a constant per-leaf scale, `scales_fn(updates)`.

  The scales are computed from the tree's paths at trace time, so they become
  constants in the compiled step and the optimizer state stays empty.
  """

  def init_fn(params):
    del params
    return ScaleByTreeState()

  def update_fn(updates, state, params=None):
    del params
    scales = scales_fn(updates)
    updates = jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(cfg, params: PyTree, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with schedule, no-decay mask, optional clipping and layer-wise lr decay.

  Args:
    cfg: ConfigDict with `lr, min_lr, warmup_steps, b1, b2, eps, weight_decay,
      layer_decay (None or float in (0, 1]), grad_clip (None or float)`;
      built by `repvit_jax.configs.common.adamw`.
    params: the parameter tree (arrays or `jax.ShapeDtypeStruct`s); only its paths
      and ranks are read, to check the config against it.
    total_steps: number of optimizer steps in the run (for the schedule).

  Returns:
    (optimizer, schedule); `schedule(step)` is the peak-group learning rate, i.e.
    what layer L + 1 (the head) sees.
  """
  schedule = make_schedule(cfg, total_steps)
  parts = []
  grad_clip = cfg.grad_clip
  if grad_clip is not None:
    if grad_clip <= 0:
      raise ValueError(f"grad_clip must be None or > 0, got {grad_clip}")
    parts.append(optax.clip_by_global_norm(float(grad_clip)))
  parts.append(optax.adamw(
      learning_rate=schedule,
      b1=float(cfg.b1),
      b2=float(cfg.b2),
      eps=float(cfg.eps),
      weight_decay=float(cfg.weight_decay),
      mask=decay_mask,
  ))
  layer_decay = cfg.layer_decay
  if layer_decay is not None:
    if not 0.0 < layer_decay <= 1.0:
      raise ValueError(f"layer_decay must be None or in (0, 1], got {layer_decay}")
    if num_blocks(params) == 0:
      raise ValueError(
          "layer_decay is set but the parameter tree has no `blocks_<i>` subtrees; "
          "unset optimizer.layer_decay for this model")
    if layer_decay < 1.0:
      parts.append(scale_by_tree(lambda tree: layer_decay_scales(tree, layer_decay)))
  return optax.chain(*parts), schedule
