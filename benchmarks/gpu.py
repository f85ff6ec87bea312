"""Everything one accelerator can show, in one run (under 8 minutes on one GPU):

    python benchmarks/gpu.py [--batch 256] [--dtype bfloat16] [--peak-tflops N]

- train steps of vit_tiny and tdrl_vit_tiny (collapsed and branch paths) at 224: img/s and
  MFU (XLA's counted FLOPs per step / step time / the device's peak);
- the MAE-Lite step with the MAE-Base teacher (vanilla and TDRL encoders);
- inference of the deploy forms of vit_tiny, poolformer_s12 and riformer_s12.

Contenders of a group are timed in alternation. The peak comes from `--peak-tflops` or a table
of dense bfloat16 peaks by device kind (0 when unknown: MFU is then left out). Prints one table
and writes JSON (benchmarks/results/gpu.json) with the machine and JAX version.
"""

from __future__ import annotations

import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position

import repvit_jax as rj  # pylint: disable=wrong-import-position
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

# Dense bfloat16 peak TFLOP/s by `device_kind` substring (vendor figures, no sparsity).
PEAK_BF16_TFLOPS = {
    'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L40S': 362.0, 'L4': 121.0, 'A10G': 125.0,
    'V100': 125.0, 'T4': 65.0, 'TPU v6': 918.0, 'TPU v5p': 459.0, 'TPU v5 lite': 197.0,
    'TPU v5e': 197.0, 'TPU v4': 275.0, 'TPU v3': 123.0, 'TPU v2': 45.0,
}


def peak_tflops(kind: str) -> float:
  for key, value in PEAK_BF16_TFLOPS.items():
    if key.lower() in kind.lower():
      return value
  return 0.0


def inference(name: str, batch: int, dtype: str, size: int = 224):
  """A compiled deploy-form forward pass on random weights and images."""
  model = rj.create_model(name, deploy=True, dtype=dtype)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x[:1], train=False))(images)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  compiled = forward.lower(variables, images).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {'run': lambda: compiled(variables, images),
          'temp_bytes': int(compiled.memory_analysis().temp_size_in_bytes),
          'flops': float((cost or {}).get('flops', 0.0))}


def group_rows(group, builders, batch, dtype, rounds, reference, peak):
  rows = train_step.time_group(group, builders, batch, dtype, rounds, reference)
  devices = jax.device_count()
  for row in rows:
    if 'step_ms' not in row:
      continue
    seconds = row['step_ms'] / 1e3
    row['tflop_s'] = row['gflop_per_step'] / 1e3 / seconds
    row['mfu'] = row['tflop_s'] / (peak * devices) if peak else None
  return rows


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('--batch', type=int, default=256, help='classification batch size')
  parser.add_argument('--mae-batch', type=int, default=256, help='MAE batch size')
  parser.add_argument('--dtype', default='bfloat16', help="compute dtype: 'float32' or 'bfloat16'")
  parser.add_argument('--attention-impl', default='xla', help="'xla' or 'cudnn'")
  parser.add_argument('--peak-tflops', type=float, default=None,
                      help='per-device dense peak (default: from the device kind)')
  parser.add_argument('--rounds', type=int, default=10, help='timed steps per contender')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'gpu.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  start = time.perf_counter()
  kind = jax.devices()[0].device_kind
  peak = args.peak_tflops if args.peak_tflops is not None else peak_tflops(kind)
  print(f'{jax.device_count()} x {kind}, peak {peak} TFLOP/s per device', flush=True)
  size, batch, dtype = 224, args.batch, args.dtype

  def classification(config_name, overrides):
    config = train_step.classification_config(config_name, overrides, batch, dtype, size)
    config.model.attention_impl = args.attention_impl
    return train_step.compile_step(config, size)

  builders = {name: (lambda c=c, o=o: classification(c, o))
              for name, (c, o) in train_step.CLASSIFICATION.items()}
  rows = group_rows('train', builders, batch, dtype, args.rounds, 'vit_tiny', peak)

  def mae(student):
    config = train_step.mae_config(student, 'mae_vit_base', args.mae_batch, dtype, size)
    config.model.attention_impl = args.attention_impl
    return train_step.compile_step(config, size)

  builders = {f'{s} + mae_vit_base teacher': (lambda s=s: mae(s))
              for s in ('mae_vit_tiny', 'mae_tdrl_vit_tiny')}
  rows += group_rows('mae', builders, args.mae_batch, dtype, args.rounds,
                     'mae_vit_tiny + mae_vit_base teacher', peak)

  builders = {name: (lambda n=name: inference(n, batch, dtype))
              for name in ('vit_tiny', 'poolformer_s12', 'riformer_s12')}
  rows += group_rows('inference', builders, batch, dtype, args.rounds, 'poolformer_s12', peak)

  common.print_table(rows, ['group', 'what', 'batch', 'dtype', 'img_s', 'step_ms',
                            'time_vs_ref', 'tflop_s', 'mfu', 'temp_GiB', 'reference'])
  print(f'total {time.perf_counter() - start:.0f} s', flush=True)
  common.write_json(args.out, {'benchmark': 'gpu', 'image_size': size, 'peak_tflops': peak,
                               'attention_impl': args.attention_impl,
                               'machine': common.machine(), 'results': rows})


if __name__ == '__main__':
  main()
