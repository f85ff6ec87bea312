"""Vanilla ViT-Tiny baseline with exactly the recipe of configs/tdrl_vit_tiny.py.

    python train.py --config configs/vit_tiny.py[:demo] --workdir runs/vit_tiny
"""

from repvit_jax.train import recipes


def get_config(arg: str = ''):
  return recipes.classification('vit_tiny', arg)
