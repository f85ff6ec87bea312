"""Top-k labels of image files: `repvit-predict MODEL IMAGE|FOLDER... [--top-k 5]`.

MODEL is anything `repvit_jax.io.read` reads; it runs in its deploy form. Each image is
prepared as the model's saved input contract says, by the same code as training's evaluation
(shorter side to image_size / eval_crop_fraction, centre crop, mean/std). Class names come
from the data set the run trained on, when it has them and is available here.
"""

from __future__ import annotations

import os
import sys
from typing import List, Sequence, Tuple

import jax
import numpy as np

from repvit_jax import io
from repvit_jax.models.inputs import InputSpec
from repvit_jax.tools import cli

Prediction = Tuple[str, List[Tuple[int, str, float]]]
# What a folder given as IMAGE contributes.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def prepare(paths: Sequence[str], contract: InputSpec) -> np.ndarray:
  """Image files (JPEG, PNG, BMP, GIF) -> (N, S, S, 3) float32 model inputs."""
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  from repvit_jax.data import config as data_config  # pylint: disable=import-outside-toplevel
  from repvit_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  from repvit_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
  from repvit_jax.data.decode import decode_encoded_crop  # pylint: disable=import-outside-toplevel
  config = data.default_config()
  config.update(contract.data_fields())
  resolved = data_config.resolve(config)
  images = []
  for path in paths:
    try:
      raw = tf.io.read_file(path)
      images.append(preprocess.eval_image(raw, decode_encoded_crop, resolved).numpy())
    except tf.errors.OpError as e:
      raise ValueError(f'{path}: cannot read it as an image ({e.message.splitlines()[0]})') \
          from None
  return np.stack(images)


def class_names(path: str, spec=None) -> Tuple[str, ...]:
  """Label names of the model at `path`: those its `spec` (model.json) records, else those of
  the data set its run trained on; () when unknown here."""
  if spec is not None and spec.class_names:
    return spec.class_names
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  recorded = io.run_config(path)
  if recorded is None:
    return ()
  import ml_collections  # pylint: disable=import-outside-toplevel
  try:
    return data.get_dataset_info(ml_collections.ConfigDict(recorded['data'])).class_names
  except data.DataError:
    return ()


def predict(model: str, paths: Sequence[str], *, top_k: int = 5) -> List[Prediction]:
  """[(image path, [(label, name, probability)] best first)] for each image file."""
  from repvit_jax.deploy import export  # pylint: disable=import-outside-toplevel
  exported = export.load_for_export(model)
  images = prepare(paths, exported.spec.input)
  logits = np.concatenate([np.asarray(exported.apply(images[i:i + 64]))
                           for i in range(0, len(images), 64)])
  probabilities = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
  names = class_names(model, exported.spec)
  out = []
  for path, p in zip(paths, probabilities):
    best = np.argsort(-p)[:top_k]
    out.append((path, [(int(k), names[k] if k < len(names) else str(k), float(p[k]))
                       for k in best]))
  return out


def image_files(paths: Sequence[str]) -> List[str]:
  """The image files `paths` name: files as given, directories as their image files (by
  suffix, recursively, sorted).

  Raises:
    FileNotFoundError: a path does not exist. ValueError: a directory holds no image file.
  """
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                     if f.lower().endswith(IMAGE_SUFFIXES))
      if not found:
        raise ValueError(f'{path} is a directory without image files '
                         f'({", ".join(IMAGE_SUFFIXES)}); give image files or a folder of them')
      files += found
    elif os.path.exists(path):
      files.append(path)
    else:
      raise FileNotFoundError(f'image {path} not found')
  return files


def main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='repvit-predict',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('model', help='workdir, checkpoint or model directory')
  parser.add_argument('images', nargs='+', help='image files, or folders of them')
  parser.add_argument('--top-k', type=cli.positive_int, default=5,
                      help='labels shown per image (default 5)')
  args = parser.parse_args(argv)
  return cli.run(lambda: _main(args))


def _main(args) -> int:
  results = predict(args.model, image_files(args.images), top_k=args.top_k)
  for path, best in results:
    shown = ', '.join(f'{name} {p:.3f}' for _, name, p in best)
    print(f'{path}: {shown}')
  return 0


__all__ = ['predict', 'prepare', 'class_names', 'image_files', 'main']

if __name__ == '__main__':
  sys.exit(main())
