"""The trainer's compiled functions lower for GPUs (cuda) and TPUs on this CPU-only machine.

`jax.export` traces and lowers for a platform without its devices, so what would fail only
on an accelerator (an op without a lowering there, a host callback, a CPU-only custom call)
fails here. The models are tiny: lowering depends on the ops, not on the sizes.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from repvit_jax.reparam.tree import reparameterize
from repvit_jax.train.classification import ClassificationTask
from repvit_jax.train.mae import MAETask
from repvit_jax.train.state import create_state, model_variables
from repvit_jax.train.step import make_train_step
from conftest import TINY_VIT, load_config

PLATFORMS = ('cuda', 'tpu')
# Calls back into the Python host: these run on no accelerator.
HOST_CALLS = ('python_cpu_callback', 'python_gpu_callback', 'host_callback')
TINY_MAE = dict(patch_size=4, width=16, depth=2, num_heads=2, decoder_width=16,
                decoder_depth=1, decoder_num_heads=2)
TINY_TEACHER = dict(TINY_MAE, width=32, num_heads=4)


def lowered(fn, *args):
  """{platform: StableHLO text} of jit(fn)(*args) exported for each of PLATFORMS."""
  out = {}
  for platform in PLATFORMS:
    exported = jax.export.export(jax.jit(fn), platforms=(platform,))(*args)
    assert exported.platforms == (platform,)
    text = exported.mlir_module()
    assert not [c for c in HOST_CALLS if c in text], platform
    out[platform] = text
  return out


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def images(n, size=32):
  return jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)


def train_state(task, tx, size=32):
  return jax.eval_shape(lambda: create_state(
      lambda rng: task.init_variables(rng, jnp.zeros((1, size, size, 3))), tx, 0))


def classification_task(dtype):
  config = load_config('tdrl_vit_tiny.py:demo')
  config.model.update(dict(TINY_VIT, dtype=dtype))
  assert config.model.tdrl.train_path == 'collapsed'
  return ClassificationTask(config, num_classes=10)


def test_tdrl_classification_step_bfloat16_lowers():
  task = classification_task('bfloat16')
  tx = optax.adamw(1e-3)
  batch = {'image': images(8), 'label': jax.ShapeDtypeStruct((8,), jnp.int32)}
  texts = lowered(make_train_step(task, tx), train_state(task, tx), batch, {})
  assert all('bf16' in text for text in texts.values())     # the matmuls run in bfloat16


def test_evaluation_of_both_forms_and_reparameterize_lower():
  task = classification_task('float32')
  variables = jax.eval_shape(lambda: task.init_variables(jax.random.key(0),
                                                         jnp.zeros((1, 32, 32, 3))))
  batch = {'image': images(8), 'label': jax.ShapeDtypeStruct((8,), jnp.int32),
           'mask': jax.ShapeDtypeStruct((8,), jnp.float32)}
  lowered(lambda v, b: task.evaluate(v, b, {}, deploy=False), variables, batch)
  lowered(reparameterize, variables)
  deploy = jax.eval_shape(reparameterize, variables)
  lowered(lambda v, b: task.evaluate(v, b, {}, deploy=True), deploy, batch)


def mae_task(with_teacher: bool):
  config = load_config('mae_tdrl_vit_tiny.py:dmae_demo' if with_teacher
                       else 'mae_tdrl_vit_tiny.py:demo')
  config.model.update(TINY_MAE)
  if with_teacher:
    config.teacher.overrides = dict(TINY_TEACHER)
    config.teacher.pairs = ((2, 2),)
    config.teacher.init_from = 'unread'    # the weights are not read: load_frozen is not called
  return MAETask(config, num_classes=10)


@pytest.mark.parametrize('with_teacher', [False, True], ids=['mae', 'dmae'])
def test_mae_steps_lower(with_teacher):
  task = mae_task(with_teacher)
  frozen = {}
  if with_teacher:      # the teacher's deploy variables, as load_frozen gives them
    frozen = {'teacher': jax.eval_shape(lambda: task.teacher.init(
        {'params': jax.random.key(0), 'mask': jax.random.key(1)}, jnp.zeros((1, 32, 32, 3)),
        train=False, decode=False))}
  tx = optax.adamw(1e-3)
  state = train_state(task, tx)
  texts = lowered(make_train_step(task, tx), state, {'image': images(8)}, frozen)
  if with_teacher:      # the teacher runs inside the step: its (32, 96) qkv kernels are there
    assert all('tensor<32x96xf32>' in text for text in texts.values())
  variables = jax.eval_shape(lambda s: model_variables(s), state)
  batch = {'image': images(8), 'mask': jax.ShapeDtypeStruct((8,), jnp.float32)}
  lowered(lambda v, b: task.evaluate(v, b, frozen, deploy=False), variables, batch)


def _has_cudnn() -> bool:
  """Whether JAX finds cuDNN while tracing (its CUDA plugin and cuDNN wheels: jax[cuda12])."""
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=import-outside-toplevel
    return cuda_versions is not None and cuda_versions.cudnn_get_version() > 0
  except Exception:  # pylint: disable=broad-except
    return False


@pytest.mark.skipif(not _has_cudnn(), reason="cuDNN is not installed: pip install -e '.[cuda]' "
                    '(no GPU needed) to lower the cuDNN attention for CUDA')
def test_cudnn_attention_lowers_for_cuda_and_to_xla_elsewhere():
  import repvit_jax as rj  # pylint: disable=import-outside-toplevel
  model = rj.create_model('vit_tiny', num_classes=10, attention_impl='cudnn', dtype='bfloat16',
                          **TINY_VIT)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))
  traced = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, images(4))
  cuda = traced.lower(lowering_platforms=('cuda',)).as_text()
  tpu = traced.lower(lowering_platforms=('tpu',)).as_text()
  assert '__cudnn$fmha' in cuda and '__cudnn$fmha' not in tpu
