"""Deploy forms on the CPU: XLA, TFLite (XNNPACK) and, when installed, timm on PyTorch eager.

    python benchmarks/deploy.py                                    # every family, batch 1 and 32
    python benchmarks/deploy.py --models vit_tiny --batches 32 --runtimes xla,tflite
    python benchmarks/deploy.py --outputs before.npz               # keep the logits ...
    python benchmarks/deploy.py --compare before.npz --runtimes xla  # ... and compare later
    python benchmarks/deploy.py --models configs/poolformer_s12.py:fashion,configs/riformer_s12.py:plain_fashion

For each model's deploy form (float32, 1000 classes, random weights drawn once with seed 0; a
config file instead of a name gives that config's model, classes and input size) and
each batch, the runtimes are timed in alternation in this one process (A, B, C, A, B, C, ...;
median of `--rounds` calls after warm-up):

* xla: `jax.jit(module.apply)`;
* tflite: the file `repvit_jax.deploy.export` writes (jax2tf, fixed batch), run by the LiteRT
  interpreter `export.make_interpreter` makes (XNNPACK, one thread per core); its relative
  error against the JAX logits is reported, and how many partitions XNNPACK took (1: the
  whole graph runs in XNNPACK; more: ops in between fell back to the reference kernels);
* tflite-whole (opt-in): the same graph run as one pass over the batch (`micro_batch=0`;
  ViT and MobileViT otherwise pass 4 images at a time, `export.tf_module`);
* tflite-int8 (opt-in): the same with dynamic-range int8 weights;
* timm: the timm model of the same architecture (`TIMM_NAMES`; RIFormer's deploy form has no
  timm twin, so poolformer_s12 stands in), `torch.inference_mode()`, one thread per core.
  Needs `pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31`; without them the column
  is left out.

RIFormer's deploy form against PoolFormer (the token mixer removed) is timed in alternation per
runtime too. Prints the tables and writes JSON (default benchmarks/results/deploy.json).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List

# timm first: its import loads triton's C extension, which crashes when TensorFlow (imported
# by the TFLite runtime) is already loaded; the other order works.
try:
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:
  timm = torch = None

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from repvit_jax.deploy import export  # pylint: disable=wrong-import-position
from repvit_jax.models.spec import ModelSpec  # pylint: disable=wrong-import-position
from repvit_jax.reparam import check  # pylint: disable=wrong-import-position
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

DEFAULT_MODELS = 'vit_tiny,levit_128s,mobilevit_xs,poolformer_s12,riformer_s12'
TIMM_NAMES = {'vit_tiny': 'vit_tiny_patch16_224', 'levit_128s': 'levit_128s',
              'mobilevit_xs': 'mobilevit_xs', 'poolformer_s12': 'poolformer_s12',
              'riformer_s12': 'poolformer_s12'}
RUNTIMES = ('xla', 'tflite', 'tflite-whole', 'tflite-int8', 'timm')
# runtime -> (quantize, micro_batch) of the exported TFLite model: 'tflite' is what
# `repvit_jax.deploy.export` writes by default; 'tflite-whole' the same graph run as one pass over the
# batch (micro_batch=0), to show what the model's own micro-batch buys.
TFLITE_RUNTIMES = {'tflite': (None, None), 'tflite-whole': (None, 0), 'tflite-int8': ('int8', None)}


def deploy_spec(name: str) -> ModelSpec:
  """The deploy spec of a registered model name, or of the model a config file gives
  (`configs/riformer_s12.py:fashion`: its sizes, classes and input size)."""
  if '.py' not in name:
    return ModelSpec.registered(name, deploy=True)
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  from repvit_jax import configs  # pylint: disable=import-outside-toplevel
  config = configs.load(name)
  classes = data.get_dataset_info(config.data).num_classes
  return ModelSpec.from_config(config, num_classes=classes).deploy_form()


def deploy_model(name: str):
  """(spec, module, variables) of a model's deploy form (`deploy_spec`), random weights."""
  spec = deploy_spec(name)
  module = spec.build()
  size = spec.input.image_size
  variables = jax.jit(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                          train=False))()
  return spec, module, check.perturb_params(jax.device_get(variables), 1)


def tflite_runner(exported: export.Exported, batch: int, quantize=None, micro_batch=None):
  """(run(images) -> logits, XNNPACK partitions) of the exported TFLite model."""
  interpreter = export.make_interpreter(export.tflite_bytes(
      exported, batch_size=batch, quantize=quantize, micro_batch=micro_batch))
  inp = interpreter.get_input_details()[0]['index']
  out = interpreter.get_output_details()[0]['index']

  def run(images):
    interpreter.set_tensor(inp, images)
    interpreter.invoke()
    return interpreter.get_tensor(out)

  return run, export.xnnpack_partitions(interpreter)


def timm_runner(name: str, images: np.ndarray) -> Callable[[], Any]:
  torch.set_num_threads(os.cpu_count())
  model = timm.create_model(TIMM_NAMES[name], pretrained=False).eval()
  batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

  def run():
    with torch.inference_mode():
      return model(batch).numpy()

  return run


def measure(name: str, batch: int, runtimes: List[str], rounds: int,
            outputs: Dict[str, np.ndarray]) -> Dict[str, Any]:
  spec, module, variables = deploy_model(name)
  size = spec.input.image_size
  images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
  forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
  device_images = jnp.asarray(images)
  logits = np.asarray(forward(variables, device_images))
  outputs[f'{name}/{batch}'] = logits
  row: Dict[str, Any] = {'model': name, 'batch': batch, 'image_size': size}
  fns: Dict[str, Callable[[], Any]] = {}
  if 'xla' in runtimes:
    fns['xla'] = lambda: forward(variables, device_images)
  exported = export.Exported(spec, module, variables)
  for runtime, (quantize, micro_batch) in TFLITE_RUNTIMES.items():
    if runtime in runtimes:
      run, partitions = tflite_runner(exported, batch, quantize, micro_batch)
      row[f'{runtime}_error'] = check.relative_error(run(images), logits)
      row[f'{runtime}_partitions'] = partitions
      fns[runtime] = (lambda r=run: r(images))
  if 'timm' in runtimes and timm is not None and name in TIMM_NAMES:
    fns['timm'] = timm_runner(name, images)
  seconds = common.time_interleaved(fns, rounds=rounds)
  for runtime, s in seconds.items():
    row[f'{runtime}_img_s'] = batch / s
  ours = [row[f'{r}_img_s'] for r in ('xla', 'tflite') if f'{r}_img_s' in row]
  if 'timm_img_s' in row and ours:
    row['best_vs_timm'] = max(ours) / row['timm_img_s']
  return row


def riformer_vs_poolformer(batch: int, runtimes: List[str], rounds: int,
                           pair=('poolformer_s12', 'riformer_s12')) -> List[Dict]:
  """RIFormer's deploy form against PoolFormer's (`pair`: names or configs of the two), per
  runtime, timed in alternation."""
  rows = []
  models = dict(zip(('poolformer_s12', 'riformer_s12'), (deploy_model(n) for n in pair)))
  size = models['poolformer_s12'][0].input.image_size
  images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
  for runtime in [r for r in runtimes if r in ('xla', 'tflite')]:
    fns = {}
    for name, (spec, module, variables) in models.items():
      if runtime == 'xla':
        forward = jax.jit(lambda v, x, m=module: m.apply(v, x, train=False))
        x = jnp.asarray(images)
        fns[name] = (lambda f=forward, v=variables, x=x: f(v, x))
      else:
        run, _ = tflite_runner(export.Exported(spec, module, variables), batch)
        fns[name] = (lambda r=run: r(images))
    seconds = common.time_interleaved(fns, rounds=rounds)
    rows.append({'runtime': runtime, 'batch': batch, 'image_size': size,
                 'poolformer_img_s': batch / seconds['poolformer_s12'],
                 'riformer_img_s': batch / seconds['riformer_s12'],
                 'riformer_vs_poolformer': seconds['poolformer_s12'] / seconds['riformer_s12']})
  return rows


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('--models', default=DEFAULT_MODELS,
                      help='comma-separated model names or config files (configs/x.py:arg)')
  parser.add_argument('--batches', default='1,32', help='comma-separated batch sizes')
  parser.add_argument('--runtimes', default='xla,tflite,timm',
                      help=f'comma-separated, from {RUNTIMES}')
  parser.add_argument('--rounds', type=int, default=7, help='timed calls per runtime')
  parser.add_argument('--outputs', help='write the XLA logits of every model/batch here (.npz)')
  parser.add_argument('--compare', help='an --outputs file: report the relative error of '
                                        "today's XLA logits against it")
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'deploy.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  runtimes = args.runtimes.split(',')
  unknown = sorted(set(runtimes) - set(RUNTIMES))
  if unknown:
    parser.error(f'unknown runtimes {unknown}: choose from {RUNTIMES}')
  if 'timm' in runtimes and timm is None:
    print('timm / torch not installed: the timm column is left out')
  batches = [int(b) for b in args.batches.split(',')]
  names = args.models.split(',')
  outputs: Dict[str, np.ndarray] = {}
  rows = []
  for batch in batches:
    for name in names:
      rows.append(measure(name, batch, runtimes, args.rounds, outputs))
      print(f'{name} batch {batch}: done', flush=True)
  if args.compare:
    before = np.load(args.compare)
    for row in rows:
      key = f'{row["model"]}/{row["batch"]}'
      if key in before:
        row['vs_before'] = check.relative_error(outputs[key], before[key])
  columns = ['model', 'batch'] + [f'{r}_img_s' for r in runtimes] + ['best_vs_timm'] + [
      f'{r}_{k}' for r in TFLITE_RUNTIMES if r in runtimes
      for k in ('error', 'partitions')] + (['vs_before'] if args.compare else [])
  common.print_table(rows, columns)
  pairs = []
  by_model = {deploy_spec(n).name: n for n in names}
  if {'poolformer_s12', 'riformer_s12'} <= set(by_model):
    pair = (by_model['poolformer_s12'], by_model['riformer_s12'])
    pairs = [r for b in batches for r in riformer_vs_poolformer(b, runtimes, args.rounds, pair)]
    print()
    common.print_table(pairs, ['runtime', 'batch', 'image_size', 'poolformer_img_s',
                               'riformer_img_s', 'riformer_vs_poolformer'])
  if args.outputs:
    np.savez(args.outputs, **outputs)
  machine = common.machine()
  if torch is not None:
    machine.update(torch=torch.__version__, timm=timm.__version__,
                   torch_threads=torch.get_num_threads())
  common.write_json(args.out, {'benchmark': 'deploy', 'machine': machine, 'results': rows,
                               'riformer_vs_poolformer': pairs})


if __name__ == '__main__':
  main()
