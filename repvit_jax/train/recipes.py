"""Training recipes shared by the config files (configs/*.py), as ml_collections configs.

A config file picks a model and a recipe; everything stays overridable from the command line.
"""

from __future__ import annotations

import ml_collections

from repvit_jax import data
from repvit_jax.train import optimizer

IMAGENET_TRAIN_EXAMPLES = 1_281_167
DIGITS_TRAIN_EXAMPLES = 1_437


def steps_for(epochs: float, examples: int, batch_size: int) -> int:
  return max(1, int(round(epochs * examples / batch_size)))


def base(model_name: str) -> ml_collections.ConfigDict:
  """Fields every classification config has, at neutral defaults."""
  config = ml_collections.ConfigDict()
  config.task = 'classification'
  config.seed = 0
  # dtype: compute dtype of matmuls and activations, 'float32' or 'bfloat16' (parameters,
  # optimizer state, norm statistics, softmax and losses stay float32).
  config.model = ml_collections.ConfigDict({'name': model_name, 'dtype': 'float32'})
  config.data = data.default_config()
  config.batch_size = 256
  config.eval_batch_size = ml_collections.FieldReference(None, field_type=int)
  config.total_steps = 1000
  config.optimizer = optimizer.default_config()
  config.label_smoothing = 0.0
  config.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0,
                                                switch_prob=0.5))
  config.teacher = ml_collections.ConfigDict(dict(
      model=ml_collections.FieldReference(None, field_type=str),
      init_from=ml_collections.FieldReference(None, field_type=str),
      overrides={}, kind='soft', temperature=1.0, alpha=0.5))
  config.init_from = ml_collections.FieldReference(None, field_type=str)
  config.init_skip = r'^(head|fc_norm)/'
  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  # Resume from this kept checkpoint instead of the latest (newer ones are set aside); the
  # message after a divergence names the step to give here. 0 starts over.
  config.resume_step = ml_collections.FieldReference(None, field_type=int)
  # Resume even though model, data or task fields differ from workdir/config.json.
  config.allow_config_change = False
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # Multi-host: see repvit_jax/train/distributed.py (None: from JAX_* variables or detected).
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False,
      coordinator_address=ml_collections.FieldReference(None, field_type=str),
      num_processes=ml_collections.FieldReference(None, field_type=int),
      process_id=ml_collections.FieldReference(None, field_type=int)))
  return config


def imagenet_schedule(config: ml_collections.ConfigDict, *, epochs: int, batch_size: int,
                      lr: float, min_lr: float, weight_decay: float,
                      warmup_epochs: float = 0, warmup_steps: int = 0,
                      eval_every_epochs: int = 10) -> ml_collections.ConfigDict:
  """The ImageNet-1k half every recipe shares: data set, batch, epochs -> steps, warm-up then
  cosine from `lr` to `min_lr`, weight decay; logs every 100 steps, checkpoints every epoch and
  evaluates every `eval_every_epochs`. Warm-up is `warmup_epochs` epochs or `warmup_steps`."""
  steps_per_epoch = steps_for(1, IMAGENET_TRAIN_EXAMPLES, batch_size)
  config.data.name = 'imagenet2012'
  config.batch_size = batch_size
  config.total_steps = steps_for(epochs, IMAGENET_TRAIN_EXAMPLES, batch_size)
  config.optimizer.lr = lr
  config.optimizer.min_lr = min_lr
  config.optimizer.warmup_steps = int(warmup_epochs * steps_per_epoch) + warmup_steps
  config.optimizer.weight_decay = weight_decay
  config.log_every = 100
  config.eval_every = eval_every_epochs * steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  return config


def imagenet_finetune(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """MAE-Lite's "improved" ViT-Tiny fine-tuning recipe on ImageNet-1k (REFERENCE.md).

  300 epochs, batch 1024, lr 1e-3 * 1024 / 256, layer decay 0.85, weight decay 0.05, 5 warm-up
  epochs, min lr 1e-6, RandAugment m10 mstd0.5, colour jitter 0.3, mixup 0.2, no cutmix, no
  label smoothing, no drop path, global average pooling + fc_norm head. Fine-tuning from MAE
  pre-training: `--config.init_from=<MAE workdir>`.
  """
  config.model.global_pool = 'avg'
  config.model.drop_path_rate = 0.0
  config.data.image_size = 224
  config.data.crop_scale = (0.08, 1.0)
  config.data.randaugment = ml_collections.ConfigDict(dict(num_layers=2, magnitude=10.0,
                                                           magnitude_std=0.5))
  config.data.color_jitter = 0.3
  imagenet_schedule(config, epochs=300, batch_size=1024, lr=1e-3 * 1024 / 256, min_lr=1e-6,
                    warmup_epochs=5, weight_decay=0.05)
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999
  config.optimizer.layer_decay = 0.85
  config.label_smoothing = 0.0
  config.mixup.mixup_alpha = 0.2
  config.mixup.cutmix_alpha = 0.0
  return config


def digits_demo(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few minutes on 2 CPU cores, offline: the embedded digits at 32x32, a narrower ViT.

  The model keeps its family and TDRL structure but shrinks (patch 8 -> 16 tokens, width 96,
  depth 6, 3 heads) so that a CPU trains it in minutes; augmentation is light (digits are not
  flipped).
  """
  config.model.patch_size = 8
  config.model.width = 96
  config.model.depth = 6
  config.model.num_heads = 3
  config.model.global_pool = 'avg'
  config.model.drop_path_rate = 0.0
  return digits_data(config)


def digits_data(config: ml_collections.ConfigDict, image_size: int = 32,
                steps: int = 600) -> ml_collections.ConfigDict:
  """The data, optimizer and logging half of `digits_demo`, for any model family."""
  config.data = data.default_config()
  config.data.name = 'digits'
  config.data.image_size = image_size
  config.data.crop_scale = (0.6, 1.0)
  config.data.flip = False
  config.data.randaugment = None
  config.data.color_jitter = 0.0
  config.data.eval_crop_fraction = 1.0
  config.batch_size = 64
  config.eval_batch_size = 128
  config.total_steps = steps
  config.optimizer.lr = 1e-3
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 50
  config.optimizer.weight_decay = 0.05
  config.optimizer.layer_decay = None
  config.optimizer.grad_clip = 1.0
  config.label_smoothing = 0.1
  config.mixup.mixup_alpha = 0.0
  config.log_every = 25
  config.eval_every = 200
  config.checkpoint_every = 200
  return config


#: PoolFormer's stochastic depth per size (its training recipe); RIFormer uses the same.
METAFORMER_DROP_PATH = {'s12': 0.1, 's24': 0.1, 's36': 0.2, 'm36': 0.3, 'm48': 0.4}


def metaformer_imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """PoolFormer's ImageNet-1k recipe (RIFormer trains with it too).

  300 epochs, batch 1024, AdamW lr 1e-3 * batch / 1024, weight decay 0.05, 5 warm-up
  epochs, cosine to 1e-5, label smoothing 0.1, RandAugment m9 mstd0.5, mixup 0.8, cutmix 1.0,
  stochastic depth per size (METAFORMER_DROP_PATH), random erasing 0.25.
  """
  size = config.model.name.split('_')[-1]
  config.model.drop_path_rate = METAFORMER_DROP_PATH.get(size, 0.1)
  config.data.image_size = 224
  config.data.crop_scale = (0.08, 1.0)
  config.data.eval_crop_fraction = 0.9
  config.data.random_erasing = 0.25
  imagenet_schedule(config, epochs=300, batch_size=1024, lr=1e-3, min_lr=1e-5,
                    warmup_epochs=5, weight_decay=0.05)
  config.label_smoothing = 0.1
  config.mixup.mixup_alpha = 0.8
  config.mixup.cutmix_alpha = 1.0
  return config


#: The narrow MetaFormer every digits demo uses, PoolFormer teacher and RIFormer student alike
#: (module imitation needs one shape in both).
METAFORMER_DEMO = dict(depths=(1, 1, 3, 1), dims=(32, 64, 96, 128), drop_path_rate=0.0)


def metaformer_demo(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A narrow MetaFormer (METAFORMER_DEMO) on the embedded digits at 32x32, minutes on a CPU."""
  for key, value in METAFORMER_DEMO.items():
    config.model[key] = value
  return digits_data(config)


def classification(model_name: str, variant: str = '') -> ml_collections.ConfigDict:
  """`base(model_name)` with the ImageNet fine-tuning recipe, or `variant='demo'` on digits."""
  variant = (variant or '').strip()
  config = base(model_name)
  if variant == 'demo':
    return digits_demo(config)
  if variant:
    raise ValueError(f'unknown config variant {variant!r}; known: "" (ImageNet), "demo"')
  return imagenet_finetune(config)
