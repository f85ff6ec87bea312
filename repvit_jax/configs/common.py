"""What the config files share: variant parsing, epochs -> steps, block builders, and the
default of every field the trainer reads.

Each config file states its recipe in full (model, data and augmentation, optimizer and
schedule, task, teachers) on top of `run_config(task)`, which holds every other field the
trainer reads at its default: the run's plumbing (seed, checkpoints, devices) and the task's
blocks, switched off (no teacher, no mixup). This file is the one place those defaults live:
the trainer reads `config.<field>` and names any field a config lacks (`missing_fields`).
"""

import ml_collections

from repvit_jax import data

IMAGENET_TRAIN_EXAMPLES = 1_281_167
DIGITS_TRAIN_EXAMPLES = 1_437
FASHION_MNIST_TRAIN_EXAMPLES = 60_000
# Fashion-MNIST's train images carved off as the validation split every recipe is chosen on.
FASHION_MNIST_VALIDATION = 5_000


def placeholder(field_type):
  """A field that is None until set, typed so that `--config.x=...` parses."""
  return ml_collections.config_dict.placeholder(field_type)


def parse_arg(arg: str, *variants: str) -> str:
  """The variant named after the ':' of `--config file.py:variant` ('' for none).

  Raises:
    ValueError: a variant this config does not have (the message lists them).
  """
  variant = (arg or '').strip()
  if variant not in variants:
    known = ', '.join(f'"{v}"' if v else '"" (ImageNet)' for v in variants)
    raise ValueError(f'unknown config variant {variant!r}; known: {known}')
  return variant


def steps_for(epochs: float, examples: int, batch_size: int) -> int:
  """Optimizer steps of `epochs` passes over `examples` at `batch_size` (at least 1)."""
  return max(1, int(round(epochs * examples / batch_size)))


def run_config(task: str) -> ml_collections.ConfigDict:
  """A config with the task and the run's plumbing at its defaults: seed, batch sizes and
  cadence (set by the recipe), checkpoints, resume, devices. The recipe adds the rest."""
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = 0
  config.batch_size = 256
  # batch_size is the batch of one update; k > 1 computes it as k micro-batches in sequence
  # (a k-th of the activation memory; BatchNorm statistics per micro-batch).
  config.grad_accum_steps = 1
  # An exponential moving average of the weights (decay 0: off), evaluated beside them
  # (eval/ema_accuracy); ema.deploy=True exports it. See repvit_jax/train/ema.py.
  config.ema = ema()
  config.eval_batch_size = placeholder(int)     # None: batch_size
  config.total_steps = 1000
  config.init_from = placeholder(str)           # a workdir, checkpoint or model directory
  config.init_skip = r'^(head|fc_norm)/'        # params init_from may lack (a new head)
  config.log_every = 50
  config.eval_every = 1000
  # What each evaluation measures (repvit_jax/train/evaluators.py): the eval split in the
  # training and deploy forms, as eval/<metric> and eval/deploy_<metric>.
  config.evals = ml_collections.ConfigDict(
      {'eval': ml_collections.ConfigDict(dict(kind='forms', split=placeholder(str)))})
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  # Resume from this kept checkpoint instead of the latest (newer ones are set aside); the
  # message after a divergence names the step to give here. 0 starts over.
  config.resume_step = placeholder(int)
  # Resume even though model, data or task fields differ from workdir/config.json.
  config.allow_config_change = False
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # Multi-host: see repvit_jax/train/distributed.py (None: from JAX_* variables or detected).
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address=placeholder(str), num_processes=placeholder(int),
      process_id=placeholder(int), join_timeout_s=300, heartbeat_timeout_s=100))
  if task not in TASK_FIELDS:
    raise ValueError(f'unknown task {task!r}; known tasks: {", ".join(sorted(TASK_FIELDS))}')
  for key, value in TASK_FIELDS[task]().items():
    config[key] = value
  return config


def classification_fields() -> dict:
  """The classification task's own fields, off: no label smoothing, no mixup, no teacher."""
  return dict(label_smoothing=0.0, mixup=mixup(), teacher=teacher(kind='soft', alpha=0.5))


def module_imitation_fields() -> dict:
  """RIFormer's module imitation (repvit_jax/train/module_imitation.py): classification's
  fields, soft labels from the feature teacher (teacher.alpha 1: no label term), and the
  feature teacher, which the run needs (`feature_teacher.model` and `.init_from`)."""
  return dict(classification_fields(), teacher=teacher(kind='soft', alpha=1.0),
              feature_teacher=feature_teacher())


def mae_fields() -> dict:
  """The MAE task: the norm-pix loss, 8 reconstructions drawn per evaluation, and the D-MAE
  teacher, off until teacher.model and init_from are set."""
  return dict(norm_pix_loss=True, reconstructions=8, teacher=mae_teacher())


TASK_FIELDS = {'classification': classification_fields, 'mae': mae_fields,
               'module_imitation': module_imitation_fields}
# Fields whose contents belong to another schema: the model's options (`create_model`), the
# data config (repvit_jax/data/config.py), the evaluators the config names.
FREE_FORM = ('model', 'data', 'evals')


def missing_fields(config: ml_collections.ConfigDict) -> list:
  """The dotted names of the fields `run_config(config.task)` has and `config` lacks (the
  model's and data's own fields aside), sorted."""
  def walk(reference, target, prefix):
    for key, value in reference.items():
      if key not in target:
        yield prefix + key
      elif isinstance(value, ml_collections.ConfigDict) and key not in FREE_FORM:
        if isinstance(target[key], (ml_collections.ConfigDict, dict)):
          yield from walk(value, target[key], prefix + key + '.')
  return sorted(walk(run_config(config.task), config, ''))


def data_config(**fields) -> ml_collections.ConfigDict:
  """`repvit_jax.data.default_config()` with `fields` set (every field is documented in
  repvit_jax/data/config.py); a field it does not have is an error."""
  config = data.default_config()
  for key, value in fields.items():
    if key not in config:
      raise KeyError(f'data config has no field {key!r}')
    config[key] = value
  return config


def fashion_data(**fields) -> ml_collections.ConfigDict:
  """Fashion-MNIST at 28x28 (Debian's dataset-fashion-mnist), 5,000 train images held out as
  the validation split (the eval split; 'test' only for reporting), light augmentation
  (crops of 80-100%, flips, random erasing 0.1); `fields` change any of it."""
  defaults = dict(
      name='fashion_mnist', validation_size=FASHION_MNIST_VALIDATION, image_size=28,
      crop_scale=(0.8, 1.0), flip=True, randaugment=None, color_jitter=0.0, random_erasing=0.1,
      mean=(0.286,) * 3, std=(0.353,) * 3, eval_crop_fraction=1.0)
  return data_config(**{**defaults, **fields})


def fashion_steps_per_epoch(batch_size: int) -> int:
  """Steps of one pass over Fashion-MNIST's train images less the validation split."""
  return steps_for(1, FASHION_MNIST_TRAIN_EXAMPLES - FASHION_MNIST_VALIDATION, batch_size)


def fashion_classification(model: dict, *, base_lr: float = 8e-3, weight_decay: float = 0.05,
                           image_size: int = 28, teacher_kind: str = 'soft'):
  """The Fashion-MNIST classification recipe (configs/vit_tiny.py:fashion, chosen on the
  validation split) for `model` (config.model's fields): 16 epochs of batch 32, AdamW with a
  quarter-epoch warm-up and cosine decay, light augmentation (`fashion_data`), label smoothing
  0.1, an evaluation every 2 epochs; a teacher block that is off until its model and
  init_from are set."""
  config = run_config('classification')
  config.model = ml_collections.ConfigDict(model)
  config.data = fashion_data(image_size=image_size)
  config.batch_size = 32
  config.eval_batch_size = 500
  steps_per_epoch = fashion_steps_per_epoch(config.batch_size)
  config.total_steps = 16 * steps_per_epoch
  config.optimizer = adamw(base_lr=base_lr, min_lr=1e-5, warmup_steps=steps_per_epoch // 4,
                           weight_decay=weight_decay, grad_clip=1.0)
  config.log_every = 200
  config.eval_every = 2 * steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  config.label_smoothing = 0.1
  config.mixup = mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
  config.teacher = teacher(kind=teacher_kind, alpha=0.5)
  return config


def randaugment(num_layers: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5):
  """timm's rand-m{magnitude}-mstd{magnitude_std} with `num_layers` ops per image."""
  return ml_collections.ConfigDict(dict(num_layers=num_layers, magnitude=magnitude,
                                        magnitude_std=magnitude_std))


def adamw(*, base_lr: float, min_lr: float, warmup_steps: int, weight_decay: float,
          b1: float = 0.9, b2: float = 0.999, layer_decay=None,
          grad_clip=None) -> ml_collections.ConfigDict:
  """AdamW with linear warm-up to lr = `base_lr` * batch_size / 256, then cosine to `min_lr`
  (repvit_jax/train/optimizer.py). `lr` (None) overrides the rule when set; `layer_decay` and
  `grad_clip` None are off (all typed, so the command line can set them)."""
  config = ml_collections.ConfigDict(dict(
      lr=placeholder(float), base_lr=base_lr, min_lr=min_lr, warmup_steps=warmup_steps, b1=b1,
      b2=b2, eps=1e-8, weight_decay=weight_decay, layer_decay=placeholder(float),
      grad_clip=placeholder(float)))
  config.layer_decay = layer_decay
  config.grad_clip = grad_clip
  return config


def feature_teacher(*, model=None, overrides=None) -> ml_collections.ConfigDict:
  """Module imitation's feature teacher, off until `model` and `init_from` are set: a
  MetaFormer of the student's shape; `blocks` None imitates the last block of every stage,
  with the slides' best weights (features 80, relations 20); `init_student` starts the
  student from the teacher's weights, token mixers excepted."""
  config = ml_collections.ConfigDict(dict(
      model=placeholder(str), init_from=placeholder(str), overrides=dict(overrides or {}),
      blocks=placeholder(tuple), weights=dict({'in': 80.0, 'out': 80.0, 'rel': 20.0}),
      init_student=True))
  config.model = model
  return config


def mae_teacher(*, model=None) -> ml_collections.ConfigDict:
  """The D-MAE teacher block, off until `model` and `init_from` are set: attention-logit
  distillation at (student layer, teacher layer) `pairs`, weight `alpha`; `hidden_alpha`
  adds hidden-state distillation; kind 'g2sd' distils the decoder at `decoder_layer`."""
  config = ml_collections.ConfigDict(dict(
      model=placeholder(str), init_from=placeholder(str),
      overrides=ml_collections.ConfigDict(), kind='attention', pairs=((12, 12),), alpha=1.0,
      hidden_alpha=0.0, decoder_layer=placeholder(int)))
  config.model = model
  return config


def ema(decay: float = 0.0, *, warmup: bool = True, deploy: bool = False):
  """An EMA of the weights (repvit_jax/train/ema.py); decay 0 is off. timm's ModelEmaV3
  defaults: the warm-up decay 1 - (1 + s / warmup_gamma) ** -warmup_power (s: updates after
  the first), at most `decay`, from the first update on (update_after_step 0)."""
  return ml_collections.ConfigDict(dict(
      decay=decay, warmup=warmup, warmup_gamma=1.0, warmup_power=2 / 3, min_decay=0.0,
      update_after_step=0, deploy=deploy))


def mixup(mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, switch_prob: float = 0.5):
  """Batch mixup / cutmix (0 is off); `switch_prob`: cutmix's share when both are on."""
  return ml_collections.ConfigDict(dict(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                        switch_prob=switch_prob))


def teacher(*, kind: str, alpha: float, temperature: float = 1.0, model=None,
            init_from=None, overrides=None) -> ml_collections.ConfigDict:
  """A classification teacher block: off until `model` and `init_from` are set. The teacher
  sees each batch resized to its own saved input size (or `image_size`, when set)."""
  config = ml_collections.ConfigDict(dict(
      model=placeholder(str), init_from=placeholder(str), overrides=dict(overrides or {}),
      kind=kind, temperature=temperature, alpha=alpha, image_size=placeholder(int)))
  config.model = model
  config.init_from = init_from
  return config


def imagenet_epochs(config: ml_collections.ConfigDict, *, epochs: float,
                    eval_every_epochs: int = 10) -> int:
  """Sets total_steps for `epochs` of ImageNet-1k at config.batch_size, logging every 100
  steps, a checkpoint every epoch and an evaluation every `eval_every_epochs`; returns the
  steps per epoch (for warm-ups given in epochs)."""
  steps_per_epoch = steps_for(1, IMAGENET_TRAIN_EXAMPLES, config.batch_size)
  config.total_steps = steps_for(epochs, IMAGENET_TRAIN_EXAMPLES, config.batch_size)
  config.log_every = 100
  config.eval_every = eval_every_epochs * steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  return steps_per_epoch


def digits_demo(config: ml_collections.ConfigDict, *, image_size: int = 32,
                steps: int = 600) -> ml_collections.ConfigDict:
  """The block every digits demo shares: minutes on 2 CPU cores, offline.

  The embedded digits at `image_size`, light augmentation (no flips: digits are not
  symmetric; no RandAugment), batch 64, `steps` steps of AdamW at lr 1e-3 (base_lr 4e-3 per
  256 images) with gradient clipping, an evaluation and a checkpoint every 200 steps.
  """
  config.data = data_config(name='digits', image_size=image_size, crop_scale=(0.6, 1.0),
                            flip=False, randaugment=None, color_jitter=0.0,
                            eval_crop_fraction=1.0)
  config.batch_size = 64
  config.eval_batch_size = 128
  config.total_steps = steps
  config.optimizer = adamw(base_lr=4e-3, min_lr=1e-5, warmup_steps=50, weight_decay=0.05,
                           grad_clip=1.0)
  config.log_every = 25
  config.eval_every = 200
  config.checkpoint_every = 200
  return config


#: The narrow MetaFormer of the digits demos, PoolFormer teacher and RIFormer student alike
#: (module imitation needs one shape in both).
METAFORMER_DEMO = dict(depths=(1, 1, 3, 1), dims=(32, 64, 96, 128))
# Fashion-MNIST: S12's depths (12 blocks), the demo's widths.
METAFORMER_FASHION = dict(depths=(2, 2, 6, 2), dims=(32, 64, 96, 128))
