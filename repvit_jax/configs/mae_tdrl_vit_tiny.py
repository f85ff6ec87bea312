"""MAE-Lite pre-training of the TDRL ViT-Tiny encoder; the recipe of configs/mae_lite_tiny.py.

    python train.py --config configs/mae_tdrl_vit_tiny.py --workdir runs/mae_tdrl_vit_tiny
    python train.py --config configs/tdrl_vit_tiny.py --workdir runs/tdrl_vit_tiny_ft \
        --config.init_from=runs/mae_tdrl_vit_tiny --config.model.num_heads=12

On the embedded digits, in minutes on a CPU:

    python train.py --config configs/mae_tdrl_vit_tiny.py:demo --workdir runs/mae_tdrl_demo
    python train.py --config configs/tdrl_vit_tiny.py:demo --workdir runs/mae_tdrl_demo_ft \
        --config.init_from=runs/mae_tdrl_demo --config.model.patch_size=4 \
        --config.model.num_heads=6 --config.total_steps=300
    # D-MAE with a vanilla MAE teacher (train it with configs/mae_lite_tiny.py:teacher_demo)
    python train.py --config configs/mae_tdrl_vit_tiny.py:dmae_demo --workdir runs/dmae_tdrl \
        --config.teacher.init_from=runs/mae_teacher

The encoder's TDRL branches are trained during pre-training and carried into fine-tuning;
`reparameterize` folds them, so the deploy encoder is a vanilla ViT encoder (`mae_vit_tiny`).
TDRL options live in `config.model.tdrl` (e.g. `--config.model.tdrl.num_branches=3`).
"""

from repvit_jax.configs import mae_lite_tiny
from repvit_jax.configs import tdrl_vit_tiny


def get_config(arg: str = ''):
  config = mae_lite_tiny.get_config(arg, model_name='mae_tdrl_vit_tiny')
  if config.model.name == 'mae_tdrl_vit_tiny':   # ':teacher_demo' trains a vanilla teacher
    config.model.tdrl = tdrl_vit_tiny.tdrl()
  return config
