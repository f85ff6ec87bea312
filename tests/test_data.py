"""repvit_jax.data: data sets, batches, determinism, exact resumption, hosts, eval padding, ops.

Everything runs offline: the embedded digits, image folders and a tiny TFDS data set built
into a temporary directory. Test images of the folder and TFDS sets are flat colours whose red
and green channels encode the example id, so that the ids in a batch can be read back after
cropping and resizing.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')

from repvit_jax import data  # pylint: disable=g-import-not-at-top
from repvit_jax.data import augment, digits, randaugment  # pylint: disable=g-import-not-at-top

MEAN = np.asarray(data.default_config().mean, np.float32)
STD = np.asarray(data.default_config().std, np.float32)


def config(**overrides):
  """A small, fast data config: 16x16 images, no RandAugment unless asked."""
  c = data.default_config()
  c.image_size = 16
  c.randaugment.num_layers = 0
  c.update(overrides)
  return c


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def pixels(images):
  """Normalised images -> pixel values in [0, 255]."""
  return (images * STD + MEAN) * 255.0


def ids_of(batch):
  """Example ids of a batch of flat-colour test images (see `flat_image`)."""
  colour = pixels(batch['image']).reshape(len(batch['image']), -1, 3).mean(axis=1)
  digit = np.round((colour[:, :2] - 10.0) / 20.0).astype(int)
  return (digit[:, 0] + 12 * digit[:, 1]).tolist()


def flat_image(example_id, height, width):
  """A flat colour: red = 20 (id mod 12) + 10, green = 20 (id // 12) + 10."""
  colour = (20 * (example_id % 12) + 10, 20 * (example_id // 12) + 10, 200)
  return np.broadcast_to(np.asarray(colour, np.uint8), (height, width, 3)).copy()


# ---------------------------------------------------------------------------------------------
# Config, info, errors.


def test_import_does_not_import_tensorflow():
  code = ('import sys, repvit_jax; from repvit_jax import data; '
          'data.get_dataset_info(data.default_config()); '
          'assert "tensorflow" not in sys.modules, "tensorflow imported"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


def test_default_config_has_every_field():
  c = data.default_config()
  assert c.name == 'digits' and c.data_dir is None
  assert c.train_split is None and c.eval_split is None
  assert c.image_size == 224 and c.flip and not c.cache
  assert c.crop_scale == (0.08, 1.0)
  np.testing.assert_allclose(c.crop_ratio, (3 / 4, 4 / 3))
  assert (c.randaugment.num_layers, c.randaugment.magnitude, c.randaugment.magnitude_std) == \
      (2, 9.0, 0.5)
  assert c.color_jitter == 0.0 and c.eval_crop_fraction == 0.875
  np.testing.assert_allclose(c.mean, (0.485, 0.456, 0.406))
  np.testing.assert_allclose(c.std, (0.229, 0.224, 0.225))
  assert c.shuffle_buffer > 0 and c.prefetch > 0


def test_digits_info():
  info = data.get_dataset_info(data.default_config())
  assert info == data.DatasetInfo(num_classes=10, num_train=1437, num_eval=360,
                                  train_split='train', eval_split='test', name='digits',
                                  class_names=tuple('0123456789'))
  train_images, train_labels = digits.load_split('train')
  test_images, test_labels = digits.load_split('test')
  assert train_images.shape == (1437, 8, 8) and test_images.shape == (360, 8, 8)
  assert train_images.min() == 0.0 and train_images.max() == 1.0
  assert sorted(set(train_labels.tolist())) == list(range(10))
  # The split is a fixed permutation of all 1,797 digits: no digit in both splits.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  total = load_digits().images.reshape(1797, -1).sum()
  assert np.isclose(train_images.sum() + test_images.sum(), total / 16.0)


def test_unknown_name_lists_accepted_forms():
  with pytest.raises(data.DataError) as e:
    data.get_dataset_info(config(name='no_such_dataset_xyz'))
  message = str(e.value)
  assert 'no_such_dataset_xyz' in message and "'digits'" in message
  assert "'folder:/abs/path'" in message and 'imagenet2012' in message


def test_imagenet_not_prepared_says_where_tars_go(tmp_path):
  with pytest.raises(data.DataError) as e:
    data.get_dataset_info(config(name='imagenet2012', data_dir=str(tmp_path)))
  message = str(e.value)
  manual = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert f'{manual}/ILSVRC2012_img_train.tar' in message
  assert f'{manual}/ILSVRC2012_img_val.tar' in message
  assert f'tfds build imagenet2012 --data_dir={tmp_path}' in message
  assert 'not prepared' in message


def test_other_tfds_not_prepared(tmp_path):
  with pytest.raises(data.DataError, match=f'cifar10.*not prepared.*{tmp_path}'):
    data.make_train_iterator(config(name='cifar10', data_dir=str(tmp_path)), global_batch_size=8,
                             process_index=0, process_count=1)


@pytest.mark.parametrize('overrides, pattern', [
    (dict(crop_scale=(0.5, 0.1)), 'crop_scale'),
    (dict(image_size=0), 'image_size'),
    (dict(std=(1.0, 0.0, 1.0)), 'std'),
    (dict(eval_crop_fraction=1.5), 'eval_crop_fraction'),
    (dict(eval_resize='nearest'), 'eval_resize'),
    (dict(random_erasing=1.5), 'random_erasing'),
    (dict(repeated_augmentation=0), 'repeated_augmentation'),
])
def test_bad_config_values(overrides, pattern):
  with pytest.raises(data.DataError, match=pattern):
    data.get_dataset_info(config(**overrides))


def test_unknown_config_field():
  c = config()
  c.crop_scal = (0.5, 1.0)
  with pytest.raises(data.DataError, match='crop_scal'):
    data.get_dataset_info(c)


def test_batch_that_does_not_split_across_processes():
  with pytest.raises(data.DataError, match='multiple of the number of processes'):
    data.make_train_iterator(config(), global_batch_size=9, process_index=0, process_count=2)
  with pytest.raises(data.DataError, match='process_index'):
    data.make_eval_iterator(config(), global_batch_size=8, process_index=2, process_count=2)


# ---------------------------------------------------------------------------------------------
# Digits: batches, determinism, resumption, hosts, eval.


def test_train_batch_shapes_dtypes_and_normalisation():
  batch = next(data.make_train_iterator(config(), global_batch_size=32, seed=0, process_index=0,
                                        process_count=1))
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (32, 16, 16, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < 10
  values = pixels(batch['image'])
  assert values.min() > -1e-3 and values.max() < 255 + 1e-3
  # Digits are ink on a 0 background: both ends of the range occur.
  assert values.min() < 1 and values.max() > 200
  # Grey digits stay grey: the three channels agree.
  np.testing.assert_allclose(values[..., 0], values[..., 2], atol=1e-3)


def test_eval_images_are_the_resized_normalised_test_digits():
  c = config(eval_crop_fraction=1.0)
  batch = next(data.make_eval_iterator(c, global_batch_size=8, process_index=0,
                                       process_count=1))
  images, labels = digits.load_split('test')
  expected = tf.image.resize(images[:8, :, :, None], [16, 16], method='bilinear').numpy()
  expected = np.round(np.clip(expected, 0, 1) * 255.0) / 255.0
  expected = (np.repeat(expected, 3, axis=-1) - MEAN) / STD
  np.testing.assert_allclose(batch['image'], expected, atol=1e-4)
  np.testing.assert_array_equal(batch['label'], labels[:8])
  np.testing.assert_array_equal(batch['mask'], np.ones(8, np.float32))


def test_same_seed_same_batches_other_seed_other_batches():
  c = config(randaugment=dict(num_layers=2, magnitude=9.0, magnitude_std=0.5),
             color_jitter=0.4)
  kwargs = dict(global_batch_size=16, process_index=0, process_count=1)
  a = take(data.make_train_iterator(c, seed=7, **kwargs), 2)
  b = take(data.make_train_iterator(c, seed=7, **kwargs), 2)
  other = take(data.make_train_iterator(c, seed=8, **kwargs), 1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(a[0]['label'], other[0]['label'])
  assert not np.allclose(a[0]['image'], other[0]['image'])
  # Consecutive batches differ too.
  assert not np.allclose(a[0]['image'], a[1]['image'])


def test_resume_gives_the_same_batches_bitwise_across_an_epoch():
  # 480 per step over 1,437 digits: step 2 straddles the first epoch boundary.
  c = config(image_size=8, randaugment=dict(num_layers=2, magnitude=9.0, magnitude_std=0.5))
  kwargs = dict(global_batch_size=480, seed=3, process_index=0, process_count=1)
  fresh = take(data.make_train_iterator(c, **kwargs), 4)
  for start in (2, 3):
    resumed = take(data.make_train_iterator(c, start_step=start, **kwargs), 4 - start)
    for k, batch in enumerate(resumed, start):
      np.testing.assert_array_equal(batch['image'], fresh[k]['image'])
      np.testing.assert_array_equal(batch['label'], fresh[k]['label'])


def test_two_processes_split_each_global_batch():
  c = config(color_jitter=0.4)
  single = take(data.make_train_iterator(c, global_batch_size=16, seed=1, process_index=0,
                                         process_count=1), 2)
  hosts = [take(data.make_train_iterator(c, global_batch_size=16, seed=1, process_index=h,
                                         process_count=2), 2) for h in range(2)]
  for k in range(2):
    assert hosts[0][k]['image'].shape == (8, 16, 16, 3)
    # Host 0 holds the first half of the global batch and host 1 the second: disjoint
    # slots, and the global batch does not depend on the number of hosts.
    joined = np.concatenate([hosts[0][k]['image'], hosts[1][k]['image']])
    np.testing.assert_array_equal(joined, single[k]['image'])
    assert not np.allclose(hosts[0][k]['image'], hosts[1][k]['image'])


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_covers_every_test_digit_once(process_count):
  _, labels = digits.load_split('test')
  real_labels, real_images, counts = [], [], []
  for h in range(process_count):
    batches = list(data.make_eval_iterator(config(), global_batch_size=64, process_index=h,
                                           process_count=process_count))
    counts.append(len(batches))
    for batch in batches:
      assert batch['image'].shape == (64 // process_count, 16, 16, 3)
      assert batch['mask'].dtype == np.float32 and batch['label'].dtype == np.int32
      real = batch['mask'] == 1
      # Padding only at the end of a host's pass, and it is all zeros.
      assert np.all(np.diff(batch['mask']) <= 0)
      assert np.all(batch['image'][~real] == 0) and np.all(batch['label'][~real] == 0)
      real_labels.extend(batch['label'][real].tolist())
      real_images.extend(batch['image'][real])
  assert len(set(counts)) == 1  # Every host runs the same number of eval steps.
  assert counts[0] == int(np.ceil(np.ceil(360 / process_count) / (64 // process_count)))
  assert real_labels == labels.tolist()
  assert len({image.tobytes() for image in real_images}) == len(real_images) == 360


# ---------------------------------------------------------------------------------------------
# Image folders.


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  """root/{train,val}/{ant,bee,cat}/*: 12 train and 6 val flat-colour images, PNG and JPEG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('folder')
  example_id = 0
  for split, per_class in (('train', 4), ('val', 2)):
    for class_name in ('cat', 'ant', 'bee'):  # Not sorted: labels must follow sorted names.
      os.makedirs(root / split / class_name)
      for i in range(per_class):
        suffix = 'jpg' if (example_id % 2) else 'png'
        image = flat_image(example_id, 20 + 3 * i, 30 - 2 * i)
        Image.fromarray(image).save(root / split / class_name / f'{i}.{suffix}', quality=95)
        example_id += 1
  (root / 'train' / 'ant' / 'notes.txt').write_text('not an image')
  return root


def folder_ids(split):
  """{example id: label} of the `image_folder` fixture: ids follow creation order, labels the
  sorted class names."""
  first, per_class = {'train': (0, 4), 'val': (12, 2)}[split]
  created, labels = ['cat', 'ant', 'bee'], ['ant', 'bee', 'cat']
  return {first + created.index(c) * per_class + i: labels.index(c)
          for c in labels for i in range(per_class)}


def test_folder_info(image_folder):
  info = data.get_dataset_info(config(name=f'folder:{image_folder}'))
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 12, 6)
  assert (info.train_split, info.eval_split) == ('train', 'val')


def test_folder_train_epochs_are_permutations(image_folder):
  c = config(name=f'folder:{image_folder}', flip=False)
  batches = take(data.make_train_iterator(c, global_batch_size=4, seed=0, process_index=0,
                                          process_count=1), 6)
  expected = folder_ids('train')
  epochs = [sum((ids_of(b) for b in batches[e * 3:(e + 1) * 3]), []) for e in range(2)]
  for epoch in epochs:
    assert sorted(epoch) == sorted(expected)  # every example exactly once per epoch
  assert epochs[0] != epochs[1]  # reshuffled per epoch
  for batch in batches:
    assert batch['label'].tolist() == [expected[i] for i in ids_of(batch)]


def test_folder_cache_reads_the_same_batches(image_folder):
  kwargs = dict(global_batch_size=4, seed=5, process_index=0, process_count=1)
  c = config(name=f'folder:{image_folder}')
  plain = take(data.make_train_iterator(c, **kwargs), 4)
  c.cache = True
  cached = take(data.make_train_iterator(c, **kwargs), 4)
  for x, y in zip(plain, cached):
    np.testing.assert_array_equal(x['image'], y['image'])


def test_folder_eval(image_folder):
  c = config(name=f'folder:{image_folder}')
  batches = list(data.make_eval_iterator(c, global_batch_size=4, process_index=0,
                                         process_count=1))
  assert len(batches) == 2 and batches[-1]['mask'].tolist() == [1, 1, 0, 0]
  expected = folder_ids('val')
  ids = sum((ids_of(b)[:int(b['mask'].sum())] for b in batches), [])
  assert sorted(ids) == sorted(expected)
  labels = sum((b['label'][:int(b['mask'].sum())].tolist() for b in batches), [])
  assert labels == [expected[i] for i in ids] == sorted(labels)


def test_eval_resize_follows_the_config(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  noise = np.random.default_rng(0).integers(0, 256, (21, 29, 3), dtype=np.uint8)
  for split in ('train', 'val'):
    os.makedirs(tmp_path / split / 'a')
    Image.fromarray(noise).save(tmp_path / split / 'a' / '0.png')

  def first_image(method):
    c = config(name=f'folder:{tmp_path}', eval_resize=method, eval_crop_fraction=0.9)
    return next(iter(data.make_eval_iterator(c, global_batch_size=1, process_index=0,
                                              process_count=1)))['image']
  bilinear, bicubic = first_image('bilinear'), first_image('bicubic')
  assert bilinear.shape == bicubic.shape
  assert 0.05 < np.abs(bilinear - bicubic).mean() < 1.0   # the same image, resampled otherwise


def test_folder_errors(tmp_path):
  with pytest.raises(data.DataError, match='does not exist'):
    data.get_dataset_info(config(name=f'folder:{tmp_path}/missing'))
  os.makedirs(tmp_path / 'train')
  with pytest.raises(data.DataError, match='no class folders'):
    data.get_dataset_info(config(name=f'folder:{tmp_path}'))
  os.makedirs(tmp_path / 'train' / 'empty')
  with pytest.raises(data.DataError, match='holds no images'):
    data.get_dataset_info(config(name=f'folder:{tmp_path}'))


def corrupt_folder(image_folder, tmp_path):
  """A copy of `image_folder` where train/bee/1.* and val/cat/0.* are truncated halfway."""
  root = tmp_path / 'corrupt'
  shutil.copytree(image_folder, root)
  bad = [next((root / 'train' / 'bee').glob('1.*')), next((root / 'val' / 'cat').glob('0.*'))]
  for path in bad:
    payload = path.read_bytes()
    path.write_bytes(payload[:len(payload) // 2])
  return root, [str(p) for p in bad]


def test_an_image_that_does_not_decode_is_named(image_folder, tmp_path):
  root, (train_bad, eval_bad) = corrupt_folder(image_folder, tmp_path)
  c = config(name=f'folder:{root}')
  with pytest.raises(data.DataError) as error:
    take(data.make_train_iterator(c, global_batch_size=4, seed=0, process_index=0,
                                  process_count=1), 3)     # one epoch: every file once
  assert str(error.value).startswith(f'{train_bad} does not decode')
  assert 'data.skip_corrupt=True' in str(error.value)
  with pytest.raises(data.DataError, match=f'^{eval_bad} does not decode'):
    list(data.make_eval_iterator(c, global_batch_size=4, process_index=0, process_count=1))


def test_skip_corrupt_leaves_the_images_out_with_one_warning(image_folder, tmp_path, capfd):
  root, (train_bad, eval_bad) = corrupt_folder(image_folder, tmp_path)
  c = config(name=f'folder:{root}', skip_corrupt=True)
  info = data.get_dataset_info(c)
  assert (info.num_train, info.num_eval) == (11, 5)
  batches = take(data.make_train_iterator(c, global_batch_size=11, seed=0, process_index=0,
                                          process_count=1), 2)
  expected = folder_ids('train')
  bad_id = 9     # train images are created cat 0-3, ant 4-7, bee 8-11: bee/1 is id 9
  for batch in batches:       # an epoch is the 11 readable images, each once
    assert sorted(ids_of(batch)) == sorted(i for i in expected if i != bad_id)
  evals = list(data.make_eval_iterator(c, global_batch_size=8, process_index=0,
                                       process_count=1))
  assert sum(int(b['mask'].sum()) for b in evals) == 5
  warnings = [l for l in capfd.readouterr().err.splitlines() if l.startswith('warning: ')]
  assert warnings == [f'warning: leaving out 2 file(s) of {root} that do not read or decode '
                      "(data.skip_corrupt): 1 of split 'train', 1 of split 'val'; e.g. "
                      f'{train_bad}'], warnings
  assert eval_bad not in warnings[0]


def broken_entries(root):
  """Entries named like images that are no readable file, one of each kind."""
  os.symlink('/nonexistent/gone.png', root / 'train' / 'cat' / 'dangling.png')
  os.symlink('loop_b.png', root / 'train' / 'ant' / 'loop_a.png')
  os.symlink('loop_a.png', root / 'train' / 'ant' / 'loop_b.png')
  os.makedirs(root / 'val' / 'cat' / 'folder.png')
  return {'dangling': str(root / 'train' / 'cat' / 'dangling.png'),
          'loop': str(root / 'train' / 'ant' / 'loop_a.png'),
          'directory': str(root / 'val' / 'cat' / 'folder.png')}


def test_links_and_folders_named_like_images_are_one_error_before_training(image_folder,
                                                                            tmp_path, capfd):
  root = tmp_path / 'broken'
  shutil.copytree(image_folder, root)
  broken = broken_entries(root)
  # Listed (not decoded) when the data set opens: before any training step.
  with pytest.raises(data.DataError) as error:
    data.get_dataset_info(config(name=f'folder:{root}'))
  assert str(error.value) == (
      f"{broken['loop']} is a symbolic link loop (2 more like it in split 'train'); remove it, "
      'or set --config.data.skip_corrupt=True to leave out files that do not read or decode')
  os.remove(broken['loop'])
  os.remove(str(root / 'train' / 'ant' / 'loop_b.png'))
  with pytest.raises(data.DataError, match='^' + re.escape(
      f"{broken['dangling']} is a symbolic link to '/nonexistent/gone.png', which does not "
      'exist; remove it')):
    data.get_dataset_info(config(name=f'folder:{root}'))
  os.remove(broken['dangling'])
  with pytest.raises(data.DataError, match='^' + re.escape(
      f"{broken['directory']} is a directory; remove it")):
    data.get_dataset_info(config(name=f'folder:{root}'))   # the eval split, listed up front

  # skip_corrupt leaves every kind out, in the one warning.
  shutil.rmtree(root)
  shutil.copytree(image_folder, root)
  broken = broken_entries(root)
  capfd.readouterr()
  info = data.get_dataset_info(config(name=f'folder:{root}', skip_corrupt=True))
  assert (info.num_train, info.num_eval) == (12, 6)
  warnings = [l for l in capfd.readouterr().err.splitlines() if l.startswith('warning: ')]
  assert len(warnings) == 1 and "3 of split 'train', 1 of split 'val'" in warnings[0], warnings


def test_an_empty_class_folder_is_an_error_naming_it(image_folder, tmp_path):
  root = tmp_path / 'empty_class'
  shutil.copytree(image_folder, root)
  os.makedirs(root / 'train' / 'dog')
  with pytest.raises(data.DataError, match=f'class folder {root}/train/dog holds no images'):
    data.get_dataset_info(config(name=f'folder:{root}'))


# ---------------------------------------------------------------------------------------------
# TFDS, from a tiny data set prepared into a temporary data_dir.

TINY_TRAIN, TINY_TEST = 20, 7


class RepvitDataTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """20 train / 7 test flat-colour images of varied sizes, 3 classes."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=3),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0, TINY_TRAIN),
            'test': self._generate_examples(TINY_TRAIN, TINY_TEST)}

  def _generate_examples(self, first, count):
    for example_id in range(first, first + count):
      image = flat_image(example_id, 12 + example_id % 5, 18 - example_id % 4)
      yield example_id, {'image': image, 'label': example_id % 3}


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  """A prepared data_dir with three record files per split; read back by name, from files."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = RepvitDataTiny(data_dir=data_dir, file_format='tfrecord')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      num_shards=3, try_download_gcs=False))
  return data_dir


def tiny_config(data_dir, **overrides):
  return config(name='repvit_data_tiny', data_dir=data_dir, shuffle_buffer=6, **overrides)


def test_tfds_info(tiny_tfds):
  info = data.get_dataset_info(tiny_config(tiny_tfds))
  assert info == data.DatasetInfo(num_classes=3, num_train=TINY_TRAIN, num_eval=TINY_TEST,
                                  train_split='train', eval_split='test',
                                  name='repvit_data_tiny', class_names=('0', '1', '2'))
  with pytest.raises(data.DataError, match="no split 'validation'"):
    data.get_dataset_info(tiny_config(tiny_tfds, eval_split='validation'))


def test_tfds_train_determinism_resume_and_epochs(tiny_tfds):
  c = tiny_config(tiny_tfds, color_jitter=0.4)
  kwargs = dict(global_batch_size=4, seed=0, process_index=0, process_count=1)
  fresh = take(data.make_train_iterator(c, **kwargs), 10)
  resumed = take(data.make_train_iterator(c, start_step=7, **kwargs), 3)
  for k, batch in enumerate(resumed, 7):  # step 7 is inside the second 5-step epoch
    np.testing.assert_array_equal(batch['image'], fresh[k]['image'])
    np.testing.assert_array_equal(batch['label'], fresh[k]['label'])
  # Each epoch holds every example once: per label, 7, 7 and 6 of the 20.
  for e in range(2):
    labels = np.concatenate([b['label'] for b in fresh[5 * e:5 * e + 5]])
    assert np.bincount(labels, minlength=3).tolist() == [7, 7, 6]


def test_tfds_validation_split_is_the_tail_of_streamed_train(tiny_tfds):
  def eval_ids(c):
    out = []
    for b in data.make_eval_iterator(c, 4, process_index=0, process_count=1):
      out += [i for i, m in zip(ids_of(b), b['mask']) if m]
    return out

  whole = eval_ids(tiny_config(tiny_tfds, eval_split='train'))   # the split's file order
  c = tiny_config(tiny_tfds, validation_size=5)
  info = data.get_dataset_info(c)
  assert (info.num_train, info.eval_split, info.num_eval) == (TINY_TRAIN - 5, 'validation', 5)
  assert eval_ids(c) == whole[-5:]
  train = data.make_train_iterator(c, 5, seed=0, process_index=0, process_count=1)
  epoch = sum((ids_of(next(train)) for _ in range(3)), [])
  assert sorted(epoch) == sorted(whole[:-5])


@pytest.mark.parametrize('cache', [False, True], ids=['streamed', 'indexed'])
def test_repeated_augmentation(tiny_tfds, cache):
  c = tiny_config(tiny_tfds, repeated_augmentation=3, cache=cache)
  kwargs = dict(global_batch_size=4, seed=0, process_index=0, process_count=1)
  fresh = take(data.make_train_iterator(c, **kwargs), 15)
  ids = sum((ids_of(b) for b in fresh), [])
  # Each example fills 3 consecutive slots; 60 slots hold each of the 20 examples once.
  groups = np.asarray(ids).reshape(20, 3)
  assert (groups == groups[:, :1]).all()
  assert sorted(groups[:, 0].tolist()) == list(range(TINY_TRAIN))
  # Resuming inside a group (step 7 = slot 28 = second copy of group 9) is exact.
  for k, batch in enumerate(take(data.make_train_iterator(c, start_step=7, **kwargs), 3), 7):
    np.testing.assert_array_equal(batch['image'], fresh[k]['image'])
  # Each copy has its own augmentation.
  erased = take(data.make_train_iterator(tiny_config(tiny_tfds, repeated_augmentation=3,
                                                     cache=cache, random_erasing=1.0),
                                         **kwargs), 3)
  copies = np.concatenate([b['image'] for b in erased])[:12].reshape(4, 3, -1)
  assert all(not np.array_equal(g[0], g[1]) and not np.array_equal(g[1], g[2]) for g in copies)


def test_tfds_two_processes_read_disjoint_slices(tiny_tfds):
  c = tiny_config(tiny_tfds, flip=False)
  seen = []
  for h in range(2):
    batches = take(data.make_train_iterator(c, global_batch_size=4, seed=0, process_index=h,
                                            process_count=2), 10)
    assert batches[0]['image'].shape == (2, 16, 16, 3)
    # Host h owns half of the split: an epoch (5 steps of 2) reads each of its 10 once.
    epoch = sum((ids_of(b) for b in batches[:5]), [])
    second = sum((ids_of(b) for b in batches[5:]), [])
    assert len(set(epoch)) == 10 and sorted(epoch) == sorted(second)
    assert epoch != second  # reshuffled per epoch
    for batch in batches:
      assert batch['label'].tolist() == [i % 3 for i in ids_of(batch)]
    seen.append(set(epoch))
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(TINY_TRAIN))


def test_tfds_cache_shuffles_exactly(tiny_tfds):
  c = tiny_config(tiny_tfds, cache=True, flip=False)
  batches = take(data.make_train_iterator(c, global_batch_size=5, seed=0, process_index=0,
                                          process_count=1), 8)
  for e in range(2):
    ids = sum((ids_of(b) for b in batches[4 * e:4 * e + 4]), [])
    assert sorted(ids) == list(range(TINY_TRAIN))


def test_tfds_eval_two_processes(tiny_tfds):
  c = tiny_config(tiny_tfds, eval_crop_fraction=1.0)
  per_host = [list(data.make_eval_iterator(c, global_batch_size=4, process_index=h,
                                           process_count=2)) for h in range(2)]
  assert [len(p) for p in per_host] == [2, 2]  # ceil(ceil(7 / 2) / 2)
  ids, labels = [], []
  for batches in per_host:
    for batch in batches:
      real = batch['mask'] == 1
      ids += [i for i, r in zip(ids_of(batch), real) if r]
      labels += batch['label'][real].tolist()
  assert sum(int(b['mask'].sum()) for p in per_host for b in p) == TINY_TEST
  assert sorted(ids) == list(range(TINY_TRAIN, TINY_TRAIN + TINY_TEST))
  assert labels == [i % 3 for i in ids]


# ---------------------------------------------------------------------------------------------
# Augmentation ops.


def test_random_resized_crop_window_respects_bounds_and_scale():
  shape = tf.constant([30, 50], tf.int32)
  for i in range(50):
    key = tf.constant([i, 1], tf.int64)
    y, x, h, w = augment.random_resized_crop_window(shape, key, (0.25, 0.5),
                                                    (3 / 4, 4 / 3)).numpy()
    assert 0 <= y and y + h <= 30 and 0 <= x and x + w <= 50
    assert 0.2 <= h * w / 1500 <= 0.55
    assert 0.7 <= w / h <= 1.4
  # No draw can fit a 1 x 100 strip at ratio ~1: centre crop at the nearest allowed ratio.
  window = augment.random_resized_crop_window(tf.constant([1, 100]), tf.constant([0, 0],
                                                                                tf.int64),
                                              (0.5, 1.0), (0.9, 1.1))
  assert window.numpy().tolist() == [0, 49, 1, 1]


def test_random_erasing_is_one_noise_rectangle_within_timm_bounds():
  image = tf.fill([40, 60, 3], 7.0)
  # Traced once: 400 eager calls cost seconds of op dispatch.
  erase = tf.function(lambda key: augment.random_erasing(image, key, 0.5))
  erased_count, areas = 0, []
  for i in range(200):
    key = tf.constant([i, 5], tf.int64)
    out = erase(key).numpy()
    np.testing.assert_array_equal(out, erase(key).numpy())
    changed = np.any(out != 7.0, axis=-1)
    if not changed.any():
      continue
    erased_count += 1
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert changed.sum() == h * w                       # one filled rectangle
    assert h < 40 and w < 60
    assert 0.3 / 1.2 <= h / w <= 1.2 / 0.3 or min(h, w) <= 3   # aspect in [0.3, 3.3], rounded
    areas.append(h * w / 2400)
    assert abs(out[changed].mean()) < 0.5 and 0.5 < out[changed].std() < 1.5   # N(0, 1) noise
  assert 70 <= erased_count <= 130                        # probability 0.5 of 200
  assert 0.015 <= min(areas) and max(areas) <= 0.36
  assert np.array_equal(augment.random_erasing(image, tf.constant([0, 5], tf.int64), 0.0), image)


def test_random_erasing_in_the_training_pipeline():
  plain = next(data.make_train_iterator(config(), 64, seed=3))['image']
  erased = next(data.make_train_iterator(config(random_erasing=1.0), 64, seed=3))['image']
  differs = np.any(np.abs(erased - plain) > 1e-6, axis=(1, 2, 3))
  assert differs.mean() > 0.9          # nearly every image has a rectangle of noise


def test_centre_crop_window():
  window = augment.centre_crop_window(tf.constant([40, 60], tf.int32), 0.5).numpy()
  assert window.tolist() == [10, 20, 20, 20]


@pytest.fixture(scope='module')
def test_image():
  rng = np.random.default_rng(0)
  return tf.constant(rng.integers(0, 256, (13, 17, 3)), tf.uint8)


@pytest.mark.parametrize('op', randaugment.OPS, ids=lambda op: op.__name__)
@pytest.mark.parametrize('magnitude', [0.0, 5.0, 10.0])
def test_randaugment_op_keeps_shape_dtype_range(op, magnitude, test_image):
  fill = tf.constant([124.0, 116.0, 104.0])
  for sign in (-1.0, 1.0):
    out = op(test_image, tf.constant(magnitude / 10.0), tf.constant(sign), fill)
    assert out.dtype == tf.uint8 and out.shape == (13, 17, 3)
    via_switch = randaugment.apply_op(tf.constant(randaugment.OPS.index(op)), test_image,
                                      magnitude, sign, (124.0, 116.0, 104.0))
    # The switch runs compiled by XLA, the op here on TensorFlow's kernels: the same
    # arithmetic, rounded apart at most by one grey level.
    np.testing.assert_allclose(out.numpy().astype(int), via_switch.numpy().astype(int), atol=1)


@pytest.mark.parametrize('transform', [
    [0.87, 0.5, -3.0, -0.5, 0.87, 6.0, 0.0, 0.0],     # rotation by 30 degrees
    [1.0, -0.27, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],       # shear
    [1.0, 0.0, 4.6, 0.0, 1.0, -2.3, 0.0, 0.0]])       # translation by fractions of a pixel
def test_randaugment_resampling_is_tensorflows_bilinear_transform(transform, test_image):
  # The geometric ops' gathers against TensorFlow's own projective transform (no XLA form),
  # with the fill colour coming in from outside and blending into the edge pixels.
  fill = tf.constant([124.0, 116.0, 104.0])
  reference = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(test_image, tf.float32)[None] - fill, transforms=[transform],
      output_shape=[13, 17], fill_value=0.0, interpolation='BILINEAR', fill_mode='CONSTANT')[0]
  reference = np.clip(np.round(reference.numpy() + fill.numpy()), 0, 255)
  ours = randaugment._affine(test_image, tf.constant(transform), fill).numpy()
  np.testing.assert_allclose(ours, reference, atol=1)
  assert (ours == reference).mean() > 0.95


def test_randaugment_op_values(test_image):
  x = test_image.numpy().astype(int)
  fill = tf.constant([124.0, 116.0, 104.0])

  def run(op, level, sign=1.0):
    return op(test_image, tf.constant(level), tf.constant(sign), fill).numpy().astype(int)

  for op in (randaugment.rotate, randaugment.shear_x, randaugment.translate_y,
             randaugment.brightness, randaugment.identity):
    np.testing.assert_array_equal(run(op, 0.0), x)  # magnitude 0: no change
  np.testing.assert_array_equal(run(randaugment.solarize, 1.0), 255 - x)
  np.testing.assert_array_equal(run(randaugment.posterize, 0.0), x & 0xF0)
  np.testing.assert_array_equal(run(randaugment.posterize, 1.0), 0 * x)
  stretched = run(randaugment.autocontrast, 0.0)
  assert stretched.min(axis=(0, 1)).tolist() == [0, 0, 0]
  assert stretched.max(axis=(0, 1)).tolist() == [255, 255, 255]
  equalized = run(randaugment.equalize, 0.0)
  # Equalisation is monotonic per channel and spreads values over the whole range.
  order = np.argsort(x[..., 0].ravel(), kind='stable')
  assert np.all(np.diff(equalized[..., 0].ravel()[order]) >= 0)
  assert equalized.max() >= 250
  # Translating by 45% of the width brings in the fill colour on one side.
  shifted = run(randaugment.translate_x, 1.0)
  assert shifted[:, -1].tolist() == [[124, 116, 104]] * 13
  np.testing.assert_allclose(run(randaugment.brightness, 1.0, -1.0), x * 0.1, atol=0.51)


def test_randaugment_ops_are_pils(test_image):
  # timm's RandAugment runs these ops on PIL: ours agree with PIL's to one grey level (PIL
  # truncates where we round), and exactly for the integer ops.
  from PIL import Image, ImageEnhance, ImageOps  # pylint: disable=g-import-not-at-top
  x = test_image.numpy()
  pil = Image.fromarray(x)
  fill = tf.constant([124.0, 116.0, 104.0])

  def ours(op, level, sign=1.0):
    return op(test_image, tf.constant(level), tf.constant(sign), fill).numpy().astype(int)

  for name, enhancer in [('sharpness', ImageEnhance.Sharpness), ('color', ImageEnhance.Color),
                         ('contrast', ImageEnhance.Contrast),
                         ('brightness', ImageEnhance.Brightness)]:
    for level, sign in [(0.3, 1.0), (0.9, 1.0), (0.9, -1.0)]:
      expected = np.asarray(enhancer(pil).enhance(max(0.1, 1 + sign * 0.9 * level)))
      np.testing.assert_allclose(ours(getattr(randaugment, name), level, sign), expected,
                                 atol=1, err_msg=f'{name} at level {level}, sign {sign}')
  np.testing.assert_allclose(ours(randaugment.autocontrast, 0.0),
                             np.asarray(ImageOps.autocontrast(pil)), atol=1)
  np.testing.assert_array_equal(ours(randaugment.equalize, 0.0), np.asarray(ImageOps.equalize(pil)))
  np.testing.assert_array_equal(ours(randaugment.solarize, 0.9),
                                np.asarray(ImageOps.solarize(pil, 256 - int(0.9 * 256))))
  np.testing.assert_array_equal(ours(randaugment.posterize, 0.5),
                                np.asarray(ImageOps.posterize(pil, 2)))


def test_randaugment_compiles_once_per_image_size():
  # Every op keeps its shapes independent of the pixel values: a histogram length or a slice
  # start taken from the pixels would make XLA compile anew for every image (seconds each).
  rng = np.random.default_rng(1)
  fill = (124.0, 116.0, 104.0)
  seconds = []
  for _ in range(4):   # a size no other test uses, so the first image compiles here
    image = tf.constant(rng.integers(0, 256, (11, 19, 3)), tf.uint8)
    start = time.perf_counter()
    for index in range(len(randaugment.OPS)):
      randaugment.apply_op(index, image, 9.0, 1.0, fill).numpy()
    seconds.append(time.perf_counter() - start)
  assert max(seconds[1:]) < seconds[0] / 5, seconds


def test_randaugment_is_deterministic_per_key(test_image):
  outs = [randaugment.randaugment(test_image, tf.constant([k, 0], tf.int64), 2, 9.0, 0.5).numpy()
          for k in (0, 0, 1, 2, 3)]
  assert all(o.shape == (13, 17, 3) and o.dtype == np.uint8 for o in outs)
  np.testing.assert_array_equal(outs[0], outs[1])
  assert sum(not np.array_equal(outs[0], o) for o in outs[2:]) >= 2


def test_tensorflow_is_imported_without_its_start_up_lines_and_nothing_else_is_lost(capfd):
  from repvit_jax.data import _tf  # pylint: disable=import-outside-toplevel
  with _tf.quiet_stderr():
    os.write(2, b'W0000 1 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.\n')
    os.write(2, b'a line that matters\n')
  err = capfd.readouterr().err
  assert err == 'a line that matters\n'
  # A fresh process: importing TensorFlow through the package prints nothing at all.
  result = subprocess.run([sys.executable, '-c', 'import repvit_jax.data._tf'],
                          capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items()
                               if k != 'TF_CPP_MIN_LOG_LEVEL'})
  assert result.stderr == '' and result.stdout == ''
