"""Train-step throughput of vit_tiny vs tdrl_vit_tiny at 224, and the input pipeline's.

    python benchmarks/train_step.py [--models vit_tiny,tdrl_vit_tiny] [--batch 32]

The step is the trainer's own compiled step (ImageNet fine-tuning recipe of
configs/tdrl_vit_tiny.py: AdamW, layer decay, mixup) on random images over every device JAX
sees. The pipeline is the same recipe's preprocessing (random-resized crop, flip, RandAugment
m10, colour jitter 0.3, normalisation) on a folder of generated 500x375 JPEGs (decoding
included), read on this host. Prints one table and writes JSON (benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

from repvit_jax import data  # pylint: disable=wrong-import-position
from repvit_jax.data import DatasetInfo  # pylint: disable=wrong-import-position
from repvit_jax.train import optimizer, sharding, tasks  # pylint: disable=wrong-import-position
from repvit_jax.train.state import create_state  # pylint: disable=wrong-import-position
from repvit_jax.train.step import make_train_step  # pylint: disable=wrong-import-position


def recipe(model_name: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                      f'{model_name}.py')
  spec = importlib.util.spec_from_file_location(model_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config('')


def make_step(model_name: str, batch: int, size: int):
  """A no-argument callable running one compiled train step of `model_name`."""
  config = recipe(model_name)
  config.batch_size = batch
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(batch, mesh)
  task = tasks.build(config, DatasetInfo(name='synthetic', num_classes=1000, num_train=batch,
                                         num_eval=batch, train_split='train',
                                         eval_split='test'))
  sample = jnp.zeros((1, size, size, 3))
  params = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), sample))['params']
  tx, _ = optimizer.make_optimizer(config.optimizer, params, config.total_steps)
  init = lambda: create_state(lambda rng: task.init_variables(rng, sample), tx, 0)
  state_sharding = sharding.state_shardings(mesh, jax.eval_shape(init))
  state = jax.jit(init, out_shardings=state_sharding)()
  batch_sharding = sharding.batch_sharding(mesh)
  images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
  labels = np.arange(batch, dtype=np.int32) % 1000
  inputs = sharding.to_global({'image': images, 'label': labels}, batch_sharding)
  step = jax.jit(make_train_step(task, tx), donate_argnums=(0,),
                 in_shardings=(state_sharding, batch_sharding, None),
                 out_shardings=(state_sharding, None))
  holder = {'state': state}

  def run():
    holder['state'], metrics = step(holder['state'], inputs, {})
    return metrics['train/loss']

  return run


def write_jpegs(directory: str, count: int) -> None:
  from repvit_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for i in range(count):
    folder = os.path.join(directory, 'train', f'class_{i % 10}')
    os.makedirs(folder, exist_ok=True)
    # Smooth random images compress like photos, unlike white noise.
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image = tf.image.resize(small, (375, 500), method='bicubic')
    image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    tf.io.write_file(os.path.join(folder, f'{i}.jpg'), tf.io.encode_jpeg(image, quality=90))


def pipeline_throughput(batch: int, size: int, steps: int) -> dict:
  config = recipe('tdrl_vit_tiny').data
  with tempfile.TemporaryDirectory() as directory:
    write_jpegs(directory, 512)
    config.name = f'folder:{directory}'
    config.image_size = size
    iterator = data.make_train_iterator(config, global_batch_size=batch, seed=0)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
      next(iterator)
    seconds = time.perf_counter() - start
    del iterator  # stop tf.data's prefetching before the files go away
  return {'what': 'input pipeline (JPEG decode + ImageNet train preprocessing)',
          'img_s': steps * batch / seconds, 'ms_per_batch': 1000 * seconds / steps,
          'batch': batch}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='vit_tiny,tdrl_vit_tiny')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--pipeline-steps', type=int, default=20)
  parser.add_argument('--rounds', type=int, default=5, help='timed steps per model, interleaved')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'train_step.json'))
  args = parser.parse_args()
  names = args.models.split(',')
  seconds = common.time_interleaved({m: make_step(m, args.batch, args.image_size) for m in names},
                                    rounds=args.rounds)
  rows = [{'what': f'train step {m}', 'batch': args.batch, 'img_s': args.batch / seconds[m],
           'ms_per_batch': 1000 * seconds[m]} for m in names]
  rows.append(pipeline_throughput(args.batch, args.image_size, args.pipeline_steps))
  common.print_table(rows, ['what', 'batch', 'img_s', 'ms_per_batch'])
  common.write_json(args.out, {'benchmark': 'train_step', 'image_size': args.image_size,
                               'machine': common.machine(), 'results': rows})


if __name__ == '__main__':
  main()
