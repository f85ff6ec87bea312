"""MAE pre-training and fine-tuning from MAE end to end through `train.py` (tiny models).

D-MAE end to end is the demo (configs/mae_tdrl_vit_tiny.py:dmae_demo); its pieces (loss terms,
teacher loading) are tested in test_mae.py. TDRL MAE pre-training through train.py, on one
process and on two, is in test_multihost.py."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax import io
from repvit_jax.io import checkpoint_steps
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARCH = dict(patch_size=4, width=32, depth=1, num_heads=2, decoder_width=16, decoder_depth=1,
            decoder_num_heads=2)
COMMON = ['--config.batch_size=16', '--config.eval_batch_size=360', '--config.log_every=1',
          '--config.checkpoint_every=1000', '--config.optimizer.warmup_steps=2']


def flags(prefix, arch):
  return [f'--config.{prefix}.{k}={v}' for k, v in arch.items()]


def train(workdir, config, *extra, check=True):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(1))
  result = subprocess.run([sys.executable, 'train.py', f'--workdir={workdir}',
                           f'--config={config}', *COMMON, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f'train.py failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return result


def rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def save_mae(directory, name, arch, seed):
  """A randomly initialised MAE saved as a model directory (usable as init_from)."""
  model = rj.create_model(name, **arch)
  # Compiled: op by op, initialising the TDRL MAE takes ~10 s on two cores.
  variables = jax.jit(lambda: model.init({'params': jax.random.key(seed),
                                          'mask': jax.random.key(1)},
                                         jnp.zeros((1, 32, 32, 3)), train=False))()
  io.save_model(str(directory), variables, rj.ModelSpec.registered(
      name, num_classes=10, deploy=False, overrides=arch,
      image_size=32))
  return variables


@pytest.mark.slow
def test_finetuning_loads_the_mae_encoder_with_its_tdrl_branches(tmp_path):
  pretrained = save_mae(tmp_path / 'mae', 'mae_tdrl_vit_tiny', ARCH, seed=4)
  classifier = ['--config.model.patch_size=4', '--config.model.width=32',
                '--config.model.depth=1', '--config.model.num_heads=2',
                '--config.eval_every=0', '--config.optimizer.layer_decay=0.75']
  train(tmp_path / 'ft', 'configs/tdrl_vit_tiny.py:demo', '--config.total_steps=1',
        f'--config.init_from={tmp_path / "mae"}', '--config.optimizer.lr=1e-12', *classifier)
  state = checkpoint_steps.restore_variables(str(tmp_path / 'ft'))
  # The encoder (TDRL branches included) came from the MAE tree; lr ~0 leaves it as loaded.
  loaded = state['params']['blocks_0']['mlp']['fc1']['branch_2']['linear_0']['kernel']
  want = pretrained['params']['blocks_0']['mlp']['fc1']['branch_2']['linear_0']['kernel']
  np.testing.assert_allclose(loaded, np.asarray(want), atol=1e-6)
  assert state['params']['pos_embed'].shape == (1, 65, 32)

