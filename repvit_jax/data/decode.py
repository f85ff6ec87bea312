"""Decoding stored (encoded) images into a crop of their pixels.

JPEGs are cropped while decoding (`decode_and_crop_jpeg` only decodes the blocks it needs),
which is most of the host-side speed of an ImageNet pipeline; other formats (PNG, BMP, GIF)
are decoded whole and then cropped. Grey and RGBA images come out as RGB.
"""

from __future__ import annotations

from repvit_jax.data._tf import tf
from repvit_jax.data.split import WindowFn


def decode_encoded_crop(encoded: tf.Tensor, window_fn: WindowFn) -> tf.Tensor:
  """Decodes the crop `window_fn` picks from an encoded image.

  Args:
    encoded: scalar string tensor, the bytes of a JPEG, PNG, BMP or GIF file.
    window_fn: [2] int32 (height, width) of the image -> [4] int32 (y, x, h, w) crop.
  Returns:
    uint8 [h, w, 3].
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)[:2]
    return tf.image.decode_and_crop_jpeg(encoded, window_fn(shape), channels=3)

  def other():
    # expand_animations=False: the first frame of a GIF, so every image is rank 3.
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    y, x, h, w = tf.unstack(window_fn(tf.shape(image)[:2]))
    return image[y:y + h, x:x + w]

  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  image.set_shape([None, None, 3])
  return image
