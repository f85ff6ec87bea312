"""The per-example recipes: training augmentation and evaluation crop, both to normalised pixels.

Train (timm order): random-resized crop (decoded straight into the crop), resize, horizontal
flip, RandAugment, colour jitter, normalise, random erasing. Eval: centre crop of
`eval_crop_fraction` of the shorter side, resize (`eval_resize`), normalise.
"""

from __future__ import annotations

from typing import Callable

from repvit_jax.data import augment, rng
from repvit_jax.data._tf import tf
from repvit_jax.data.randaugment import randaugment
from repvit_jax.data.split import WindowFn

DecodeCrop = Callable[[tf.Tensor, WindowFn], tf.Tensor]


def train_image(raw: tf.Tensor, key: tf.Tensor, decode_crop: DecodeCrop, config,
                size=None) -> tf.Tensor:
  """One augmented training image.

  Args:
    raw: the stored image, as the split's `decode_crop` takes it.
    key: [2] int64, this example's random key; the only source of randomness.
    config: the resolved data config.
    size: None for config.image_size, or a (height, width) pair of int32 scalar tensors
      (the multi-scale sampler's resolution of this step).
  Returns:
    float32 [image_size, image_size, 3] (or [height, width, 3]), normalised.
  """
  size = config.image_size if size is None else size

  def window(shape):
    return augment.random_resized_crop_window(shape, rng.fold_in(key, 0), config.crop_scale,
                                              config.crop_ratio)

  image = augment.resize(decode_crop(raw, window), size)
  if config.flip:
    image = augment.random_flip(image, rng.fold_in(key, 1))
  ra = config.randaugment
  if ra.num_layers > 0:
    fill = tuple(min(255.0, round(255.0 * m)) for m in config.mean)
    # Rounded to uint8 pixels for the ops and back to float32, inside one compiled call.
    image = randaugment(image, rng.fold_in(key, 2), ra.num_layers, ra.magnitude,
                        ra.magnitude_std, fill)
  if config.color_jitter > 0:
    image = augment.color_jitter(image, rng.fold_in(key, 3), config.color_jitter)
  image = augment.normalise(image, config.mean, config.std)
  if config.random_erasing > 0:
    image = augment.random_erasing(image, rng.fold_in(key, 4), config.random_erasing)
  image.set_shape([size, size, 3] if isinstance(size, int) else [None, None, 3])
  return image


def eval_image(raw: tf.Tensor, decode_crop: DecodeCrop, config) -> tf.Tensor:
  """One evaluation image: float32 [image_size, image_size, 3], normalised."""
  size = config.image_size

  def window(shape):
    return augment.centre_crop_window(shape, config.eval_crop_fraction)

  image = augment.resize(decode_crop(raw, window), size, config.eval_resize)
  image = augment.normalise(image, config.mean, config.std)
  image.set_shape([size, size, 3])
  return image
