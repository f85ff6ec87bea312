"""Geometric and photometric image ops for preprocessing, all stateless (keyed) TF ops.

Images are [h, w, 3] tensors with pixel values in [0, 255]: uint8 where an op needs exact
integer pixels (RandAugment), float32 otherwise.
"""

from __future__ import annotations

import math

from repvit_jax.data import rng
from repvit_jax.data._tf import tf

# timm tries this many (area, ratio) draws before falling back to a centre crop.
_CROP_ATTEMPTS = 10


def _box_draws(key: tf.Tensor, image_area: tf.Tensor, scale: tuple[float, float],
               ratio: tuple[float, float]) -> tuple[tf.Tensor, tf.Tensor]:
  """timm's ten candidate boxes: area fraction uniform in `scale`, aspect ratio (width /
  height) log-uniform in `ratio`. Returns ([10] int32 heights, [10] int32 widths)."""
  area = image_area * rng.uniform(rng.fold_in(key, 0), [_CROP_ATTEMPTS], scale[0], scale[1])
  aspect = tf.exp(rng.uniform(rng.fold_in(key, 1), [_CROP_ATTEMPTS],
                              math.log(ratio[0]), math.log(ratio[1])))
  return (tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32),
          tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32))


def random_resized_crop_window(shape: tf.Tensor, key: tf.Tensor, scale: tuple[float, float],
                               ratio: tuple[float, float]) -> tf.Tensor:
  """The crop window of timm's RandomResizedCrop, drawn statelessly.

  Up to ten draws of an area fraction uniform in `scale` and a log-uniform aspect ratio
  (width / height) in `ratio`; the first that fits the image wins, else the largest centre
  crop whose aspect ratio is within `ratio`.

  Args:
    shape: [2] int32 (height, width) of the image.
    key: [2] int64 random key.
  Returns:
    [4] int32 (y, x, crop height, crop width).
  """
  height, width = shape[0], shape[1]
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  crop_h, crop_w = _box_draws(key, h * w, scale, ratio)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # first True, 0 if none

  # The fallback: the whole image, narrowed to the nearest allowed aspect ratio.
  image_ratio = w / h
  fallback_w = tf.where(image_ratio < ratio[0], w,
                        tf.where(image_ratio > ratio[1], tf.round(h * ratio[1]), w))
  fallback_h = tf.where(image_ratio < ratio[0], tf.round(w / ratio[0]), h)
  fallback_w = tf.clip_by_value(tf.cast(fallback_w, tf.int32), 1, width)
  fallback_h = tf.clip_by_value(tf.cast(fallback_h, tf.int32), 1, height)

  found = tf.reduce_any(fits)
  crop_h = tf.where(found, crop_h[first], fallback_h)
  crop_w = tf.where(found, crop_w[first], fallback_w)
  offset = rng.uniform(rng.fold_in(key, 2), [2])
  y = tf.cast(tf.floor(offset[0] * tf.cast(height - crop_h + 1, tf.float32)), tf.int32)
  x = tf.cast(tf.floor(offset[1] * tf.cast(width - crop_w + 1, tf.float32)), tf.int32)
  y = tf.where(found, y, (height - crop_h) // 2)
  x = tf.where(found, x, (width - crop_w) // 2)
  return tf.stack([y, x, crop_h, crop_w])


def centre_crop_window(shape: tf.Tensor, fraction: float) -> tf.Tensor:
  """The centred square of side `fraction` x the shorter side.

  Resizing that square to S equals resizing the shorter side to S / fraction and taking the
  centre S x S (timm's eval transform), without resizing pixels that are then thrown away.

  Args:
    shape: [2] int32 (height, width).
  Returns:
    [4] int32 (y, x, side, side).
  """
  height, width = shape[0], shape[1]
  shorter = tf.cast(tf.minimum(height, width), tf.float32)
  side = tf.maximum(tf.cast(tf.round(shorter * fraction), tf.int32), 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


# Shrinking by this factor or more resizes with an antialiasing filter. Below it plain bilinear
# is used: aliasing is slight there, and the antialiased resize costs about as much as
# decoding the JPEG (8x plain bilinear), which would halve host throughput on ImageNet.
ANTIALIAS_FACTOR = 2.0


def resize(image: tf.Tensor, size, method: str = 'bilinear') -> tf.Tensor:
  """Resize (`method`: 'bilinear' or 'bicubic') of [h, w, 3] to float32 [size, size, 3] in
  [0, 255].

  `size` may also be a (height, width) pair (ints or scalar tensors; the multi-scale
  sampler's). Antialiased when shrinking by ANTIALIAS_FACTOR or more (large photos), plain
  otherwise.
  """
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  if isinstance(size, (tuple, list)):
    target = tf.cast(tf.stack(size), tf.float32)
    shrink = tf.reduce_max(shape / target) >= ANTIALIAS_FACTOR
    size = [size[0], size[1]]
  else:
    shrink = tf.reduce_max(shape) >= ANTIALIAS_FACTOR * size
    size = [size, size]

  def resize_with(antialias):
    return lambda: tf.image.resize(image, size, method=method, antialias=antialias)

  # The kernels read uint8 as it is and return float32. Bilinear weights (antialiased or
  # not) are convex, so only bicubic's overshoot needs clipping.
  out = tf.cond(shrink, resize_with(True), resize_with(False))
  return tf.clip_by_value(out, 0.0, 255.0) if method == 'bicubic' else out


def random_flip(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
  """Mirrors [h, w, c] left-right with probability 1/2."""
  return tf.cond(rng.uniform(key) < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Float pixels in [0, 255] -> uint8, rounded."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def grayscale(image: tf.Tensor) -> tf.Tensor:
  """ITU-R 601 luma of float [h, w, 3], as [h, w, 1] (what PIL's convert('L') computes)."""
  return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped to [0, 255]."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def color_jitter(image: tf.Tensor, key: tf.Tensor, strength: float) -> tf.Tensor:
  """Brightness, contrast and saturation jitter (torchvision's ColorJitter without hue).

  Each factor is uniform in [max(0, 1 - strength), 1 + strength]. Applied in this fixed
  order (torchvision shuffles it), which keeps the op a plain composition.

  Args:
    image: float32 [h, w, 3] in [0, 255].
  Returns:
    float32 [h, w, 3] in [0, 255].
  """
  factors = rng.uniform(key, [3], max(0.0, 1.0 - strength), 1.0 + strength)
  image = blend(tf.zeros_like(image), image, factors[0])
  image = blend(tf.reduce_mean(grayscale(image)), image, factors[1])
  return blend(grayscale(image), image, factors[2])


def _normalise(image, mean, std):
  return (tf.cast(image, tf.float32) / 255.0 - mean) / std


# Compiled by XLA: TensorFlow's kernels broadcast a [3] operand over [h, w, 3] on a slow
# path, and at 224x224 three such passes cost more per image than the rest of the arithmetic
# together. A compiled call has a fixed cost of its own, more than the kernels take on small
# images (Fashion-MNIST's 28x28), which stay on TensorFlow's kernels.
_normalise_compiled = tf.function(_normalise, autograph=False, jit_compile=True)
_COMPILED_FROM_PIXELS = 64 * 64


def normalise(image: tf.Tensor, mean, std) -> tf.Tensor:
  """(image / 255 - mean) / std per channel; float32 [h, w, 3]."""
  mean, std = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
  height, width = image.shape[0], image.shape[1]
  if height is not None and width is not None and height * width < _COMPILED_FROM_PIXELS:
    return _normalise(image, mean, std)
  return _normalise_compiled(image, mean, std)


# timm's RandomErasing defaults (DeiT, LeViT, PoolFormer recipes): one rectangle of 2% to 1/3
# of the image, aspect ratio log-uniform in [0.3, 1 / 0.3], filled with per-pixel N(0, 1) noise.
_ERASE_AREA = (0.02, 1.0 / 3.0)
_ERASE_ASPECT = (0.3, 1.0 / 0.3)


def random_erasing(image: tf.Tensor, key: tf.Tensor, probability: float) -> tf.Tensor:
  """timm's RandomErasing in 'pixel' mode, count 1, drawn statelessly.

  With `probability`, up to ten (area, aspect) draws; the first rectangle strictly smaller
  than the image is replaced by standard-normal noise (the image is already normalised, so
  the noise matches the data's scale); if none fits the image is unchanged.

  Args:
    image: float32 [h, w, c], normalised.
    key: [2] int64 random key.
    probability: chance that an image is erased at all.
  Returns:
    float32 [h, w, c].
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  erase_h, erase_w = _box_draws(rng.fold_in(key, 1), h * w, _ERASE_AREA, _ERASE_ASPECT)
  fits = (erase_h < height) & (erase_w < width)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  erase_h, erase_w = erase_h[first], erase_w[first]
  offset = rng.uniform(rng.fold_in(key, 3), [2])
  top = tf.cast(tf.floor(offset[0] * tf.cast(height - erase_h + 1, tf.float32)), tf.int32)
  left = tf.cast(tf.floor(offset[1] * tf.cast(width - erase_w + 1, tf.float32)), tf.int32)
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  inside = (rows >= top) & (rows < top + erase_h) & (cols >= left) & (cols < left + erase_w)
  erase = (rng.uniform(rng.fold_in(key, 0)) < probability) & tf.reduce_any(fits)
  noise = rng.normal(rng.fold_in(key, 4), shape)
  return tf.where((inside & erase)[:, :, None], noise, image)
