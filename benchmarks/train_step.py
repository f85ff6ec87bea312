"""Train-step speed and memory: vit_tiny vs tdrl_vit_tiny (collapsed and branch paths), the MAE
step (vanilla vs TDRL encoder, without and with the MAE-Base teacher), and the input pipeline.

    python benchmarks/train_step.py [--batches 32,128] [--dtypes float32,bfloat16] \
        [--suites classification,mae,pipeline] [--rounds 5]

Each step is the trainer's own compiled step (the recipe of configs/<model>.py: AdamW, layer
decay, mixup for classification; the MAE-Lite recipe for MAE) on random images over every
device JAX sees. Contenders of one group (same batch and dtype) are timed in alternation in
this process, so their ratios hold on a busy machine; temporary memory is XLA's own figure
(`compiled.memory_analysis().temp_size_in_bytes`). The pipeline row is the ImageNet
fine-tuning preprocessing on generated JPEGs (decoding included). Prints one table and writes
JSON (benchmarks/results/train_step.json) with the machine and JAX version.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Optional

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
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

COLUMNS = ['group', 'what', 'batch', 'dtype', 'img_s', 'step_ms', 'time_vs_ref', 'temp_GiB',
           'temp_vs_ref', 'gflop_per_step', 'reference', 'note']

# name -> (config file, overrides of config.model): the classification contenders.
CLASSIFICATION = {
    'vit_tiny': ('vit_tiny', {}),
    'tdrl_vit_tiny collapsed': ('tdrl_vit_tiny', {'tdrl.train_path': 'collapsed'}),
    'tdrl_vit_tiny branches': ('tdrl_vit_tiny', {'tdrl.train_path': 'branches'}),
}
# name -> (student, teacher or None): the MAE contenders.
MAE = {
    'mae_vit_tiny': ('mae_vit_tiny', None),
    'mae_tdrl_vit_tiny': ('mae_tdrl_vit_tiny', None),
    'mae_vit_tiny + teacher': ('mae_vit_tiny', 'mae_vit_base'),
    'mae_tdrl_vit_tiny + teacher': ('mae_tdrl_vit_tiny', 'mae_vit_base'),
}


def load_config(name: str, arg: str = ''):
  from repvit_jax import configs  # pylint: disable=import-outside-toplevel
  return configs.load(name + (f':{arg}' if arg else ''))


def set_field(config, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split('.')
  for parent in parents:
    config = config[parent]
  config[leaf] = value


def classification_config(config_name: str, model_overrides: Dict[str, Any], batch: int,
                          dtype: str, image_size: int):
  config = load_config(config_name)
  for key, value in model_overrides.items():
    set_field(config.model, key, value)
  config.model.dtype = dtype
  config.batch_size = batch
  config.data.image_size = image_size
  return config


def mae_config(student: str, teacher: Optional[str], batch: int, dtype: str, image_size: int):
  import repvit_jax as rj  # pylint: disable=import-outside-toplevel
  config = load_config('mae_tdrl_vit_tiny' if 'tdrl' in student else 'mae_lite_tiny')
  config.model.name = student
  config.model.dtype = dtype
  config.batch_size = batch
  config.data.image_size = image_size
  if teacher:
    config.teacher.model = teacher
    config.teacher.init_from = 'random weights (benchmark)'
    config.teacher.pairs = ((rj.create_model(student).depth, rj.create_model(teacher).depth),)
  return config


def compile_step(config, image_size: int) -> Dict[str, Any]:
  """The trainer's compiled step for `config` on random data: {'run', 'state', 'temp_bytes',
  'flops'} ('state' returns the current train state)."""
  batch = config.batch_size
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(batch, mesh)
  task = tasks.build(config, DatasetInfo(name='synthetic', num_classes=1000, num_train=batch,
                                         num_eval=batch, train_split='train',
                                         eval_split='test'))
  sample = jnp.zeros((1, image_size, image_size, 3))
  params = jax.eval_shape(lambda: task.init_variables(jax.random.key(0), sample))['params']
  tx, _ = optimizer.make_optimizer(optimizer.with_peak_lr(config.optimizer, batch)[0], params,
                                   config.total_steps)
  init = lambda: create_state(lambda rng: task.init_variables(rng, sample), tx, 0)
  state_sharding = sharding.state_shardings(mesh, jax.eval_shape(init))
  state = jax.jit(init, out_shardings=state_sharding)()
  # A teacher gets random weights: speed does not depend on their values.
  frozen = {} if task.teacher is None else _random_teacher(task, sample)
  batch_sharding = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32)
  labels = np.arange(batch, dtype=np.int32) % 1000
  inputs = sharding.to_global({'image': images, 'label': labels}, batch_sharding)
  step = jax.jit(make_train_step(task, tx), donate_argnums=(0,),
                 in_shardings=(state_sharding, batch_sharding, None),
                 out_shardings=(state_sharding, None))
  compiled = step.lower(state, inputs, frozen).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = {'state': state}

  def run():
    holder['state'], metrics = compiled(holder['state'], inputs, frozen)
    return metrics['train/loss']

  return {'run': run, 'state': lambda: holder['state'],
          'temp_bytes': int(memory.temp_size_in_bytes),
          'flops': float((cost or {}).get('flops', 0.0))}


def _random_teacher(task, sample):
  """The MAE teacher's deploy variables, randomly initialised."""
  teacher = task.teacher
  variables = jax.jit(lambda: teacher.init({'params': jax.random.key(1),
                                            'mask': jax.random.key(2)}, sample, train=False,
                                           decode=False))()
  return {'teacher': variables}


def memory_limit_bytes() -> int:
  """Half of this host's memory: a step whose XLA temporaries need more is compiled (for its
  memory figure) but not run, rather than killed by the OOM killer with every result."""
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2
  except (ValueError, OSError, AttributeError):
    return 1 << 62


def time_group(group: str, builders: Dict[str, Callable[[], Dict[str, Any]]], batch: int,
               dtype: str, rounds: int, reference: str):
  """Compiles every contender, times those that fit in memory in alternation, prints and
  returns table rows."""
  compiled = {}
  for name, build in builders.items():
    start = time.perf_counter()
    compiled[name] = build()
    print(f'  compiled {group} {name} (batch {batch}, {dtype}) in '
          f'{time.perf_counter() - start:.0f} s, temp {compiled[name]["temp_bytes"] / 2**30:.2f} '
          'GiB', flush=True)
  limit = memory_limit_bytes() if jax.default_backend() == 'cpu' else 1 << 62
  runnable = {n: c['run'] for n, c in compiled.items() if c['temp_bytes'] <= limit}
  seconds = common.time_interleaved(runnable, rounds=rounds)
  rows = []
  for name, c in compiled.items():
    ref = compiled[reference]
    row = {'group': group, 'what': name, 'batch': batch, 'dtype': dtype,
           'temp_GiB': c['temp_bytes'] / 2**30,
           'temp_vs_ref': c['temp_bytes'] / max(ref['temp_bytes'], 1),
           'gflop_per_step': c['flops'] / 1e9, 'reference': reference}
    if name in seconds:
      row.update(img_s=batch / seconds[name], step_ms=1e3 * seconds[name],
                 time_vs_ref=seconds[name] / seconds[reference] if reference in seconds
                 else None)
    else:
      row['note'] = f'not run: needs more than {limit / 2**30:.0f} GiB'
    rows.append(row)
  common.print_table(rows, COLUMNS)
  return rows


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
  config = load_config('tdrl_vit_tiny').data
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
  return {'group': 'pipeline', 'what': 'JPEG decode + ImageNet train preprocessing',
          'img_s': steps * batch / seconds, 'step_ms': 1000 * seconds / steps, 'batch': batch,
          'dtype': 'uint8'}


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('--batches', default='32,128', help='comma-separated batch sizes')
  parser.add_argument('--dtypes', default='float32,bfloat16', help='comma-separated compute dtypes')
  parser.add_argument('--suites', default='classification,mae,pipeline',
                      help='comma-separated: which comparisons to run')
  parser.add_argument('--contenders', default=','.join(CLASSIFICATION),
                      help='classification contenders to run (comma-separated)')
  parser.add_argument('--mae-batch', type=int, default=32, help='batch size of the MAE suite')
  parser.add_argument('--mae-dtypes', default='float32', help='compute dtypes of the MAE suite')
  parser.add_argument('--image-size', type=int, default=224, help='input side in pixels')
  parser.add_argument('--pipeline-steps', type=int, default=20,
                      help='batches timed per input pipeline')
  parser.add_argument('--rounds', type=int, default=5, help='timed steps per contender')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'train_step.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  suites = args.suites.split(',')
  size = args.image_size
  rows = []
  if 'classification' in suites:
    chosen = {k: v for k, v in CLASSIFICATION.items() if k in args.contenders.split(',')}
    for dtype in args.dtypes.split(','):
      for batch in map(int, args.batches.split(',')):
        builders = {name: (lambda c=c, o=o, b=batch, d=dtype: compile_step(
            classification_config(c, o, b, d, size), size)) for name, (c, o) in chosen.items()}
        rows += time_group('classification', builders, batch, dtype, args.rounds,
                           reference=next(iter(chosen)))
  if 'mae' in suites:
    for dtype in args.mae_dtypes.split(','):
      builders = {name: (lambda s=s, t=t, d=dtype: compile_step(
          mae_config(s, t, args.mae_batch, d, size), size)) for name, (s, t) in MAE.items()}
      group = time_group('mae', builders, args.mae_batch, dtype, args.rounds,
                         reference='mae_vit_tiny')
      # TDRL over vanilla with the same teacher (or none).
      by_name = {r['what']: r for r in group}
      for r in group:
        r['reference'] = r['what'].replace('mae_tdrl_vit_tiny', 'mae_vit_tiny')
        ref = by_name[r['reference']]
        if 'step_ms' in r and 'step_ms' in ref:
          r['time_vs_ref'] = r['step_ms'] / ref['step_ms']
        r['temp_vs_ref'] = r['temp_GiB'] / ref['temp_GiB']
      rows += group
  if 'pipeline' in suites:
    rows.append(pipeline_throughput(int(args.batches.split(',')[0]), size, args.pipeline_steps))
  print('all groups:')
  common.print_table(rows, COLUMNS)
  common.write_json(args.out, {'benchmark': 'train_step', 'image_size': size,
                               'machine': common.machine(), 'results': rows})


if __name__ == '__main__':
  main()
