"""Exporting deploy models to TensorFlow: a SavedModel, or TFLite (float32 / int8 weights).

    from repvit_jax.deploy import export
    exported = export.load_for_export('runs/demo')            # workdir, model dir or checkpoint
    export.export_tflite(exported, 'demo.tflite')             # float32
    export.export_tflite(exported, 'demo_int8.tflite', quantize='int8')  # dynamic-range int8
    export.export_savedmodel(exported, 'demo_savedmodel')
    logits = export.run_tflite('demo.tflite', images)         # (B, S, S, 3) -> (B, classes)

or `repvit-export WORKDIR_OR_CKPT OUT --format tflite|savedmodel` (`repvit_jax.tools.export`).

The model is always exported in its deploy form (a training-form source is reparameterized
first), through `jax2tf.convert` with a fixed input shape (batch, S, S, 3), float32, NHWC,
already normalised as the model was trained (the input pipeline's mean/std are not part of
the graph). The TF function returns the logits. A SavedModel is lowered for CPU, CUDA and
TPU, TFLite for CPU, on whatever machine exports them. TensorFlow is imported only inside
these functions: `import repvit_jax` never imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax import io
from repvit_jax.deploy import tflite_ops
from repvit_jax.deploy.gelu import select_free_gelu
from repvit_jax.models.spec import ModelSpec
from repvit_jax.reparam.tree import reparameterize

QUANTIZE = (None, 'int8')


@dataclasses.dataclass
class Exported:
  """A deploy-form model ready to export.

  Attributes:
    spec: its `ModelSpec` (deploy form, float32; `spec.input` is the input contract).
    module: the deploy-form flax module. variables: its variables (host arrays).
  """
  spec: ModelSpec
  module: Any
  variables: Dict[str, Any]

  _forward: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

  @property
  def name(self) -> str:
    return self.spec.name

  @property
  def num_classes(self) -> int:
    return self.spec.num_classes

  @property
  def image_size(self) -> int:
    return self.spec.input.image_size

  def apply(self, images):
    """(B, S, S, 3) float32 -> logits, in JAX (the reference for the exported graph)."""
    if self._forward is None:
      module = self.module
      self._forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
    return self._forward(self.variables, jnp.asarray(images, jnp.float32))


def load_for_export(source: str, *, spec: Optional[ModelSpec] = None,
                    model: Optional[str] = None, num_classes: Optional[int] = None,
                    overrides: Optional[Mapping[str, Any]] = None,
                    image_size: Optional[int] = None) -> Exported:
  """Loads a model in its deploy form from anything `repvit_jax.io.read` reads.

  Args:
    source: a model directory (training-form ones are reparameterized), a training workdir
      (its latest checkpoint), a checkpoint directory or one step of it. The saved
      `ModelSpec` says which model it is and what input it takes.
    spec: replaces the saved spec (e.g. `ModelSpec.from_config` of a training config).
    model, num_classes, overrides: replace the saved spec's (a checkpoint that records no
      spec needs `model`; `num_classes` then defaults to the head's rows).
    image_size: another input side (`io.at_image_size`: learned position tables resampled).

  Raises:
    FileNotFoundError: nothing loadable at `source`. ValueError: unreadable files, or no spec
      and no `model`.
  """
  saved, variables = io.read(source)
  spec = spec or saved
  if spec is None and not model:
    raise ValueError(f'{source} does not say which model it holds (a checkpoint whose metadata '
                     'records no model spec): pass --model NAME and '
                     '--set key=value for the overrides the run used')
  if model or overrides or num_classes is not None:
    base = spec if spec is not None and (not model or model == spec.name) else None
    spec = ModelSpec.registered(
        model or base.name,
        num_classes=num_classes if num_classes is not None else (
            base.num_classes if base is not None else io.head_rows(variables)),
        deploy=base.deploy if base is not None else False,
        overrides={**(dict(base.overrides) if base is not None else {}), **(overrides or {})},
        input=base.input if base is not None else None)
  variables = {k: v for k, v in variables.items() if v}
  check_fit(source, spec, variables)
  if image_size:
    spec, variables = io.at_image_size(spec, variables, image_size)
  # Compiled once as a whole: much faster than folding op by op.
  deploy = jax.tree.map(np.asarray, jax.jit(reparameterize)(variables))
  spec = spec.deploy_form()
  return Exported(spec, spec.build(), deploy)


def check_fit(source: str, spec: ModelSpec, variables) -> None:
  """One error line when the weights do not have the shapes of the model `spec` builds (a
  wrong --model or missing --set overrides), instead of a shape error deep inside Flax."""
  size = spec.input.image_size
  rngs = {name: jax.random.key(0) for name in ('params', 'mask', 'dropout')}
  expected = jax.eval_shape(lambda: spec.build().init(
      rngs, jnp.zeros((1, size, size, 3)), train=False))
  for collection, tree in variables.items():
    try:
      io.fit(expected.get(collection, {}), tree, what=f'{collection} at {source}')
    except ValueError as e:
      raise ValueError(f'{e} ({spec.name} with overrides {dict(spec.overrides)}); give the '
                       'model and --set key=value overrides the run used') from None


def _tf():
  """TensorFlow, kept off the GPUs (JAX owns them) and imported quietly, on first use."""
  from repvit_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
  return tf


# Where an exported file runs. A SavedModel serves on any of them (TF Serving on a GPU or TPU
# host, or a CPU); TFLite runs on CPUs only. Lowered explicitly, so that what a file runs on
# never depends on the machine it was exported on (the default would be that machine's).
SAVEDMODEL_PLATFORMS = ('cpu', 'cuda', 'tpu')
TFLITE_PLATFORMS = ('cpu',)


def tf_module(exported: Exported, *, batch_size: int = 1, micro_batch: Optional[int] = 0,
              platforms: Sequence[str] = TFLITE_PLATFORMS):
  """A `tf.Module`: `.params` (tf.Variables of the deploy variables) and `.serve`, a
  `tf.function` mapping `images` (batch_size, S, S, 3) float32 to {'logits': ...}.

  micro_batch: 0 (or >= batch_size) runs the network once over the whole batch; n once per n
  images, one pass after the other in the graph, sharing the weights (the network treats
  images independently: the same logits). None: the model class's `inference_micro_batch`
  (ViT and MobileViT: 4, XNNPACK's tensors then stay in cache; others: the whole batch).

  platforms: what the graph is lowered for (jax2tf's native_serialization_platforms); it
    runs on those, whatever machine exports it.

  Built with `jax2tf.convert(..., polymorphic_shapes=None, with_gradient=False)`: a fixed
  input shape, no gradient. The weights are variables rather than graph constants, so a
  SavedModel stores them once, in its `variables/`.
  """
  tf = _tf()
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  module = exported.module
  params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False),
                                 exported.variables)

  if micro_batch is None:
    micro_batch = getattr(type(module), 'inference_micro_batch', None)
  if micro_batch is not None and micro_batch < 0:
    raise ValueError(f'micro_batch must be positive, 0 for the whole batch at once or None '
                     f'for the model\'s default; got {micro_batch}')
  chunk = batch_size if not micro_batch or micro_batch >= batch_size else micro_batch

  def forward(v, images):
    # GELU in ABS/MUL/EXP rather than an erf the converter expands with selects, which
    # XNNPACK cannot run (deploy/gelu.py).
    with select_free_gelu():
      parts = [module.apply(v, images[start:start + chunk], train=False)
               for start in range(0, batch_size, chunk)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

  fn = jax2tf.convert(forward, polymorphic_shapes=None, with_gradient=False,
                      native_serialization_platforms=tuple(platforms))
  size = exported.image_size
  spec = tf.TensorSpec((batch_size, size, size, 3), tf.float32, name='images')
  holder = tf.Module()
  holder.params = params
  holder.serve = tf.function(lambda images: {'logits': fn(params, images)},
                             input_signature=[spec], autograph=False)
  return holder


def export_savedmodel(exported: Exported, directory: str, *, batch_size: int = 1,
                      platforms: Sequence[str] = SAVEDMODEL_PLATFORMS) -> str:
  """Writes a TF SavedModel whose `serving_default` signature maps `images` to `logits`,
  lowered for `platforms` (by default CPU, CUDA GPUs and TPUs, wherever it is exported).

  Load it with `tf.saved_model.load(directory).signatures['serving_default'](images=x)`.
  """
  tf = _tf()
  holder = tf_module(exported, batch_size=batch_size, platforms=platforms)
  tf.saved_model.save(holder, directory,
                      signatures={'serving_default': holder.serve.get_concrete_function()})
  return directory


def write_contract(exported: Exported, path: str, *, batch_size: int,
                   class_names: Sequence[str] = ()) -> str:
  """Writes the JSON a user of the exported files reads beside them: the input they take
  (shape, dtype, how pixels are normalised), the output, and the class names."""
  contract = exported.spec.input
  record = {
      'model': exported.name,
      'input': {'shape': [int(batch_size), contract.image_size, contract.image_size, 3],
                'dtype': 'float32', 'layout': 'NHWC, RGB',
                'normalisation': '(pixels - mean * pixel_range[1]) / (std * pixel_range[1]) '
                                 'for pixels in pixel_range; the graph does not normalise',
                **contract.to_json()},
      'output': {'logits': [int(batch_size), exported.num_classes]},
      'class_names': list(class_names or exported.spec.class_names),
  }
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
    f.write('\n')
  return path


def savedmodel_runner(directory: str, batch_size: int):
  """run(images (n, S, S, 3) float32) -> logits (n, classes) of a SavedModel of fixed
  `batch_size`, fed `batch_size` images at a time (the last part padded)."""
  tf = _tf()
  serve = tf.saved_model.load(directory).signatures['serving_default']

  def run(images: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
      part = images[start:start + batch_size]
      padded = np.concatenate([part, np.zeros((batch_size - len(part),) + part.shape[1:],
                                              part.dtype)])
      out.append(serve(images=tf.constant(padded))['logits'].numpy()[:len(part)])
    return np.concatenate(out)

  return run


def tflite_bytes(exported: Exported, *, quantize: Optional[str] = None, batch_size: int = 1,
                 micro_batch: Optional[int] = None) -> bytes:
  """The TFLite flatbuffer. quantize=None: float32; 'int8': dynamic-range int8 weights
  (`tf.lite.Optimize.DEFAULT`, no calibration data; activations stay float). A batch larger
  than `micro_batch` passes through the network `micro_batch` images at a time (`tf_module`;
  None: the model's default, 0: all at once).

  Each GELU is TFLite's one GELU op (`tflite_ops.fuse_gelu`: one kernel instead of the chain
  of elementwise ops; speed in benchmarks/README.md), checked on a random batch; the converter's graph is kept, with a warning, if the
  edited one strays from JAX (`_agrees_with_jax`)."""
  if quantize not in QUANTIZE:
    raise ValueError(f'quantize must be one of {QUANTIZE}, got {quantize!r}')
  tf = _tf()
  holder = tf_module(exported, batch_size=batch_size, micro_batch=micro_batch)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [holder.serve.get_concrete_function()], holder)
  if quantize == 'int8':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  from repvit_jax.data._tf import quiet_stderr  # pylint: disable=import-outside-toplevel
  with quiet_stderr():           # the converter's "Ignored output_format." lines
    payload = converter.convert()
  fused, count = tflite_ops.fuse_gelu(payload)
  if count and not _agrees_with_jax(exported, fused, payload, batch_size):
    warnings.warn(f'{exported.name}: the graph with TFLite\'s GELU op strays from JAX; '
                  'exported the elementwise GELU instead (slower, same numbers)')
    return payload
  return fused


def _agrees_with_jax(exported: Exported, edited: bytes, converted: bytes,
                     batch_size: int) -> bool:
  """Whether an edited graph is as close to JAX as the converter's own, on a random batch.

  The GELU chains are found by name: a converter that folded part of one into a neighbour
  would make the edited graph compute something else. "As close": within twice the converted
  graph's error, plus 1e-5. The GELU op and the chain differ by less than 6e-7, which moves
  float32 logits by ~1e-7 but int8 ones by as much as int8 itself errs (2e-2 for vit_tiny:
  the dense layers quantize their inputs on the fly, and a moved input rounds to another
  step), so the bound is relative to the converted graph, not absolute.
  """
  images = np.random.default_rng(0).normal(
      size=(batch_size, exported.image_size, exported.image_size, 3)).astype(np.float32)
  reference = np.asarray(exported.apply(images))
  scale = max(float(np.max(np.abs(reference))), 1e-30)
  error = lambda payload: float(np.max(np.abs(run_tflite(payload, images) - reference))) / scale
  return error(edited) <= 2 * error(converted) + 1e-5


def export_tflite(exported: Exported, path: str, *, quantize: Optional[str] = None,
                  batch_size: int = 1, micro_batch: Optional[int] = None) -> str:
  """Writes the TFLite model to `path` (see `tflite_bytes`); returns the path."""
  payload = tflite_bytes(exported, quantize=quantize, batch_size=batch_size,
                         micro_batch=micro_batch)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(payload)
  return path


def make_interpreter(model: str | bytes, *, num_threads: Optional[int] = None):
  """A TFLite interpreter: LiteRT's (`ai-edge-litert`) when installed, else TF's own.

  `num_threads` (default: one per CPU core) sizes XNNPACK's thread pool. LiteRT's own default
  is one thread, which leaves the other cores idle (figures: benchmarks/README.md).
  """
  kwargs = ({'model_content': model} if isinstance(model, (bytes, bytearray))
            else {'model_path': os.fspath(model)})
  kwargs['num_threads'] = int(num_threads or os.cpu_count() or 1)
  tf = _tf()
  from repvit_jax.data._tf import quiet_stderr  # pylint: disable=import-outside-toplevel
  with quiet_stderr():           # "Created TensorFlow Lite XNNPACK delegate for CPU."
    try:
      from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    except ImportError:
      with warnings.catch_warnings():
        # TF 2.21 still ships tf.lite.Interpreter, with a deprecation warning for LiteRT.
        warnings.simplefilter('ignore')
        interpreter = tf.lite.Interpreter(**kwargs)
    else:
      interpreter = Interpreter(**kwargs)
    interpreter.allocate_tensors()
  return interpreter


def xnnpack_partitions(interpreter) -> int:
  """How many pieces of the graph XNNPACK runs (after `make_interpreter`): 1 when every op is
  delegated; each op XNNPACK cannot run splits the graph and runs on the slower reference
  kernels between two pieces."""
  ops = interpreter._get_ops_details()  # pylint: disable=protected-access
  return sum(op['op_name'] == 'DELEGATE' for op in ops)


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


__all__ = ['Exported', 'load_for_export', 'check_fit', 'tf_module', 'export_savedmodel',
           'savedmodel_runner', 'write_contract', 'SAVEDMODEL_PLATFORMS', 'TFLITE_PLATFORMS',
           'tflite_bytes', 'export_tflite', 'make_interpreter', 'xnnpack_partitions',
           'run_tflite', 'QUANTIZE']
