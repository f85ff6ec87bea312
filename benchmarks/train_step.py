"""Train-step speed and memory: vit_tiny vs tdrl_vit_tiny (collapsed and branch paths), the MAE
step (vanilla vs TDRL encoder, without and with the MAE-Base teacher), both ViT steps against
timm's, and the input pipeline.

    python benchmarks/train_step.py [--batches 32,128] [--dtypes float32,bfloat16] \
        [--suites classification,mae,timm,pipeline] [--rounds 5]

Each step is the trainer's own compiled step (the recipe of configs/<model>.py: AdamW, layer
decay, mixup for classification; the MAE-Lite recipe for MAE) on random images over every
device JAX sees. Contenders of one group (same batch and dtype) are timed in alternation in
this process, so their ratios hold on a busy machine; temporary memory is XLA's own figure
(`compiled.memory_analysis().temp_size_in_bytes`). The pipeline rows are the ImageNet
training preprocessing on generated 500x375 JPEGs (decoding included), ours (tf.data over
every core) against timm's transforms (PIL, one DataLoader worker per core) when timm is
installed, in alternating turns (`pipeline_throughput`).

The timm suite (float32, needs `pip install -e '.[timm]'`) times the trainer's vit_tiny and
tdrl_vit_tiny steps against timm's own step for the same recipe, alternating in this process:
`vit_tiny_patch16_224` (average pool + fc_norm, like ours) in PyTorch eager, one thread per
core, timm's `Mixup` (alpha 0.2) and `SoftTargetCrossEntropy`, forward, backward and timm's
AdamW with layer decay 0.85 and weight decay 0.05 (`create_optimizer_v2`), as timm's
train.py does each step. Prints one table and writes
JSON (benchmarks/results/train_step.json) with the machine and JAX version.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Optional

# timm before TensorFlow: its import loads triton's C extension, which crashes when TensorFlow
# is already loaded; the other order works.
try:
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:
  timm = torch = None

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
from repvit_jax.utils import host_memory  # pylint: disable=wrong-import-position

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

  return {'run': run, 'state': lambda: holder['state'], 'hlo': compiled.as_text(),
          'temp_bytes': int(memory.temp_size_in_bytes),
          'flops': float((cost or {}).get('flops', 0.0))}


def timm_step(batch: int, image_size: int) -> Dict[str, Any]:
  """timm's eager train step for vit_tiny with the recipe of configs/vit_tiny.py, in the
  shape of `compile_step`'s result (no XLA memory or FLOP figure)."""
  from timm.data import Mixup  # pylint: disable=import-outside-toplevel
  from timm.loss import SoftTargetCrossEntropy  # pylint: disable=import-outside-toplevel
  from timm.optim import create_optimizer_v2  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = timm.create_model('vit_tiny_patch16_224', pretrained=False, global_pool='avg',
                            num_classes=1000).train()
  optim = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05,
                              layer_decay=0.85)
  mixup = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=1000)
  loss_fn = SoftTargetCrossEntropy()
  rng = np.random.default_rng(0)
  images = torch.from_numpy(
      rng.normal(size=(batch, 3, image_size, image_size)).astype(np.float32))
  labels = torch.from_numpy(np.arange(batch) % 1000)

  def run():
    inputs, targets = mixup(images.clone(), labels)
    loss = loss_fn(model(inputs), targets)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    return loss.item()

  return {'run': run, 'temp_bytes': 0, 'flops': 0.0}


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
           'temp_vs_ref': c['temp_bytes'] / ref['temp_bytes'] if ref['temp_bytes'] else None,
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


def pipeline_config(directory: str, size: int):
  """Our ImageNet training preprocessing, set to the same augmentations as `timm_loader`:
  random-resized crops of 8-100%, flips, RandAugment m9 mstd0.5 (2 ops), no colour jitter
  (timm leaves it out beside RandAugment), no random erasing."""
  from repvit_jax.configs import common as config_common  # pylint: disable=import-outside-toplevel
  config = load_config('tdrl_vit_tiny').data
  config.name = f'folder:{directory}'
  config.image_size = size
  config.crop_scale = (0.08, 1.0)
  config.flip = True
  config.randaugment = config_common.randaugment(num_layers=2, magnitude=9.0, magnitude_std=0.5)
  config.color_jitter = 0.0
  config.random_erasing = 0.0
  return config


def timm_loader(directory: str, batch: int, size: int):
  """timm's training transforms on PIL (`create_transform`: RandomResizedCrop 8-100% bicubic,
  flip, rand-m9-mstd0.5, ToTensor, Normalize) in a torch DataLoader with one worker
  process per core: batches of (B, 3, size, size) float32."""
  import torchvision  # pylint: disable=import-outside-toplevel
  from timm.data import create_transform  # pylint: disable=import-outside-toplevel
  transform = create_transform(size, is_training=True, scale=(0.08, 1.0), hflip=0.5,
                               auto_augment='rand-m9-mstd0.5', interpolation='bicubic',
                               re_prob=0.0)
  dataset = torchvision.datasets.ImageFolder(os.path.join(directory, 'train'), transform)
  sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=1 << 30)
  return iter(torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler,
                                          num_workers=os.cpu_count(), drop_last=True,
                                          persistent_workers=True))


def pipeline_throughput(batch: int, size: int, steps: int, rounds: int) -> list:
  """Images per second of our input pipeline and, where installed, timm's, on the same
  generated ImageNet-sized JPEGs (decoding included), timed in alternation.

  Each contender keeps a bounded prefetch buffer, full when its turn starts; a turn takes
  `steps` batches and times the last `steps - skip` of them, after the buffer has drained, so
  each rate is the pipeline's own steady state. Between turns the machine idles a second, so
  the other contender's last prefetching ends before the next turn starts.
  """
  skip = 8
  with tempfile.TemporaryDirectory() as directory:
    write_jpegs(directory, 512)
    # timm's workers are forked first, before tf.data starts its threads: forking a process
    # whose threads run is unsafe.
    timm_iterator = timm_loader(directory, batch, size) if timm is not None else None
    iterators = {'ours (tf.data)': data.make_train_iterator(
        pipeline_config(directory, size), global_batch_size=batch, seed=0)}
    if timm_iterator is not None:
      iterators['timm (PIL, DataLoader)'] = timm_iterator
    for iterator in iterators.values():
      for _ in range(skip):
        next(iterator)
    seconds = {name: [] for name in iterators}
    for _ in range(rounds):
      for name, iterator in iterators.items():
        time.sleep(1.0)
        for index in range(steps):
          if index == skip:
            start = time.perf_counter()
          next(iterator)
        seconds[name].append((time.perf_counter() - start) / (steps - skip))
    del iterators  # stop tf.data's prefetching and the workers before the files go away
  cores = os.cpu_count()
  rows = []
  for name, times in seconds.items():
    step = sorted(times)[len(times) // 2]
    rows.append({'group': 'pipeline', 'what': name, 'batch': batch, 'dtype': 'uint8 JPEG',
                 'img_s': batch / step, 'step_ms': 1000 * step,
                 'note': f'{batch / step / cores:.1f} img/s per core ({cores} cores)'})
  if len(rows) == 2:
    rows[0]['time_vs_ref'] = rows[0]['step_ms'] / rows[1]['step_ms']
    rows[0]['reference'] = rows[1]['what']
  return rows


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
  parser.add_argument('--pipeline-steps', type=int, default=40,
                      help='batches per turn of an input pipeline (the first 8 untimed)')
  parser.add_argument('--rounds', type=int, default=5, help='timed steps per contender')
  parser.add_argument('--default-malloc', action='store_true',
                      help="leave malloc as it is (the trainer restarts with mimalloc, else "
                           'huge pages for glibc, on the CPU: repvit_jax/utils/host_memory.py)')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'train_step.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  suites = args.suites.split(',')
  malloc = 'default'
  # As the trainer does on a CPU, before JAX starts (this process restarts once); only for the
  # train steps: the input pipeline feeds accelerators, whose trainer leaves malloc as it is.
  if (host_memory.runs_on_cpu() and not args.default_malloc
      and set(suites) & {'classification', 'mae', 'timm'}):
    malloc = host_memory.restart_with_fast_malloc(purge_delay_ms=common.PURGE_DELAY_MS)
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
  if 'timm' in suites:
    if timm is None:
      raise SystemExit('the timm suite needs timm and torch: pip install -e \'.[timm]\'')
    for batch in map(int, args.batches.split(',')):
      builders = {name: (lambda c=c, o=o, b=batch: compile_step(
          classification_config(c, o, b, 'float32', size), size))
                  for name, (c, o) in CLASSIFICATION.items() if name != 'tdrl_vit_tiny branches'}
      builders['timm vit_tiny (eager)'] = lambda b=batch: timm_step(b, size)
      rows += time_group('timm', builders, batch, 'float32', args.rounds,
                         reference='timm vit_tiny (eager)')
  if 'pipeline' in suites:
    rows += pipeline_throughput(int(args.batches.split(',')[0]), size, args.pipeline_steps,
                                rounds=args.rounds)
    if malloc in ('mimalloc', 'huge pages'):
      print(f'note: the pipeline ran with malloc {malloc!r} (set for the train steps); run '
            '--suites pipeline alone for the rate an accelerator host sees')
  print('all groups:')
  common.print_table(rows, COLUMNS)
  common.write_json(args.out, {'benchmark': 'train_step', 'image_size': size,
                               'machine': common.machine(), 'malloc': malloc,
                               'results': rows})


if __name__ == '__main__':
  main()
