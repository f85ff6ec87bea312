"""Checks `repvit_jax.convert` against timm: converted weights must give timm's logits.

Not a test (CI has no torch): run it by hand in a separate environment that has torch, timm
and this package, e.g.

    python -m venv /work/torch-venv
    /work/torch-venv/bin/pip install torch==2.13.0            # the CPU build, first
    /work/torch-venv/bin/pip install timm --no-deps pyyaml huggingface_hub safetensors pillow
    /work/torch-venv/bin/pip install torchvision==0.28.0 --no-deps   # timm imports it
    /work/torch-venv/bin/pip install -e .
    /work/torch-venv/bin/python benchmarks/check_timm_parity.py

No pretrained weights are downloaded: each timm model is built with random weights
(`pretrained=False`), every parameter is perturbed and every BatchNorm gets random running
statistics (so that a wrong fold or transpose cannot hide behind an identity), its state dict
is saved as .safetensors *and* .pth, both files are converted with `repvit_jax.convert` into a
model directory, loaded with `repvit_jax.load_model`, and both frameworks run the same random
batch in eval mode, float32. Reported: max |ours - timm| / max |timm| over the logits, for the
training form and for the reparameterized deploy form. Writes
benchmarks/results/timm_parity.json.

The CUDA build of torchvision cannot load its compiled ops next to the CPU build of torch;
only its meta-kernel registration fails on import, so a stand-in module replaces that one
file (timm never calls those ops for these models).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
import time
import types

sys.modules.setdefault('torchvision._meta_registrations',
                       types.ModuleType('torchvision._meta_registrations'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
try:
  import timm  # noqa: E402
  import torch  # noqa: E402
except ImportError as e:
  raise SystemExit(f'error: this check needs torch and timm ({e}); install them in a separate '
                   'environment as the top of benchmarks/check_timm_parity.py shows') from None

import repvit_jax  # noqa: E402
from repvit_jax import convert  # noqa: E402
from repvit_jax.convert.readers import write_safetensors  # noqa: E402
from repvit_jax.reparam.check import relative_error  # noqa: E402
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

MODELS = (  # timm name, our name, input side
    ('vit_tiny_patch16_224', 'vit_tiny', 224),
    ('deit_tiny_patch16_224', 'deit_tiny', 224),
    ('levit_128s', 'levit_128s', 224),
    ('mobilevit_xs', 'mobilevit_xs', 256),
    ('poolformer_s12', 'poolformer_s12', 224),
)
TOLERANCE = 1e-4


def perturb(model: torch.nn.Module, seed: int) -> None:
  """Non-trivial weights: p(1 + 0.1 n) + 0.02 n; layer scales U(0.2, 1); BN stats random."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if re.search(r'layer_scale|(^|\.)gamma$', name):
        p.copy_(torch.rand(p.shape, generator=gen) * 0.8 + 0.2)
      else:
        p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        p.add_(0.02 * torch.randn(p.shape, generator=gen))
    for module in model.modules():
      if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
        module.running_mean.copy_(0.5 * torch.randn(module.running_mean.shape, generator=gen))
        module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 1.5 + 0.5)


def check(timm_name: str, ours: str, size: int, workdir: str, seed: int = 0) -> dict:
  torch.manual_seed(seed)
  model = timm.create_model(timm_name, pretrained=False).eval()
  perturb(model, seed)
  state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  st_path = os.path.join(workdir, f'{timm_name}.safetensors')
  pth_path = os.path.join(workdir, f'{timm_name}.pth')
  write_safetensors(st_path, state)
  torch.save({'model': model.state_dict(), 'epoch': 1}, pth_path)  # a training checkpoint

  images = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    features = model.forward_features(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()

  row = {'timm': timm_name, 'model': ours, 'input': size}
  start = time.time()
  dst = os.path.join(workdir, ours)
  result = convert.convert_checkpoint(st_path, dst, model=ours)
  from_pth = convert.convert_checkpoint(pth_path, None, model=ours)
  same = jax.tree.map(np.array_equal, result.variables, from_pth.variables)
  row['pth_equals_safetensors'] = bool(all(jax.tree_util.tree_leaves(same)))
  row['convert_s'] = round(time.time() - start, 2)
  row['notes'] = result.plan.notes

  module, variables = repvit_jax.load_model(dst)
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False, mutable=['intermediates']))
  logits, inter = apply(variables, jnp.asarray(images))
  row['train_form_error'] = relative_error(logits, expected)

  deploy_model = repvit_jax.create_model(result.plan.name, num_classes=result.plan.num_classes,
                                         deploy=True, **result.plan.overrides)
  deploy_vars = repvit_jax.reparameterize(variables)
  deploy_logits = jax.jit(lambda v, x: deploy_model.apply(v, x, train=False))(
      deploy_vars, jnp.asarray(images))
  row['deploy_form_error'] = relative_error(deploy_logits, expected)

  if ours.startswith('poolformer'):
    # timm pools, then LayerNorms the pooled channels; the PoolFormer paper (and we) apply
    # a one-group GroupNorm to the map, then pool. Compare the backbone, and the whole
    # function with timm's head evaluated in the paper's order.
    last = max((k for k in inter['intermediates'] if k.startswith('blocks_')),
               key=lambda k: int(k.split('_')[1]))
    ours_features = np.asarray(inter['intermediates'][last]['features'][0])
    row['features_error'] = relative_error(ours_features, features.transpose(0, 2, 3, 1))
    with torch.no_grad():
      f = torch.from_numpy(features)
      norm = torch.nn.functional.group_norm(f, 1, model.head.norm.weight, model.head.norm.bias,
                                            1e-5)
      paper_order = model.head.fc(norm.mean(dim=(2, 3))).numpy()
    row['paper_head_order_error'] = relative_error(logits, paper_order)
  return row


def main() -> int:
  parser = cli.parser(__doc__)
  parser.add_argument('--models', nargs='*', default=[m[0] for m in MODELS],
                      help='the models to convert and compare with timm')
  parser.add_argument('--keep', default=None, metavar='DIR',
                      help='keep the checkpoints and converted model directories in DIR')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'timm_parity.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    workdir = args.keep or tmp
    os.makedirs(workdir, exist_ok=True)
    for timm_name, ours, size in MODELS:
      if timm_name in args.models:
        rows.append(check(timm_name, ours, size, workdir))
        r = rows[-1]
        print(f'{timm_name:24s} -> {ours:15s} train {r["train_form_error"]:.2e}  deploy '
              f'{r["deploy_form_error"]:.2e}' +
              (f'  features {r["features_error"]:.2e}  paper-order head '
               f'{r["paper_head_order_error"]:.2e}' if 'features_error' in r else ''),
              flush=True)
  print()
  print(f'| timm model | ours | max rel. logit error (training form) | (deploy form) | '
        f'.pth == .safetensors |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["timm"]} | {r["model"]} | {r["train_form_error"]:.2e} | '
          f'{r["deploy_form_error"]:.2e} | {r["pth_equals_safetensors"]} |')
  record = {'machine': platform.platform(), 'processor': platform.processor(),
            'jax': jax.__version__, 'torch': torch.__version__, 'timm': timm.__version__,
            'tolerance': TOLERANCE, 'rows': rows}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(record, f, indent=2)
  print(f'wrote {args.out}')
  failed = [r['timm'] for r in rows if r['train_form_error'] > TOLERANCE and
            r.get('paper_head_order_error', 1.0) > TOLERANCE]
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
