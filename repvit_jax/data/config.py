"""The data config: every field with its default, and the check that turns a config into one.

Fields (all live in `config.data` of a trainer config):

  name: which data set.
    'digits'            scikit-learn's 1,797 real 8x8 handwritten digits, embedded and offline
                        (10 classes; 1,437 train / 360 test by a fixed permutation).
    'fashion_mnist'     Fashion-MNIST's IDX files (10 classes, 60,000 train / 10,000 test) from
                        data_dir, else Debian's package dataset-fashion-mnist.
    'idx:/abs/path'     any MNIST-format (IDX) directory: MNIST, KMNIST, EMNIST
                        ('idx:/path/emnist-balanced' picks one set of several); see idx.py.
    'folder:/abs/path'  images laid out as path/<split>/<class>/<image file>; classes are the
                        sub-folders of the train split, sorted by name.
    any other string    a prepared TFDS image-classification data set ('imagenet2012',
                        'cifar10', 'cifar100', 'imagenette', ...) with features 'image' and
                        'label'. Nothing is ever downloaded.
  data_dir: TFDS data directory (None: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets);
    for 'fashion_mnist', the directory of its IDX files (None: Debian's path).
  train_split, eval_split: split names, TFDS slices like 'train[:90%]' allowed for TFDS. None picks
    'train' and the first of 'validation', 'val', 'test' that exists.
  validation_size: N > 0 moves N examples of the train split into a new 'validation' split
    (a fixed random subset; the tail of a streamed TFDS split), which then is the default
    eval split: choose hyper-parameters on it and keep 'test' for reporting. 0 is off.
  train_fraction: f in (0, 1]; f < 1 trains on a fixed class-balanced subset of the train split
    (after validation_size has taken its part): round(f x n_c) examples of each class c, the
    same in every run (label-scarce experiments). Needs a source that knows its labels without
    reading the images (digits, IDX, folders, cached TFDS). 1 is off.
  image_size: side of the square images the model sees, in pixels.
  crop_scale: (min, max) area fraction of the random-resized crop (timm's `scale`).
  crop_ratio: (min, max) aspect ratio (width / height) of the random-resized crop.
  flip: random horizontal flip in training.
  randaugment: None or ConfigDict(num_layers, magnitude, magnitude_std); num_layers=0 is off.
    Magnitude is on timm's 0..10 scale, perturbed per op by a gaussian with std magnitude_std and
    clipped to [0, 10]; the defaults are timm's 'rand-m9-mstd0.5-inc1' (DeiT).
  color_jitter: strength s of brightness, contrast and saturation jitter, each factor uniform in
    [max(0, 1 - s), 1 + s]; 0 is off.
  random_erasing: probability of timm's RandomErasing (pixel mode, one rectangle of 2%..1/3 of
    the image, aspect 0.3..3.3, normal noise) after normalisation; 0 is off.
  repeated_augmentation: R >= 1; R > 1 puts each example in R consecutive slots of the
    training order, each with its own augmentation (DeiT's repeated augmentation, R = 3); 1 is
    off.
  mean, std: per-channel normalisation in [0, 1] pixel units: (x / 255 - mean) / std.
  eval_crop_fraction: evaluation resizes the shorter side to image_size / eval_crop_fraction and
    takes the centre image_size x image_size crop.
  eval_resize: the method of that resize, 'bilinear' or 'bicubic' (timm's pretrained weights
    were evaluated with bicubic; a converted model's input contract says which).
  shuffle_buffer: window of the stateless shuffle of streamed TFDS training, in examples per
    host; up to three windows of encoded images are held in memory (ImageNet: ~110 KB each).
    Unused when examples are read by index (digits, folders, cached TFDS): those shuffle
    exactly.
  cache: keep the encoded split in host memory and read it by index (exact global shuffling);
    meant for data sets that fit in RAM (CIFAR, Imagenette). Folders and TFDS only.
  prefetch: batches prepared ahead of the consumer; -1 lets tf.data choose.
  skip_corrupt: image folders only. False: an image that does not decode stops the run with one
    error naming its file. True: every image of a split is decoded once when the split is
    first listed, and those that fail are left out, with one warning line counting them.
  multiscale: None, or MobileViT's multi-scale sampler: a list of training resolutions (ints
    for squares or (height, width) pairs). Each step trains at one of them, chosen from
    (seed, step), with the per-host batch scaled by image_size^2 / (h w) and rounded to a
    multiple of the local device count (see repvit_jax/data/multiscale.py). Evaluation
    stays at image_size.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections

from repvit_jax.data.errors import DataError
from repvit_jax.models.inputs import IMAGENET_MEAN, IMAGENET_STD, RESIZE_METHODS



def default_randaugment() -> ml_collections.ConfigDict:
  """RandAugment as in DeiT: two ops per image at magnitude 9 with std 0.5."""
  return ml_collections.ConfigDict(dict(num_layers=2, magnitude=9.0, magnitude_std=0.5))


def default_config() -> ml_collections.ConfigDict:
  """Returns the data config with every field at its default (see the module docstring)."""
  return ml_collections.ConfigDict(dict(
      name='digits',
      data_dir=ml_collections.FieldReference(None, field_type=str),
      train_split=ml_collections.FieldReference(None, field_type=str),
      eval_split=ml_collections.FieldReference(None, field_type=str),
      validation_size=0,
      train_fraction=1.0,
      image_size=224,
      crop_scale=(0.08, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      flip=True,
      randaugment=default_randaugment(),
      color_jitter=0.0,
      random_erasing=0.0,
      repeated_augmentation=1,
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      eval_crop_fraction=0.875,
      eval_resize='bilinear',
      shuffle_buffer=16_384,
      cache=False,
      prefetch=4,
      skip_corrupt=False,
      multiscale=ml_collections.config_dict.placeholder(tuple),
  ))


def _as_dict(config: Any) -> dict:
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return config.to_dict()
  if isinstance(config, Mapping):
    return dict(config)
  raise DataError(f'data config must be an ml_collections.ConfigDict, got {type(config).__name__}')


def _pair(config: dict, key: str, low: float, high: float) -> tuple[float, float]:
  value = config[key]
  try:
    a, b = (float(v) for v in value)
  except (TypeError, ValueError):
    raise DataError(f'data.{key} must be a pair of numbers (min, max), got {value!r}') from None
  if not low <= a <= b <= high:
    raise DataError(f'data.{key} must satisfy {low} <= min <= max <= {high}, got {value!r}')
  return a, b


def _triple(config: dict, key: str, positive: bool) -> tuple[float, float, float]:
  value = config[key]
  try:
    out = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    out = ()
  if len(out) != 3 or (positive and min(out) <= 0):
    what = 'three positive numbers' if positive else 'three numbers'
    raise DataError(f'data.{key} must be {what} (one per RGB channel), got {value!r}')
  return out


def resolve(config: Any) -> ml_collections.FrozenConfigDict:
  """Checks a data config and fills missing fields from `default_config()`.

  Args:
    config: a ConfigDict (or mapping) with a subset of the default fields.
  Returns:
    A frozen config with every field, numbers normalised (tuples of floats, ints).
  Raises:
    DataError: on an unknown field or a value out of range, naming the field.
  """
  given = _as_dict(config)
  out = default_config().to_dict()
  unknown = sorted(set(given) - set(out))
  if unknown:
    raise DataError(f'unknown data config field(s) {unknown}; known fields: {sorted(out)}')
  out.update(given)

  if not isinstance(out['name'], str) or not out['name']:
    raise DataError(f"data.name must be a non-empty string, got {out['name']!r}")
  size = out['image_size']
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise DataError(f'data.image_size must be a positive int, got {size!r}')
  out['crop_scale'] = _pair(out, 'crop_scale', 1e-6, 1.0)
  out['crop_ratio'] = _pair(out, 'crop_ratio', 1e-6, math.inf)
  out['mean'] = _triple(out, 'mean', positive=False)
  out['std'] = _triple(out, 'std', positive=True)
  out['flip'] = bool(out['flip'])
  out['cache'] = bool(out['cache'])
  out['skip_corrupt'] = bool(out.get('skip_corrupt', False))
  fraction = float(out['eval_crop_fraction'])
  if not 0 < fraction <= 1:
    raise DataError(f'data.eval_crop_fraction must be in (0, 1], got {fraction!r}')
  out['eval_crop_fraction'] = fraction
  out['eval_resize'] = str(out.get('eval_resize', 'bilinear'))
  if out['eval_resize'] not in RESIZE_METHODS:
    raise DataError(f"data.eval_resize must be one of {RESIZE_METHODS}, got "
                    f"{out['eval_resize']!r}")
  jitter = float(out['color_jitter'])
  if jitter < 0:
    raise DataError(f'data.color_jitter must be >= 0 (0 is off), got {jitter!r}')
  out['color_jitter'] = jitter
  erasing = float(out['random_erasing'])
  if not 0 <= erasing <= 1:
    raise DataError(f'data.random_erasing is a probability in [0, 1] (0 is off), got {erasing!r}')
  out['random_erasing'] = erasing
  repeats = out['repeated_augmentation']
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise DataError(f'data.repeated_augmentation is a count >= 1 (1 is off), got {repeats!r}')
  held_out = out['validation_size']
  if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 0:
    raise DataError(f'data.validation_size is a count of train examples >= 0 (0 is off), got '
                    f'{held_out!r}')
  try:
    train_fraction = float(out['train_fraction'])
  except (TypeError, ValueError):
    train_fraction = math.nan
  if isinstance(out['train_fraction'], bool) or not 0 < train_fraction <= 1:
    raise DataError(f'data.train_fraction is the fraction of the train split to train on, in '
                    f"(0, 1] (1 is all of it), got {out['train_fraction']!r}")
  out['train_fraction'] = train_fraction
  if int(out['shuffle_buffer']) < 0:
    raise DataError(f"data.shuffle_buffer must be >= 0, got {out['shuffle_buffer']!r}")
  out['shuffle_buffer'] = int(out['shuffle_buffer'])
  if int(out['prefetch']) < -1:
    raise DataError(f"data.prefetch must be >= 0, or -1 for automatic, got {out['prefetch']!r}")
  out['prefetch'] = int(out['prefetch'])
  out['multiscale'] = _resolve_multiscale(out['multiscale'])
  out['randaugment'] = _resolve_randaugment(out['randaugment'])
  return ml_collections.FrozenConfigDict(out)


def _resolve_multiscale(value: Any):
  """None / empty -> None; ints and (h, w) pairs -> a tuple of (h, w) int pairs."""
  if value is None:
    return None
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value,)
  try:
    items = list(value)
  except TypeError:
    raise DataError('data.multiscale must be None or a list of sizes (ints or (h, w) pairs), '
                    f'got {value!r}') from None
  if all(item is None for item in items):   # `--config.data.multiscale=None` parses as (None,)
    return None
  sizes = []
  for item in items:
    if isinstance(item, int) and not isinstance(item, bool):
      pair = (item, item)
    else:
      try:
        pair = tuple(item)
      except TypeError:
        pair = ()
      if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                   for v in pair):
        raise DataError(f'data.multiscale entries must be ints or (h, w) pairs of ints, got '
                        f'{item!r}')
    if min(pair) < 1:
      raise DataError(f'data.multiscale sizes must be positive, got {item!r}')
    sizes.append((int(pair[0]), int(pair[1])))
  return tuple(sizes) or None


def _resolve_randaugment(value: Any) -> dict:
  """None and num_layers=0 both mean off; returned as num_layers=0 so callers test one thing."""
  if value is None:
    return dict(num_layers=0, magnitude=0.0, magnitude_std=0.0)
  if not isinstance(value, Mapping):
    raise DataError(f'data.randaugment must be None or a ConfigDict(num_layers, magnitude, '
                    f'magnitude_std), got {value!r}')
  out = default_randaugment().to_dict()
  unknown = sorted(set(value) - set(out))
  if unknown:
    raise DataError(f'unknown data.randaugment field(s) {unknown}; known fields: {sorted(out)}')
  out.update(value)
  layers = out['num_layers']
  if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
    raise DataError(f'data.randaugment.num_layers must be an int >= 0, got {layers!r}')
  magnitude, std = float(out['magnitude']), float(out['magnitude_std'])
  if not 0 <= magnitude <= 10:
    raise DataError(f'data.randaugment.magnitude must be in [0, 10], got {magnitude!r}')
  if not 0 <= std < math.inf:
    raise DataError(f'data.randaugment.magnitude_std must be finite and >= 0, got {std!r}')
  return dict(num_layers=layers, magnitude=magnitude, magnitude_std=std)
