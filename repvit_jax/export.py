"""Exporting deploy models to TensorFlow: a SavedModel, or TFLite (float32 / int8 weights).

    from repvit_jax import export
    exported = export.load_for_export('runs/demo')            # workdir, model dir or checkpoint
    export.export_tflite(exported, 'demo.tflite')             # float32
    export.export_tflite(exported, 'demo_int8.tflite', quantize='int8')  # dynamic-range int8
    export.export_savedmodel(exported, 'demo_savedmodel')
    logits = export.run_tflite('demo.tflite', images)         # (B, S, S, 3) -> (B, classes)

or `python -m repvit_jax.export WORKDIR_OR_CKPT OUT --format tflite|savedmodel`.

The model is always exported in its deploy form (a training-form source is reparameterized
first), through `jax2tf.convert` with a fixed input shape (batch, S, S, 3), float32, NHWC,
already normalised as the model was trained (the input pipeline's mean/std are not part of
the graph). The TF function returns the logits. TensorFlow is imported only inside these
functions: `import repvit_jax` never imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax import io
from repvit_jax.models.registry import create_model, get_spec
from repvit_jax.reparam.tree import reparameterize

QUANTIZE = (None, 'int8')
DEFAULT_IMAGE_SIZE = {'mobilevit_': 256}


@dataclasses.dataclass
class Exported:
  """A deploy-form model ready to export.

  Attributes:
    module: the deploy-form flax module. variables: its variables (host arrays).
    name, num_classes, overrides: the `create_model` recipe. image_size: the input side.
  """
  module: Any
  variables: Dict[str, Any]
  name: str
  num_classes: int
  overrides: Dict[str, Any]
  image_size: int

  _forward: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

  def apply(self, images):
    """(B, S, S, 3) float32 -> logits, in JAX (the reference for the exported graph)."""
    if self._forward is None:
      module = self.module
      self._forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
    return self._forward(self.variables, jnp.asarray(images, jnp.float32))


def load_for_export(source: str, *, model: Optional[str] = None,
                    num_classes: Optional[int] = None,
                    overrides: Optional[Mapping[str, Any]] = None,
                    image_size: Optional[int] = None) -> Exported:
  """Loads a model in its deploy form from a model dir, a workdir or a checkpoint.

  Args:
    source: a model directory (`repvit_jax.io`; training-form ones are reparameterized), a
      training workdir (its `deploy/` model directory when the run finished, else its latest
      checkpoint), a checkpoint directory or one step of it.
    model, num_classes, overrides: the recipe, needed only for a bare checkpoint (which does
      not record its model); `num_classes` defaults to the head's rows.
    image_size: input side; None infers it from the position or bias tables, else the
      family's default (224; 256 for MobileViT).

  Raises:
    FileNotFoundError: nothing loadable at `source`. ValueError: a checkpoint without `model`.
  """
  source = os.path.expanduser(os.fspath(source))
  if not os.path.exists(source):
    raise FileNotFoundError(f'{source} does not exist: give a workdir, a model directory or a '
                            'checkpoint')
  deploy_dir = os.path.join(source, 'deploy')
  if io.is_model_dir(source) or io.is_model_dir(deploy_dir):
    directory = source if io.is_model_dir(source) else deploy_dir
    with open(os.path.join(directory, io.MODEL_FILE)) as f:
      recipe = json.load(f)
    name, num_classes = recipe['name'], int(recipe['num_classes'])
    overrides = dict(recipe.get('overrides') or {})
    variables = io.load_variables(directory)
  else:
    if not model:
      raise ValueError(f'{source} is not a model directory, so it does not say which model it '
                       'holds: pass --model NAME (and --set key=value for the overrides the '
                       'run used, or --config configs/<name>.py[:arg])')
    from repvit_jax.train import pretrained  # pylint: disable=import-outside-toplevel
    variables = pretrained.read_variables(source)
    name = model
    overrides = dict(overrides or {})
    if num_classes is None:
      num_classes = _head_rows(variables)
  variables = {k: v for k, v in variables.items() if v}
  # Compiled once as a whole: much faster than folding op by op.
  deploy = jax.tree.map(np.asarray, jax.jit(reparameterize)(variables))
  module = create_model(name, num_classes=int(num_classes), deploy=True, **overrides)
  if image_size is None:
    image_size = infer_image_size(name, deploy, overrides)
  return Exported(module, deploy, name, int(num_classes), overrides, int(image_size))


def infer_image_size(name: str, variables: Mapping[str, Any],
                     overrides: Optional[Mapping[str, Any]] = None) -> int:
  """The input side a model's tables were made for: ViT `pos_embed` (1, 1 + g*g, D) -> g * p;
  LeViT's first bias table (H, R*R) -> 16 R; otherwise the family default."""
  params = variables.get('params', {})
  pos = params.get('pos_embed')
  if pos is not None:
    grid = int(round(math.sqrt(np.shape(pos)[1] - 1)))
    patch = (overrides or {}).get('patch_size', get_spec(name).kwargs.get('patch_size', 16))
    return grid * int(patch)
  try:
    bias = params['stages_0']['blocks_0']['attn']['attention_biases']
    return int(round(math.sqrt(np.shape(bias)[1]))) * 16
  except (KeyError, TypeError):
    pass
  for prefix, size in DEFAULT_IMAGE_SIZE.items():
    if name.startswith(prefix):
      return size
  return 224


def _head_rows(variables) -> int:
  head = variables.get('params', {}).get('head')
  if isinstance(head, Mapping):
    for path in (('kernel',), ('linear', 'kernel'), ('cls', 'linear', 'kernel')):
      node = head
      for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
      if node is not None:
        return int(np.shape(node)[-1])
  return 0


def _tf():
  """TensorFlow, kept off the GPUs (JAX owns them), imported on first use."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass
  return tf


def tf_module(exported: Exported, *, batch_size: int = 1):
  """A `tf.Module`: `.params` (tf.Variables of the deploy variables) and `.serve`, a
  `tf.function` mapping `images` (batch_size, S, S, 3) float32 to {'logits': ...}.

  Built with `jax2tf.convert(..., polymorphic_shapes=None, with_gradient=False)`: a fixed
  input shape, no gradient. The weights are variables rather than graph constants, so a
  SavedModel stores them once, in its `variables/`.
  """
  tf = _tf()
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  module = exported.module
  params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False),
                                 exported.variables)
  fn = jax2tf.convert(lambda v, images: module.apply(v, images, train=False),
                      polymorphic_shapes=None, with_gradient=False)
  size = exported.image_size
  spec = tf.TensorSpec((batch_size, size, size, 3), tf.float32, name='images')
  holder = tf.Module()
  holder.params = params
  holder.serve = tf.function(lambda images: {'logits': fn(params, images)},
                             input_signature=[spec], autograph=False)
  return holder


def export_savedmodel(exported: Exported, directory: str, *, batch_size: int = 1) -> str:
  """Writes a TF SavedModel whose `serving_default` signature maps `images` to `logits`.

  Load it with `tf.saved_model.load(directory).signatures['serving_default'](images=x)`.
  """
  tf = _tf()
  holder = tf_module(exported, batch_size=batch_size)
  tf.saved_model.save(holder, directory,
                      signatures={'serving_default': holder.serve.get_concrete_function()})
  return directory


def tflite_bytes(exported: Exported, *, quantize: Optional[str] = None,
                 batch_size: int = 1) -> bytes:
  """The TFLite flatbuffer. quantize=None: float32; 'int8': dynamic-range int8 weights
  (`tf.lite.Optimize.DEFAULT`, no calibration data; activations stay float)."""
  if quantize not in QUANTIZE:
    raise ValueError(f'quantize must be one of {QUANTIZE}, got {quantize!r}')
  tf = _tf()
  holder = tf_module(exported, batch_size=batch_size)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [holder.serve.get_concrete_function()], holder)
  if quantize == 'int8':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def export_tflite(exported: Exported, path: str, *, quantize: Optional[str] = None,
                  batch_size: int = 1) -> str:
  """Writes the TFLite model to `path` (see `tflite_bytes`); returns the path."""
  payload = tflite_bytes(exported, quantize=quantize, batch_size=batch_size)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(payload)
  return path


def make_interpreter(model: str | bytes):
  """A TFLite interpreter: LiteRT's (`ai-edge-litert`) when installed, else TF's own."""
  kwargs = ({'model_content': model} if isinstance(model, (bytes, bytearray))
            else {'model_path': os.fspath(model)})
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  except ImportError:
    tf = _tf()
    with warnings.catch_warnings():
      # TF 2.21 still ships tf.lite.Interpreter, with a deprecation warning for LiteRT.
      warnings.simplefilter('ignore')
      interpreter = tf.lite.Interpreter(**kwargs)
  else:
    interpreter = Interpreter(**kwargs)
  interpreter.allocate_tensors()
  return interpreter


def run_tflite(model: str | bytes, images: np.ndarray) -> np.ndarray:
  """Runs a TFLite model over (N, S, S, 3) images in chunks of its batch size -> (N, ...)."""
  interpreter = make_interpreter(model)
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  batch = int(inp['shape'][0])
  images = np.asarray(images, np.float32)
  if images.shape[1:] != tuple(inp['shape'][1:]):
    raise ValueError(f'the TFLite model takes {tuple(inp["shape"])} inputs, got '
                     f'{images.shape}')
  results = []
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    pad = batch - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
    interpreter.set_tensor(inp['index'], chunk)
    interpreter.invoke()
    results.append(np.array(interpreter.get_tensor(out['index']))[:batch - pad])
  return np.concatenate(results)


FORMATS = ('tflite', 'tflite-int8', 'savedmodel')


def eval_split(data_config, batch_size: int = 128):
  """The whole eval split of a data config, preprocessed as in training's evaluation:
  (images (N, S, S, 3) float32, labels (N,) int32)."""
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  images, labels = [], []
  for batch in data.make_eval_iterator(data_config, global_batch_size=batch_size):
    keep = np.asarray(batch['mask']) > 0
    images.append(np.asarray(batch['image'])[keep])
    labels.append(np.asarray(batch['label'])[keep])
  return np.concatenate(images), np.concatenate(labels)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy of (N, classes) logits."""
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _load_config_recipe(spec: str):
  """'configs/x.py[:arg]' -> (model name, overrides, num_classes) as the trainer builds them."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, _, arg = spec.partition(':')
  loader_spec = importlib.util.spec_from_file_location('_export_config', path)
  if loader_spec is None or loader_spec.loader is None:
    raise FileNotFoundError(f'config file {path} not found')
  module = importlib.util.module_from_spec(loader_spec)
  loader_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  from repvit_jax.train.classification import model_overrides  # pylint: disable=import-outside-toplevel
  num_classes = data.get_dataset_info(config.data).num_classes
  overrides = model_overrides(config.model)
  overrides.pop('dtype', None)  # exported graphs are float32 whatever the training dtype
  return config.model.name, overrides, num_classes, int(
      config.data.image_size), config.data


def main(argv=None) -> int:
  """python -m repvit_jax.export SRC OUT --format tflite|tflite-int8|savedmodel[,...]."""
  import argparse  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from repvit_jax.convert.__main__ import parse_overrides  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(
      prog='python -m repvit_jax.export',
      description='Export a deploy model to TFLite (float32 or dynamic-range int8) or a TF '
                  'SavedModel, through jax2tf.')
  parser.add_argument('src', help='training workdir (uses <workdir>/deploy), model directory, '
                                  'or checkpoint directory (needs --model or --config)')
  parser.add_argument('out', help='output: a .tflite file (one TFLite format) or a directory '
                                  '(model.tflite, model_int8.tflite, savedmodel/)')
  parser.add_argument('--format', default='tflite',
                      help=f'comma-separated, from {", ".join(FORMATS)} (default tflite)')
  parser.add_argument('--batch-size', type=int, default=1, help='fixed batch of the graph')
  parser.add_argument('--image-size', type=int, default=None, help='default: inferred')
  parser.add_argument('--model', default=None, help='model name, for a bare checkpoint')
  parser.add_argument('--num-classes', type=int, default=None)
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE', help='model override for a bare checkpoint')
  parser.add_argument('--config', default=None, metavar='FILE[:ARG]',
                      help='the training config of a bare checkpoint (gives model, overrides, '
                           'classes and image size)')
  parser.add_argument('--no-verify', dest='verify', action='store_false',
                      help='skip running the exported TFLite model against JAX')
  parser.add_argument('--evaluate', action='store_true',
                      help='top-1 accuracy of JAX and of each TFLite model on the eval split '
                           'of --config\'s data set')
  args = parser.parse_args(argv)
  formats = [f.strip() for f in args.format.split(',') if f.strip()]
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    parser.error(f'unknown --format {unknown or args.format!r}; choose from {FORMATS}')
  model, overrides, num_classes = args.model, parse_overrides(args.overrides), args.num_classes
  image_size, data_config = args.image_size, None
  if args.evaluate and not args.config:
    parser.error('--evaluate needs --config (it names the data set and its preprocessing)')
  try:
    if args.config:
      model, config_overrides, config_classes, config_size, data_config = _load_config_recipe(
          args.config)
      overrides = {**config_overrides, **overrides}
      num_classes = num_classes if num_classes is not None else config_classes
      image_size = image_size or config_size
    exported = load_for_export(args.src, model=model, num_classes=num_classes,
                               overrides=overrides, image_size=image_size)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{exported.name} (deploy form, {exported.num_classes} classes, input '
        f'{args.batch_size}x{exported.image_size}x{exported.image_size}x3)')
  single_file = args.out.endswith('.tflite')
  if single_file and (len(formats) > 1 or 'savedmodel' in formats):
    parser.error('OUT is a .tflite file: give one TFLite format, or a directory')
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
  for fmt in formats:
    start = time.time()
    if fmt == 'savedmodel':
      path = export_savedmodel(exported, os.path.join(args.out, 'savedmodel'),
                               batch_size=args.batch_size)
      size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
      print(f'  savedmodel -> {path} ({size / 1e6:.2f} MB, {time.time() - start:.1f} s)')
      continue
    quantize = 'int8' if fmt == 'tflite-int8' else None
    path = args.out if single_file else os.path.join(
        args.out, 'model_int8.tflite' if quantize else 'model.tflite')
    export_tflite(exported, path, quantize=quantize, batch_size=args.batch_size)
    line = f'  {fmt} -> {path} ({os.path.getsize(path) / 1e6:.2f} MB, {time.time() - start:.1f} s'
    if reference is not None:
      error = np.max(np.abs(run_tflite(path, images) - reference)) / max(
          np.max(np.abs(reference)), 1e-30)
      line += f', max rel. error vs JAX {error:.2e}'
    if eval_images is not None:
      line += f', top-1 {accuracy(run_tflite(path, eval_images), eval_labels):.4f}'
    print(line + ')')
  return 0


__all__ = ['Exported', 'load_for_export', 'infer_image_size', 'tf_module', 'main',
           'export_savedmodel', 'tflite_bytes', 'export_tflite', 'make_interpreter',
           'run_tflite', 'eval_split', 'accuracy', 'QUANTIZE', 'FORMATS']


if __name__ == '__main__':
  import sys as _sys  # pylint: disable=import-outside-toplevel
  _sys.exit(main())
