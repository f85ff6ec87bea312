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


def resample_posemb(posemb, grid_size: int, *, prefix_tokens: int = 1) -> np.ndarray:
  """A learned position table for another patch grid (fine-tuning at another resolution).

  The patch rows are treated as a square (g, g, D) image and resized bicubically to
  (grid_size, grid_size, D), antialiased when shrinking (as timm's `resample_abs_pos_embed`
  and big_vision's `resample_posemb`); the prefix rows (class token) are kept as they are.
  The same grid returns the table unchanged.

  Args:
    posemb: (1, prefix + g*g, D) or (prefix + g*g, D).
    grid_size: patches per side of the new grid.
    prefix_tokens: rows before the patches.

  Returns:
    float array of the input's rank and dtype, (..., prefix + grid_size**2, D).
  """
  import jax  # pylint: disable=import-outside-toplevel
  table = np.asarray(posemb)
  batched = table.ndim == 3
  rows = table[0] if batched else table
  prefix, patches = rows[:prefix_tokens], rows[prefix_tokens:]
  old = int(round(np.sqrt(len(patches))))
  if old * old != len(patches):
    raise ValueError(f'position table of {len(rows)} rows with {prefix_tokens} prefix '
                     'token(s) is not a square grid')
  if old != grid_size:
    square = patches.reshape(old, old, -1).astype(np.float32)
    square = jax.image.resize(square, (grid_size, grid_size, square.shape[-1]), 'cubic',
                              antialias=True)
    patches = np.asarray(square).reshape(grid_size * grid_size, -1).astype(rows.dtype)
    rows = np.concatenate([prefix, patches], axis=0)
  return rows[None] if batched else rows
