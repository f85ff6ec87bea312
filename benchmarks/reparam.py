"""Forward throughput of TDRL models: training form (eval mode) vs deploy form vs vanilla.

    python benchmarks/reparam.py [--models tdrl_vit_tiny,tdrl_vit_small] [--batch 32]

Prints one table and writes JSON (default benchmarks/results/reparam.json) with the machine
and JAX version. Runs on whatever device JAX sees.
"""

from __future__ import annotations

import os
import sys

import jax


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import repvit_jax as rj  # pylint: disable=wrong-import-position
from repvit_jax.reparam import check  # pylint: disable=wrong-import-position
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position


def measure(name: str, batch: int, size: int, rounds: int):
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  train_model = rj.create_model(name)
  deploy_model = rj.create_model(name, deploy=True)
  variables = jax.jit(lambda x: train_model.init(jax.random.key(1), x, train=False))(images)
  variables = check.randomize_batch_stats(check.perturb_params(variables, 0), 1)
  deploy_variables = jax.jit(rj.reparameterize)(variables)
  error = check.relative_error(deploy_model.apply(deploy_variables, images, train=False),
                               train_model.apply(variables, images, train=False))
  # The vanilla model is the same module as the deploy form; fresh weights of the same shapes.
  vanilla_variables = jax.jit(lambda x: deploy_model.init(jax.random.key(2), x, train=False))(
      images)

  def forward(model, v):
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return lambda: compiled(v, images)

  seconds = common.time_interleaved({
      'train': forward(train_model, variables),
      'deploy': forward(deploy_model, deploy_variables),
      'vanilla': forward(deploy_model, vanilla_variables)}, rounds=rounds)
  train_s, deploy_s, vanilla_s = seconds['train'], seconds['deploy'], seconds['vanilla']
  return {
      'model': name,
      'train_params': rj.count_params(variables['params']),
      'deploy_params': rj.count_params(deploy_variables['params']),
      'train_img_s': batch / train_s,
      'deploy_img_s': batch / deploy_s,
      'vanilla_img_s': batch / vanilla_s,
      'deploy_vs_train': train_s / deploy_s,
      'deploy_vs_vanilla': vanilla_s / deploy_s,
      'equivalence_error': error,
  }


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('--models', default='tdrl_vit_tiny,tdrl_vit_small',
                      help='comma-separated TDRL model names')
  parser.add_argument('--batch', type=int, default=32, help='images per timed call')
  parser.add_argument('--image-size', type=int, default=224, help='input side in pixels')
  parser.add_argument('--rounds', type=int, default=7, help='timed calls per form, interleaved')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'reparam.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  rows = [measure(name, args.batch, args.image_size, args.rounds)
          for name in args.models.split(',')]
  common.print_table(rows, ['model', 'train_params', 'deploy_params', 'train_img_s',
                            'deploy_img_s', 'vanilla_img_s', 'deploy_vs_train',
                            'deploy_vs_vanilla', 'equivalence_error'])
  common.write_json(args.out, {'benchmark': 'reparam', 'batch': args.batch,
                               'image_size': args.image_size, 'machine': common.machine(),
                               'results': rows})


if __name__ == '__main__':
  main()
