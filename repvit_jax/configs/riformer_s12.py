"""RIFormer-S12 trained with module imitation from a PoolFormer-S12 (RIFormer's recipe).

    # ImageNet: a trained PoolFormer-S12 is the feature teacher (and, unless teacher.model is
    # set, also the logits teacher; the paper's logits teacher is GFNet-H-B)
    python train.py --config configs/riformer_s12.py --workdir runs/riformer_s12 \
        --config.feature_teacher.init_from=runs/poolformer_s12

On the embedded digits, in minutes on a CPU (two commands: the teacher, then the student):

    python train.py --config configs/riformer_s12.py:teacher_demo --workdir runs/poolformer_demo
    python train.py --config configs/riformer_s12.py:demo --workdir runs/riformer_demo \
        --config.feature_teacher.init_from=runs/poolformer_demo

The run logs train/soft_loss, train/in_loss, train/out_loss and train/rel_loss (unweighted)
in metrics.jsonl; at the end workdir/deploy holds the token-mixer-free deploy model.
`:plain_demo` trains the same RIFormer on labels only, without a teacher (the baseline).
On Fashion-MNIST: `:teacher_fashion` (the PoolFormer), `:fashion` (module imitation),
`:plain_fashion` (labels only), `:kd_fashion` (the PoolFormer's soft labels, no imitation).

Options (config.feature_teacher): `blocks` (global block indices to imitate; None = the last
block of every stage, 4 layers as the paper's best setting), `weights.{in,out,rel}`
(the slides' best: feature 80, relation 20), `init_student` (start from the teacher's
weights except the token mixers). Soft labels: `teacher.alpha` = 1.0 (no label term),
`teacher.temperature`; another logits teacher: `teacher.model`, `teacher.init_from`.
"""

from repvit_jax.configs import common
from repvit_jax.configs import poolformer_s12


def module_imitation(config, *, teacher: str, teacher_overrides=None):
  """RIFormer's module imitation from a feature teacher of the student's shape; soft labels
  from the feature teacher (teacher.alpha=1: no label term)."""
  config.task = 'module_imitation'
  config.feature_teacher = common.feature_teacher(model=teacher, overrides=teacher_overrides)
  config.teacher = common.teacher(kind='soft', alpha=1.0, temperature=1.0)
  return config


def fashion(variant: str):
  """Fashion-MNIST (configs/poolformer_s12.py:fashion, the teacher's recipe and shape):
  'fashion' module imitation from a PoolFormer (`--config.feature_teacher.init_from`),
  'plain_fashion' labels only, 'kd_fashion' soft labels from the PoolFormer without
  module imitation (`--config.teacher.init_from`)."""
  config = poolformer_s12.fashion('riformer_s12')
  if variant == 'fashion':
    return module_imitation(config, teacher='poolformer_s12',
                            teacher_overrides=common.METAFORMER_FASHION)
  if variant == 'kd_fashion':
    config.teacher = common.teacher(kind='soft', alpha=1.0, model='poolformer_s12',
                                    overrides=common.METAFORMER_FASHION)
  return config


def get_config(arg: str = ''):
  variant = common.parse_arg(arg, '', 'demo', 'teacher_demo', 'plain_demo', 'teacher_fashion',
                             'fashion', 'plain_fashion', 'kd_fashion')
  if variant == 'teacher_fashion':
    return poolformer_s12.fashion()
  if variant.endswith('fashion'):
    return fashion(variant)
  if variant == 'teacher_demo':
    return poolformer_s12.demo()
  if variant == 'plain_demo':        # the same RIFormer on labels only: the baseline
    return poolformer_s12.demo('riformer_s12')
  if variant == 'demo':
    return module_imitation(poolformer_s12.demo('riformer_s12'), teacher='poolformer_s12',
                            teacher_overrides=common.METAFORMER_DEMO)
  # PoolFormer's ImageNet recipe, with a trained PoolFormer-S12 as the feature teacher.
  return module_imitation(poolformer_s12.imagenet('riformer_s12'), teacher='poolformer_s12')
