"""Pictures: image grids and PNG files (the MAE task's reconstructions).

Plain numpy in, uint8 PNG out; Pillow when installed, else TensorFlow's PNG encoder.
"""

from __future__ import annotations

import os

import numpy as np


def image_grid(panels: np.ndarray, *, gap: int = 2, min_tile: int = 96) -> np.ndarray:
  """(C, n, H, W, 3) in [0, 1] -> uint8 (rows n, columns C) grid, upscaled to >= min_tile."""
  columns, rows, h, w, _ = panels.shape
  scale = max(1, -(-min_tile // max(h, w)))
  tiles = panels.repeat(scale, axis=2).repeat(scale, axis=3)
  th, tw = h * scale, w * scale
  grid = np.ones((rows * th + (rows + 1) * gap, columns * tw + (columns + 1) * gap, 3),
                 np.float32)
  for c in range(columns):
    for r in range(rows):
      y, x = gap + r * (th + gap), gap + c * (tw + gap)
      grid[y:y + th, x:x + tw] = tiles[c, r]
  return np.round(grid * 255).astype(np.uint8)


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) image atomically; Pillow when installed, else TensorFlow."""
  tmp = f'{path}.tmp'
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.fromarray(image).save(tmp, format='PNG')
  except ImportError:
    from repvit_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
    with open(tmp, 'wb') as f:
      f.write(tf.io.encode_png(image).numpy())
  os.replace(tmp, path)


__all__ = ['image_grid', 'write_png']
