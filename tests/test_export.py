"""repvit_jax.deploy.export: deploy models to TFLite (float32, int8 weights) and TF SavedModel."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax
from repvit_jax import io
from repvit_jax.deploy import export
from repvit_jax.tools import export as export_tool
from repvit_jax.reparam import check
from repvit_jax.reparam.check import relative_error

from conftest import TINY_VIT

pytest.importorskip('tensorflow')


@pytest.fixture(scope='module')
def tiny_model_dir(tmp_path_factory):
  """A TDRL ViT in its *training* form, saved as a model directory (export must fold it)."""
  model = repvit_jax.create_model('tdrl_vit_tiny', num_classes=5, **TINY_VIT)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
  variables = check.randomize_batch_stats(check.perturb_params(variables, 0), 1)
  directory = str(tmp_path_factory.mktemp('export') / 'tiny_tdrl')
  io.save_model(directory, variables, repvit_jax.ModelSpec.registered(
      'tdrl_vit_tiny', num_classes=5, deploy=False, overrides=TINY_VIT,
      image_size=32))
  return directory, model, variables


@pytest.fixture(scope='module')
def exported(tiny_model_dir):
  return export.load_for_export(tiny_model_dir[0])


def _images(n=3):
  return np.random.default_rng(1).normal(size=(n, 32, 32, 3)).astype(np.float32)


def test_load_folds_the_training_form(tiny_model_dir, exported):
  _, model, variables = tiny_model_dir
  assert exported.image_size == 32 and exported.num_classes == 5
  assert 'batch_stats' not in exported.variables                 # deploy form: plain ViT
  images = _images()
  expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert relative_error(exported.apply(images), expected) < 1e-5


def test_tflite_float32_matches_jax(tmp_path, exported):
  path = export.export_tflite(exported, str(tmp_path / 'model.tflite'))
  images = _images()
  outputs = export.run_tflite(path, images)                       # batch 1, three invocations
  assert outputs.shape == (3, 5)
  assert relative_error(outputs, exported.apply(images)) < 1e-4
  # Every op runs in XNNPACK: GELU and the norms use no op it lacks (LESS, SELECT,
  # BROADCAST_TO), which would split the graph around reference kernels.
  assert export.xnnpack_partitions(export.make_interpreter(path)) == 1


def test_tflite_poolformer_runs_in_one_xnnpack_partition():
  model = repvit_jax.create_model('poolformer_s12', num_classes=3, depths=(1, 1, 1, 1),
                                  dims=(8, 8, 8, 8))
  images = _images(2)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
  spec = repvit_jax.ModelSpec.registered('poolformer_s12', num_classes=3, deploy=True,
                                         overrides=dict(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8)),
                                         input=repvit_jax.InputSpec(image_size=32))
  exported = export.Exported(spec, model, jax.device_get(variables))
  payload = export.tflite_bytes(exported)
  assert export.xnnpack_partitions(export.make_interpreter(payload)) == 1
  assert relative_error(export.run_tflite(payload, images), exported.apply(images)) < 1e-4


def test_tflite_int8_runs_and_is_smaller(tmp_path, exported):
  float_path = export.export_tflite(exported, str(tmp_path / 'f.tflite'))
  int8 = export.tflite_bytes(exported, quantize='int8')
  assert len(int8) < os.path.getsize(float_path)
  images = _images()
  outputs = export.run_tflite(int8, images)
  assert np.all(np.isfinite(outputs))
  assert relative_error(outputs, exported.apply(images)) < 0.2   # int8 weights: approximate
  with pytest.raises(ValueError, match='quantize must be one of'):
    export.tflite_bytes(exported, quantize='int4')


def test_savedmodel_matches_jax_and_runs_wherever_it_was_exported(tmp_path, exported,
                                                                   monkeypatch):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  # Exported as on a TPU host: jax2tf's default would lower for the TPU only, and the file
  # would refuse the CPU ("The current platform CPU is not among the platforms required").
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(xla_bridge, 'default_backend', lambda: 'tpu')
  directory = export.export_savedmodel(exported, str(tmp_path / 'saved'), batch_size=2)
  monkeypatch.undo()
  loaded = tf.saved_model.load(directory)
  images = _images(2)
  logits = loaded.signatures['serving_default'](images=tf.constant(images))['logits']
  assert relative_error(logits.numpy(), exported.apply(images)) < 1e-4
  graph = loaded.signatures['serving_default'].graph.as_graph_def()
  calls = [n for f in graph.library.function for n in f.node_def if n.op == 'XlaCallModule']
  assert calls and all(list(n.attr['platforms'].list.s) == [b'CPU', b'CUDA', b'TPU']
                       for n in calls)


def test_command_line_from_a_workdir(tmp_path, tiny_model_dir, capsys):
  workdir = tmp_path / 'run'
  deploy = export.load_for_export(tiny_model_dir[0])
  io.save_model(str(workdir / 'deploy'), deploy.variables, repvit_jax.ModelSpec.registered(
      'tdrl_vit_tiny', num_classes=5, deploy=True, overrides=TINY_VIT,
      image_size=32))
  out = tmp_path / 'out'
  assert export_tool.main([str(workdir), str(out), '--format', 'tflite,savedmodel']) == 0
  printed = capsys.readouterr().out
  assert 'tdrl_vit_tiny (deploy form, 5 classes, input 1x32x32x3)' in printed
  assert os.path.isfile(out / 'model.tflite') and os.path.isdir(out / 'savedmodel')
  # Beside them, what a user of the files needs: the input they take and the classes.
  contract = json.loads((out / 'contract.json').read_text())
  assert contract['input']['shape'] == [1, 32, 32, 3] and contract['output'] == {'logits': [1, 5]}
  assert contract['input']['pixel_range'] == [0.0, 255.0] and len(contract['input']['mean']) == 3
  assert contract['class_names'] == []          # saved without names, and no run config here
  for fmt in ('tflite', 'savedmodel'):      # every format written is run and checked
    line = next(l for l in printed.splitlines() if l.strip().startswith(f'{fmt} ->'))
    assert float(line.split('max rel. error vs JAX ')[1].rstrip(')')) < 1e-4, line


def test_evaluate_runs_every_format_written(tmp_path, tiny_model_dir, capsys):
  workdir, out = tmp_path / 'run', tmp_path / 'out'
  deploy = export.load_for_export(tiny_model_dir[0])
  io.save_model(str(workdir / 'deploy'), deploy.variables, repvit_jax.ModelSpec.registered(
      'tdrl_vit_tiny', num_classes=5, deploy=True, overrides=TINY_VIT,
      image_size=32))
  digits = dict(repvit_jax.data.default_config().to_dict(), name='digits', image_size=32)
  (workdir / 'config.json').write_text(json.dumps({'model': {'name': 'tdrl_vit_tiny'},
                                                   'data': digits}))
  assert export_tool.main([str(workdir), str(out), '--format', 'tflite,savedmodel',
                      '--evaluate']) == 0
  printed = capsys.readouterr().out
  reference = printed.split('JAX (float32): top-1 ')[1].split()[0]
  assert 'on 360 eval images' in printed
  for fmt in ('tflite', 'savedmodel'):
    line = next(l for l in printed.splitlines() if l.strip().startswith(f'{fmt} ->'))
    assert f'top-1 {reference})' in line, line       # the same logits, the same accuracy


def test_command_line_errors(tmp_path, capsys):
  assert export_tool.main([str(tmp_path / 'nowhere'), str(tmp_path / 'o')]) == 1
  assert 'does not exist' in capsys.readouterr().err
  empty = tmp_path / 'ckpt'
  empty.mkdir()
  assert export_tool.main([str(empty), str(tmp_path / 'o')]) == 1
  assert 'holds no checkpoint and no saved model' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    export_tool.main([str(empty), str(tmp_path / 'o'), '--format', 'onnx'])


def test_a_model_json_without_an_input_contract_is_one_clear_error(tmp_path, tiny_model_dir):
  directory = tmp_path / 'old'
  shutil.copytree(tiny_model_dir[0], directory)
  record = json.loads((directory / 'model.json').read_text())
  del record['input']
  (directory / 'model.json').write_text(json.dumps(record))
  with pytest.raises(ValueError, match=r"model.json is not a model description written by "
                                       r"save_model \(no input contract\); re-export the model"):
    io.read(str(directory))


def test_moving_to_another_input_size_resamples_position_tables_and_refuses_bias_tables():
  vit = repvit_jax.ModelSpec.registered('vit_tiny', num_classes=5, overrides=TINY_VIT,
                                        image_size=32)
  variables = jax.eval_shape(lambda: vit.build().init(jax.random.key(0),
                                                      jnp.zeros((1, 32, 32, 3)), train=False))
  variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), variables)
  moved, moved_variables = io.at_image_size(vit, variables, 64)
  assert moved.input.image_size == 64
  assert moved_variables['params']['pos_embed'].shape == (1, 1 + 8 * 8, 16)
  levit = repvit_jax.ModelSpec.registered('levit_128s', num_classes=5, image_size=224)
  levit_variables = jax.eval_shape(lambda: levit.build().init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  with pytest.raises(ValueError, match=r'levit_128s has parameters made for 224x224 inputs '
                                       r'\(stages_0/blocks_0/attn/attention_biases: '
                                       r'\(4, 196\), \(4, 144\) at 192x192\); it cannot be moved'):
    io.at_image_size(levit, levit_variables, 192)


def test_imports_stay_apart():
  """`import repvit_jax` (and export, convert, analyze) import no TensorFlow; the converter
  imports no trainer."""
  code = ('import sys, repvit_jax, repvit_jax.convert, repvit_jax.tools.convert; '
          'assert not [m for m in sys.modules if m.startswith("repvit_jax.train")], "trainer"; '
          'import repvit_jax.deploy.export, repvit_jax.tools.analyze; '
          'assert "tensorflow" not in sys.modules, "TF imported"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


def test_micro_batches_pass_through_the_network_in_turn_with_the_same_logits(exported):
  from repvit_jax.deploy import tflite_ops  # pylint: disable=import-outside-toplevel
  images = _images(8)
  whole = export.tflite_bytes(exported, batch_size=8, micro_batch=0)
  default = export.tflite_bytes(exported, batch_size=8)    # ViT's own: passes of 4
  in_twos = export.tflite_bytes(exported, batch_size=8, micro_batch=2)
  dense = lambda payload: tflite_ops.op_names(payload).count('FULLY_CONNECTED')
  assert dense(default) == 2 * dense(whole) and dense(in_twos) == 4 * dense(whole)
  reference = export.run_tflite(whole, images)
  np.testing.assert_array_equal(export.run_tflite(in_twos, images), reference)
  assert relative_error(reference, exported.apply(images)) < 1e-5
  with pytest.raises(ValueError, match='micro_batch must be positive'):
    export.tflite_bytes(exported, batch_size=8, micro_batch=-1)


def test_a_negative_micro_batch_is_one_line_on_the_command_line(tiny_model_dir, tmp_path, capsys):
  with pytest.raises(SystemExit):
    export_tool.main([tiny_model_dir[0], str(tmp_path / 'm.tflite'), '--micro-batch', '-2'])
  assert '--micro-batch -2: give a positive number' in capsys.readouterr().err
