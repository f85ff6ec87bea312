"""TDRL ViT-Tiny: the ImageNet fine-tuning recipe; `:demo` trains on the embedded digits.

    python train.py --config configs/tdrl_vit_tiny.py --workdir runs/tdrl_vit_tiny \
        --config.init_from=runs/mae_tdrl_vit_tiny          # fine-tune from MAE pre-training
    python train.py --config configs/tdrl_vit_tiny.py:demo --workdir runs/demo

TDRL options live in `config.model.tdrl` (e.g. `--config.model.tdrl.num_branches=3`). The
vanilla baseline with the same recipe is configs/vit_tiny.py.
"""

import ml_collections

from repvit_jax.train import recipes


def get_config(arg: str = ''):
  config = recipes.classification('tdrl_vit_tiny', arg)
  config.model.tdrl = ml_collections.ConfigDict(dict(
      layers=('qkv', 'proj', 'fc1', 'fc2'), num_branches=2, hidden_ratio=1.0,
      qkv_rectify='bn', rectify='scale', bn_momentum=0.9, train_path='collapsed'))
  return config
