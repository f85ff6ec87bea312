"""Per-device memory of the trainer's compiled step for mesh.fsdp = 1, 2, 4, 8 (XLA's figures).

    python benchmarks/fsdp_memory.py                          # mae_vit_base, 8 CPU devices
    python benchmarks/fsdp_memory.py --model mae_vit_tiny --fsdp 1,2 --devices 2

The step is the trainer's own (`make_train_step`: the MAE loss, AdamW with the recipe's
schedule), jitted with the trainer's shardings (`sharding.state_shardings` over a
('data', 'fsdp') mesh) on `--devices` host devices
(`--xla_force_host_platform_device_count`), compiled ahead of time and never run. Parameters
and optimizer state do not depend on the image size, so the images are small (`--image-size`)
to keep the compile short. Reported per device, from `compiled.memory_analysis()`: the
arguments (the train state's shard plus the batch's), the temporaries, and the train state's
share computed from the shardings themselves.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _devices_from_argv(argv) -> int:
  for i, arg in enumerate(argv):
    if arg == '--devices':
      return int(argv[i + 1])
    if arg.startswith('--devices='):
      return int(arg.split('=', 1)[1])
  return 8


# Host devices must be set before JAX starts.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_'
                           f'device_count={_devices_from_argv(sys.argv)}').strip()

sys.path.insert(0, ROOT)
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from benchmarks import common  # pylint: disable=wrong-import-position
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position
from repvit_jax import configs  # pylint: disable=wrong-import-position
from repvit_jax.train import optimizer, sharding  # pylint: disable=wrong-import-position
from repvit_jax.train.mae import MAETask  # pylint: disable=wrong-import-position
from repvit_jax.train.state import create_state  # pylint: disable=wrong-import-position
from repvit_jax.train.step import make_train_step  # pylint: disable=wrong-import-position

GIB = 2.0 ** 30


def state_bytes_per_device(abstract_state, shardings) -> float:
  """Bytes of the train state one device holds under `shardings`."""
  total = 0.0
  for leaf, shard in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)):
    shape = shard.shard_shape(leaf.shape)
    total += float(np.prod(shape, dtype=np.int64)) * leaf.dtype.itemsize
  return total


def measure(model: str, fsdp: int, batch: int, image_size: int) -> dict:
  """The compiled step's per-device memory on a (devices / fsdp, fsdp) mesh."""
  config = configs.load('configs/mae_lite_tiny.py')
  config.model.name = model
  config.data.image_size = image_size
  config.batch_size = batch
  config.mesh = {'data': -1, 'fsdp': fsdp}
  config.optimizer.lr = 1e-3       # the peak lr changes no shape
  task = MAETask(config, num_classes=0)
  mesh = sharding.make_mesh(config.mesh)
  sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = jax.eval_shape(lambda: task.init_variables(jax.random.key(0), sample))['params']
  tx, _ = optimizer.make_optimizer(config.optimizer, params, config.total_steps)
  abstract = jax.eval_shape(lambda: create_state(
      lambda rng: task.init_variables(rng, sample), tx, 0))
  state_sharding = sharding.state_shardings(mesh, abstract)
  batch_sharding = sharding.batch_sharding(mesh)
  step = jax.jit(make_train_step(task, tx), donate_argnums=(0,),
                 in_shardings=(state_sharding, batch_sharding, None),
                 out_shardings=(state_sharding, None))
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  compiled = step.lower(abstract, {'image': images}, {}).compile()
  memory = compiled.memory_analysis()
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return {'model': model, 'parameters': count, 'fsdp': fsdp, 'data': mesh.shape['data'],
          'state_GiB': state_bytes_per_device(abstract, state_sharding) / GIB,
          'argument_GiB': memory.argument_size_in_bytes / GIB,
          'temp_GiB': memory.temp_size_in_bytes / GIB,
          'output_GiB': memory.output_size_in_bytes / GIB}


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument('--model', default='mae_vit_base', help='a registered MAE model')
  parser.add_argument('--fsdp', default='1,2,4,8', help='comma list of fsdp sizes')
  parser.add_argument('--devices', type=int, default=8, help='host devices (set before JAX starts)')
  parser.add_argument('--batch', type=int, default=8, help='global batch (a multiple of devices)')
  parser.add_argument('--image-size', type=int, default=64, help='image side (16 patches at 64)')
  parser.add_argument('--json', default='', help='write the rows to this JSON file')
  args = parser.parse_args(argv)
  if jax.device_count() != args.devices:
    raise SystemExit(f'error: JAX sees {jax.device_count()} devices, not {args.devices}: '
                     'XLA_FLAGS was read before this script set it')
  rows = []
  for fsdp in (int(f) for f in args.fsdp.split(',')):
    rows.append(measure(args.model, fsdp, args.batch, args.image_size))
    common.print_table(rows[-1:], list(rows[-1]))
  print()
  common.print_table(rows, list(rows[0]))
  if args.json:
    common.write_json(args.json, {'machine': common.machine(), 'rows': rows})
  return 0


if __name__ == '__main__':
  sys.exit(main())
