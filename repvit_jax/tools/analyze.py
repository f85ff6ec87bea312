"""Analysis tools: average attention distance per layer and head, and layer-wise linear CKA.

    from repvit_jax.tools import analyze
    inter = analyze.intermediates(model, variables, images)       # what the blocks sow
    dist = analyze.attention_distance(inter['attn_logits'][0], grid=(14, 14), patch_size=16)
    sim = analyze.cka_matrix(features_a, features_b)              # (layers_a, layers_b)

or from the command line (each writes a JSON file and a PNG plot into OUT):

    repvit-analyze attention runs/demo OUT
    repvit-analyze cka runs/demo runs/demo/deploy OUT

MODEL is anything `repvit_jax.io.read` reads (a workdir, a checkpoint, a model directory such
as `repvit-convert`'s output); each says which model it holds. The images are the
first --num-images of the eval split of the run's own data set (its workdir's config.json), or
of --config's; random ones, with a warning, when neither exists.

Definitions (MAE-Lite's analysis):
* attention distance of head h in a layer: D_h = mean over images and query patches i of
  sum_j softmax(A)_ij * G_ij, where A are the pre-softmax logits restricted to patch tokens
  (the class token's row and column dropped before the softmax) and G_ij the Euclidean
  distance between the centres of patches i and j, in pixels (grid distance x patch size).
  The attention entropy, mean over i of -sum_j p_ij log p_ij, comes with it.
* linear CKA between representations X (n, p) and Y (n, q) of the same n images:
  ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), columns centred; computed from the n x n
  Gram matrices. A block's (B, T, C) output is one row of T*C values per image.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from repvit_jax.io import checkpoint_steps
from repvit_jax.tools import cli, runs


# ---------------------------------------------------------------------------------------------
# Collecting what the models sow.

def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path)]


def collect(tree: Mapping[str, Any], name: str, prefix: str = '') -> List[Tuple[str, Any]]:
  """Every value sown under `name` in an 'intermediates' tree, as (module path, array), in
  network order (paths sorted naturally: blocks_2 before blocks_10)."""
  found = []
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else str(key)
    if key == name and isinstance(value, (tuple, list)):
      found.append((prefix, value[0]))
    elif isinstance(value, Mapping):
      found.extend(collect(value, name, path))
  return sorted(found, key=lambda item: _natural_key(item[0]))


def intermediates(module, variables: Mapping[str, Any], images, *,
                  names: Sequence[str] = ('features', 'attn_logits')) -> Dict[str, list]:
  """Runs `module` in eval mode and returns {name: [array per layer]} of what it sows.

  ViT blocks sow `features` (B, T, C) and their attention `attn_logits` (B, H, T, T);
  other families sow `features` of their blocks.
  """
  _, state = jax.jit(lambda v, x: module.apply(v, x, train=False,
                                               mutable=['intermediates']))(variables, images)
  tree = jax.device_get(state.get('intermediates', {}))
  return {name: [np.asarray(v) for _, v in collect(tree, name)] for name in names}


# ---------------------------------------------------------------------------------------------
# Attention distance.

def patch_distances(grid: Tuple[int, int], patch_size: float = 1.0) -> np.ndarray:
  """(N, N) Euclidean distances between patch centres of a row-major grid, N = gh * gw."""
  gh, gw = grid
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing='ij')
  pos = np.stack([rows.reshape(-1), cols.reshape(-1)], axis=1).astype(np.float64)
  diff = pos[:, None, :] - pos[None, :, :]
  return np.sqrt(np.sum(diff ** 2, axis=-1)) * float(patch_size)


def attention_distance(logits, grid: Tuple[int, int], *, patch_size: float = 1.0,
                       prefix_tokens: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Average attention distance and entropy per head of one layer.

  Args:
    logits: (B, H, T, T) pre-softmax attention logits, T = prefix_tokens + gh * gw.
    grid: (gh, gw) patch grid, row-major token order.
    patch_size: pixels per patch (distances in pixels); 1 gives grid units.
    prefix_tokens: tokens before the patches (the class token); None: T - gh * gw.

  Returns:
    {'distance': (H,), 'entropy': (H,)} float64, averaged over images and query patches.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 4 or logits.shape[-1] != logits.shape[-2]:
    raise ValueError(f'attention logits must be (B, H, T, T), got {logits.shape}')
  n = grid[0] * grid[1]
  prefix = logits.shape[-1] - n if prefix_tokens is None else prefix_tokens
  if prefix < 0 or logits.shape[-1] != prefix + n:
    raise ValueError(f'{logits.shape[-1]} tokens do not fit a {grid[0]}x{grid[1]} grid with '
                     f'{prefix} prefix token(s)')
  a = logits[..., prefix:, prefix:]
  a = a - a.max(axis=-1, keepdims=True)
  p = np.exp(a)
  p /= p.sum(axis=-1, keepdims=True)
  g = patch_distances(grid, patch_size)
  distance = np.einsum('bhij,ij->bhi', p, g).mean(axis=(0, 2))
  entropy = (-(p * np.log(p + 1e-12)).sum(axis=-1)).mean(axis=(0, 2))
  return {'distance': distance, 'entropy': entropy}


def attention_distances(logits_per_layer: Sequence[Any], grid: Tuple[int, int], *,
                        patch_size: float = 1.0,
                        prefix_tokens: Optional[int] = None) -> Dict[str, np.ndarray]:
  """`attention_distance` of every layer: {'distance': (L, H), 'entropy': (L, H)}."""
  rows = [attention_distance(l, grid, patch_size=patch_size, prefix_tokens=prefix_tokens)
          for l in logits_per_layer]
  return {k: np.stack([r[k] for r in rows]) for k in ('distance', 'entropy')}


# ---------------------------------------------------------------------------------------------
# CKA.

def _gram(x) -> np.ndarray:
  x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
  x = x - x.mean(axis=0, keepdims=True)
  return x @ x.T


def linear_cka(x, y) -> float:
  """Linear CKA of two representations of the same n examples: (n, ...) and (n, ...).

  1 for identical representations; invariant to orthogonal transforms and isotropic
  scaling of either; in [0, 1].
  """
  if np.shape(x)[0] != np.shape(y)[0]:
    raise ValueError(f'CKA needs the same examples: {np.shape(x)[0]} vs {np.shape(y)[0]}')
  kx, ky = _gram(x), _gram(y)
  hsic = np.sum(kx * ky)
  norm = np.sqrt(np.sum(kx * kx) * np.sum(ky * ky))
  return float(hsic / norm) if norm > 0 else 0.0


def cka_matrix(features_a: Sequence[Any], features_b: Sequence[Any]) -> np.ndarray:
  """(len(a), len(b)) linear CKA between every layer of a and every layer of b."""
  grams_a = [_gram(f) for f in features_a]
  grams_b = [_gram(f) for f in features_b]
  out = np.zeros((len(grams_a), len(grams_b)))
  for i, ka in enumerate(grams_a):
    for j, kb in enumerate(grams_b):
      norm = np.sqrt(np.sum(ka * ka) * np.sum(kb * kb))
      out[i, j] = np.sum(ka * kb) / norm if norm > 0 else 0.0
  return out


# ---------------------------------------------------------------------------------------------
# Plots: matplotlib when installed, else a plain Pillow drawing.

def plot_attention_distance(distance: np.ndarray, path: str, *, title: str = '',
                            ylabel: str = 'mean attention distance (pixels)',
                            uniform: Optional[float] = None) -> str:
  """Scatter of every head's distance per layer (one colour per head index), the layer
  mean as a line, and `uniform` (the distance of uniform attention) as a dashed reference."""
  distance = np.asarray(distance)
  layers = np.arange(1, distance.shape[0] + 1)
  try:
    plt = _pyplot()
  except ImportError:
    return _pil_scatter(distance, path, title=title, ylabel=ylabel)
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
  for head in range(distance.shape[1]):
    ax.scatter(layers, distance[:, head], alpha=0.7, s=18, label=f'head {head + 1}')
  ax.plot(layers, distance.mean(axis=1), color='black', marker='*', markersize=10,
          label='mean over heads')
  if uniform is not None:
    ax.axhline(uniform, color='grey', linestyle='--', linewidth=1,
               label=f'uniform attention ({uniform:.1f})')
  ax.set_xlabel('layer')
  ax.set_ylabel(ylabel)
  ax.set_xticks(layers)
  ax.set_ylim(bottom=0)
  ax.legend(loc='lower right', fontsize=7, ncol=2)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def plot_cka(matrix: np.ndarray, path: str, *, title: str = '', xlabel: str = 'model B layer',
             ylabel: str = 'model A layer') -> str:
  """Heatmap of a CKA matrix (rows: model A's layers, columns: model B's)."""
  matrix = np.asarray(matrix)
  try:
    plt = _pyplot()
  except ImportError:
    return _pil_heatmap(matrix, path, title=title)
  fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=150)
  image = ax.imshow(matrix, origin='lower', cmap='magma', vmin=0, vmax=1)
  if max(matrix.shape) <= 12:
    for (i, j), value in np.ndenumerate(matrix):
      ax.text(j, i, f'{value:.2f}', ha='center', va='center', fontsize=7,
              color='black' if value > 0.6 else 'white')
  fig.colorbar(image, ax=ax, label='linear CKA')
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_xticks(range(matrix.shape[1]), [str(i + 1) for i in range(matrix.shape[1])])
  ax.set_yticks(range(matrix.shape[0]), [str(i + 1) for i in range(matrix.shape[0])])
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def can_plot() -> bool:
  """Whether a PNG can be drawn: matplotlib, or else Pillow, is installed."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  return any(importlib.util.find_spec(m) is not None for m in ('matplotlib', 'PIL'))


NO_PLOT = ('no plotting library: install matplotlib (pip install "repvit_jax[analysis]") or '
           'Pillow for the PNG; the JSON is written all the same')


def _pil_scatter(distance, path, *, title, ylabel):
  try:
    from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(NO_PLOT) from None
  w, h, m = 600, 400, 50
  img = Image.new('RGB', (w, h), 'white')
  draw = ImageDraw.Draw(img)
  top = max(float(distance.max()), 1e-9) * 1.1
  n = distance.shape[0]
  x = lambda i: m + (w - 2 * m) * (i + 0.5) / n
  y = lambda v: h - m - (h - 2 * m) * v / top
  draw.line([(m, m), (m, h - m), (w - m, h - m)], fill='black')
  colours = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2']
  for i, row in enumerate(distance):
    for k, v in enumerate(row):
      cx, cy = x(i), y(v)
      draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colours[k % len(colours)])
    draw.text((x(i) - 3, h - m + 5), str(i + 1), fill='black')
  means = [(x(i), y(v)) for i, v in enumerate(distance.mean(axis=1))]
  if len(means) > 1:
    draw.line(means, fill='black', width=2)
  draw.text((m, 10), f'{title}  ({ylabel}, max {top / 1.1:.3g})', fill='black')
  img.save(path)
  return path


def _pil_heatmap(matrix, path, *, title):
  try:
    from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(NO_PLOT) from None
  cell, m = 30, 40
  rows, cols = matrix.shape
  img = Image.new('RGB', (cols * cell + 2 * m, rows * cell + 2 * m), 'white')
  draw = ImageDraw.Draw(img)
  for i in range(rows):
    for j in range(cols):
      v = int(round(255 * float(np.clip(matrix[i, j], 0, 1))))
      top = m + (rows - 1 - i) * cell
      draw.rectangle([m + j * cell, top, m + (j + 1) * cell - 1, top + cell - 1],
                     fill=(v, v // 2, 255 - v))
  draw.text((m, 10), f'{title} (linear CKA, rows: model A, columns: model B)', fill='black')
  img.save(path)
  return path


# ---------------------------------------------------------------------------------------------
# Whole analyses, as the command line runs them.

def vit_grid(module, images) -> Tuple[Tuple[int, int], int]:
  """(patch grid, patch size) of a ViT-like module on these images."""
  patch = int(getattr(module, 'patch_size', 16))
  return (images.shape[1] // patch, images.shape[2] // patch), patch


def analyze_attention(module, variables, images, out_dir: str, *, title: str = '') -> Dict:
  """Average attention distance per layer and head -> attention_distance.{json,png}.

  The PNG needs matplotlib or Pillow (`can_plot()`); without either, `png` is None.
  """
  inter = intermediates(module, variables, images, names=('attn_logits',))
  logits = inter['attn_logits']
  if not logits:
    raise ValueError('the model sows no attention logits (intermediates/attn_logits): '
                     'attention distance needs a ViT-family model (vit_*, deit_*, tdrl_vit_*, '
                     'mae_*)')
  grid, patch = vit_grid(module, images)
  result = attention_distances(logits, grid, patch_size=patch)
  # The reference: every query attending to every patch alike.
  uniform = float(patch_distances(grid, patch).mean())
  os.makedirs(out_dir, exist_ok=True)
  record = {'title': title, 'num_images': int(images.shape[0]), 'grid': list(grid),
            'uniform_distance': uniform,
            'patch_size': patch, 'image_size': list(images.shape[1:3]),
            'distance': result['distance'].tolist(), 'entropy': result['entropy'].tolist(),
            'mean_distance_per_layer': result['distance'].mean(axis=1).tolist()}
  json_path = os.path.join(out_dir, 'attention_distance.json')
  with open(json_path, 'w') as f:
    json.dump(record, f, indent=2)
  png_path = None
  if can_plot():
    png_path = plot_attention_distance(result['distance'],
                                       os.path.join(out_dir, 'attention_distance.png'),
                                       title=title or 'average attention distance',
                                       uniform=uniform)
  record.update(json=json_path, png=png_path)
  return record


def analyze_cka(module_a, variables_a, module_b, variables_b, images, out_dir: str, *,
                title: str = '', names: Tuple[str, str] = ('A', 'B')) -> Dict:
  """Layer-wise linear CKA between two models' block outputs -> cka.{json,png} (the PNG
  as in `analyze_attention`)."""
  feats_a = intermediates(module_a, variables_a, images, names=('features',))['features']
  feats_b = intermediates(module_b, variables_b, images, names=('features',))['features']
  if not feats_a or not feats_b:
    raise ValueError('a model sows no block features (intermediates/features)')
  matrix = cka_matrix(feats_a, feats_b)
  os.makedirs(out_dir, exist_ok=True)
  record = {'title': title, 'model_a': names[0], 'model_b': names[1],
            'num_images': int(images.shape[0]), 'layers_a': len(feats_a),
            'layers_b': len(feats_b), 'cka': matrix.tolist(),
            'diagonal': (np.diagonal(matrix).tolist() if matrix.shape[0] == matrix.shape[1]
                         else None)}
  json_path = os.path.join(out_dir, 'cka.json')
  with open(json_path, 'w') as f:
    json.dump(record, f, indent=2)
  png_path = None
  if can_plot():
    png_path = plot_cka(matrix, os.path.join(out_dir, 'cka.png'),
                        title=title or f'CKA: {names[0]} vs {names[1]}',
                        xlabel=f'{names[1]} layer', ylabel=f'{names[0]} layer')
  record.update(json=json_path, png=png_path)
  return record


def _images(args, source: str, image_size: int) -> np.ndarray:
  """The first --num-images of the eval split the run at `source` was trained on (or of
  --config's); random normal images only when asked for (`--images noise`).

  Raises:
    ValueError: no data set is named and noise was not asked for.
  """
  if args.images == 'data':
    data_config = runs.data_config_for(source, args.config)
    if data_config is None:
      raise ValueError(f'{source} is not in a training workdir, so its data set is unknown: '
                       'add --config configs/<name>.py[:arg] for that data set, or '
                       '--images noise for random normal images')
    images, _ = runs.eval_split(data_config)
    return images[:args.num_images]
  rng = np.random.default_rng(0)
  return rng.normal(size=(args.num_images, image_size, image_size, 3)).astype(np.float32)


def _describe(source: str, name: str) -> str:
  """'tdrl_vit_tiny, step 600': the model, and the step when the weights are a checkpoint's
  (a plot's title says what was measured)."""
  try:
    return f'{name}, step {int(os.path.basename(checkpoint_steps.find_step_dir(source)))}'
  except (FileNotFoundError, ValueError):
    return f'{name} ({os.path.basename(os.path.normpath(source))})'


def main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='repvit-analyze',
                                   description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  attention = sub.add_parser('attention', help='average attention distance per layer/head')
  attention.add_argument('model')
  attention.add_argument('out')
  cka = sub.add_parser('cka', help='layer-wise linear CKA between two models')
  cka.add_argument('model_a')
  cka.add_argument('model_b')
  cka.add_argument('out')
  for p in (attention, cka):
    p.add_argument('--config', default=None, metavar='FILE[:ARG]',
                   help='take the images from this training config\'s eval split (default: '
                        'the run\'s own data set, from its workdir\'s config.json)')
    p.add_argument('--num-images', type=cli.positive_int, default=64,
                   help='images the statistics are taken over (default 64)')
    p.add_argument('--images', choices=('data', 'noise'), default='data',
                   help='the eval split of the data set (default), or random normal images')
    p.add_argument('--image-size', type=int, default=None)
    p.add_argument('--model-name', default=None,
                   help='model name, for a checkpoint that records none')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE')
    p.add_argument('--title', default='')
  args = parser.parse_args(argv)
  return cli.run(lambda: _main(args))


def _main(args) -> int:
  """`main` once the arguments parse; the output directory is checked before any work."""
  from repvit_jax.deploy import export  # pylint: disable=import-outside-toplevel
  cli.check_output(args.out, 'directory')
  overrides = cli.parse_overrides(args.overrides)
  load = lambda src: export.load_for_export(src, model=args.model_name, overrides=overrides,
                                            image_size=args.image_size)
  if args.command == 'attention':
    model = load(args.model)
    images = _images(args, args.model, model.image_size)
    record = analyze_attention(model.module, model.variables, images, args.out,
                               title=args.title or f'attention distance: '
                               f'{_describe(args.model, model.name)}')
    for i, value in enumerate(record['mean_distance_per_layer']):
      heads = ', '.join(f'{d:.1f}' for d in record['distance'][i])
      print(f'layer {i + 1:2d}: mean {value:6.2f} px  heads [{heads}]')
  else:
    model_a, model_b = load(args.model_a), load(args.model_b)
    images = _images(args, args.model_a, model_a.image_size)
    record = analyze_cka(model_a.module, model_a.variables, model_b.module, model_b.variables,
                         images, args.out,
                         title=args.title or f'CKA: {_describe(args.model_a, model_a.name)} '
                         f'vs {_describe(args.model_b, model_b.name)}',
                         names=(os.path.basename(os.path.normpath(args.model_a)),
                                os.path.basename(os.path.normpath(args.model_b))))
    if record['diagonal'] is not None:
      print('CKA per layer: ' + ', '.join(f'{v:.3f}' for v in record['diagonal']))
  if record['png']:
    print(f'wrote {record["json"]} and {record["png"]}')
  else:
    print(f'wrote {record["json"]}; {NO_PLOT}')
  return 0


__all__ = ['collect', 'intermediates', 'patch_distances', 'attention_distance',
           'attention_distances', 'linear_cka', 'cka_matrix', 'plot_attention_distance',
           'plot_cka', 'can_plot', 'analyze_attention', 'analyze_cka', 'main']

if __name__ == '__main__':
  import sys as _sys  # pylint: disable=import-outside-toplevel
  _sys.exit(main())
