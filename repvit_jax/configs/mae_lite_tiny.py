"""MAE-Lite pre-training of ViT-Tiny (12 heads; decoder 96 wide, 1 block), optionally D-MAE.

    python train.py --config configs/mae_lite_tiny.py --workdir runs/mae_lite_tiny
    python train.py --config configs/mae_lite_tiny.py:dmae --workdir runs/dmae_lite_tiny \
        --config.teacher.init_from=runs/mae_vit_base          # D-MAE-Lite, MAE-Base teacher

On the embedded digits, in minutes on a CPU:

    python train.py --config configs/mae_lite_tiny.py:demo --workdir runs/mae_demo
    # D-MAE: first a teacher (a wider MAE), then the student distilled from it
    python train.py --config configs/mae_lite_tiny.py:teacher_demo --workdir runs/mae_teacher
    python train.py --config configs/mae_lite_tiny.py:dmae_demo --workdir runs/dmae_demo \
        --config.teacher.init_from=runs/mae_teacher
    # fine-tune the pre-trained encoder (same architecture as the demo encoder)
    python train.py --config configs/vit_tiny.py:demo --workdir runs/mae_demo_ft \
        --config.init_from=runs/mae_demo --config.model.patch_size=4 \
        --config.model.num_heads=6 --config.total_steps=300

Distillation options: `teacher.kind` ('attention': D-MAE pre-softmax attention logits at
`teacher.pairs` (student layer, teacher layer), 1-based; 'g2sd': the teacher's decoder features
at `teacher.decoder_layer`), `teacher.alpha`, `teacher.hidden_alpha` (block outputs through a
bias-free adapter; 0 = off). Decoder size: `--config.model.decoder_width=128
--config.model.decoder_depth=4 --config.model.decoder_num_heads=4` (G2SD's).
"""

import ml_collections

from repvit_jax.configs import common

# The digits demo (32x32 images, 4x4 patches: 64 tokens, 16 of them visible at mask 0.75).
DEMO_MODEL = dict(patch_size=4, width=96, depth=6, num_heads=6, decoder_width=64,
                  decoder_depth=1, decoder_num_heads=4)
DEMO_TEACHER = dict(patch_size=4, width=128, depth=6, num_heads=8, decoder_width=64,
                    decoder_depth=1, decoder_num_heads=4)
# Fashion-MNIST (28x28 images, 4x4 patches: 49 tokens, 12 of them visible at mask 0.75): the
# encoder of configs/vit_tiny.py:fashion, so that its fine-tuning starts from this one.
FASHION_MODEL = dict(patch_size=4, width=64, depth=6, num_heads=2, decoder_width=64,
                     decoder_depth=2, decoder_num_heads=2)
# The D-MAE teacher on Fashion-MNIST: the same depth and patches, twice as wide.
FASHION_TEACHER = dict(patch_size=4, width=128, depth=6, num_heads=4, decoder_width=64,
                       decoder_depth=2, decoder_num_heads=2)


def mae_config(model: dict, teacher_model=None) -> ml_collections.ConfigDict:
  """The MAE task: norm-pix loss at mask ratio 0.75, 8 reconstructions drawn per evaluation,
  and a D-MAE attention-distillation teacher (off unless teacher.model/init_from are set)."""
  config = common.run_config('mae')
  config.model = ml_collections.ConfigDict(dict(dtype='float32', mask_ratio=0.75, **model))
  config.norm_pix_loss = True
  config.teacher = common.mae_teacher(model=teacher_model)
  config.init_skip = r'^distill/'        # an MAE tree without distillation maps initialises
  config.reconstructions = 8
  return config


def imagenet(model_name: str, teacher_model=None):
  """MAE-Lite (Wang et al., ICML 2023): 400 epochs, batch 4096, lr 1.5e-4 * 4096 / 256, AdamW (0.9,
  0.95), wd 0.05, 40 warm-up epochs then cosine to 0; random-resized crop (0.08, 1), flip."""
  config = mae_config(dict(name=model_name), teacher_model)
  config.data = common.data_config(name='imagenet2012', image_size=224, crop_scale=(0.08, 1.0),
                                   flip=True, randaugment=None, color_jitter=0.0)
  config.batch_size = 4096
  config.eval_batch_size = 1024
  steps_per_epoch = common.imagenet_epochs(config, epochs=400, eval_every_epochs=20)
  config.optimizer = common.adamw(base_lr=1.5e-4, min_lr=0.0,
                                  warmup_steps=40 * steps_per_epoch, weight_decay=0.05,
                                  b1=0.9, b2=0.95)
  return config


def demo(model_name: str, variant: str):
  """A few minutes on 2 CPU cores: digits at 32x32, 4x4 patches, a narrow MAE.

  Departures from MAE-Lite, for a short run on tiny images: a larger learning rate than
  1.5e-4 * batch / 256, crops of at least 40% of the image and no flips (digits are not
  symmetric, and the fixed evaluation images are whole digits).
  """
  if variant == 'teacher_demo':          # a wider vanilla MAE, the teacher of dmae_demo
    config = mae_config(dict(name='mae_vit_base', **DEMO_TEACHER))
  else:
    config = mae_config(dict(name=model_name, **DEMO_MODEL))
  common.digits_demo(config, image_size=32, steps=600)
  config.data.crop_scale = (0.4, 1.0)
  config.eval_batch_size = 120
  config.optimizer = common.adamw(base_lr=2e-3 * 256 / 64, min_lr=1e-5, warmup_steps=60,
                                  weight_decay=0.05, b1=0.9, b2=0.95, grad_clip=1.0)
  config.log_every = 10
  config.eval_every = 300
  config.checkpoint_every = 300
  if variant == 'dmae_demo':
    config.teacher.model = 'mae_vit_base'
    config.teacher.overrides = ml_collections.ConfigDict(dict(DEMO_TEACHER))
    config.teacher.pairs = ((DEMO_MODEL['depth'], DEMO_TEACHER['depth']),)
  return config


def fashion(model_name: str, variant: str = 'fashion'):
  """MAE pre-training on Fashion-MNIST's train images (labels unused), the validation split
  held out as in the classification recipe; fine-tune with configs/vit_tiny.py:fashion
  `--config.init_from=<this workdir>`. 'teacher_fashion': the wider vanilla MAE that teaches
  'dmae_fashion' (the same student, distilled from it: `--config.teacher.init_from`).

  Departures from MAE-Lite, for 28x28 images: a short schedule of 10 epochs (set by the
  compute budget, not tuned), crops of at least half the image, a larger learning rate for the
  narrow model and short schedule (base 8e-3 rather than 2e-3, chosen on the validation split:
  benchmarks/README.md), gradient clipping.
  """
  if variant == 'teacher_fashion':
    config = mae_config(dict(name='mae_vit_base', **FASHION_TEACHER))
  else:
    config = mae_config(dict(name=model_name, **FASHION_MODEL))
  config.data = common.fashion_data(crop_scale=(0.5, 1.0), random_erasing=0.0)
  config.batch_size = 64
  config.eval_batch_size = 500
  steps_per_epoch = common.fashion_steps_per_epoch(config.batch_size)
  config.total_steps = 10 * steps_per_epoch
  config.optimizer = common.adamw(base_lr=2e-3 * 256 / 64, min_lr=1e-5,
                                  warmup_steps=steps_per_epoch, weight_decay=0.05, b1=0.9,
                                  b2=0.95, grad_clip=1.0)
  config.log_every = 200
  config.eval_every = 5 * steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  if variant == 'dmae_fashion':
    config.teacher.model = 'mae_vit_base'
    config.teacher.overrides = ml_collections.ConfigDict(dict(FASHION_TEACHER))
    config.teacher.pairs = ((FASHION_MODEL['depth'], FASHION_TEACHER['depth']),)
  return config


def get_config(arg: str = '', model_name: str = 'mae_vit_tiny'):
  """Variants: '' MAE-Lite on ImageNet-1k; 'dmae' D-MAE-Lite on ImageNet-1k (MAE-Base teacher,
  `--config.teacher.init_from` required); 'demo' on the embedded digits; 'teacher_demo' a wider
  vanilla MAE on digits to serve as the demo teacher; 'dmae_demo' = 'demo' + that teacher
  (`--config.teacher.init_from=<teacher_demo workdir>`); 'fashion', 'teacher_fashion' and
  'dmae_fashion' the same three on Fashion-MNIST."""
  variant = common.parse_arg(arg, '', 'dmae', 'demo', 'teacher_demo', 'dmae_demo', 'fashion',
                             'teacher_fashion', 'dmae_fashion')
  if variant.endswith('fashion'):
    return fashion(model_name, variant)
  if variant in ('', 'dmae'):
    return imagenet(model_name, 'mae_vit_base' if variant == 'dmae' else None)
  return demo(model_name, variant)
