"""MobileViT: sizes, MACs, any input size, the BN-folded deploy tree; the multi-scale sampler
(deterministic, resumable, pixels per step kept, hosts in step). The trainer on it is run by
the demo (configs/mobilevit_xs.py:demo); a run here would cost a compile per resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax import data
from repvit_jax.data import multiscale

from conftest import benchmark

bench = benchmark('models')

IMAGES_256 = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)


def abstract(model, images=IMAGES_256):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


@pytest.mark.parametrize('name,count,paper_m', [('mobilevit_xxs', 1_272_024, 1.27),
                                                ('mobilevit_xs', 2_317_848, 2.32),
                                                ('mobilevit_s', 5_578_632, 5.58)])
def test_parameter_counts(name, count, paper_m):
  assert rj.count_params(abstract(rj.create_model(name))['params']) == count
  assert round(count / 1e6, 2) == paper_m


def test_mobilevit_xs_macs_within_2_percent_of_the_paper():
  macs = bench.model_macs('mobilevit_xs', deploy=True)
  assert abs(macs / 1.03e9 - 1) <= 0.02, macs


def test_deploy_tree_is_bn_free():
  train_tree = abstract(rj.create_model('mobilevit_xs'))
  deployed = jax.eval_shape(rj.reparameterize, train_tree)
  target = abstract(rj.create_model('mobilevit_xs', deploy=True))
  assert set(deployed) == {'params'}
  assert jax.tree.structure(deployed) == jax.tree.structure(target)
  assert jax.tree.map(lambda a: a.shape, deployed) == jax.tree.map(lambda a: a.shape, target)
  block = deployed['params']['stages_2_mobilevit']
  assert set(block['conv_fusion']) == {'kernel', 'bias'}
  assert block['conv_fusion']['kernel'].shape == (3, 3, 128, 64)   # concat(input, proj)
  assert set(block['conv_1x1']) == {'kernel'}                       # no BN, no bias


@pytest.mark.parametrize('size', [160, 192, 320, 200])
def test_any_input_size(size):
  model = rj.create_model('mobilevit_xs', num_classes=7)
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = abstract(model)          # no position embeddings: one tree for every size
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert out.shape == (2, 7)


# ---------------------------------------------------------------- multi-scale sampler


def test_batch_sizes_keep_pixels_per_step():
  sizes = ((160, 160), (192, 192), (256, 256), (288, 288), (320, 320))
  table = multiscale.batch_sizes(sizes, 256, 128, 8)
  assert list(table) == [328, 224, 128, 104, 80]
  for (h, w), b in zip(sizes, table):
    assert b % 8 == 0 and abs(b - 128 * 256 * 256 / (h * w)) <= 4   # nearest multiple of 8
  pixels = multiscale.pixels_per_step(sizes, table)
  assert max(pixels) / min(pixels) < 1.06


def test_size_choices_are_a_pure_function_of_seed_and_step():
  steps = np.arange(10_000)
  a = multiscale.size_choices(0, steps, 5)
  np.testing.assert_array_equal(a, multiscale.size_choices(0, steps, 5))
  np.testing.assert_array_equal(a[1234:1240], multiscale.size_choices(0, steps[1234:1240], 5))
  assert not np.array_equal(a, multiscale.size_choices(1, steps, 5))
  counts = np.bincount(a, minlength=5)
  assert counts.min() > 1800            # roughly uniform
  table = np.asarray([3, 5, 7, 9, 11])
  assert multiscale.examples_before(10_000, 0, table) == int(table[a].sum())


def _config(**kwargs):
  config = data.default_config()
  config.image_size = 16
  config.randaugment = None
  config.multiscale = ((8, 8), (16, 16), (12, 20))
  config.update(kwargs)
  return config


def _batches(config, start, count, **kwargs):
  it = data.make_train_iterator(config, global_batch_size=kwargs.pop('global_batch_size', 8),
                                seed=3, start_step=start, **kwargs)
  return [next(it) for _ in range(count)]


def test_multiscale_batches_vary_and_resume_exactly():
  config = _config()
  batches = _batches(config, 0, 12, process_index=0, process_count=1)
  shapes = {b['image'].shape for b in batches}
  assert shapes <= {(32, 8, 8, 3), (8, 16, 16, 3), (9, 12, 20, 3)} and len(shapes) > 1
  chosen = multiscale.size_choices(3, np.arange(12), 3)
  for b, c in zip(batches, chosen):
    assert b['image'].shape[1:3] == config.multiscale[c]
    assert b['label'].shape == b['image'].shape[:1]
  resumed = _batches(config, 7, 5, process_index=0, process_count=1)
  for a, b in zip(batches[7:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_multiscale_with_repeated_augmentation_pairs_slots_and_resumes():
  config = _config(repeated_augmentation=2)
  batches = _batches(config, 0, 6, process_index=0, process_count=1)
  labels = np.concatenate([b['label'] for b in batches])
  pairs = labels[:len(labels) // 2 * 2].reshape(-1, 2)
  assert len(pairs) >= 20 and (pairs[:, 0] == pairs[:, 1]).all()
  resumed = _batches(config, 3, 3, process_index=0, process_count=1)
  for a, b in zip(batches[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_multiscale_hosts_feed_equal_shares_of_one_global_batch():
  config = _config()
  hosts = [_batches(config, 0, 4, process_index=h, process_count=2, global_batch_size=8)
           for h in range(2)]
  for a, b in zip(*hosts):
    assert a['image'].shape == b['image'].shape           # one resolution and size per step
    assert not np.array_equal(a['image'], b['image'])


def test_bad_multiscale_config_is_a_data_error():
  with pytest.raises(data.DataError, match='data.multiscale entries'):
    next(data.make_train_iterator(_config(multiscale=((8, 8, 8),)), global_batch_size=8,
                                  process_index=0, process_count=1))
