"""What the checkpoint checksums cost: digesting a train state against saving and restoring it.

    python benchmarks/checkpoint.py [--model tdrl_vit_tiny] [--rounds 5]

The full-size train state of `--model` (its config's AdamW, 224x224, 1000 classes) is saved
with the trainer's Checkpointer (which digests every array before the write starts) and
restored (which verifies the digests); the digest and the verification are also timed alone.
The four are timed in alternation, round by round, in this process. Prints a table and writes
benchmarks/results/checkpoint.json.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position

from repvit_jax.reparam.check import count_params  # pylint: disable=wrong-import-position
from repvit_jax.io import digest  # pylint: disable=wrong-import-position
from repvit_jax.train.resume.checkpoint import Checkpointer  # pylint: disable=wrong-import-position
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('--model', default='tdrl_vit_tiny', help='a config in configs/')
  parser.add_argument('--rounds', type=int, default=5, help='timed rounds (median reported)')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'checkpoint.json'), help='JSON output')
  args = parser.parse_args()

  config = train_step.classification_config(args.model, {}, batch=8, dtype='float32',
                                            image_size=224)
  compiled = train_step.compile_step(config, 224)
  compiled['run']()   # one step, so the optimizer moments are not zeros
  state = jax.block_until_ready(compiled['state']())
  elements = sum(int(np.size(x)) for x in jax.tree.leaves(state))
  nbytes = sum(int(x.nbytes) for x in jax.tree.leaves(state) if hasattr(x, 'nbytes'))
  print(f'{args.model} train state: {len(jax.tree.leaves(state))} arrays, '
        f'{elements / 1e6:.1f}M elements, {nbytes / 2**20:.0f} MiB '
        f'({count_params(state["params"]) / 1e6:.2f}M parameters)')

  root = tempfile.mkdtemp(prefix='checkpoint_bench_')
  times = {'digest': [], 'save + wait (with digest)': [], 'verify': [],
           'restore (with verify)': []}
  try:
    ckpt = Checkpointer(os.path.join(root, 'checkpoints'), max_to_keep=2, best_metric=None)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=x.sharding), state)
    for step in range(1, args.rounds + 2):
      started = time.perf_counter()
      stored = digest.tree_digests(state)
      times['digest'].append(time.perf_counter() - started)
      started = time.perf_counter()
      ckpt.save(step, state)
      ckpt.wait_until_finished()
      times['save + wait (with digest)'].append(time.perf_counter() - started)
      started = time.perf_counter()
      restored = jax.block_until_ready(ckpt.restore(target, step))
      times['restore (with verify)'].append(time.perf_counter() - started)
      started = time.perf_counter()
      digest.verify(restored, stored, 'benchmark')
      times['verify'].append(time.perf_counter() - started)
    ckpt.close()
  finally:
    shutil.rmtree(root, ignore_errors=True)
  # The first round warms up Orbax and the file cache.
  medians = {k: float(np.median(v[1:])) for k, v in times.items()}
  rows = [{'what': k, 'seconds': round(v, 4)} for k, v in medians.items()]
  rows.append({'what': 'digest / save', 'seconds': round(
      medians['digest'] / medians['save + wait (with digest)'], 3)})
  rows.append({'what': 'verify / restore', 'seconds': round(
      medians['verify'] / medians['restore (with verify)'], 3)})
  common.print_table(rows, ['what', 'seconds'])
  common.write_json(args.out, {'machine': common.machine(), 'model': args.model,
                               'state_mib': nbytes / 2**20, 'rounds': args.rounds,
                               'medians_s': medians, 'rows': rows})


if __name__ == '__main__':
  main()
