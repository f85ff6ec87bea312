"""Where XLA's time goes, per op of the model: a deploy form's forward pass, or (`--train`)
the trainer's compiled train step (forward, backward and optimizer update).

    python benchmarks/xla_profile.py vit_tiny --batch 32
    python benchmarks/xla_profile.py mobilevit_xs --batch 1 --top 20
    python benchmarks/xla_profile.py vit_tiny --train      # the trainer's step of configs/vit_tiny.py

Runs the jitted deploy forward (or the train step) under `jax.profiler.trace` (Perfetto trace), sums the time of
every XLA op the trace shows (fusions, library calls such as the XNNPACK/YNNPACK dot fusions)
and groups them by the model op they came from (the `op_name` of the compiled HLO, with layer
indices folded: `blocks_3/mlp/fc1` and `blocks_7/mlp/fc1` are one row). Prints the table,
largest first; the rows add up to the call, less the runtime's own overhead (the profiler
slows every op a little: compare rows, not totals, with timings from train_step.py).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax.models.spec import ModelSpec
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

NOT_OPS = ('ThunkExecutor', '$', 'SlinkyThreadPool', 'Pjit', 'end: ', 'ParseArguments')


def op_origins(hlo_text: str):
  """{HLO instruction name: the model op it came from, layer indices folded}."""
  origins = {}
  for line in hlo_text.splitlines():
    match = re.match(r'\s*%?([\w.\-]+) = .*op_name="([^"]+)"', line)
    if match:
      path = match.group(2).split(')/', 1)[-1]
      origins[match.group(1)] = re.sub(r'(blocks|stages|layers|transformer)_\d+', r'\1_*',
                                       path)
  return origins


def profile(name: str, batch: int, calls: int = 3):
  """[(milliseconds per call, XLA op kind, model op)] of the deploy forward, largest first, and
  the total."""
  spec = ModelSpec.registered(name, deploy=True)
  module = spec.build()
  size = spec.input.image_size
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)),
                       jnp.float32)
  variables = jax.jit(lambda: module.init(jax.random.key(0), images[:1], train=False))()
  forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
  compiled = forward.lower(variables, images).compile()
  return profile_call(lambda: compiled(variables, images), compiled.as_text(), calls)


def profile_train_step(config_name: str, batch: int, calls: int = 3):
  """The same table for the trainer's compiled train step of a packaged config (forward,
  backward and optimizer update; random 224x224 images)."""
  import train_step  # pylint: disable=import-outside-toplevel
  size = 224
  step = train_step.compile_step(
      train_step.classification_config(config_name, {}, batch, 'float32', size), size)
  return profile_call(step['run'], step['hlo'], calls)


def profile_call(run, hlo_text: str, calls: int):
  """Runs `run` (a compiled call) under the profiler and sums each XLA op's time per call,
  grouped by the model op it came from."""
  for _ in range(3):
    jax.block_until_ready(run())
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(run())
    path = glob.glob(f'{directory}/**/*perfetto_trace.json.gz', recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  origins = op_origins(hlo_text)
  rows = collections.Counter()
  for event in events:
    op = event.get('name', '')
    if event.get('ph') != 'X' or 'dur' not in event or op.startswith(NOT_OPS):
      continue
    kind = re.sub(r'[.\d]+$', '', op)
    rows[(kind, origins.get(op, '?'))] += event['dur'] / 1000 / calls
  table = [(ms, kind, origin) for (kind, origin), ms in rows.most_common()]
  return table, sum(ms for ms, _, _ in table)


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('model', help='a registered model name (with --train: a packaged config)')
  parser.add_argument('--train', action='store_true',
                      help="profile the trainer's train step (forward, backward, AdamW) of the "
                           'packaged config named MODEL instead of the deploy forward')
  parser.add_argument('--batch', type=int, default=32, help='images per forward')
  parser.add_argument('--top', type=int, default=25, help='how many ops to list')
  args = parser.parse_args()
  if args.train:
    from repvit_jax.utils import host_memory  # pylint: disable=import-outside-toplevel
    if host_memory.runs_on_cpu():
      host_memory.restart_with_fast_malloc()   # as the trainer does, before JAX starts
    table, total = profile_train_step(args.model, args.batch)
  else:
    table, total = profile(args.model, args.batch)
  what = 'train step' if args.train else 'forward'
  print(f'{args.model}, batch {args.batch}, {jax.devices()[0].device_kind}: '
        f'{total:.1f} ms of XLA ops per {what} ({args.batch / total * 1000:.1f} img/s)')
  for ms, kind, origin in table[:args.top]:
    print(f'{ms:9.2f} ms  {100 * ms / total:5.1f}%  {kind:28s} {origin}')


if __name__ == '__main__':
  main()
