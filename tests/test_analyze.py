"""repvit_jax.tools.analyze: attention distance, linear CKA, their JSON/PNG outputs and command line."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

import repvit_jax
from repvit_jax import io
from repvit_jax.tools import analyze

from conftest import TINY_VIT


def _direct_distance(logits, grid, patch, prefix):
  """D_h = mean_{b,i} sum_j softmax(A)_ij G_ij with explicit loops (the definition)."""
  b, h, t, _ = logits.shape
  gh, gw = grid
  out = np.zeros(h)
  for head in range(h):
    total = 0.0
    for img in range(b):
      for i in range(gh * gw):
        row = logits[img, head, prefix + i, prefix:]
        p = np.exp(row - row.max())
        p /= p.sum()
        for j in range(gh * gw):
          yi, xi, yj, xj = i // gw, i % gw, j // gw, j % gw
          total += p[j] * patch * np.hypot(yi - yj, xi - xj)
    out[head] = total / (b * gh * gw)
  return out


def test_attention_distance_matches_the_definition():
  rng = np.random.default_rng(0)
  grid, prefix = (3, 4), 1
  logits = rng.normal(scale=2.0, size=(2, 3, prefix + 12, prefix + 12))
  got = analyze.attention_distance(logits, grid, patch_size=16)
  np.testing.assert_allclose(got['distance'], _direct_distance(logits, grid, 16, prefix),
                             rtol=1e-10)
  assert got['distance'].shape == got['entropy'].shape == (3,)


def test_attention_distance_hand_made_maps():
  grid = (4, 4)
  n = 16
  local = np.full((1, 2, n + 1, n + 1), -1e9)
  local[0, :, np.arange(1, n + 1), np.arange(1, n + 1)] = 0.0     # every patch sees itself
  got = analyze.attention_distance(local, grid, patch_size=8)
  np.testing.assert_allclose(got['distance'], 0.0, atol=1e-6)
  np.testing.assert_allclose(got['entropy'], 0.0, atol=1e-6)
  uniform = np.zeros((1, 1, n + 1, n + 1))                         # the cls column is dropped
  got = analyze.attention_distance(uniform, grid, patch_size=8)
  g = analyze.patch_distances(grid, 8)
  np.testing.assert_allclose(got['distance'], [g.mean()], rtol=1e-12)
  np.testing.assert_allclose(got['entropy'], [np.log(n)], rtol=1e-9)
  assert g[0, 15] == pytest.approx(8 * np.sqrt(18))                # corner to corner


def test_attention_distance_rejects_wrong_shapes():
  with pytest.raises(ValueError, match='do not fit'):
    analyze.attention_distance(np.zeros((1, 1, 10, 10)), (3, 4))
  with pytest.raises(ValueError, match=r'\(B, H, T, T\)'):
    analyze.attention_distance(np.zeros((1, 10, 10)), (3, 3))


def test_linear_cka_properties():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 12))
  assert analyze.linear_cka(x, x) == pytest.approx(1.0)
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  assert analyze.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)    # rotation + scaling
  assert analyze.linear_cka(x, x + 5.0) == pytest.approx(1.0)         # centring
  y = rng.normal(size=(20, 7))
  value = analyze.linear_cka(x, y)
  assert 0.0 <= value < 0.9 and value == pytest.approx(analyze.linear_cka(y, x))
  # (B, T, C) features are flattened per example.
  f = rng.normal(size=(10, 5, 4))
  assert analyze.linear_cka(f, f.reshape(10, 20)) == pytest.approx(1.0)
  matrix = analyze.cka_matrix([x, y], [x, y, x @ q])
  np.testing.assert_allclose(np.diag(matrix[:, :2]), 1.0)
  assert matrix[0, 2] == pytest.approx(1.0) and matrix[0, 1] == pytest.approx(value)
  with pytest.raises(ValueError, match='same examples'):
    analyze.linear_cka(x, x[:5])


@pytest.fixture(scope='module')
def tiny_vit_dir(tmp_path_factory):
  model = repvit_jax.create_model('vit_tiny', num_classes=4, **TINY_VIT)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      np.zeros((1, 32, 32, 3), np.float32))
  directory = str(tmp_path_factory.mktemp('analyze') / 'vit')
  io.save_model(directory, variables, repvit_jax.ModelSpec.registered(
      'vit_tiny', num_classes=4, deploy=True, overrides=TINY_VIT,
      image_size=32))
  return directory, model, variables


def test_intermediates_and_analyses_write_json_and_png(tmp_path, tiny_vit_dir):
  _, model, variables = tiny_vit_dir
  images = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype(np.float32)
  inter = analyze.intermediates(model, variables, images)
  assert len(inter['features']) == len(inter['attn_logits']) == TINY_VIT['depth']
  assert inter['attn_logits'][0].shape == (6, 2, 17, 17)
  record = analyze.analyze_attention(model, variables, images, str(tmp_path))
  assert np.asarray(record['distance']).shape == (TINY_VIT['depth'], 2)
  assert record['grid'] == [4, 4] and record['patch_size'] == 8
  with open(record['json']) as f:
    saved = json.load(f)
  assert saved['distance'] == record['distance']
  # Uniform attention's reference distance: the mean over all pairs of the 4x4 patch grid.
  assert saved['uniform_distance'] == pytest.approx(
      float(analyze.patch_distances((4, 4), 8).mean()))
  cka = analyze.analyze_cka(model, variables, model, variables, images, str(tmp_path))
  np.testing.assert_allclose(cka['diagonal'], 1.0, rtol=1e-9)
  if not analyze.can_plot():
    assert record['png'] is None and cka['png'] is None
    return
  for path in (record['png'], cka['png']):
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_pillow_fallback(tmp_path, monkeypatch):
  def no_matplotlib():
    raise ImportError('matplotlib is not installed')
  monkeypatch.setattr(analyze, '_pyplot', no_matplotlib)
  Image = pytest.importorskip('PIL.Image')
  a = analyze.plot_attention_distance(np.random.default_rng(0).uniform(0, 50, (4, 3)),
                                      str(tmp_path / 'a.png'), title='fallback')
  b = analyze.plot_cka(np.eye(3), str(tmp_path / 'b.png'))
  assert Image.open(a).size == (600, 400) and Image.open(b).size[0] > 0


def test_command_line(tmp_path, tiny_vit_dir, capsys):
  directory = tiny_vit_dir[0]
  out = str(tmp_path / 'out')
  # A model directory outside a workdir names no data set: one error line, nothing written.
  assert analyze.main(['attention', directory, out, '--num-images', '4']) == 1
  error = capsys.readouterr().err.strip()
  assert error.startswith('error: ') and '--images noise' in error and '\n' not in error
  assert not os.path.exists(out)
  assert analyze.main(['attention', directory, out, '--num-images', '4', '--images',
                       'noise']) == 0
  assert 'layer  1: mean' in capsys.readouterr().out
  # Spec fields are not overrides; weights of another shape are one line, not a Flax error.
  for flags, message in ((['--set', 'num_classes=10'], 'num_classes is not a module override'),
                         (['--set', 'width=24'], 'does not fit the model')):
    assert analyze.main(['attention', directory, out, '--images', 'noise', *flags]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith('error: ') and message in error and '\n' not in error, error
  assert analyze.main(['cka', directory, directory, out, '--num-images', '4', '--images',
                       'noise']) == 0
  assert 'CKA per layer: 1.000, 1.000' in capsys.readouterr().out
  written = ['attention_distance.json', 'cka.json']
  if analyze.can_plot():
    written += ['attention_distance.png', 'cka.png']
  assert sorted(os.listdir(out)) == sorted(written)


class _NoAttention(nn.Module):
  """A model that sows block features but no attention (like PoolFormer or MobileViT)."""

  @nn.compact
  def __call__(self, x, *, train):
    self.sow('intermediates', 'features', x)
    return x.mean(axis=(1, 2))


def test_attention_needs_a_vit(tmp_path):
  images = np.zeros((2, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match='sows no attention logits'):
    analyze.analyze_attention(_NoAttention(), {}, images, str(tmp_path))
  cka = analyze.analyze_cka(_NoAttention(), {}, _NoAttention(), {}, images + np.arange(2)[
      :, None, None, None], str(tmp_path))
  assert cka['layers_a'] == 1
