"""Fixed 2-D sine-cosine position embeddings (MAE's `get_2d_sincos_pos_embed`)."""

from __future__ import annotations

import numpy as np


def sincos_2d(grid_size: int, width: int, *, cls_token: bool = False) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding for a square grid of patches.

  Half of the channels encode the row, half the column; each half is [sin | cos] of the
  position times frequencies 1 / 10000^(i / (width/4)).

  Args:
    grid_size: patches per side (14 for 224 / 16).
    width: embedding width, a multiple of 4.
    cls_token: prepend an all-zero row for the class token.

  Returns:
    float32 array (grid_size**2 [+1], width), rows in raster order (row-major over patches).
  """
  if width % 4:
    raise ValueError(f'sin-cos position embedding needs a width divisible by 4, got {width}')
  quarter = width // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64),
                           np.arange(grid_size, dtype=np.float64), indexing='ij')

  def encode(positions):
    angles = positions.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  # MAE puts the column ("w") encoding first, then the row encoding.
  table = np.concatenate([encode(cols), encode(rows)], axis=1)
  if cls_token:
    table = np.concatenate([np.zeros((1, width)), table], axis=0)
  return table.astype(np.float32)
