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

import ml_collections

from repvit_jax.configs import common


def imagenet():
  """MobileViT's recipe: 300 epochs, batch 1024 at 256x256 (multi-scale 160..320), AdamW
  weight decay 0.01, lr warm-up over 3k steps to 2e-3 then cosine to 2e-4, label smoothing
  0.1, basic augmentation (random-resized crop, flip), no mixup, dropout 0.1."""
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(name='mobilevit_xs', dtype='float32',
                                                drop_rate=0.1))
  config.data = common.data_config(
      name='imagenet2012', image_size=256,
      multiscale=((160, 160), (192, 192), (256, 256), (288, 288), (320, 320)),
      crop_scale=(0.08, 1.0), flip=True, randaugment=None, color_jitter=0.0,
      random_erasing=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
      eval_crop_fraction=256 / 288)
  config.batch_size = 1024
  common.imagenet_epochs(config, epochs=300, eval_every_epochs=10)
  config.optimizer = common.adamw(base_lr=2e-3 * 256 / 1024, min_lr=2e-4, warmup_steps=3000,
                                  weight_decay=0.01)
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
  config.teacher = common.teacher(kind='soft', alpha=0.5)   # off unless model/init_from set
  return config


def demo():
  """Digits at 32x32 (multi-scale 24..40), pixels in [0, 1] as the reference; a narrower
  MobileViT (same blocks, fewer and thinner layers) keeps it to minutes."""
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(
      name='mobilevit_xs', dtype='float32', channels=(16, 24, 32, 48, 64),
      transformer_dims=(32, 48, 64), transformer_depths=(1, 1, 1), expansion=2.0,
      final_features=128))
  common.digits_demo(config, image_size=32, steps=600)
  config.data.mean = (0.0, 0.0, 0.0)
  config.data.std = (1.0, 1.0, 1.0)
  config.data.multiscale = ((24, 24), (32, 32), (40, 40))
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
  config.teacher = common.teacher(kind='soft', alpha=0.5)
  return config


def get_config(arg: str = ''):
  variant = common.parse_arg(arg, '', 'demo')
  return demo() if variant == 'demo' else imagenet()
