"""TDRL ViT-Tiny: MAE-Lite's ImageNet fine-tuning recipe; `:demo` on the embedded digits,
`:fashion` on Fashion-MNIST, `:cifar10` the Colab TPU notebook's run.

    python train.py --config configs/tdrl_vit_tiny.py --workdir runs/tdrl_vit_tiny \
        --config.init_from=runs/mae_tdrl_vit_tiny --config.model.num_heads=12   # after MAE
    python train.py --config configs/tdrl_vit_tiny.py:demo --workdir runs/demo
    python train.py --config configs/tdrl_vit_tiny.py:fashion --workdir runs/fashion

TDRL options live in `config.model.tdrl` (e.g. `--config.model.tdrl.num_branches=3`). The
vanilla baseline with the same recipe is configs/vit_tiny.py.
"""

import ml_collections

from repvit_jax.configs import common


def tdrl():
  """TDRL on every linear of the blocks: two rep-branches as wide as the input, BatchNorm
  rectification of Q and K, 1/sqrt(branches) elsewhere; trained in the collapsed form."""
  return ml_collections.ConfigDict(dict(
      layers=('qkv', 'proj', 'fc1', 'fc2'), num_branches=2, hidden_ratio=1.0,
      qkv_rectify='bn', rectify='scale', bn_momentum=0.9, train_path='collapsed'))


def imagenet():
  """MAE-Lite's "improved" ViT-Tiny fine-tuning recipe on ImageNet-1k (Wang et al., ICML 2023).

  300 epochs, batch 1024, lr 1e-3 * 1024 / 256, layer decay 0.85, weight decay 0.05, 5 warm-up
  epochs, min lr 1e-6, RandAugment m10 mstd0.5, colour jitter 0.3, mixup 0.2, no cutmix, no
  label smoothing, no drop path, global average pooling + fc_norm head.
  """
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(
      name='tdrl_vit_tiny', dtype='float32', global_pool='avg', drop_path_rate=0.0,
      # DeiT-Tiny's 3 heads; MAE-Lite's pre-trained encoders have 12: fine-tune them with
      # --config.model.num_heads=12.
      num_heads=3, tdrl=tdrl()))
  config.data = common.data_config(
      name='imagenet2012', image_size=224, crop_scale=(0.08, 1.0), flip=True,
      randaugment=common.randaugment(num_layers=2, magnitude=10.0, magnitude_std=0.5),
      color_jitter=0.3, random_erasing=0.0, eval_crop_fraction=0.875)
  config.batch_size = 1024
  steps_per_epoch = common.imagenet_epochs(config, epochs=300, eval_every_epochs=10)
  config.optimizer = common.adamw(base_lr=1e-3, min_lr=1e-6,
                                  warmup_steps=5 * steps_per_epoch, weight_decay=0.05,
                                  b1=0.9, b2=0.999, layer_decay=0.85)
  config.label_smoothing = 0.0
  config.mixup = common.mixup(mixup_alpha=0.2, cutmix_alpha=0.0)
  config.teacher = common.teacher(kind='soft', alpha=0.5)   # off unless model/init_from set
  return config


def demo():
  """Minutes on 2 CPU cores, offline: the embedded digits at 32x32, a narrower ViT.

  The model keeps its family and TDRL structure but shrinks (patch 8 -> 16 tokens, width 96,
  depth 6, 3 heads).
  """
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(
      name='tdrl_vit_tiny', dtype='float32', patch_size=8, width=96, depth=6, num_heads=3,
      global_pool='avg', drop_path_rate=0.0, tdrl=tdrl()))
  common.digits_demo(config, image_size=32, steps=600)
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
  config.teacher = common.teacher(kind='soft', alpha=0.5)
  return config


def fashion():
  """Fashion-MNIST at 28x28 (Debian's dataset-fashion-mnist): a deploy ViT of 0.3M parameters.

  Patch 4 (49 tokens), width 64, depth 6, 2 heads; 16 epochs of batch 32. Chosen on 5,000
  validation images carved from train, the eval split of every run of this recipe (the
  choices and their figures: benchmarks/README.md); the test split is only for reporting:
  `repvit-evaluate WORKDIR --config.data.eval_split=test`.
  """
  return common.fashion_classification(dict(
      name='tdrl_vit_tiny', dtype='float32', patch_size=4, width=64, depth=6, num_heads=2,
      global_pool='avg', drop_path_rate=0.0, tdrl=tdrl()))


def cifar10():
  """CIFAR-10 from TFDS at 32x32, the Colab TPU notebook's run: ViT-Tiny (width 192, depth
  12, 3 heads) on 4x4 patches (64 tokens), 50 epochs of batch 512 in bfloat16, AdamW at lr
  2e-3 (base_lr 1e-3 per 256 images) with 500 warm-up steps, crops of 35-100% and flips.
  The data set must be prepared first (`tfds.builder('cifar10', data_dir=D)
  .download_and_prepare()`, then `--config.data.data_dir=D`).
  """
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(
      name='tdrl_vit_tiny', dtype='bfloat16', patch_size=4, width=192, depth=12, num_heads=3,
      mlp_ratio=4.0, global_pool='avg', drop_path_rate=0.1, tdrl=tdrl()))
  config.data = common.data_config(
      name='cifar10', image_size=32, crop_scale=(0.35, 1.0), flip=True, randaugment=None,
      color_jitter=0.0, eval_crop_fraction=1.0, mean=(0.4914, 0.4822, 0.4465),
      std=(0.2470, 0.2435, 0.2616))
  config.batch_size = 512
  config.eval_batch_size = 1000
  config.total_steps = common.steps_for(50, 50_000, config.batch_size)
  config.optimizer = common.adamw(base_lr=1e-3, min_lr=1e-5, warmup_steps=500,
                                  weight_decay=0.05, grad_clip=1.0)
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
  config.teacher = common.teacher(kind='soft', alpha=0.5)
  return config


def get_config(arg: str = ''):
  variant = common.parse_arg(arg, '', 'demo', 'fashion', 'cifar10')
  return {'demo': demo, 'fashion': fashion, 'cifar10': cifar10}.get(variant, imagenet)()
