"""PoolFormer-S12 with PoolFormer's ImageNet recipe; `:demo` trains a narrow one on digits.

    python train.py --config configs/poolformer_s12.py --workdir runs/poolformer_s12
    python train.py --config configs/poolformer_s12.py:demo --workdir runs/poolformer_demo

The demo model (common.METAFORMER_DEMO) is the feature teacher of the RIFormer module-imitation
demo (configs/riformer_s12.py:demo). Other sizes: `--config.model.name=poolformer_m36` (set
`--config.model.drop_path_rate` from DROP_PATH below).
"""

import ml_collections

from repvit_jax.configs import common

#: PoolFormer's stochastic depth per size (its training recipe); RIFormer uses the same.
DROP_PATH = {'s12': 0.1, 's24': 0.1, 's36': 0.2, 'm36': 0.3, 'm48': 0.4}


def imagenet(model_name: str = 'poolformer_s12'):
  """PoolFormer's ImageNet-1k recipe (RIFormer trains with it too).

  300 epochs, batch 1024, AdamW lr 1e-3 * batch / 1024, weight decay 0.05, 5 warm-up epochs,
  cosine to 1e-5, label smoothing 0.1, RandAugment m9 mstd0.5, mixup 0.8, cutmix 1.0,
  stochastic depth per size (DROP_PATH), random erasing 0.25.
  """
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(
      name=model_name, dtype='float32', drop_path_rate=DROP_PATH[model_name.split('_')[-1]]))
  config.data = common.data_config(
      name='imagenet2012', image_size=224, crop_scale=(0.08, 1.0), flip=True,
      randaugment=common.randaugment(num_layers=2, magnitude=9.0, magnitude_std=0.5),
      color_jitter=0.0, random_erasing=0.25, eval_crop_fraction=0.9)
  config.batch_size = 1024
  steps_per_epoch = common.imagenet_epochs(config, epochs=300, eval_every_epochs=10)
  config.optimizer = common.adamw(base_lr=1e-3 * 256 / 1024, min_lr=1e-5,
                                  warmup_steps=5 * steps_per_epoch, weight_decay=0.05)
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.8, cutmix_alpha=1.0)
  config.teacher = common.teacher(kind='soft', alpha=0.5)   # off unless model/init_from set
  return config


def demo(model_name: str = 'poolformer_s12'):
  """The narrow MetaFormer (common.METAFORMER_DEMO) on the embedded digits at 32x32."""
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(name=model_name, dtype='float32',
                                                drop_path_rate=0.0, **common.METAFORMER_DEMO))
  common.digits_demo(config, image_size=32, steps=600)
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
  config.teacher = common.teacher(kind='soft', alpha=0.5)
  return config


def fashion(model_name: str = 'poolformer_s12'):
  """A narrow MetaFormer with S12's depths (common.METAFORMER_FASHION) on Fashion-MNIST at
  28x28 (7x7 tokens after the stem), the recipe of configs/vit_tiny.py:fashion: 16 epochs of
  batch 32, validation split held out (the eval split; 'test' only for reporting)."""
  return common.fashion_classification(dict(name=model_name, dtype='float32',
                                            drop_path_rate=0.0, **common.METAFORMER_FASHION))


def get_config(arg: str = ''):
  variant = common.parse_arg(arg, '', 'demo', 'fashion')
  return {'demo': demo, 'fashion': fashion}.get(variant, imagenet)()
