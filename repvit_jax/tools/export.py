"""python -m repvit_jax.tools.export SRC OUT --format tflite|tflite-int8|savedmodel[,...]
(or `repvit-export`): a deploy model as TFLite and/or a TF SavedModel, checked against JAX.

    repvit-export runs/demo exported --format tflite,tflite-int8,savedmodel --evaluate

The library is `repvit_jax.deploy.export`; this is its command line.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from repvit_jax.deploy.export import (export_savedmodel, export_tflite, load_for_export,
                                      run_tflite, savedmodel_runner, write_contract)
from repvit_jax.tools import cli
from repvit_jax.tools.runs import accuracy, config_spec, data_config_for, eval_split

FORMATS = ('tflite', 'tflite-int8', 'savedmodel')


def main(argv=None) -> int:
  """repvit-export SRC OUT --format tflite|tflite-int8|savedmodel[,...]."""
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(
      prog='repvit-export',
      description='Export a deploy model to TFLite (float32 or dynamic-range int8) or a TF '
                  'SavedModel, through jax2tf.')
  parser.add_argument('src', help='training workdir (its latest checkpoint), model directory, '
                                  'or checkpoint directory; each says which model it holds')
  parser.add_argument('out', help='output: a .tflite file (one TFLite format) or a directory '
                                  '(model.tflite, model_int8.tflite, savedmodel/)')
  parser.add_argument('--format', default='tflite',
                      help=f'comma-separated, from {", ".join(FORMATS)} (default tflite)')
  parser.add_argument('--batch-size', type=cli.positive_int, default=1,
                      help='fixed batch of the graph (default 1)')
  parser.add_argument('--micro-batch', type=int, default=None,
                      help='TFLite: images per pass through the network inside the graph '
                           '(default: the model\'s, 4 for ViT and MobileViT, which run large '
                           'batches faster so on CPU; 0: the whole batch at once)')
  parser.add_argument('--image-size', type=int, default=None,
                      help='default: the saved input contract\'s')
  parser.add_argument('--model', default=None,
                      help='model name, overriding the saved one (needed only for checkpoints '
                           'that record none)')
  parser.add_argument('--num-classes', type=int, default=None)
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE', help='model override on top of the saved ones')
  parser.add_argument('--config', default=None, metavar='FILE[:ARG]',
                      help='a training config overriding the saved spec and naming the '
                           '--evaluate data set (default: the run\'s own config.json)')
  parser.add_argument('--no-verify', dest='verify', action='store_false',
                      help='skip running the exported TFLite model against JAX')
  parser.add_argument('--evaluate', action='store_true',
                      help='top-1 accuracy of JAX and of each TFLite model on the eval split '
                           'of the run\'s data set (or --config\'s)')
  args = parser.parse_args(argv)
  return cli.run(lambda: _main(parser, args))


def _main(parser, args) -> int:
  """`main` once the arguments parse: every check before any work."""
  import time  # pylint: disable=import-outside-toplevel
  formats = [f.strip() for f in args.format.split(',') if f.strip()]
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    parser.error(f'unknown --format {unknown or args.format!r}; choose from {FORMATS}')
  if args.micro_batch is not None and args.micro_batch < 0:
    parser.error(f'--micro-batch {args.micro_batch}: give a positive number of images per '
                 'pass, or 0 for the whole batch at once')
  single_file = args.out.endswith('.tflite')
  if single_file and (len(formats) > 1 or 'savedmodel' in formats):
    parser.error('OUT is a .tflite file: give one TFLite format, or a directory')
  cli.check_output(args.out, 'file' if single_file else 'directory')
  spec = config_spec(args.config) if args.config else None
  exported = load_for_export(args.src, spec=spec, model=args.model,
                             num_classes=args.num_classes,
                             overrides=cli.parse_overrides(args.overrides),
                             image_size=args.image_size)
  data_config = data_config_for(args.src, args.config) if args.evaluate else None
  if args.evaluate and data_config is None:
    raise ValueError(f'--evaluate: {args.src} is not in a training workdir (no config.json '
                     'names its data set); add --config configs/<name>.py[:arg]')
  print(f'{exported.name} (deploy form, {exported.num_classes} classes, input '
        f'{args.batch_size}x{exported.image_size}x{exported.image_size}x3)')
  images = np.random.default_rng(0).normal(
      size=(args.batch_size, exported.image_size, exported.image_size, 3)).astype(np.float32)
  reference = np.asarray(exported.apply(images)) if args.verify else None
  eval_images = eval_labels = None
  if args.evaluate:
    eval_images, eval_labels = eval_split(data_config)
    logits = np.concatenate([np.asarray(exported.apply(eval_images[i:i + 128]))
                             for i in range(0, len(eval_images), 128)])
    print(f'  JAX (float32): top-1 {accuracy(logits, eval_labels):.4f} on '
          f'{len(eval_labels)} eval images')
  names = exported.spec.class_names
  if not names:     # a model saved before model.json carried them: the run's data set
    from repvit_jax.tools.predict import class_names  # pylint: disable=import-outside-toplevel
    names = class_names(args.src)
  contract_path = (os.path.splitext(args.out)[0] + '.json' if single_file
                   else os.path.join(args.out, 'contract.json'))
  os.makedirs(os.path.dirname(os.path.abspath(contract_path)), exist_ok=True)
  write_contract(exported, contract_path, batch_size=args.batch_size, class_names=names)
  print(f'  input contract and class names -> {contract_path}')
  for fmt in formats:
    start = time.time()
    if fmt == 'savedmodel':
      path = export_savedmodel(exported, os.path.join(args.out, 'savedmodel'),
                               batch_size=args.batch_size)
      size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
      line = f'  savedmodel -> {path} ({size / 1e6:.2f} MB, {time.time() - start:.1f} s'
      if reference is not None or eval_images is not None:
        run = savedmodel_runner(path, args.batch_size)
        if reference is not None:
          error = np.max(np.abs(run(images) - reference)) / max(np.max(np.abs(reference)), 1e-30)
          line += f', max rel. error vs JAX {error:.2e}'
        if eval_images is not None:
          line += f', top-1 {accuracy(run(eval_images), eval_labels):.4f}'
      print(line + ')')
      continue
    quantize = 'int8' if fmt == 'tflite-int8' else None
    path = args.out if single_file else os.path.join(
        args.out, 'model_int8.tflite' if quantize else 'model.tflite')
    export_tflite(exported, path, quantize=quantize, batch_size=args.batch_size,
                  micro_batch=args.micro_batch)
    line = f'  {fmt} -> {path} ({os.path.getsize(path) / 1e6:.2f} MB, {time.time() - start:.1f} s'
    if reference is not None:
      error = np.max(np.abs(run_tflite(path, images) - reference)) / max(
          np.max(np.abs(reference)), 1e-30)
      line += f', max rel. error vs JAX {error:.2e}'
    if eval_images is not None:
      line += f', top-1 {accuracy(run_tflite(path, eval_images), eval_labels):.4f}'
    print(line + ')')
  return 0


if __name__ == '__main__':
  sys.exit(main())
