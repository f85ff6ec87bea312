"""Pictures: labelled image grids written as PNG files (the MAE task's reconstructions).

Plain numpy in, uint8 PNG out, drawn with Pillow (in the `data` extra, which training needs).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

TEXT = (20, 20, 20)


def image_grid(panels: np.ndarray, *, gap: int = 2, min_tile: int = 96) -> np.ndarray:
  """(C, n, H, W, 3) in [0, 1] -> uint8 (rows n, columns C) grid, upscaled to >= min_tile.

  The tiles are scaled up by an integer factor (nearest neighbour: patches stay sharp) so
  that the longer side is at least `min_tile` pixels; `gap` white pixels separate them.
  """
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


def _font(size: int):
  from PIL import ImageFont  # pylint: disable=import-outside-toplevel
  try:
    return ImageFont.load_default(size=size)     # scalable, where FreeType is there
  except TypeError:                                # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def labelled_grid(panels: np.ndarray, *, title: str, column_titles: Sequence[str],
                  row_labels: Sequence[str] = (), gap: int = 2, min_tile: int = 96,
                  font_size: int = 13) -> np.ndarray:
  """`image_grid` with a title line, a title above each column and a label right of each row.

  panels: (C, n, H, W, 3) in [0, 1]; column_titles: C strings; row_labels: n strings or none.
  Returns a uint8 (height, width, 3) image.
  """
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  columns, rows = panels.shape[:2]
  if len(column_titles) != columns or (row_labels and len(row_labels) != rows):
    raise ValueError(f'{columns} columns x {rows} rows need as many titles and labels, got '
                     f'{len(column_titles)} and {len(row_labels)}')
  grid = image_grid(panels, gap=gap, min_tile=min_tile)
  font = _font(font_size)
  line = font_size + 6
  tile_h = (grid.shape[0] - gap) // rows - gap
  tile_w = (grid.shape[1] - gap) // columns - gap
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  label_w = max([int(probe.textlength(s, font=font)) for s in row_labels] + [0])
  label_w = label_w + 2 * gap + 6 if row_labels else 0
  title_w = int(probe.textlength(title, font=font)) + 8
  width = max(grid.shape[1] + label_w, title_w)
  canvas = Image.new('RGB', (width, grid.shape[0] + 2 * line), (255, 255, 255))
  canvas.paste(Image.fromarray(grid), (0, 2 * line))
  draw = ImageDraw.Draw(canvas)
  draw.text((4, 3), title, fill=TEXT, font=font)
  for c, text in enumerate(column_titles):
    x = gap + c * (tile_w + gap) + (tile_w - int(draw.textlength(text, font=font))) // 2
    draw.text((max(x, gap), line + 3), text, fill=TEXT, font=font)
  for r, text in enumerate(row_labels):
    y = 2 * line + gap + r * (tile_h + gap) + (tile_h - font_size) // 2
    draw.text((grid.shape[1] + 4, y), text, fill=TEXT, font=font)
  return np.asarray(canvas, np.uint8)


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) image atomically (a reader never sees half a file)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  tmp = f'{path}.tmp'
  Image.fromarray(image).save(tmp, format='PNG')
  os.replace(tmp, path)


__all__ = ['image_grid', 'labelled_grid', 'write_png']
