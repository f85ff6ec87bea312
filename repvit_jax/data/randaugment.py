"""RandAugment in TensorFlow, with timm's ops, magnitudes and per-op magnitude noise.

Each of `num_layers` layers picks one op uniformly (with replacement) and applies it with
probability 1/2 at magnitude m ~ N(magnitude, magnitude_std) clipped to [0, 10], as timm's
'rand-m{magnitude}-mstd{magnitude_std}-inc1' does. Ops with a direction (rotate, shear,
translate, the enhancements) take a random sign. The 'increasing' variants are used: a larger
m is always a stronger change. All draws come from the image's key (stateless).

Ops work on uint8 [h, w, 3] images and return uint8 images of the same shape. The random
draws are TensorFlow ops; the chosen ops of all layers then run as one computation compiled by
XLA, which is what makes RandAugment cheap on the host's cores (every op is written in ops
XLA can compile, with shapes that do not depend on pixel values).
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
  # A sum over a fixed 256 bins, not tf.math.bincount, whose length depends on the pixel
  # values: XLA would compile anew for every image.
  histogram = tf.math.unsorted_segment_sum(tf.ones_like(values), values, 256)
  # PIL spreads all pixels but those of the brightest used value evenly over 255 steps.
  brightest = tf.reduce_max(tf.where(histogram > 0, tf.range(256), 0))
  step = (tf.size(values) - tf.gather(histogram, brightest)) // 255
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

  Pixels that come from outside the image get the colour `fill` ([3] floats), edge pixels
  blending with it: the image minus `fill` is read with a border of zeros, and `fill` added
  back, as bilinear resampling is linear. What ImageProjectiveTransformV3 computes (to
  rounding), written as four gathers so that XLA compiles it (that kernel has no XLA form).
  """
  x = _float(image) - fill
  height, width = tf.shape(x)[0], tf.shape(x)[1]
  # The zero border: input pixel (y, x) is row y + 1, column x + 1 of `padded`.
  padded = tf.reshape(tf.pad(x, [[1, 1], [1, 1], [0, 0]]), [-1, 3])
  padded_h = tf.cast(height + 2, tf.float32)
  padded_w = tf.cast(width + 2, tf.float32)
  out_y, out_x = tf.meshgrid(tf.range(tf.cast(height, tf.float32)),
                             tf.range(tf.cast(width, tf.float32)), indexing='ij')
  in_x = transform[0] * out_x + transform[1] * out_y + transform[2] + 1.0
  in_y = transform[3] * out_x + transform[4] * out_y + transform[5] + 1.0
  x0, y0 = tf.floor(in_x), tf.floor(in_y)
  fx, fy = in_x - x0, in_y - y0

  def tap(ty, tx, weight):
    inside = (tx >= 0) & (tx <= padded_w - 1) & (ty >= 0) & (ty <= padded_h - 1)
    index = (tf.clip_by_value(ty, 0, padded_h - 1) * padded_w
             + tf.clip_by_value(tx, 0, padded_w - 1))
    weight = tf.where(inside, weight, 0.0)
    return tf.gather(padded, tf.cast(index, tf.int32)) * weight[..., None]

  out = (tap(y0, x0, (1 - fx) * (1 - fy)) + tap(y0, x0 + 1, fx * (1 - fy))
         + tap(y0 + 1, x0, (1 - fx) * fy) + tap(y0 + 1, x0 + 1, fx * fy))
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
  height, width = tf.shape(x)[0], tf.shape(x)[1]
  # SMOOTH is [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13: nine shifted copies plus 4x the centre
  # (XLA fuses the sums into one loop; its convolution is far slower for one channel each).
  padded = tf.pad(x, [[1, 1], [1, 1], [0, 0]])
  total = 4.0 * x
  for dy in range(3):
    for dx in range(3):
      total += padded[dy:dy + height, dx:dx + width]
  smooth = tf.round(total / 13.0)
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


def _apply_layers(image, indices, levels, signs, fill):
  """OPS[indices[i]] at levels[i], signs[i], one layer after the other. A float image is
  rounded to uint8 first and returned as float32, so the conversions fuse with the ops."""
  out = augment.to_uint8(image) if image.dtype != tf.uint8 else image
  for layer in range(indices.shape[0]):
    out = _apply_op(indices[layer], out, levels[layer], signs[layer], fill)
  return tf.cast(out, image.dtype)


# Traced once per process (per layer count, dtype and static image shape) and shared by every
# pipeline: tracing the fourteen ops anew for each pipeline would cost seconds per iterator.
# Compiled by XLA (once per image size): it fuses each op's chain of elementwise kernels into
# one loop, on a host core several times faster than TensorFlow's kernels one by one.
_apply_layers_compiled = tf.function(_apply_layers, autograph=False, jit_compile=True)


def apply_op(index, image, magnitude, sign, fill: Sequence[float]) -> tf.Tensor:
  """Applies OPS[index] (int32 tensor) to uint8 [h, w, 3] at magnitude in [0, 10]."""
  level = tf.cast(magnitude, tf.float32) / MAX_MAGNITUDE
  out = _apply_layers_compiled(image, tf.reshape(tf.cast(index, tf.int32), [1]),
                               tf.reshape(level, [1]),
                               tf.reshape(tf.cast(sign, tf.float32), [1]),
                               tf.constant(fill, tf.float32))
  out.set_shape(image.shape)
  return out


def randaugment(image: tf.Tensor, key: tf.Tensor, num_layers: int, magnitude: float,
                magnitude_std: float, fill: Sequence[float] = (128.0, 128.0, 128.0)) -> tf.Tensor:
  """RandAugment of one image.

  Args:
    image: uint8 [h, w, 3]; or float32 with pixel values in [0, 255], rounded to uint8 first
      (the result is then float32 too).
    key: [2] int64 random key.
    num_layers: ops applied in sequence (each with probability 1/2).
    magnitude: 0..10. magnitude_std: std of the per-op gaussian noise on the magnitude.
    fill: RGB colour (0..255) of pixels that geometric ops bring in from outside.
  Returns:
    [h, w, 3] of the input's dtype.
  """
  if num_layers == 0:
    return image
  indices, levels, signs = [], [], []
  for layer in range(num_layers):
    k = rng.fold_in(key, layer)
    index = rng.uniform(rng.fold_in(k, 0), (), 0, len(OPS), dtype=tf.int32)
    m = tf.constant(magnitude, tf.float32)
    if magnitude_std > 0:
      m = m + magnitude_std * rng.normal(rng.fold_in(k, 1))
    m = tf.clip_by_value(m, 0.0, MAX_MAGNITUDE)
    # A skipped op is the identity op: one switch per layer, no extra conditional.
    skip = rng.uniform(rng.fold_in(k, 3)) >= OP_PROBABILITY
    indices.append(tf.where(skip, 0, index))
    levels.append(m / MAX_MAGNITUDE)
    signs.append(tf.where(rng.uniform(rng.fold_in(k, 2)) < 0.5, -1.0, 1.0))
  out = _apply_layers_compiled(image, tf.stack(indices), tf.stack(levels), tf.stack(signs),
                               tf.constant(fill, tf.float32))
  out.set_shape(image.shape)
  return out
