"""MNIST-format (IDX) data sets and the validation split carved from train, on tiny files the
tests write themselves (nothing here needs Fashion-MNIST installed)."""

import gzip
import os

import numpy as np
import pytest

from repvit_jax import data
from repvit_jax.data import idx

TRAIN, TEST, CLASSES, SIDE = 40, 10, 4, 6


def idx_bytes(array: np.ndarray) -> bytes:
  """An IDX file of a uint8 array: magic 0x00000800 + ndim, big-endian dims, the bytes."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def images_of(first, count):
  """Example e is a flat image of value 5 e + 3 (so each example names itself)."""
  values = (5 * np.arange(first, first + count) + 3).astype(np.uint8)
  return np.broadcast_to(values[:, None, None], (count, SIDE, SIDE)).copy()


def write_set(directory, prefix='', gz=True):
  """Train examples 0..39 (gzipped) and test examples 40..49 (plain); label = id mod 4."""
  os.makedirs(directory, exist_ok=True)
  parts = {'train': (0, TRAIN), 't10k': (TRAIN, TEST)}
  for split, (first, count) in parts.items():
    labels = (np.arange(first, first + count) % CLASSES).astype(np.uint8)
    for kind, array in (('images-idx3', images_of(first, count)), ('labels-idx1', labels)):
      name = os.path.join(directory, f'{prefix}{split}-{kind}-ubyte')
      payload = idx_bytes(array)
      if gz and split == 'train':
        with gzip.open(name + '.gz', 'wb') as f:
          f.write(payload)
      else:
        with open(name, 'wb') as f:
          f.write(payload)
  return str(directory)


def config(name, **overrides):
  c = data.default_config()
  c.name = name
  c.image_size = SIDE
  c.randaugment = None
  c.flip = False
  c.crop_scale = (1.0, 1.0)
  c.crop_ratio = (1.0, 1.0)
  c.eval_crop_fraction = 1.0
  c.mean = (0.0, 0.0, 0.0)
  c.std = (1 / 255, 1 / 255, 1 / 255)    # normalised pixels are the stored bytes
  c.update(overrides)
  return c


def ids(images):
  """Example ids of flat images (see `images_of`); every channel must agree."""
  assert np.all(images == images[:, :1, :1, :1])
  return ((images[:, 0, 0, 0] - 3) / 5).round().astype(int).tolist()


def eval_ids(c, batch=8):
  out = []
  for b in data.make_eval_iterator(c, batch, process_index=0, process_count=1):
    out += [i for i, m in zip(ids(b['image']), b['mask']) if m]
  return out


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  return write_set(tmp_path_factory.mktemp('idx'))


def test_read_idx_round_trip_and_bad_files(tmp_path):
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  (tmp_path / 'a').write_bytes(idx_bytes(array))
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / 'a')), array)
  with gzip.open(tmp_path / 'a.gz', 'wb') as f:
    f.write(idx_bytes(array))
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / 'a.gz')), array)
  (tmp_path / 'png').write_bytes(b'\x89PNG\r\n')
  with pytest.raises(data.DataError, match='is not an IDX file'):
    idx.read_idx(str(tmp_path / 'png'))
  (tmp_path / 'short').write_bytes(idx_bytes(array)[:-5])
  with pytest.raises(data.DataError, match=r'truncated: its header promises shape \(2, 3, 4\)'):
    idx.read_idx(str(tmp_path / 'short'))


def test_idx_directory_info_and_images(idx_dir):
  info = data.get_dataset_info(config(f'idx:{idx_dir}'))
  assert info == data.DatasetInfo(num_classes=4, num_train=40, num_eval=10, train_split='train',
                                  eval_split='test', name=f'idx:{idx_dir}',
                                  class_names=('0', '1', '2', '3'))
  # Evaluation reads the test split in order; grey bytes become three equal channels.
  assert eval_ids(config(f'idx:{idx_dir}')) == list(range(40, 50))
  batch = next(data.make_eval_iterator(config(f'idx:{idx_dir}'), 10, process_index=0,
                                       process_count=1))
  assert batch['label'].tolist() == [e % 4 for e in range(40, 50)]
  # Another size: resized (flat images stay flat), still three channels.
  big = next(data.make_eval_iterator(config(f'idx:{idx_dir}', image_size=16), 4,
                                     process_index=0, process_count=1))
  assert big['image'].shape == (4, 16, 16, 3) and ids(big['image']) == [40, 41, 42, 43]


def test_fashion_mnist_names_and_missing_files(tmp_path):
  directory = write_set(tmp_path / 'fashion')
  info = data.get_dataset_info(config('fashion_mnist', data_dir=directory))
  assert info.num_train == 40 and info.num_classes == 10
  assert info.class_names[:2] == ('T-shirt/top', 'Trouser') and info.class_names[-1] == 'Ankle boot'
  with pytest.raises(data.DataError) as error:
    data.get_dataset_info(config('fashion_mnist', data_dir=str(tmp_path / 'none')))
  message = str(error.value)
  assert 'does not exist' in message and 'apt-get install dataset-fashion-mnist' in message
  assert '\n' not in message
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(data.DataError, match='no train-images-idx3-ubyte'):
    data.get_dataset_info(config('fashion_mnist', data_dir=str(tmp_path / 'empty')))


def test_several_sets_in_one_directory_and_class_file(tmp_path):
  write_set(tmp_path, prefix='emnist-a-')
  write_set(tmp_path, prefix='emnist-b-', gz=False)
  with pytest.raises(data.DataError, match=r'several IDX data sets \(emnist-a, emnist-b\)'):
    data.get_dataset_info(config(f'idx:{tmp_path}'))
  (tmp_path / 'emnist-b-classes.txt').write_text('w\nx\ny\nz\n')
  info = data.get_dataset_info(config(f'idx:{tmp_path}/emnist-b'))
  assert info.num_train == 40 and info.class_names == ('w', 'x', 'y', 'z')
  with pytest.raises(data.DataError, match="needs a path"):
    data.get_dataset_info(config('idx:'))


def test_validation_split_is_carved_from_train(idx_dir):
  c = config(f'idx:{idx_dir}', validation_size=8)
  info = data.get_dataset_info(c)
  assert (info.num_train, info.eval_split, info.num_eval) == (32, 'validation', 8)
  validation = eval_ids(c)
  assert len(validation) == 8 and validation == sorted(validation)
  assert all(0 <= e < 40 for e in validation)          # from train, never from test
  assert eval_ids(config(f'idx:{idx_dir}', validation_size=8)) == validation   # fixed
  # Training sees the other 32, each once per epoch.
  train = data.make_train_iterator(c, 8, seed=3, process_index=0, process_count=1)
  epoch = sum((ids(next(train)['image']) for _ in range(4)), [])
  assert sorted(epoch) == sorted(set(range(40)) - set(validation))
  # The test split stays whole, for reporting.
  assert eval_ids(config(f'idx:{idx_dir}', validation_size=8, eval_split='test')) == list(
      range(40, 50))
  with pytest.raises(data.DataError, match='validation_size=40 must be between 1 and 39'):
    data.get_dataset_info(config(f'idx:{idx_dir}', validation_size=40))
  with pytest.raises(data.DataError, match='validation_size is a count'):
    data.get_dataset_info(config(f'idx:{idx_dir}', validation_size=-1))


def test_train_fraction_keeps_a_fixed_class_balanced_part_of_train(idx_dir):
  c = config(f'idx:{idx_dir}', validation_size=8, train_fraction=0.5)
  validation = eval_ids(c)
  assert validation == eval_ids(config(f'idx:{idx_dir}', validation_size=8))  # untouched
  remaining = sorted(set(range(40)) - set(validation))
  per_class = {k: sum(1 for e in remaining if e % 4 == k) for k in range(4)}
  expected = sum(max(1, round(n / 2)) for n in per_class.values())
  assert data.get_dataset_info(c).num_train == expected < 32

  def epoch(seed):
    train = data.make_train_iterator(c, expected, seed=seed, process_index=0, process_count=1)
    return ids(next(train)['image'])

  kept = sorted(epoch(3))
  assert len(set(kept)) == expected and set(kept) <= set(remaining)     # never validation
  assert {k: sum(1 for e in kept if e % 4 == k) for k in range(4)} == {
      k: max(1, round(n / 2)) for k, n in per_class.items()}          # balanced per class
  assert sorted(epoch(4)) == kept                                       # the same every run
  for bad in (0, 1.5, -0.1):
    with pytest.raises(data.DataError, match='train_fraction is the fraction'):
      data.get_dataset_info(config(f'idx:{idx_dir}', train_fraction=bad))


def test_validation_split_refused_where_the_data_set_has_one(tmp_path):
  for split in ('train', 'validation'):
    os.makedirs(tmp_path / split / 'a')
    (tmp_path / split / 'a' / 'x.png').write_bytes(b'')
  with pytest.raises(data.DataError, match="has its own 'validation' split"):
    data.get_dataset_info(config(f'folder:{tmp_path}', validation_size=1))
