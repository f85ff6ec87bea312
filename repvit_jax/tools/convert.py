"""repvit-convert SRC DST --model NAME: a PyTorch checkpoint -> a model directory.

    repvit-convert deit_tiny.safetensors models/deit_tiny --model deit_tiny
    repvit-convert mae_tiny_400e.pth.tar models/mae_tiny --model mae_vit_tiny
    repvit-convert riformer-s12.pth models/riformer_s12 --model riformer_s12
    python train.py --config configs/vit_tiny.py --config.init_from=models/deit_tiny ...

DST is a model directory (model.json + variables.msgpack): `repvit_jax.load_model(DST)`,
`--config.init_from=DST` and `--config.teacher.init_from=DST` accept it.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from repvit_jax.tools import cli


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='repvit-convert',
      description='Convert a PyTorch checkpoint (timm ViT/DeiT/LeViT/MobileViT/PoolFormer, '
                  'official MAE, MAE-Lite, mmpretrain RIFormer) into a repvit_jax model '
                  'directory.')
  parser.add_argument('src', help='.safetensors, .npz, or .pth/.pt/.bin (needs torch)')
  parser.add_argument('dst', help='output model directory (model.json + variables.msgpack)')
  parser.add_argument('--model', required=True,
                      help='registered model name, e.g. vit_tiny, deit_tiny, mae_vit_tiny, '
                           'levit_128s, mobilevit_xs, poolformer_s12, riformer_s12; timm\'s '
                           'names too (deit_tiny_patch16_224, levit_128s.fb_dist_in1k)')
  parser.add_argument('--num-classes', type=int, default=None,
                      help='classes of the head (default: from the checkpoint)')
  form = parser.add_mutually_exclusive_group()
  form.add_argument('--deploy', dest='deploy', action='store_true', default=None,
                    help='convert into the deploy form')
  form.add_argument('--training', dest='deploy', action='store_false',
                    help='convert into the training form')
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE',
                      help='model override, repeatable (e.g. num_heads=12 for MAE-Lite '
                           'ViT-Tiny)')
  parser.add_argument('--image-size', type=int, default=None,
                      help="the result's input side: a ViT's learned position table is resampled "
                           "to it (default: the checkpoint's own, inferred)")
  parser.add_argument('--ignore', action='append', default=[], metavar='REGEX',
                      help='skip checkpoint keys matching REGEX (repeatable)')
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  return cli.run(lambda: _main(args))


def _main(args) -> int:
  """`main` once the arguments parse; the destination is checked before any work."""
  # Imported after parsing so that --help is instant.
  from repvit_jax import convert  # pylint: disable=import-outside-toplevel
  from repvit_jax.reparam.check import count_params  # pylint: disable=import-outside-toplevel
  cli.check_output(args.dst, 'directory', 'DST')
  name = convert.registered_name(args.model)
  if name != args.model:
    print(f'  {args.model}: {name} here')
  result = convert.convert_checkpoint(
      args.src, args.dst, model=args.model, num_classes=args.num_classes,
      deploy=args.deploy, overrides=cli.parse_overrides(args.overrides),
      image_size=args.image_size, ignore=args.ignore)
  plan = result.plan
  for note in plan.notes:
    print(f'  {note}')
  form = 'deploy' if plan.deploy else 'training'
  print(f'{args.src} -> {args.dst}: {plan.name} ({form} form, {plan.num_classes} classes, '
        f'{count_params(result.variables["params"]):,} parameters'
        + (f', overrides {plan.overrides}' if plan.overrides else '') + ')')
  print(f'load it with repvit_jax.load_model({args.dst!r}) or --config.init_from={args.dst}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
