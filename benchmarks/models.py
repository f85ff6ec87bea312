"""Model zoo: throughput of the training form (eval mode) vs the deploy form, MACs, parameters.

    python benchmarks/models.py                      # one model per family + poolformer_s12
    python benchmarks/models.py --models levit_128s,levit_384 --batch 64
    python benchmarks/models.py --models all --no-timing      # MACs, params, equivalence only

For each model: parameters of both forms (1000 classes), multiply-accumulates per image
(counted from the jaxpr: every dot_general and convolution, see `count_macs`; XLA's cost
analysis flops / 2 is reported beside it), the relative error between the two forms in float32
with random non-trivial BN statistics, and images/second of each form (timed in alternation).
The last table compares RIFormer's deploy form with PoolFormer of the same size (the
RIFormer paper: +17.8% for S12 on a GPU). Images are 224x224 (MobileViT: 256x256). Prints the
tables and writes JSON (default benchmarks/results/models.json) with the machine and JAX
version. Runs on whatever device JAX sees.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import repvit_jax as rj  # pylint: disable=wrong-import-position
from repvit_jax.reparam import check  # pylint: disable=wrong-import-position
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

DEFAULT_MODELS = 'levit_128s,mobilevit_xs,poolformer_s12,riformer_s12'

#: Multiply-accumulates per image from the papers, in millions.
REFERENCE_MMACS = {
    'levit_128s': 305, 'levit_128': 406, 'levit_192': 658, 'levit_256': 1120,
    'levit_384': 2353, 'mobilevit_xxs': 410, 'mobilevit_xs': 1030, 'mobilevit_s': 2000,
    'poolformer_s12': 1820, 'riformer_s12': 1820, 'poolformer_s24': 3400, 'riformer_s24': 3400,
    'poolformer_s36': 5000, 'riformer_s36': 5000, 'poolformer_m36': 8800,
    'riformer_m36': 8800, 'poolformer_m48': 11600, 'riformer_m48': 11600,
}


def image_size(name: str) -> int:
  return 256 if name.startswith('mobilevit') else 224


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if hasattr(item, 'eqns'):                         # a Jaxpr
        yield item
      elif hasattr(item, 'jaxpr') and hasattr(item.jaxpr, 'eqns'):   # a ClosedJaxpr
        yield item.jaxpr


def jaxpr_macs(jaxpr) -> int:
  """Multiply-accumulates of every dot_general and conv_general_dilated in a jaxpr.

  dot_general: output elements x contracted size. Convolution: output elements x kernel
  window x input channels per group. Element-wise work (norms, activations, softmax) is not
  counted, as in the papers' MAC figures. Nested jaxprs (jit, custom_jvp, ...) are included.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += int(np.prod(out)) * int(np.prod([lhs[d] for d in contract]))
    elif name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params['dimension_numbers'].rhs_spec      # (out, in, spatial...)
      window = int(np.prod([rhs[d] for d in spec[2:]]))
      total += int(np.prod(eqn.outvars[0].aval.shape)) * rhs[spec[1]] * window
    for sub in _sub_jaxprs(eqn):
      total += jaxpr_macs(sub)
  return total


def count_macs(fn: Callable, *args) -> int:
  """MACs of `fn(*args)` from its jaxpr; traces only (arguments may be ShapeDtypeStructs)."""
  return jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def model_macs(name: str, *, deploy: bool = False, size: int | None = None) -> int:
  """MACs per image of a registered model (1000 classes) at its benchmark resolution."""
  size = size or image_size(name)
  model = rj.create_model(name, deploy=deploy)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return count_macs(lambda v, x: model.apply(v, x, train=False), variables, images)


def xla_macs(compiled) -> float | None:
  """flops / 2 from XLA's cost analysis of a compiled forward, if the backend reports it."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  return None if flops is None else flops / 2


def measure(name: str, batch: int, rounds: int, timing: bool) -> Dict[str, Any]:
  size = image_size(name)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  train_model = rj.create_model(name)
  deploy_model = rj.create_model(name, deploy=True)
  variables = jax.jit(lambda x: train_model.init(jax.random.key(1), x, train=False))(images)
  variables = check.randomize_batch_stats(check.perturb_params(variables, 0), 1)
  deploy_variables = jax.jit(rj.reparameterize)(variables)
  forward = lambda model: jax.jit(lambda v, x: model.apply(v, x, train=False))
  train_fn, deploy_fn = forward(train_model), forward(deploy_model)
  error = check.relative_error(deploy_fn(deploy_variables, images),
                               train_fn(variables, images))
  row = {
      'model': name, 'image_size': size,
      'train_params': rj.count_params(variables['params']),
      'deploy_params': rj.count_params(deploy_variables['params']),
      'deploy_batch_stats': 'batch_stats' in deploy_variables,
      'train_mmacs': model_macs(name) / 1e6,
      'deploy_mmacs': model_macs(name, deploy=True) / 1e6,
      'equivalence_error': error,
  }
  reference = REFERENCE_MMACS.get(name)
  if reference:
    row['reference_mmacs'] = reference
    row['macs_vs_reference_pct'] = 100.0 * (row['deploy_mmacs'] / reference - 1.0)
  one = images[:1]
  compiled = jax.jit(lambda v, x: deploy_model.apply(v, x, train=False)).lower(
      deploy_variables, one).compile()
  xla = xla_macs(compiled)
  row['xla_mmacs'] = None if xla is None else xla / 1e6
  if timing:
    seconds = common.time_interleaved({
        'train': lambda: train_fn(variables, images),
        'deploy': lambda: deploy_fn(deploy_variables, images)}, rounds=rounds)
    row['train_img_s'] = batch / seconds['train']
    row['deploy_img_s'] = batch / seconds['deploy']
    row['deploy_vs_train'] = seconds['train'] / seconds['deploy']
  return row


def riformer_vs_poolformer(size: str, batch: int, rounds: int) -> Dict[str, Any]:
  """Deployed RIFormer against PoolFormer of one size, timed in alternation."""
  images = jax.random.normal(jax.random.key(0), (batch, 224, 224, 3))
  fns = {}
  for name, deploy in ((f'poolformer_{size}', False), (f'riformer_{size}', True)):
    model = rj.create_model(name, deploy=deploy)
    variables = jax.jit(lambda x, m=model: m.init(jax.random.key(1), x, train=False))(images)
    compiled = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
    fns[name] = (lambda c=compiled, v=variables: c(v, images))
  seconds = common.time_interleaved(fns, rounds=rounds)
  pool, ri = seconds[f'poolformer_{size}'], seconds[f'riformer_{size}']
  return {'size': size, 'poolformer_img_s': batch / pool, 'riformer_deploy_img_s': batch / ri,
          'speedup_pct': 100.0 * (pool / ri - 1.0), 'paper_speedup_pct': 17.8}


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('--models', default=DEFAULT_MODELS,
                      help="comma-separated names, or 'all' (every LeViT, MobileViT, "
                           'PoolFormer and RIFormer)')
  parser.add_argument('--batch', type=int, default=32, help='images per timed call')
  parser.add_argument('--rounds', type=int, default=7, help='timed calls per form, interleaved')
  parser.add_argument('--no-timing', action='store_true',
                      help='only parameters, MACs and equivalence (no throughput)')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'models.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  names = args.models.split(',')
  if names == ['all']:
    names = [n for n in rj.list_models()
             if n.split('_')[0] in ('levit', 'mobilevit', 'poolformer', 'riformer')]
  rows = []
  for name in names:
    rows.append(measure(name, args.batch, args.rounds, not args.no_timing))
    print(f'{name}: done', flush=True)
  columns = ['model', 'image_size', 'train_params', 'deploy_params', 'train_mmacs',
             'deploy_mmacs', 'reference_mmacs', 'macs_vs_reference_pct', 'xla_mmacs',
             'equivalence_error']
  if not args.no_timing:
    columns += ['train_img_s', 'deploy_img_s', 'deploy_vs_train']
  common.print_table(rows, columns)
  payload = {'benchmark': 'models', 'batch': args.batch, 'machine': common.machine(),
             'results': rows}
  if not args.no_timing:
    sizes = sorted({n.split('_')[1] for n in names if n.startswith('riformer_')})
    comparison = [riformer_vs_poolformer(size, args.batch, args.rounds) for size in sizes]
    if comparison:
      print()
      common.print_table(comparison, ['size', 'poolformer_img_s', 'riformer_deploy_img_s',
                                      'speedup_pct', 'paper_speedup_pct'])
    payload['riformer_vs_poolformer'] = comparison
  common.write_json(args.out, payload)


if __name__ == '__main__':
  main()
