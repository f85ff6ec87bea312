"""MobileViT-XS with MobileViT's ImageNet recipe and its multi-scale sampler.

    python train.py --config configs/mobilevit_xs.py --workdir runs/mobilevit_xs
    python train.py --config configs/mobilevit_xs.py:demo --workdir runs/mobilevit_demo

The multi-scale sampler (`data.multiscale`) trains each step at one of the listed
resolutions, with the batch scaled by image_size^2 / (h w) (rounded to a multiple of the
local device count): about as many pixels per step at every resolution. The trainer compiles
one step per resolution. `--config.data.multiscale=None` trains at image_size only.
Pixels are in [0, 1] (mean 0, std 1), as the reference. Other sizes:
`--config.model.name=mobilevit_s` (mobilevit_xxs, mobilevit_xs, mobilevit_s).
"""

from repvit_jax.train import recipes


def imagenet(config):
  """MobileViT's recipe: 300 epochs, batch 1024 at 256x256 (multi-scale 160..320), AdamW
  weight decay 0.01, lr warm-up over 3k steps to 2e-3 then cosine to 2e-4, label smoothing
  0.1, basic augmentation (random-resized crop, flip), no mixup."""
  config.data.image_size = 256
  config.data.multiscale = ((160, 160), (192, 192), (256, 256), (288, 288), (320, 320))
  config.data.randaugment = None
  config.data.mean = (0.0, 0.0, 0.0)
  config.data.std = (1.0, 1.0, 1.0)
  config.data.eval_crop_fraction = 256 / 288
  recipes.imagenet_schedule(config, epochs=300, batch_size=1024, lr=2e-3, min_lr=2e-4,
                            warmup_steps=3000, weight_decay=0.01)
  config.label_smoothing = 0.1
  config.model.drop_rate = 0.1
  return config


def get_config(arg: str = ''):
  variant = (arg or '').strip()
  config = recipes.base('mobilevit_xs')
  if variant == 'demo':
    config = recipes.digits_data(config, image_size=32)
    config.data.mean = (0.0, 0.0, 0.0)
    config.data.std = (1.0, 1.0, 1.0)
    config.data.multiscale = ((24, 24), (32, 32), (40, 40))
    # A narrower MobileViT (same blocks, fewer and thinner layers) keeps the demo in minutes.
    config.model.channels = (16, 24, 32, 48, 64)
    config.model.transformer_dims = (32, 48, 64)
    config.model.transformer_depths = (1, 1, 1)
    config.model.expansion = 2.0
    config.model.final_features = 128
    return config
  if variant:
    raise ValueError(f'unknown config variant {variant!r}; known: "" (ImageNet), "demo"')
  return imagenet(config)
