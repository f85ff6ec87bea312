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

from repvit_jax.train import recipes


def imagenet(config):
  """LeViT's recipe: 1000 epochs, batch 2048, AdamW lr 5e-4 * batch / 512, weight decay 0.025,
  5 warm-up epochs, cosine to 1e-5, label smoothing 0.1, RandAugment m9 mstd0.5, mixup 0.8,
  cutmix 1.0, random erasing 0.25, repeated augmentation x3, hard distillation from a teacher
  (RegNetY-16GF in the paper)."""
  config.data.image_size = 224
  config.data.eval_crop_fraction = 0.9
  config.data.random_erasing = 0.25
  config.data.repeated_augmentation = 3
  recipes.imagenet_schedule(config, epochs=1000, batch_size=2048, lr=5e-4 * 2048 / 512,
                            min_lr=1e-5, warmup_epochs=5, weight_decay=0.025)
  config.label_smoothing = 0.1
  config.mixup.mixup_alpha = 0.8
  config.mixup.cutmix_alpha = 1.0
  return config


def get_config(arg: str = ''):
  variant = (arg or '').strip()
  config = recipes.base('levit_128s')
  config.teacher.kind = 'hard'
  config.teacher.alpha = 0.5
  if variant in ('demo', 'distill_demo'):
    # 64x64 digits: a 4x4 token grid, then 2x2 and 1x1 after the shrinking attentions.
    config = recipes.digits_data(config, image_size=64)
    if variant == 'distill_demo':
      config.teacher.model = 'poolformer_s12'
      config.teacher.overrides = {k: v for k, v in recipes.METAFORMER_DEMO.items()
                                  if k != 'drop_path_rate'}
      config.teacher.init_from = 'runs/poolformer_demo'
    return config
  if variant:
    raise ValueError(f'unknown config variant {variant!r}; known: "" (ImageNet), "demo", '
                     '"distill_demo"')
  return imagenet(config)
