"""Each public fuse function against a direct computation of what it replaces."""


import jax
import numpy as np
import pytest

from repvit_jax import reparam

# Reseeded from each test's name (conftest.py, `_rng_per_test`).
RNG = np.random.default_rng(0)


def bn_params(channels):
  return (RNG.uniform(0.5, 1.5, channels), RNG.normal(size=channels),
          RNG.normal(size=channels), RNG.uniform(0.5, 2.0, channels))


def batchnorm(y, scale, offset, mean, var, eps=reparam.BN_EPSILON):
  return (y - mean) / np.sqrt(var + eps) * scale + offset


def test_batchnorm_to_affine_matches_batchnorm():
  params = bn_params(5)
  x = RNG.normal(size=(7, 5))
  a, b = reparam.batchnorm_to_affine(*params)
  np.testing.assert_allclose(x * np.asarray(a) + np.asarray(b), batchnorm(x, *params),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('with_bias', [True, False])
def test_fold_batchnorm_dense(with_bias):
  x, kernel = RNG.normal(size=(4, 6)), RNG.normal(size=(6, 3))
  bias = RNG.normal(size=3) if with_bias else None
  params = bn_params(3)
  expected = batchnorm(x @ kernel + (0 if bias is None else bias), *params)
  k, b = reparam.fold_batchnorm(kernel, bias, *params)
  np.testing.assert_allclose(x @ np.asarray(k) + np.asarray(b), expected, rtol=1e-5, atol=1e-6)


def test_fold_batchnorm_conv():
  x = RNG.normal(size=(1, 6, 6, 2)).astype(np.float32)
  kernel = RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)
  params = [p.astype(np.float32) for p in bn_params(4)]
  conv = lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  expected = batchnorm(np.asarray(conv(kernel)), *params)
  k, b = reparam.fold_batchnorm(kernel, None, *params)
  np.testing.assert_allclose(np.asarray(conv(k)) + np.asarray(b), expected, rtol=1e-4,
                             atol=1e-4)


def test_fold_partial_batchnorm_only_touches_leading_features():
  x, kernel, bias = RNG.normal(size=(4, 5)), RNG.normal(size=(5, 6)), RNG.normal(size=6)
  params = bn_params(4)
  y = x @ kernel + bias
  expected = np.concatenate([batchnorm(y[:, :4], *params), y[:, 4:]], axis=1)
  k, b = reparam.fold_partial_batchnorm(kernel, bias, *params)
  np.testing.assert_allclose(x @ np.asarray(k) + np.asarray(b), expected, rtol=1e-5, atol=1e-6)


def test_fold_partial_batchnorm_rejects_too_many_features():
  with pytest.raises(ValueError, match='cannot follow'):
    reparam.fold_partial_batchnorm(np.ones((2, 3)), None, *bn_params(4))


def test_merge_linear_chain():
  x = RNG.normal(size=(4, 5))
  layers = [(RNG.normal(size=(5, 7)), RNG.normal(size=7)), (RNG.normal(size=(7, 3)), None),
            (RNG.normal(size=(3, 2)), RNG.normal(size=2))]
  expected = x
  for kernel, bias in layers:
    expected = expected @ kernel + (0 if bias is None else bias)
  k, b = reparam.merge_linear_chain(layers)
  assert k.shape == (5, 2) and b.shape == (2,)
  np.testing.assert_allclose(x @ np.asarray(k) + np.asarray(b), expected, rtol=1e-5)


def test_merge_linear_chain_rejects_mismatched_widths():
  with pytest.raises(ValueError, match='cannot chain'):
    reparam.merge_linear_chain([(np.ones((2, 3)), None), (np.ones((4, 2)), None)])


def test_sum_branches_with_scale():
  # Its own generator: the module's RNG would make the values depend on test order.
  rng = np.random.RandomState(7)
  x = rng.normal(size=(4, 5))
  branches = [(rng.normal(size=(5, 3)), rng.normal(size=3)), (rng.normal(size=(5, 3)), None)]
  expected = 0.5 * sum(x @ k + (0 if b is None else b) for k, b in branches)
  k, b = reparam.sum_branches(branches, 0.5)
  # float32 weights: an output near zero is exact only to the float32 rounding of the sum.
  np.testing.assert_allclose(x @ np.asarray(k) + np.asarray(b), expected, rtol=1e-6,
                             atol=1e-6 * np.abs(expected).max())


def test_sum_branches_rejects_different_shapes():
  with pytest.raises(ValueError, match='one kernel shape'):
    reparam.sum_branches([(np.ones((2, 3)), None), (np.ones((2, 4)), None)])
