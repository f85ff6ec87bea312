"""MAE pre-training step throughput: vanilla vs TDRL encoder, without and with a D-MAE teacher.

    python benchmarks/mae.py [--batch 32] [--image-size 224] [--teacher mae_vit_base]

One full train step (forward, backward, AdamW update) of the `mae` task, as the trainer compiles
it, on random images; the teacher (deploy form, random weights) runs on the student's visible
tokens for attention distillation at the last layer pair. Prints one table and writes JSON
(default benchmarks/results/mae.json) with the machine and JAX version.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import repvit_jax as rj  # pylint: disable=wrong-import-position
from repvit_jax.train import mae  # pylint: disable=wrong-import-position
from repvit_jax.train import optimizer as optimizer_lib  # pylint: disable=wrong-import-position
from repvit_jax.train.state import create_state  # pylint: disable=wrong-import-position
from repvit_jax.train.step import make_train_step  # pylint: disable=wrong-import-position


def build(student: str, teacher: str | None, image_size: int, batch: int):
  config = mae.recipe(student, '')
  config.data.image_size = image_size
  config.batch_size = batch
  if teacher:
    config.teacher.model = teacher
    config.teacher.init_from = 'random-weights (benchmark)'
    depth = rj.create_model(teacher).depth
    config.teacher.pairs = ((rj.create_model(student).depth, depth),)
  return mae.MAETask(config, num_classes=1000), config


def measure(student: str, teacher: str | None, batch: int, size: int):
  task, config = build(student, teacher, size, batch)
  sample = jnp.zeros((1, size, size, 3))
  params = jax.eval_shape(lambda: task.init_variables(jax.random.key(0), sample))['params']
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, params, 1000)
  state = jax.jit(lambda: create_state(lambda r: task.init_variables(r, sample), tx, 0))()
  frozen = {}
  if task.teacher is not None:
    frozen = {'teacher': jax.jit(lambda: task.teacher.init(
        {'params': jax.random.key(1), 'mask': jax.random.key(2)}, sample, train=False,
        decode=False))()}
  step = jax.jit(make_train_step(task, tx), donate_argnums=(0,))
  batch_data = {'image': jax.random.normal(jax.random.key(3), (batch, size, size, 3)),
                'label': jnp.zeros((batch,), jnp.int32)}
  holder = {'state': state}

  def call():
    holder['state'], metrics = step(holder['state'], batch_data, frozen)
    return metrics['train/loss']

  seconds = common.time_call(call, warmup=2, min_seconds=3.0, min_iters=3)
  return {
      'encoder': student,
      'teacher': teacher or '-',
      'student_params': rj.count_params({k: v for k, v in params.items() if k != 'distill'}),
      'img_s': batch / seconds,
      'step_ms': 1e3 * seconds,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--students', default='mae_vit_tiny,mae_tdrl_vit_tiny')
  parser.add_argument('--teacher', default='mae_vit_base')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'mae.json'))
  args = parser.parse_args()
  rows = []
  for student in args.students.split(','):
    for teacher in (None, args.teacher):
      rows.append(measure(student, teacher, args.batch, args.image_size))
      print(f'  measured {student} teacher={teacher}', flush=True)
  vanilla = {r['teacher']: r['img_s'] for r in rows if r['encoder'] == 'mae_vit_tiny'}
  for r in rows:
    r['vs_vanilla_same_teacher'] = r['img_s'] / vanilla[r['teacher']] if vanilla else None
  common.print_table(rows, ['encoder', 'teacher', 'student_params', 'img_s', 'step_ms',
                            'vs_vanilla_same_teacher'])
  common.write_json(args.out, {'benchmark': 'mae_pretraining_step', 'batch': args.batch,
                               'image_size': args.image_size, 'mask_ratio': 0.75,
                               'machine': common.machine(), 'results': rows})


if __name__ == '__main__':
  main()
