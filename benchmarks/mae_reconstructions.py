"""An MAE's reconstructions before and after pre-training, side by side: one picture.

    python benchmarks/mae_reconstructions.py WORKDIR [--out FILE.png] [--count 8]

WORKDIR is a finished MAE pre-training run (`configs/mae_lite_tiny.py:fashion`, ...). The
picture shows the same evaluation images under the same masks as the run's own
reconstructions: the original, the input the encoder sees, then the reconstruction of the
model as initialised (seed 0, nothing learnt) and of the model as pre-trained; each row is
labelled with both masked-patch losses.
"""

from __future__ import annotations

import os
import sys
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument('workdir', help='a finished MAE pre-training workdir')
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'figures',
                                                    'mae_reconstructions.png'),
                      help='the PNG to write')
  parser.add_argument('--count', type=int, default=8, help='images (rows), at least 1')
  args = parser.parse_args(argv)
  if args.count < 1:
    parser.error(f'--count must be at least 1, got {args.count}')
  sys.path.insert(0, ROOT)
  # pylint: disable=import-outside-toplevel
  import jax
  import ml_collections
  from repvit_jax import io
  from repvit_jax.train import pictures
  from repvit_jax.train.mae import MAETask

  recorded = io.run_config(args.workdir)
  if recorded is None or recorded.get('task') != 'mae':
    raise SystemExit(f'error: {args.workdir} is not an MAE training workdir (its config.json '
                     "has no task 'mae'); give the workdir of an MAE pre-training run")
  config = ml_collections.ConfigDict(recorded)
  config.teacher.model = None            # the picture needs no distillation teacher
  config.teacher.init_from = None
  task = MAETask(config, num_classes=1)
  images = task._fixed_images(args.count)  # pylint: disable=protected-access
  _, trained = io.read(args.workdir)
  untrained = jax.jit(lambda: task.model.init(
      {'params': jax.random.key(0), 'mask': jax.random.key(1)}, images[:1], train=False))()
  step = max(int(n) for n in os.listdir(os.path.join(args.workdir, 'checkpoints'))
             if n.isdigit())
  image, losses = task.compare({'untrained': untrained, f'pre-trained ({step} steps)': trained},
                               images, title=config.model.name)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  pictures.write_png(args.out, image)
  print(f'{args.out}: masked-patch loss untrained {losses[0].mean():.4f}, pre-trained '
        f'{losses[1].mean():.4f} on {len(images)} images')
  return 0


if __name__ == '__main__':
  sys.exit(main())
