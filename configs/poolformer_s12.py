"""PoolFormer-S12 with PoolFormer's ImageNet recipe; `:demo` trains a narrow one on digits.

    python train.py --config configs/poolformer_s12.py --workdir runs/poolformer_s12
    python train.py --config configs/poolformer_s12.py:demo --workdir runs/poolformer_demo

The demo model (recipes.METAFORMER_DEMO) is the feature teacher of the RIFormer module-imitation
demo (configs/riformer_s12.py:demo). Other sizes: `--config.model.name=poolformer_m36` (set
`--config.model.drop_path_rate` from recipes.METAFORMER_DROP_PATH).
"""

from repvit_jax.train import recipes


def get_config(arg: str = ''):
  variant = (arg or '').strip()
  config = recipes.base('poolformer_s12')
  if variant == 'demo':
    return recipes.metaformer_demo(config)
  if variant:
    raise ValueError(f'unknown config variant {variant!r}; known: "" (ImageNet), "demo"')
  return recipes.metaformer_imagenet(config)
