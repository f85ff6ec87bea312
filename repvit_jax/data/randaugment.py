"""RandAugment in TensorFlow, with timm's ops, magnitudes and per-op magnitude noise.

Each of `num_layers` layers picks one op uniformly (with replacement) and applies it with
probability 1/2 at magnitude m ~ N(magnitude, magnitude_std) clipped to [0, 10], as timm's
'rand-m{magnitude}-mstd{magnitude_std}-inc1' does. Ops with a direction (rotate, shear,
translate, the enhancements) take a random sign. The 'increasing' variants are used: a larger
m is always a stronger change. All draws come from the image's key (stateless).

Ops work on uint8 [h, w, 3] images and return uint8 images of the same shape.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from repvit_jax.data import augment, rng
from repvit_jax.data._tf import tf

MAX_MAGNITUDE = 10.0
OP_PROBABILITY = 0.5


def _float(image):
  return tf.cast(image, tf.float32)


def identity(image, level, sign, fill):
  del level, sign, fill
  return image


def autocontrast(image, level, sign, fill):
  """Stretches each channel to the full [0, 255] range (channels that are flat stay)."""
  del level, sign, fill
  x = _float(image)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, lo, 0.0)
  return augment.to_uint8((x - offset) * scale)


def _equalize_channel(channel):
  """PIL's ImageOps.equalize for one uint8 [h, w] channel."""
  values = tf.reshape(tf.cast(channel, tf.int32), [-1])
  histogram = tf.math.bincount(values, minlength=256, maxlength=256, dtype=tf.int32)
  nonzero = tf.boolean_mask(histogram, histogram > 0)
  # PIL spreads all pixels but those of the brightest used value evenly over 255 steps.
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
  lut = (tf.cumsum(histogram) + step // 2) // tf.maximum(step, 1)
  lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
  equalized = tf.cast(tf.gather(lut, tf.cast(channel, tf.int32)), tf.uint8)
  return tf.where(step > 0, equalized, channel)


def equalize(image, level, sign, fill):
  """Histogram equalisation per channel."""
  del level, sign, fill
  return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def _affine(image, transform, fill):
  """Resamples uint8 [h, w, 3] bilinearly; `transform` [8] maps output (x, y) to input.

  Pixels that come from outside the image get the colour `fill` ([3] floats). Resampling
  image - fill with a zero border and adding fill back gives exactly that, edge pixels
  blending with the fill colour, since bilinear resampling is linear.
  """
  x = _float(image) - fill
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=tf.reshape(tf.cast(transform, tf.float32), [1, 8]),
      output_shape=tf.shape(x)[:2], fill_value=0.0, interpolation='BILINEAR',
      fill_mode='CONSTANT')[0]
  return augment.to_uint8(out + fill)


def rotate(image, level, sign, fill):
  """Rotation about the centre by up to 30 degrees."""
  angle = sign * level * 30.0 * math.pi / 180.0
  shape = tf.cast(tf.shape(image), tf.float32)
  cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
  c, s = tf.cos(angle), tf.sin(angle)
  transform = tf.stack([c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy, 0.0, 0.0])
  return _affine(image, transform, fill)


def shear_x(image, level, sign, fill):
  """Horizontal shear by up to 0.3 (PIL convention: about the top-left corner)."""
  return _affine(image, tf.stack([1.0, sign * level * 0.3, 0, 0, 1, 0, 0, 0]), fill)


def shear_y(image, level, sign, fill):
  """Vertical shear by up to 0.3."""
  return _affine(image, tf.stack([1.0, 0, 0, sign * level * 0.3, 1, 0, 0, 0]), fill)


def translate_x(image, level, sign, fill):
  """Horizontal shift by up to 45% of the width."""
  pixels = sign * level * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, tf.stack([1.0, 0, pixels, 0, 1, 0, 0, 0]), fill)


def translate_y(image, level, sign, fill):
  """Vertical shift by up to 45% of the height."""
  pixels = sign * level * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, tf.stack([1.0, 0, 0, 0, 1, pixels, 0, 0]), fill)


def solarize(image, level, sign, fill):
  """Inverts pixels at or above a threshold that falls from 256 (nothing) to 0 (all)."""
  del sign, fill
  threshold = 256 - tf.cast(level * 256.0, tf.int32)
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.where(x >= threshold, 255 - x, x), tf.uint8)


def posterize(image, level, sign, fill):
  """Keeps the top 4 - floor(4 level) bits of each pixel (0 bits: black)."""
  del sign, fill
  shift = 4 + tf.cast(level * 4.0, tf.int32)
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift), tf.uint8)


def _enhance_factor(level, sign):
  return tf.maximum(0.1, 1.0 + sign * level * 0.9)


def color(image, level, sign, fill):
  """Saturation: blend with the grey image by a factor 1 +- 0.9 level."""
  del fill
  x = _float(image)
  return augment.to_uint8(augment.blend(augment.grayscale(x), x, _enhance_factor(level, sign)))


def contrast(image, level, sign, fill):
  """Contrast: blend with the mean grey level by a factor 1 +- 0.9 level."""
  del fill
  x = _float(image)
  mean = tf.round(tf.reduce_mean(augment.grayscale(x)))
  return augment.to_uint8(augment.blend(mean, x, _enhance_factor(level, sign)))


def brightness(image, level, sign, fill):
  """Brightness: scale by a factor 1 +- 0.9 level."""
  del fill
  x = _float(image)
  return augment.to_uint8(augment.blend(tf.zeros_like(x), x, _enhance_factor(level, sign)))


def sharpness(image, level, sign, fill):
  """Sharpness: blend with PIL's SMOOTH-filtered image (borders unfiltered), 1 +- 0.9 level."""
  del fill
  x = _float(image)
  kernel = tf.constant([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], 'SAME')[0])
  height, width = tf.shape(x)[0], tf.shape(x)[1]
  rows = tf.range(height)
  cols = tf.range(width)
  interior = (((rows > 0) & (rows < height - 1))[:, None, None]
              & ((cols > 0) & (cols < width - 1))[None, :, None])
  degenerate = tf.where(interior, smooth, x)
  return augment.to_uint8(augment.blend(degenerate, x, _enhance_factor(level, sign)))


Op = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
# The op index drawn per layer indexes this tuple: reordering it changes every run's draws.
OPS: tuple[Op, ...] = (identity, autocontrast, equalize, rotate, solarize, color, posterize,
                       contrast, brightness, sharpness, shear_x, shear_y, translate_x,
                       translate_y)


def _apply_op(index, image, level, sign, fill):
  branches = [lambda op=op: op(image, level, sign, fill) for op in OPS]
  out = tf.switch_case(index, branches)
  out.set_shape([None, None, 3])
  return out


# Traced once per process and shared by every layer and pipeline: tracing the fourteen ops
# anew for each layer of each pipeline would cost seconds per iterator.
_apply_op_traced = tf.function(
    _apply_op, autograph=False, reduce_retracing=True,
    input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([None, None, 3], tf.uint8),
                     tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32),
                     tf.TensorSpec([3], tf.float32)])


def apply_op(index, image, magnitude, sign, fill: Sequence[float]) -> tf.Tensor:
  """Applies OPS[index] (int32 tensor) to uint8 [h, w, 3] at magnitude in [0, 10]."""
  level = tf.cast(magnitude, tf.float32) / MAX_MAGNITUDE
  out = _apply_op_traced(tf.cast(index, tf.int32), image, level, tf.cast(sign, tf.float32),
                         tf.constant(fill, tf.float32))
  out.set_shape(image.shape)
  return out


def randaugment(image: tf.Tensor, key: tf.Tensor, num_layers: int, magnitude: float,
                magnitude_std: float, fill: Sequence[float] = (128.0, 128.0, 128.0)) -> tf.Tensor:
  """RandAugment of one image.

  Args:
    image: uint8 [h, w, 3].
    key: [2] int64 random key.
    num_layers: ops applied in sequence (each with probability 1/2).
    magnitude: 0..10. magnitude_std: std of the per-op gaussian noise on the magnitude.
    fill: RGB colour (0..255) of pixels that geometric ops bring in from outside.
  Returns:
    uint8 [h, w, 3].
  """
  for layer in range(num_layers):
    k = rng.fold_in(key, layer)
    index = rng.uniform(rng.fold_in(k, 0), (), 0, len(OPS), dtype=tf.int32)
    m = tf.constant(magnitude, tf.float32)
    if magnitude_std > 0:
      m = m + magnitude_std * rng.normal(rng.fold_in(k, 1))
    m = tf.clip_by_value(m, 0.0, MAX_MAGNITUDE)
    sign = tf.where(rng.uniform(rng.fold_in(k, 2)) < 0.5, -1.0, 1.0)
    # A skipped op is the identity op: one switch per layer, no extra conditional.
    skip = rng.uniform(rng.fold_in(k, 3)) >= OP_PROBABILITY
    image = apply_op(tf.where(skip, 0, index), image, m, sign, fill)
  return image
