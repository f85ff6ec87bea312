"""Vanilla ViT-Tiny baseline with exactly the recipe of configs/tdrl_vit_tiny.py, without TDRL.

    python train.py --config configs/vit_tiny.py[:demo] --workdir runs/vit_tiny
"""

from repvit_jax.configs import tdrl_vit_tiny


def get_config(arg: str = ''):
  config = tdrl_vit_tiny.get_config(arg)
  config.model.name = 'vit_tiny'
  del config.model['tdrl']
  return config
