"""LeViT-128S with LeViT's ImageNet recipe (DeiT-style hard distillation when a teacher is set).

    python train.py --config configs/levit_128s.py --workdir runs/levit_128s \
        --config.teacher.model=<teacher name> --config.teacher.init_from=<teacher workdir>

The class head learns from the labels and the distillation head from the teacher's argmax
(`teacher.kind='hard'`, `teacher.alpha=0.5`: loss = (CE(class head) + CE(distillation head,
teacher label)) / 2); `teacher.kind='soft'` uses KL at `teacher.temperature`. Without a
teacher both heads learn from the labels. Evaluation averages the two heads; the deploy model
(workdir/deploy) has no BatchNorm and one merged head.

On the embedded digits, in minutes on a CPU:

    python train.py --config configs/levit_128s.py:demo --workdir runs/levit_demo
    # with a teacher: train the PoolFormer demo first, then distil from it
    python train.py --config configs/poolformer_s12.py:demo --workdir runs/poolformer_demo
    python train.py --config configs/levit_128s.py:distill_demo --workdir runs/levit_distill \
        --config.teacher.init_from=runs/poolformer_demo

Other sizes: `--config.model.name=levit_256` (levit_128, levit_192, levit_256, levit_384).
"""

import ml_collections

from repvit_jax.configs import common
from repvit_jax.configs import vit_tiny


def imagenet():
  """LeViT's recipe: 1000 epochs, batch 2048, AdamW lr 5e-4 * batch / 512, weight decay 0.025,
  5 warm-up epochs, cosine to 1e-5, label smoothing 0.1, RandAugment m9 mstd0.5, mixup 0.8,
  cutmix 1.0, random erasing 0.25, repeated augmentation x3, hard distillation from a teacher
  (RegNetY-16GF in the paper)."""
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(name='levit_128s', dtype='float32'))
  config.data = common.data_config(
      name='imagenet2012', image_size=224, crop_scale=(0.08, 1.0), flip=True,
      randaugment=common.randaugment(num_layers=2, magnitude=9.0, magnitude_std=0.5),
      color_jitter=0.0, random_erasing=0.25, repeated_augmentation=3, eval_crop_fraction=0.9)
  config.batch_size = 2048
  steps_per_epoch = common.imagenet_epochs(config, epochs=1000, eval_every_epochs=10)
  config.optimizer = common.adamw(base_lr=5e-4 * 256 / 512, min_lr=1e-5,
                                  warmup_steps=5 * steps_per_epoch, weight_decay=0.025)
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.8, cutmix_alpha=1.0)
  # DeiT-style hard distillation; off unless teacher.model and teacher.init_from are set.
  config.teacher = common.teacher(kind='hard', alpha=0.5)
  return config


def demo(distill: bool):
  """64x64 digits (a 4x4 token grid, then 2x2 and 1x1 after the shrinking attentions); with
  `distill`, the narrow PoolFormer of configs/poolformer_s12.py:demo as hard teacher."""
  config = common.run_config('classification')
  config.model = ml_collections.ConfigDict(dict(name='levit_128s', dtype='float32'))
  common.digits_demo(config, image_size=64, steps=600)
  config.label_smoothing = 0.1
  config.mixup = common.mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
  config.teacher = common.teacher(kind='hard', alpha=0.5)
  if distill:
    config.teacher.model = 'poolformer_s12'
    config.teacher.overrides = dict(common.METAFORMER_DEMO)
    config.teacher.init_from = 'runs/poolformer_demo'
  return config


def fashion(teacher_kind=None, teacher='vit'):
  """Fashion-MNIST resized to 64x64 (LeViT's 16x stem: a 4x4 token grid), the schedule of
  configs/vit_tiny.py:fashion (16 epochs of batch 32, validation split held out).
  'hard_fashion' / 'soft_fashion' distil from that recipe's ViT (`--config.teacher.init_from`
  a trained configs/vit_tiny.py:fashion workdir; it sees each batch at its own 28x28): the
  teacher's argmax, or KL at temperature 1. 'hard_levit_fashion' takes the argmax of a LeViT-128S
  instead (a trained workdir of this recipe, e.g. trained longer: a teacher stronger than the
  student, where the ViT is not).
  """
  # LeViT's own weight decay (0.025); half the ViT's peak lr, which a 3-epoch probe on the
  # validation split kept over 2e-3 and 8e-3 (benchmarks/README.md).
  config = common.fashion_classification(
      dict(name='levit_128s', dtype='float32'), base_lr=4e-3, weight_decay=0.025,
      image_size=64, teacher_kind=teacher_kind or 'hard')
  if teacher_kind and teacher == 'levit':
    config.teacher.model = config.model.name
  elif teacher_kind:
    vit = vit_tiny.get_config('fashion').model.to_dict()
    config.teacher.model = vit.pop('name')
    config.teacher.overrides = {k: v for k, v in vit.items() if k != 'dtype'}
  return config


# Each Fashion-MNIST variant's (teacher kind, teacher model): no teacher, or distillation.
FASHION_TEACHERS = {'fashion': (None, 'vit'), 'hard_fashion': ('hard', 'vit'),
                    'soft_fashion': ('soft', 'vit'), 'hard_levit_fashion': ('hard', 'levit')}


def get_config(arg: str = ''):
  variant = common.parse_arg(arg, '', 'demo', 'distill_demo', 'fashion', 'hard_fashion',
                             'soft_fashion', 'hard_levit_fashion')
  if variant.endswith('fashion'):
    return fashion(*FASHION_TEACHERS[variant])
  if variant:
    return demo(distill=variant == 'distill_demo')
  return imagenet()
