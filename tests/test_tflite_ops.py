"""repvit_jax.deploy.tflite_ops: the exported GELU chains become TFLite's one GELU op, safely."""

import jax
import numpy as np
import pytest

import repvit_jax
from repvit_jax.deploy import export, tflite_ops
from repvit_jax.deploy import gelu as deploy_gelu
from repvit_jax.reparam.check import perturb_params, relative_error

from conftest import TINY_VIT

pytest.importorskip('tensorflow')


@pytest.fixture(scope='module')
def exported():
  """A plain ViT (2 blocks, so 2 GELUs) in its deploy form, nontrivial weights."""
  model = repvit_jax.create_model('vit_tiny', num_classes=4, **TINY_VIT)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      np.zeros((1, 32, 32, 3), np.float32))
  spec = repvit_jax.ModelSpec.registered('vit_tiny', num_classes=4, deploy=True,
                                         overrides=TINY_VIT,
                                         input=repvit_jax.InputSpec(image_size=32))
  return export.Exported(spec, model, perturb_params(jax.device_get(variables), 0))


def _images(n=2):
  return np.random.default_rng(3).normal(size=(n, 32, 32, 3)).astype(np.float32)


def test_export_writes_one_gelu_op_per_mlp(exported):
  payload = export.tflite_bytes(exported, batch_size=2)
  ops = tflite_ops.op_names(payload)
  assert ops.count('GELU') == TINY_VIT['depth']
  assert 'ABS' not in ops                       # the select-free chain is gone, all of it
  assert export.xnnpack_partitions(export.make_interpreter(payload)) == 1
  assert relative_error(export.run_tflite(payload, _images()), exported.apply(_images())) < 1e-5
  # Nothing left to replace: the same bytes come back.
  assert tflite_ops.fuse_gelu(payload) == (payload, 0)


def test_a_chain_the_converter_folded_into_its_neighbour_is_kept_as_converted(
    exported, monkeypatch):
  # The old select-free form ended in a MUL by 0.5, which the converter folds into the next
  # dense layer's weights: the named chain then computes 2 GELU(x), and replacing it by the
  # op would halve the MLP's output. The export must notice and keep the converted graph.
  monkeypatch.setattr(deploy_gelu, 'gelu_select_free',
                      lambda x: 0.5 * (x + jax.numpy.abs(x) * _erf_abs(x)))
  with pytest.warns(UserWarning, match='strays from JAX; exported the elementwise GELU'):
    payload = export.tflite_bytes(exported, batch_size=2)
  assert 'GELU' not in tflite_ops.op_names(payload)
  images = _images()
  assert relative_error(export.run_tflite(payload, images), exported.apply(images)) < 1e-5
  edited, count = tflite_ops.fuse_gelu(payload)   # what the guard refused: really wrong
  assert count == TINY_VIT['depth']
  assert relative_error(export.run_tflite(edited, images), exported.apply(images)) > 1e-3


def _erf_abs(x):
  """erf(|x| / sqrt 2) as the select-free GELU computes it (A&S 7.1.26, no select)."""
  p, (a1, a2, a3, a4, a5) = deploy_gelu._P, deploy_gelu._A  # pylint: disable=protected-access
  u = jax.numpy.abs(x) * 0.7071067811865476
  t = 1.0 / (1.0 + p * u)
  return 1.0 - t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * jax.numpy.exp(-u * u)
