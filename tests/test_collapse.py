"""Collapsed TDRL training computes what the branch form computes: outputs, gradients of every
parameter and the new running statistics, for every option, large input means and a mesh."""

import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax.layers import RepLinear
from repvit_jax.reparam import check, collapse
from conftest import TINY_VIT, nontrivial_variables, xla_flags


def train_outputs(model, variables, x, cotangent_seed=0):
  """(training-mode output, new batch_stats, gradients of <output, random cotangent>)."""

  def loss(params):
    out, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                               train=True, mutable=['batch_stats'])
    # Drawn in float32 whatever the dtype, so float64 references see the same cotangent.
    cotangent = jax.random.normal(jax.random.key(cotangent_seed), out.shape,
                                jnp.float32).astype(out.dtype)
    return jnp.sum(out * cotangent), (out, updates['batch_stats'])

  (_, (out, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
  return out, stats, grads


def gradient_errors(actual, expected):
  """Per parameter: |actual - expected| / |expected| (L2), or / the total gradient norm where
  the expected gradient is zero in exact arithmetic (inner BatchNorm biases)."""
  total = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                            for g in jax.tree.leaves(expected))))

  def error(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    norm = np.linalg.norm(e)
    return float(np.linalg.norm(a - e) / (norm if norm > 1e-4 * total else total))

  return jax.tree.leaves(jax.tree.map(error, actual, expected))


def stats_error(actual, expected):
  return max(check.relative_error(a, e) for a, e in zip(jax.tree.leaves(actual),
                                                      jax.tree.leaves(expected)))


def compare_paths(make_model, x, seed=0):
  """Errors (output, new statistics, worst parameter gradient) of the float32 collapsed path.

  The reference is the branch form in float64: float32 gradients of the branch form itself
  are only ~1e-4 accurate where BatchNorm backward cancels, so float32 against float32 would
  measure two roundings; against float64 it measures the collapsed path's own error.
  `make_model(train_path, dtype)` builds the model.
  """
  variables = nontrivial_variables(make_model('branches', jnp.float32), x, seed)
  with jax.enable_x64(True):
    wide = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    truth = jax.tree.map(np.asarray, train_outputs(make_model('branches', jnp.float64),
                                                   wide(variables), wide(x)))
  # Op by op: tiny models run faster so than compiled (no compile per case).
  out, stats, grads = train_outputs(make_model('collapsed', jnp.float32), variables, x)
  return (check.relative_error(out, truth[0]), stats_error(stats, truth[1]),
          max(gradient_errors(grads, truth[2])))


ONE_BLOCK_VIT = dict(TINY_VIT, depth=1)  # every TDRL layer once; the mesh test runs two blocks
LAYER_OPTIONS = list(itertools.product((1, 2, 3, 4), ('none', 'scale', 'bn'), (0.5, 1.0, 2.0)))


def assert_all_match(cases):
  """cases: {label: make_model}, each compared on its input; fails listing every miss.

  One test runs them all: op-by-op execution compiles each primitive once per process, so
  one worker pays that warm-up instead of every worker."""
  misses = []
  for label, (make, x) in cases.items():
    out_err, stats_err, grad_err = compare_paths(make, x)
    if not (out_err <= 1e-5 and stats_err <= 1e-5 and grad_err <= 1e-4):
      misses.append(f'{label}: output {out_err:.2e}, stats {stats_err:.2e}, grad {grad_err:.2e}')
  assert not misses, '\n'.join(misses)


def test_collapsed_rep_linear_matches_branches():
  cases = {}
  for num_branches, rectify, hidden_ratio in LAYER_OPTIONS:
    x = jax.random.normal(jax.random.key(num_branches), (4, 16, 8)) * 2 + 0.5
    make = lambda path, dtype, n=num_branches, r=rectify, h=hidden_ratio: RepLinear(
        6, num_branches=n, rectify=r, rectify_features=4, hidden_features=int(8 * h),
        train_path=path, dtype=dtype, param_dtype=dtype)
    cases[f'N={num_branches} rectify={rectify} hidden_ratio={hidden_ratio}'] = (make, x)
  assert_all_match(cases)


# Every rectification mode and width is covered layer by layer above; here each mode once in
# its place (qkv: Q/K only), every subset of TDRL layers, and the extremes of N.
VIT_OPTIONS = (
    [dict(qkv_rectify=q, rectify=r) for q, r in (('bn', 'scale'), ('scale', 'bn'),
                                                 ('none', 'none'))] +
    [dict(layers=subset) for size in (1, 2, 3)
     for subset in itertools.combinations(('qkv', 'proj', 'fc1', 'fc2'), size)] +
    [dict(num_branches=4, hidden_ratio=0.5), dict(num_branches=1, hidden_ratio=2.0)])


def test_collapsed_tdrl_vit_matches_branches():
  images = jax.random.normal(jax.random.key(42), (8, 32, 32, 3))
  cases = {}
  for options in VIT_OPTIONS:
    make = lambda path, dtype, o=options: rj.create_model(
        'tdrl_vit_tiny', num_classes=10, **ONE_BLOCK_VIT, tdrl=dict(o, train_path=path),
        dtype=dtype, param_dtype=dtype)
    cases[str(options)] = (make, images)
  assert_all_match(cases)


def test_collapsed_and_branch_paths_share_one_variable_tree(tiny_images):
  make = lambda path: rj.create_model('tdrl_vit_tiny', num_classes=10, **TINY_VIT,
                                      tdrl={'train_path': path})
  trees = [make(p).init(jax.random.key(0), tiny_images, train=False)
           for p in ('branches', 'collapsed')]
  assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
  for a, b in zip(*map(jax.tree.leaves, trees)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)  # same initialisers, same rngs


def test_collapsed_eval_is_the_branch_eval(tiny_images):
  make = lambda path: rj.create_model('tdrl_vit_tiny', num_classes=10, **TINY_VIT,
                                      tdrl={'train_path': path})
  variables = nontrivial_variables(make('branches'), tiny_images)
  expected = make('branches').apply(variables, tiny_images, train=False)
  actual = make('collapsed').apply(variables, tiny_images, train=False)
  assert check.relative_error(actual, expected) <= 1e-5


@pytest.mark.parametrize('rectify', ['scale', 'bn'])
def test_collapsed_is_exact_when_the_input_mean_dwarfs_its_spread(rectify):
  """|mean| = 100 x std per channel (where E[x^2] - mean^2 would lose 4 digits)."""
  noise = jax.random.normal(jax.random.key(0), (4, 16, 8))
  x = noise + 100 * jnp.sign(jax.random.normal(jax.random.key(1), (8,)))
  make = lambda path, dtype: RepLinear(6, num_branches=3, rectify=rectify, rectify_features=4,
                                       train_path=path, dtype=dtype, param_dtype=dtype)
  out_err, stats_err, grad_err = compare_paths(make, x)
  assert out_err <= 1e-5 and stats_err <= 1e-5 and grad_err <= 1e-4, (out_err, stats_err,
                                                                       grad_err)


def test_batch_moments_and_gram_gradient():
  x = jax.random.normal(jax.random.key(0), (5, 6, 4)) + 3.0
  mean, cov, centred = collapse.batch_moments(x)
  rows = np.asarray(x, np.float64).reshape(-1, 4)
  np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-6)
  np.testing.assert_allclose(cov, np.cov(rows.T, bias=True), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(centred, rows - rows.mean(0), atol=1e-5)
  # The symmetric custom gradient equals autodiff of the plain formula.
  weights = jax.random.normal(jax.random.key(1), (4, 4))
  plain = lambda x: jnp.sum(weights * (lambda c: c.T @ c)(x.reshape(-1, 4) - x.reshape(
      -1, 4).mean(0)) / 30)
  ours = lambda x: jnp.sum(weights * collapse.batch_moments(x)[1])
  np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(plain)(x), rtol=1e-5, atol=1e-6)


def test_column_variance_gradient_equals_autodiff():
  cov = np.cov(np.random.default_rng(0).normal(size=(5, 40)), bias=True)
  kernel = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
  cov = jnp.asarray(cov, jnp.float32)
  weights = jnp.arange(1.0, 4.0)
  plain = lambda k, c: jnp.sum(weights * jnp.diag(k.T @ c @ k))
  ours = lambda k, c: jnp.sum(weights * collapse._column_variance(k, c))
  assert abs(float(ours(kernel, cov) - plain(kernel, cov))) <= 1e-5 * abs(float(plain(kernel,
                                                                                      cov)))
  for a, b in zip(jax.grad(ours, (0, 1))(kernel, cov), jax.grad(plain, (0, 1))(kernel, cov)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


MESH_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import repvit_jax as rj
    from repvit_jax.reparam import check
    from conftest import TINY_VIT, nontrivial_variables
    from test_collapse import train_outputs, gradient_errors, stats_error
    assert jax.device_count() == 8
    model = rj.create_model('tdrl_vit_tiny', num_classes=10, **TINY_VIT)
    images = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
    variables = nontrivial_variables(model, images)
    run = jax.jit(lambda v, x: train_outputs(model, v, x))
    single = run(variables, images)
    mesh = Mesh(np.array(jax.devices()), ('data',))
    sharded_images = jax.device_put(images, NamedSharding(mesh, P('data')))
    sharded = run(variables, sharded_images)
    assert len(sharded[0].sharding.device_set) == 8
    print('ERRORS', check.relative_error(sharded[0], single[0]),
          stats_error(sharded[1], single[1]), max(gradient_errors(sharded[2], single[2])))
''')


@pytest.mark.slow
def test_collapsed_statistics_are_global_on_an_8_device_mesh():
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS='cpu', PYTHONPATH=here + os.pathsep + os.environ.get('PYTHONPATH',
                                                                                ''))
  result = subprocess.run([sys.executable, '-c', MESH_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith('ERRORS')][0]
  out_err, stats_err, grad_err = map(float, line.split()[1:])
  assert out_err <= 1e-5 and stats_err <= 1e-5 and grad_err <= 1e-4, line
