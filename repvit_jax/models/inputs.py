"""The input contract of a model: what images it expects and how to prepare them.

A trained model only works on images prepared the way its training prepared them. This is
that preparation, saved with every checkpoint and model directory (`ModelSpec.input`):

    pixels in [pixel_range[0], pixel_range[1]] (RGB, HWC)
      -> resize the shorter side to image_size / eval_crop_fraction (`resize`: bilinear or
         bicubic), centre-crop image_size x image_size
      -> x = ((pixels - low) / (high - low) - mean) / std   per channel
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_METHODS = ('bilinear', 'bicubic')
# Contract field -> the data config field that sets it.
DATA_FIELDS = {'image_size': 'image_size', 'mean': 'mean', 'std': 'std',
               'eval_crop_fraction': 'eval_crop_fraction', 'resize': 'eval_resize'}


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How a model's input images are made (see the module docstring).

  Attributes:
    image_size: side of the square images the model sees.
    mean, std: per-channel normalisation, in units of the [0, 1]-scaled pixels.
    pixel_range: (low, high) of the raw pixel values the scaling maps to [0, 1].
    eval_crop_fraction: evaluation resizes the shorter side to image_size / fraction and
      takes the centre crop.
    resize: the resize method of that step, 'bilinear' or 'bicubic' (timm's pretrained
      models were evaluated with bicubic).
  """
  image_size: int = 224
  mean: Tuple[float, float, float] = IMAGENET_MEAN
  std: Tuple[float, float, float] = IMAGENET_STD
  pixel_range: Tuple[float, float] = (0.0, 255.0)
  eval_crop_fraction: float = 0.875
  resize: str = 'bilinear'

  def __post_init__(self):
    if self.resize not in RESIZE_METHODS:
      raise ValueError(f'input contract: resize must be one of {RESIZE_METHODS}, got '
                       f'{self.resize!r}')

  def data_fields(self) -> dict:
    """The contract as fields of the data config (`repvit_jax.data.default_config()`): what
    an evaluation pipeline sets to prepare images this way."""
    return {data_field: getattr(self, field) for field, data_field in DATA_FIELDS.items()}

  @classmethod
  def from_data_config(cls, data: Mapping[str, Any], default: 'InputSpec') -> 'InputSpec':
    """The contract a data config prepares images by; `default` for the fields it lacks."""
    values = {field: data.get(data_field, getattr(default, field))
              for field, data_field in DATA_FIELDS.items()}
    return dataclasses.replace(
        default, image_size=int(values['image_size']), mean=tuple(values['mean']),
        std=tuple(values['std']), eval_crop_fraction=float(values['eval_crop_fraction']),
        resize=str(values['resize']))

  def normalize(self, pixels) -> np.ndarray:
    """(..., 3) raw pixels in `pixel_range` -> float32 model inputs (no resizing)."""
    low, high = self.pixel_range
    x = (np.asarray(pixels, np.float32) - low) / (high - low)
    return ((x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32))

  def adapt(self, images, target: 'InputSpec'):
    """Model inputs made under this contract -> the same images under `target`'s.

    (B, H, W, 3) normalised images are re-normalised with `target`'s mean/std (exact: both
    are affine in the [0, 1] pixels) and resized to `target.image_size` (bilinear,
    antialiased when shrinking). Identity when the two agree. Used to show a teacher the
    student's batch at the teacher's own size.
    """
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    x = images
    if (tuple(self.mean), tuple(self.std)) != (tuple(target.mean), tuple(target.std)):
      const = lambda v: jnp.asarray(v, x.dtype)
      x = (x * const(self.std) + const(self.mean) - const(target.mean)) / const(target.std)
    size = int(target.image_size)
    if tuple(x.shape[1:3]) != (size, size):
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method='bilinear',
                           antialias=True)
    return x

  def to_json(self) -> dict:
    return {'image_size': int(self.image_size), 'mean': [float(v) for v in self.mean],
            'std': [float(v) for v in self.std],
            'pixel_range': [float(v) for v in self.pixel_range],
            'eval_crop_fraction': float(self.eval_crop_fraction), 'resize': self.resize}

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> 'InputSpec':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - known)
    if unknown:
      raise ValueError(f'unknown input contract field(s) {unknown}; known: {sorted(known)}')
    values = dict(record)
    for key in ('mean', 'std', 'pixel_range'):
      if key in values:
        values[key] = tuple(float(v) for v in values[key])
    if 'image_size' in values:
      values['image_size'] = int(values['image_size'])
    return cls(**values)


__all__ = ['InputSpec', 'IMAGENET_MEAN', 'IMAGENET_STD', 'RESIZE_METHODS', 'DATA_FIELDS']
