"""Top-1, top-5 and loss of a trained model on a data set's eval split.

    repvit-evaluate runs/demo                   # the run's own data set
    repvit-evaluate models/deit_tiny --config configs/vit_tiny.py \
        --config.data.data_dir=$TFDS_DATA_DIR --json deit_tiny.json

PATH is anything `repvit_jax.io.read` reads. A training-form source (a workdir or checkpoint
of a model with a deploy form) is evaluated in both forms: as trained (eval mode) and
reparameterized. Images are prepared by the model's saved input contract (size, mean/std, eval
crop); `--config.data.KEY=VALUE` changes a data field (`image_size` moves the model to another
resolution, `io.at_image_size`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from repvit_jax import io
from repvit_jax.models.registry import get_registration
from repvit_jax.models.spec import ModelSpec
from repvit_jax.reparam.tree import reparameterize
from repvit_jax.tools import cli

def contract_data_config(spec: ModelSpec, data_config,
                         changes: Optional[Dict[str, Any]] = None) -> ml_collections.ConfigDict:
  """`data_config` (data set, splits, directory) preparing images as `spec.input` says, then
  `changes` on top."""
  config = ml_collections.ConfigDict(
      data_config.to_dict() if hasattr(data_config, 'to_dict') else dict(data_config))
  config.update(spec.input.data_fields())
  for key, value in (changes or {}).items():
    if key not in config:
      raise ValueError(f'--config.data.{key}: the data config has no field {key!r}')
    config[key] = value
  return config


def forms(spec: ModelSpec, variables) -> Dict[str, Any]:
  """{'training': (module, variables), 'deploy': (...)} for a training-form source of a model
  with a deploy form; {'deploy': ...} (or {'model': ...} without a deploy form) otherwise."""
  out = {}
  has_deploy_form = bool(get_registration(spec.name).deploy)
  if not spec.deploy and has_deploy_form:
    out['training'] = (spec.replace(dtype='float32').build(), variables)
  folded = jax.tree.map(np.asarray, jax.jit(reparameterize)(variables))
  out['deploy' if has_deploy_form else 'model'] = (spec.deploy_form().build(), folded)
  return out


def evaluate(path: str, data_config=None, *, changes: Optional[Dict[str, Any]] = None,
             batch_size: int = 128, ema: bool = False) -> Dict[str, Any]:
  """Evaluates every form of the model at `path` on the eval split.

  Args:
    path: anything `io.read` reads.
    data_config: the data set (None: the one the run at `path` trained on).
    changes: data fields to change (`image_size`, `data_dir`, `eval_split`, ...).
    batch_size: images per evaluation batch.
    ema: evaluate the EMA of the weights a checkpoint holds instead of the weights.

  Returns:
    {'path', 'model', 'data', 'split', 'images', 'forms': {form: {'top1', 'top5', 'loss'}}}.

  Raises:
    ValueError / FileNotFoundError / data.DataError: one line each, saying what to give.
  """
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  from repvit_jax.models.mae import MaskedAutoencoder  # pylint: disable=import-outside-toplevel
  spec, variables = io.read(path, ema=ema)
  if spec is None:
    raise ValueError(f'{path} does not say which model it holds (a checkpoint from before model '
                     'specs); load it with repvit_jax.io.read and evaluate it yourself')
  from repvit_jax.deploy.export import check_fit  # pylint: disable=import-outside-toplevel
  check_fit(path, spec, {k: v for k, v in variables.items() if v})
  if data_config is None:
    recorded = io.run_config(path)
    if recorded is None:
      raise ValueError(f'{path} is not in a training workdir (no config.json names its data '
                       'set): add --config configs/<name>.py[:arg]')
    data_config = recorded['data']
  config = contract_data_config(spec, data_config, changes)
  if int(config.image_size) != spec.input.image_size:
    spec, variables = io.at_image_size(spec, variables, int(config.image_size))
  models = forms(spec, variables)
  if any(isinstance(module, MaskedAutoencoder) for module, _ in models.values()):
    raise ValueError(f'{spec.name} is a masked autoencoder: evaluate reports classification '
                     'accuracy; fine-tune it first (configs/vit_tiny.py --config.init_from=...)')
  info = data.get_dataset_info(config)
  if info.num_classes != spec.num_classes:
    raise ValueError(f'{spec.name} has {spec.num_classes} classes, {info.name} has '
                     f'{info.num_classes}: evaluate on the data set it was trained for')

  def sums(module):
    def batch_sums(v, batch):
      logits = module.apply(v, batch['image'], train=False).astype(jnp.float32)
      label, mask = batch['label'], batch['mask']
      k = min(5, logits.shape[-1])
      top5 = jnp.any(jax.lax.top_k(logits, k)[1] == label[:, None], axis=-1)
      ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, label[:, None], -1)[:, 0]
      top1 = jnp.argmax(logits, -1) == label
      return {'top1': jnp.sum(top1 * mask), 'top5': jnp.sum(top5 * mask),
              'loss': jnp.sum(ce * mask), 'count': jnp.sum(mask)}
    return jax.jit(batch_sums)

  steps = {form: sums(module) for form, (module, _) in models.items()}
  totals = {form: None for form in models}
  for batch in data.make_eval_iterator(config, global_batch_size=batch_size):
    for form, (_, v) in models.items():
      got = steps[form](v, batch)
      totals[form] = got if totals[form] is None else jax.tree.map(jnp.add, totals[form], got)
  results = {}
  for form, total in totals.items():
    total = jax.device_get(total)
    count = max(float(total['count']), 1.0)
    results[form] = {k: float(total[k]) / count for k in ('top1', 'top5', 'loss')}
  images = int(jax.device_get(next(iter(totals.values())))['count'])
  return {'path': str(path), 'weights': 'ema' if ema else 'raw', 'model': spec.name, 'data': info.name, 'split': info.eval_split,
          'image_size': int(config.image_size), 'images': images, 'forms': results}


def table(record: Dict[str, Any]) -> str:
  of = ' (EMA weights)' if record.get('weights') == 'ema' else ''
  lines = [f'{record["path"]}{of}: {record["model"]} on {record["images"]} images of '
           f'{record["data"]} {record["split"]} at {record["image_size"]}x'
           f'{record["image_size"]}',
           f'{"form":10s} {"top-1":>7s} {"top-5":>7s} {"loss":>7s}']
  for form, m in record['forms'].items():
    lines.append(f'{form:10s} {m["top1"]:7.4f} {m["top5"]:7.4f} {m["loss"]:7.4f}')
  return '\n'.join(lines)


_DATA_FLAG = re.compile(r'^--config\.data\.(\w+)=(.*)$')


def main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='repvit-evaluate',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('path', help='workdir, checkpoint or model directory')
  parser.add_argument('--config', default=None, metavar='FILE[:ARG]',
                      help="take the data set from this config (default: the run's own)")
  parser.add_argument('--batch-size', type=cli.positive_int, default=128,
                      help='images per evaluation batch (default 128)')
  parser.add_argument('--ema', action='store_true',
                      help="the EMA of the weights (a checkpoint of a run with config.ema)")
  parser.add_argument('--json', default=None, metavar='FILE', help='also write the results')
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not _DATA_FLAG.match(a)]
  if bad:
    parser.error(f'unknown arguments {bad}; data fields are given as --config.data.KEY=VALUE')
  return cli.run(lambda: _main(args, rest))


def _main(args, rest) -> int:
  """`main` once the arguments parse; the output file is checked before the evaluation."""
  from repvit_jax import configs  # pylint: disable=import-outside-toplevel
  if args.json:
    cli.check_output(args.json, 'file', '--json')
  changes = cli.parse_overrides([f'{m.group(1)}={m.group(2)}' for m in map(_DATA_FLAG.match, rest)])
  data_config = configs.load(args.config).data if args.config else None
  record = evaluate(args.path, data_config, changes=changes, batch_size=args.batch_size,
                    ema=args.ema)
  print(table(record))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=1)
    print(f'wrote {args.json}')
  return 0


__all__ = ['evaluate', 'forms', 'contract_data_config', 'table', 'main']

if __name__ == '__main__':
  sys.exit(main())
