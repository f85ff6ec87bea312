"""Where the vit_tiny train step's time goes against timm's: each op of a block, forward and
backward, XLA against PyTorch eager at the step's shapes, and the matrix products underneath.

    python benchmarks/step_ops.py [--batch 32] [--rounds 9] [--ops layernorm,fc1,block]

`train_step.py --suites timm` compares whole steps; this splits the gap by op. Each row is
one op of a vit_tiny block (batch x 197 tokens x 192 channels, 3 heads, MLP 768) run forward
and then backward from a fixed output gradient: ours, the project's own layer (flax's
LayerNorm, `QKV`, `Dense`, `gelu`, `attention`, `Block`) under `jax.jit(jax.vjp)`; theirs,
the PyTorch op timm's block calls (`F.layer_norm`, `nn.Linear`, `F.gelu`,
`F.scaled_dot_product_attention`, timm's `Block`) with `backward()`. The `gemm_` rows are fc1's
three matrix products alone (forward X W, input gradient dY W^T, weight gradient X^T dY) in
GFLOP/s. Contenders alternate in this process (`common.time_interleaved`), PyTorch with one
thread per core, with the malloc the trainer runs with (restarts once: host_memory). Needs
`pip install -e '.[timm]'`. Prints the table; writes benchmarks/results/step_ops.json.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Tuple

# torch before TensorFlow and JAX (train_step.py says why).
try:
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:
  timm = torch = None

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

from repvit_jax.layers.activations import gelu  # pylint: disable=wrong-import-position
from repvit_jax.layers.dense import Dense  # pylint: disable=wrong-import-position
from repvit_jax.layers.transformer import (  # pylint: disable=wrong-import-position
    QKV, Block, attention)
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position
from repvit_jax.utils import host_memory  # pylint: disable=wrong-import-position

TOKENS, WIDTH, HEADS, HIDDEN = 197, 192, 3, 768
COLUMNS = ['op', 'xla_ms', 'torch_ms', 'xla_vs_torch', 'xla_gflop_s', 'torch_gflop_s']


def xla_forward_backward(fn: Callable, *args) -> Callable[[], Any]:
  """`fn(*args)` and its vector-Jacobian product with fixed random output gradients, compiled
  once; the gradient is an argument, so XLA cannot fold it into constants."""
  rng = np.random.default_rng(1)
  cotangent = jax.tree.map(lambda out: jnp.asarray(rng.standard_normal(out.shape), out.dtype),
                           jax.eval_shape(fn, *args))

  @jax.jit
  def step(cotangent, *args):
    y, vjp = jax.vjp(fn, *args)
    return y, vjp(cotangent)

  return lambda: step(cotangent, *args)


def torch_forward_backward(fn: Callable, *inputs: np.ndarray,
                           module: Any = None) -> Callable[[], Any]:
  """`fn(*inputs)` then `backward()` with a fixed random output gradient, gradients reset
  each call as an optimizer step would."""
  tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
  with torch.no_grad():
    shape = fn(*tensors).shape
  cotangent = torch.tensor(np.random.default_rng(1).standard_normal(shape).astype(np.float32))

  def run():
    for t in tensors:
      t.grad = None
    if module is not None:
      module.zero_grad(set_to_none=True)
    fn(*tensors).backward(cotangent)

  return run


def op_pairs(batch: int) -> Dict[str, Tuple[Callable, Callable, float]]:
  """{op: (ours, theirs, GFLOP per call or 0)} for one block's ops at vit_tiny's shapes."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  tokens = normal(batch, TOKENS, WIDTH)
  pairs = {}

  def module_pair(name, ours, theirs, x):
    params = ours.init(jax.random.key(0), jnp.asarray(x))
    pairs[name] = (xla_forward_backward(ours.apply, params, jnp.asarray(x)),
                   torch_forward_backward(theirs, x, module=theirs), 0.0)

  module_pair('layernorm', nn.LayerNorm(epsilon=1e-6), torch.nn.LayerNorm(WIDTH, eps=1e-6),
              tokens)
  module_pair('qkv', QKV(WIDTH), torch.nn.Linear(WIDTH, 3 * WIDTH), tokens)
  module_pair('proj', Dense(WIDTH), torch.nn.Linear(WIDTH, WIDTH), tokens)
  module_pair('fc1', Dense(HIDDEN), torch.nn.Linear(WIDTH, HIDDEN), tokens)
  module_pair('fc2', Dense(WIDTH), torch.nn.Linear(HIDDEN, WIDTH),
              normal(batch, TOKENS, HIDDEN))
  hidden = normal(batch, TOKENS, HIDDEN)
  pairs['gelu'] = (xla_forward_backward(gelu, jnp.asarray(hidden)),
                   torch_forward_backward(torch.nn.functional.gelu, hidden), 0.0)
  head_dim = WIDTH // HEADS
  q, k, v = (normal(batch, TOKENS, HEADS, head_dim) for _ in range(3))
  # timm's Attention calls SDPA on (B, heads, T, D); ours takes (B, T, heads, D) and
  # transposes inside, so both rows include the head transposes.
  sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
      q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
  pairs['attention'] = (xla_forward_backward(attention, *map(jnp.asarray, (q, k, v))),
                        torch_forward_backward(sdpa, q, k, v), 0.0)
  block = Block(HEADS)
  params = block.init(jax.random.key(0), jnp.asarray(tokens), False)
  theirs = timm.models.vision_transformer.Block(WIDTH, HEADS, qkv_bias=True)
  pairs['block'] = (xla_forward_backward(lambda p, x: block.apply(p, x, False), params,
                                         jnp.asarray(tokens)),
                    torch_forward_backward(theirs, tokens, module=theirs), 0.0)

  # fc1's three products: forward X W (M x K . K x N), input gradient dY W^T, weight gradient
  # X^T dY (the M = batch x tokens rows are contracted).
  rows = batch * TOKENS
  x, w, dy = normal(rows, WIDTH), normal(WIDTH, HIDDEN), normal(rows, HIDDEN)
  gflop = 2 * rows * WIDTH * HIDDEN / 1e9
  products = {
      'gemm_fc1_forward': (lambda x, w, dy: x @ w),
      'gemm_fc1_input_grad': (lambda x, w, dy: dy @ w.T),
      'gemm_fc1_weight_grad': (lambda x, w, dy: x.T @ dy),
  }
  jax_args = tuple(map(jnp.asarray, (x, w, dy)))
  torch_args = tuple(map(torch.tensor, (x, w, dy)))
  for name, product in products.items():
    compiled = jax.jit(product)
    pairs[name] = ((lambda c=compiled: c(*jax_args)),
                   (lambda p=product: p(*torch_args)), gflop)
  return pairs


def main():
  parser = cli.parser(__doc__)
  parser.add_argument('--batch', type=int, default=32, help='images per step')
  parser.add_argument('--rounds', type=int, default=9, help='timed turns per contender')
  parser.add_argument('--ops', default='', help='comma list of rows (default: all)')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'step_ops.json'),
                      help='where the JSON results go')
  args = parser.parse_args()
  if timm is None:
    raise SystemExit("step_ops needs timm and torch: pip install -e '.[timm]'")
  malloc = (host_memory.restart_with_fast_malloc(purge_delay_ms=common.PURGE_DELAY_MS)
            if host_memory.runs_on_cpu() else 'default')
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  pairs = op_pairs(args.batch)
  chosen = args.ops.split(',') if args.ops else list(pairs)
  unknown = sorted(set(chosen) - set(pairs))
  if unknown:
    raise SystemExit(f'unknown --ops {unknown}; choose from {list(pairs)}')
  rows = []
  for name in chosen:
    ours, theirs, gflop = pairs[name]
    # Many calls a turn for the short ops (a whole block is long enough alone), so that the
    # first call after the other runtime's turn, which pays for that turn, does not decide
    # the row.
    seconds = common.time_interleaved({'xla': ours, 'torch': theirs}, rounds=args.rounds,
                                      calls_per_turn=20 if name != 'block' else 3)
    row = {'op': name, 'xla_ms': 1e3 * seconds['xla'], 'torch_ms': 1e3 * seconds['torch'],
           'xla_vs_torch': seconds['xla'] / seconds['torch']}
    if gflop:
      row.update(xla_gflop_s=gflop / seconds['xla'], torch_gflop_s=gflop / seconds['torch'])
    rows.append(row)
    print(f"  {name}: xla {row['xla_ms']:.2f} ms, torch {row['torch_ms']:.2f} ms", flush=True)
  common.print_table(rows, COLUMNS)
  common.write_json(args.out, {'benchmark': 'step_ops', 'batch': args.batch,
                               'machine': common.machine(), 'malloc': malloc,
                               'torch': torch.__version__, 'results': rows})


if __name__ == '__main__':
  main()
