"""repvit_jax.convert: PyTorch state dicts (real key names and shapes) <-> our variable trees.

No torch here: the state dicts are synthetic, built from the key schemas of timm's models
(tests/data/timm_state_dict_keys.json, listed from timm 1.0.31), from the official MAE code's
layout, and from mmpretrain's RIFormer layout. Logit parity with timm itself is checked by
benchmarks/check_timm_parity.py, outside CI.
"""

import functools
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repvit_jax
from repvit_jax import convert, io
from repvit_jax.convert import ConversionError, readers
from repvit_jax.tools.cli import parse_overrides
from repvit_jax.tools.convert import main as convert_main
from repvit_jax.layers.posemb import sincos_2d
from repvit_jax.reparam.check import relative_error
from repvit_jax.train import pretrained

SCHEMAS = os.path.join(os.path.dirname(__file__), 'data', 'timm_state_dict_keys.json')
TIMM = {'vit_tiny_patch16_224': 'vit_tiny', 'deit_tiny_patch16_224': 'deit_tiny',
        'levit_128s': 'levit_128s', 'mobilevit_xs': 'mobilevit_xs',
        'poolformer_s12': 'poolformer_s12'}


def _schema(name):
  with open(SCHEMAS) as f:
    return [(k, tuple(s)) for k, s in json.load(f)[name]]


def _random_state(schema, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in schema:
    if key.endswith('num_batches_tracked'):
      out[key] = np.asarray(7, np.int64)
    elif key.endswith('running_var'):
      out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      out[key] = rng.normal(size=shape).astype(np.float32)
  return out


def _flat(tree):
  return convert.flatten(tree)


def _random_tree(plan, seed=0):
  """Random variables of the model a plan describes (no init to compile), BN stats positive."""
  rng = np.random.default_rng(seed)
  flat = {k: (rng.uniform(0.5, 2.0, v.shape) if k.endswith('/var') else
              0.3 * rng.normal(size=v.shape)).astype(np.float32)
          for k, v in convert.target_tree(plan).items()}
  return convert.unflatten(flat)


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _apply(model, variables, images):
  return _forward(model)(variables, images)


@pytest.mark.parametrize('timm_name', sorted(TIMM))
def test_timm_schema_round_trip(timm_name):
  """Every timm key is used, every leaf filled, and converting back gives the same arrays."""
  state = _random_state(_schema(timm_name))
  result = convert.convert_state_dict(state, TIMM[timm_name])
  plan = result.plan
  assert plan.num_classes == 1000 and not plan.deploy
  back = convert.to_state_dict(result.variables, plan.name, num_classes=plan.num_classes,
                               deploy=plan.deploy, overrides=plan.overrides,
                               image_size=plan.image_size)
  expected = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
  assert sorted(back) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  # The tree has exactly the model's structure.
  target = convert.target_tree(plan)
  assert {k: tuple(v.shape) for k, v in target.items()} == {
      k: v.shape for k, v in _flat(result.variables).items()}


def test_vit_layouts_follow_pytorch_conventions():
  state = _random_state(_schema('vit_tiny_patch16_224'))
  params = convert.convert_state_dict(state, 'vit_tiny').variables['params']
  np.testing.assert_array_equal(params['blocks_3']['attn']['qkv']['kernel'],
                                state['blocks.3.attn.qkv.weight'].T)          # (out, in) -> (in, out)
  np.testing.assert_array_equal(params['patch_embed']['kernel'],
                                state['patch_embed.proj.weight'].transpose(2, 3, 1, 0))  # OIHW
  np.testing.assert_array_equal(params['norm']['scale'], state['norm.weight'])
  np.testing.assert_array_equal(params['pos_embed'], state['pos_embed'])
  # --image-size: converted at the checkpoint's 224, then the table resampled to 112.
  moved = convert.convert_state_dict(state, 'vit_tiny', image_size=112)
  assert moved.plan.image_size == 112 and moved.plan.spec().input.image_size == 112
  assert moved.variables['params']['pos_embed'].shape == (1, 1 + 7 * 7, 192)
  np.testing.assert_array_equal(moved.variables['params']['pos_embed'][:, 0],
                                state['pos_embed'][:, 0])          # the class token is kept
  assert any('resampled' in note for note in moved.plan.notes)
  same = convert.convert_state_dict(state, 'vit_tiny', image_size=224).variables['params']
  np.testing.assert_array_equal(same['pos_embed'], state['pos_embed'])


def test_levit_batch_stats_and_heads():
  state = _random_state(_schema('levit_128s'))
  variables = convert.convert_state_dict(state, 'levit_128s').variables
  stats = variables['batch_stats']
  np.testing.assert_array_equal(stats['stem']['conv1']['bn']['var'],
                                state['stem.conv1.bn.running_var'])
  np.testing.assert_array_equal(
      stats['stages_1']['downsample']['attn']['q']['bn']['mean'],
      state['stages.1.downsample.attn_downsample.q.ln.bn.running_mean'])
  np.testing.assert_array_equal(variables['params']['head']['dist']['linear']['kernel'],
                                state['head_dist.linear.weight'].T)
  # Without head_dist: a single-head LeViT.
  single = {k: v for k, v in state.items() if not k.startswith('head_dist.')}
  result = convert.convert_state_dict(single, 'levit_128s')
  assert result.plan.overrides == {'distillation': False}
  assert set(result.variables['params']['head']) == {'pre_bn', 'linear'}


def test_levit_deploy_conversion_folds_batchnorm():
  """A training-form checkpoint asked for in deploy form is converted, then reparameterized."""
  small = dict(embed_dims=(16, 24, 32), key_dim=8, num_heads=(2, 3, 4), depths=(1, 1, 1))
  model = repvit_jax.create_model('levit_128s', num_classes=5, **small)
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = _random_tree(convert.Plan('levit_128s', 5, False, small, 64))
  state = convert.to_state_dict(variables, 'levit_128s', num_classes=5, overrides=small,
                                image_size=64)
  assert 'stages.1.downsample.attn_downsample.attention_biases' in state
  trained = convert.convert_state_dict(state, 'levit_128s', overrides=small, image_size=64)
  folded = convert.convert_state_dict(state, 'levit_128s', overrides=small, image_size=64,
                                      deploy=True)
  assert folded.plan.deploy and 'batch_stats' not in folded.variables
  expected = _apply(model, trained.variables, images)
  actual = _apply(folded.model, folded.variables, images)
  assert relative_error(actual, expected) < 1e-5
  jax.tree.map(np.testing.assert_array_equal, trained.variables, variables)
  assert relative_error(expected, np.zeros_like(expected)) > 0   # a non-degenerate output


def test_old_levit_index_buffers_are_checked():
  state = _random_state(_schema('levit_128s'))
  from repvit_jax.models.levit import bias_index  # pylint: disable=import-outside-toplevel
  state['stages.0.blocks.0.attn.attention_bias_idxs'] = bias_index((14, 14)).astype(np.int64)
  state['stages.1.downsample.attn_downsample.attention_bias_idxs'] = bias_index((14, 14), 2)
  convert.convert_state_dict(state, 'levit_128s')
  state['stages.0.blocks.0.attn.attention_bias_idxs'] = np.zeros((196, 196), np.int64)
  with pytest.raises(ConversionError, match='attention_bias_idxs: differs'):
    convert.convert_state_dict(state, 'levit_128s')


def _mae_state(width=192, depth=12, dec_width=96, dec_depth=1, patch=16, grid=14):
  """The official MAE / MAE-Lite pre-training state dict layout (models_mae.py)."""
  n = grid * grid

  def block(prefix, d):
    return [(f'{prefix}.norm1.weight', (d,)), (f'{prefix}.norm1.bias', (d,)),
            (f'{prefix}.attn.qkv.weight', (3 * d, d)), (f'{prefix}.attn.qkv.bias', (3 * d,)),
            (f'{prefix}.attn.proj.weight', (d, d)), (f'{prefix}.attn.proj.bias', (d,)),
            (f'{prefix}.norm2.weight', (d,)), (f'{prefix}.norm2.bias', (d,)),
            (f'{prefix}.mlp.fc1.weight', (4 * d, d)), (f'{prefix}.mlp.fc1.bias', (4 * d,)),
            (f'{prefix}.mlp.fc2.weight', (d, 4 * d)), (f'{prefix}.mlp.fc2.bias', (d,))]

  schema = [('cls_token', (1, 1, width)), ('patch_embed.proj.weight', (width, 3, patch, patch)),
            ('patch_embed.proj.bias', (width,))]
  for i in range(depth):
    schema += block(f'blocks.{i}', width)
  schema += [('norm.weight', (width,)), ('norm.bias', (width,)),
             ('decoder_embed.weight', (dec_width, width)), ('decoder_embed.bias', (dec_width,)),
             ('mask_token', (1, 1, dec_width))]
  for i in range(dec_depth):
    schema += block(f'decoder_blocks.{i}', dec_width)
  schema += [('decoder_norm.weight', (dec_width,)), ('decoder_norm.bias', (dec_width,)),
             ('decoder_pred.weight', (patch * patch * 3, dec_width)),
             ('decoder_pred.bias', (patch * patch * 3,))]
  state = _random_state(schema)
  state['pos_embed'] = sincos_2d(grid, width, cls_token=True)[None]
  state['decoder_pos_embed'] = sincos_2d(grid, dec_width, cls_token=True)[None]
  assert n + 1 == state['pos_embed'].shape[1]
  return state


def test_mae_lite_checkpoint():
  """MAE-Lite: {"model": {"model.<official MAE key>": ...}, ...} into mae_vit_tiny."""
  state = _mae_state()
  checkpoint = {'model': {f'model.{k}': v for k, v in state.items()}, 'epoch': 399}
  result = convert.convert_state_dict(checkpoint, 'mae_vit_tiny')
  params = result.variables['params']
  assert 'pos_embed' not in params                         # fixed sin-cos in our MAE
  np.testing.assert_array_equal(params['decoder_pred']['kernel'], state['decoder_pred.weight'].T)
  np.testing.assert_array_equal(params['mask_token'], state['mask_token'])
  np.testing.assert_array_equal(params['decoder_blocks_0']['mlp']['fc1']['kernel'],
                                state['decoder_blocks.0.mlp.fc1.weight'].T)
  back = convert.to_state_dict(result.variables, 'mae_vit_tiny', num_classes=0)
  assert sorted(back) == sorted(state)
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)


def test_mae_fixed_table_must_match():
  state = _mae_state()
  state['pos_embed'] = state['pos_embed'] + 0.5     # a learned table: not this model
  with pytest.raises(ConversionError, match=r'pos_embed: differs from the fixed value'):
    convert.convert_state_dict(state, 'mae_vit_tiny')


def test_mae_encoder_into_a_classifier():
  """An MAE encoder checkpoint (no head) into vit_tiny: 0 classes, its sin-cos table learned."""
  state = {k: v for k, v in _mae_state().items()
           if not k.startswith(('decoder', 'mask_token'))}
  result = convert.convert_state_dict(state, 'vit_tiny', overrides={'num_heads': 12})
  assert result.plan.num_classes == 0 and 'head' not in result.variables['params']
  np.testing.assert_array_equal(result.variables['params']['pos_embed'], state['pos_embed'])


def test_fine_tuned_vit_with_fc_norm_and_plain_vit_into_tdrl():
  state = _random_state(_schema('deit_tiny_patch16_224'))
  state['fc_norm.weight'], state['fc_norm.bias'] = state.pop('norm.weight'), state.pop('norm.bias')
  result = convert.convert_state_dict(state, 'tdrl_vit_tiny')
  assert result.plan.overrides == {'global_pool': 'avg'}
  assert result.plan.deploy                                 # a plain ViT is TDRL's deploy form
  assert 'fc_norm' in result.variables['params']
  with pytest.raises(ConversionError, match='deploy form'):
    convert.convert_state_dict(state, 'tdrl_vit_tiny', deploy=False)


def _riformer_state(depths, dims, num_classes, deploy, seed=0):
  """mmpretrain's ImageClassifier(RIFormer) layout: backbone.* + head.fc.*."""
  rng = np.random.default_rng(seed)
  w = lambda *shape: rng.normal(size=shape).astype(np.float32)
  state = {'backbone.patch_embed.proj.weight': w(dims[0], 3, 7, 7),
           'backbone.patch_embed.proj.bias': w(dims[0])}
  for s, (depth, dim) in enumerate(zip(depths, dims)):
    if s:
      state[f'backbone.network.{2 * s - 1}.proj.weight'] = w(dim, dims[s - 1], 3, 3)
      state[f'backbone.network.{2 * s - 1}.proj.bias'] = w(dim)
    for j in range(depth):
      p = f'backbone.network.{2 * s}.{j}'
      if deploy:
        state.update({f'{p}.norm_reparam.weight': w(dim), f'{p}.norm_reparam.bias': w(dim)})
      else:
        state.update({f'{p}.norm1.weight': w(dim), f'{p}.norm1.bias': w(dim),
                      f'{p}.token_mixer.affine.weight': w(dim, 1, 1, 1),
                      f'{p}.token_mixer.affine.bias': w(dim)})
      state.update({f'{p}.norm2.weight': w(dim), f'{p}.norm2.bias': w(dim),
                    f'{p}.mlp.fc1.weight': w(4 * dim, dim, 1, 1), f'{p}.mlp.fc1.bias': w(4 * dim),
                    f'{p}.mlp.fc2.weight': w(dim, 4 * dim, 1, 1), f'{p}.mlp.fc2.bias': w(dim),
                    f'{p}.layer_scale_1': w(dim), f'{p}.layer_scale_2': w(dim)})
  n = 2 * len(depths) - 2
  state.update({f'backbone.norm{n}.weight': w(dims[-1]), f'backbone.norm{n}.bias': w(dims[-1]),
                'head.fc.weight': w(num_classes, dims[-1]), 'head.fc.bias': w(num_classes)})
  return state


def _mmpretrain_switch_to_deploy(state):
  """What mmpretrain's RIFormerBlock.switch_to_deploy does to a state dict."""
  out = {}
  for key, value in state.items():
    if '.token_mixer.' in key or '.norm1.' in key:
      continue
    out[key] = value
  for key in [k for k in state if k.endswith('.norm1.weight')]:
    block = key[:-len('.norm1.weight')]
    s = state[f'{block}.token_mixer.affine.weight'].reshape(-1) - 1
    out[f'{block}.norm_reparam.weight'] = state[f'{block}.norm1.weight'] * s
    out[f'{block}.norm_reparam.bias'] = (state[f'{block}.norm1.bias'] * s +
                                         state[f'{block}.token_mixer.affine.bias'])
  return out


def test_riformer_full_size_schema():
  state = _riformer_state((2, 2, 6, 2), (64, 128, 320, 512), 1000, deploy=False)
  result = convert.convert_state_dict({'meta': {}, 'state_dict': state}, 'riformer_s12')
  assert not result.plan.deploy and result.plan.source == 'mmpretrain'
  params = result.variables['params']
  np.testing.assert_array_equal(params['blocks_5']['mixer']['scale'],
                                state['backbone.network.4.1.token_mixer.affine.weight'].ravel())
  np.testing.assert_array_equal(params['blocks_5']['mlp']['fc1']['kernel'],
                                state['backbone.network.4.1.mlp.fc1.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(params['downsample_3']['kernel'],
                                state['backbone.network.5.proj.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['norm']['scale'], state['backbone.norm6.weight'])
  deploy_state = _riformer_state((2, 2, 6, 2), (64, 128, 320, 512), 1000, deploy=True)
  deployed = convert.convert_state_dict(deploy_state, 'riformer_s12')
  assert deployed.plan.deploy and 'mixer' not in deployed.variables['params']['blocks_0']


def test_riformer_training_and_deploy_forms_agree():
  """mmpretrain's own fold and ours (convert with deploy=True) give the same network."""
  small = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
  state = _riformer_state(small['depths'], small['dims'], 7, deploy=False, seed=3)
  trained = convert.convert_state_dict(state, 'riformer_s12', overrides=small)
  ours = convert.convert_state_dict(state, 'riformer_s12', overrides=small, deploy=True)
  theirs = convert.convert_state_dict(_mmpretrain_switch_to_deploy(state), 'riformer_s12',
                                      overrides=small)
  assert ours.plan.deploy and theirs.plan.deploy
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  expected = _apply(trained.model, trained.variables, images)
  for result in (ours, theirs):
    got = _apply(result.model, result.variables, images)
    assert relative_error(got, expected) < 1e-5


def test_poolformer_layouts_agree():
  """timm, mmpretrain and the original PoolFormer layouts fill the same tree."""
  state = _random_state(_schema('poolformer_s12'))
  timm_tree = convert.convert_state_dict(state, 'poolformer_s12').variables
  back = convert.to_state_dict(timm_tree, 'poolformer_s12', num_classes=1000)
  assert 'stages.2.blocks.5.layer_scale2.scale' in back
  # Re-key into mmpretrain's layout with the rules of that layout.
  from repvit_jax.convert.metaformer import metaformer_rules  # pylint: disable=import-outside-toplevel
  flat = _flat(timm_tree)
  rules = metaformer_rules(flat, (2, 2, 6, 2), 'mmpretrain', deploy=False)
  mm_state = convert.core.invert_rules(rules, flat)
  assert 'backbone.network.4.5.layer_scale_2' in mm_state and 'head.fc.weight' in mm_state
  mm_tree = convert.convert_state_dict(mm_state, 'poolformer_s12').variables
  original = {k.replace('backbone.', '').replace('norm6', 'norm').replace('head.fc.', 'head.'): v
              for k, v in mm_state.items()}
  original_tree = convert.convert_state_dict(original, 'poolformer_s12').variables
  for tree in (mm_tree, original_tree):
    for key, value in _flat(timm_tree).items():
      np.testing.assert_array_equal(_flat(tree)[key], value, err_msg=key)


def test_errors_list_every_problem():
  state = _random_state(_schema('vit_tiny_patch16_224'))
  del state['blocks.0.attn.qkv.weight']
  del state['blocks.11.mlp.fc2.bias']
  state['dist_token'] = np.zeros((1, 1, 192), np.float32)
  state['blocks.1.norm1.weight'] = np.zeros((7,), np.float32)
  with pytest.raises(ConversionError) as err:
    convert.convert_state_dict(state, 'vit_tiny')
  message = str(err.value)
  assert '2 missing, 1 unexpected, 1 mismatched' in message
  assert 'missing: blocks.0.attn.qkv.weight (576, 192) (for params/blocks_0/attn/qkv/kernel)' \
      in message
  assert 'missing: blocks.11.mlp.fc2.bias' in message
  assert 'unexpected: dist_token (1, 1, 192)' in message
  assert 'shape: blocks.1.norm1.weight: shape (7,) in the checkpoint, (192,) expected' in message
  # --ignore skips what the user does not need.
  state['blocks.1.norm1.weight'] = np.ones((192,), np.float32)
  state['blocks.0.attn.qkv.weight'] = np.ones((576, 192), np.float32)
  state['blocks.11.mlp.fc2.bias'] = np.ones((192,), np.float32)
  convert.convert_state_dict(state, 'vit_tiny', ignore=[r'^dist_token$'])


def test_errors_are_capped_with_a_count():
  state = _random_state(_schema('vit_tiny_patch16_224'))
  with pytest.raises(ConversionError) as err:
    convert.convert_state_dict(state, 'vit_small')          # every width is wrong
  message = str(err.value)
  assert message.count('\n  shape:') == 20
  assert 'and 131 more' in message


def test_wrong_family_and_unknown_model():
  with pytest.raises(ValueError, match='no PyTorch conversion for model'):
    convert.family.family_for('resnet50')
  with pytest.raises(ValueError, match='unknown model'):
    convert.convert_state_dict({'x': np.zeros(1)}, 'vit_gigantic')


# --- readers -------------------------------------------------------------------------------

def test_safetensors_round_trip_and_npz(tmp_path):
  state = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3),
           'b': np.arange(4, dtype=np.int64), 'c': np.ones((), np.float16)}
  path = readers.write_safetensors(str(tmp_path / 'x.safetensors'), state, {'format': 'pt'})
  got = convert.read_state_dict(path)
  assert sorted(got) == sorted(state)
  for key, value in state.items():
    assert got[key].dtype == value.dtype
    np.testing.assert_array_equal(got[key], value)
  np.savez(tmp_path / 'x.npz', **{f'module.{k}': v for k, v in state.items()})
  got = convert.read_state_dict(str(tmp_path / 'x.npz'))       # DataParallel prefix stripped
  assert sorted(got) == sorted(state)


def test_safetensors_bfloat16_and_bad_files(tmp_path):
  values = np.asarray([1.0, -2.5, 3.140625], np.float32)
  bf16 = (values.view(np.uint32) >> 16).astype('<u2').tobytes()
  header = json.dumps({'w': {'dtype': 'BF16', 'shape': [3], 'data_offsets': [0, 6]}}).encode()
  path = tmp_path / 'bf16.safetensors'
  path.write_bytes(struct.pack('<Q', len(header)) + header + bf16)
  np.testing.assert_array_equal(readers.read_safetensors(str(path))['w'], values)
  (tmp_path / 'short.safetensors').write_bytes(struct.pack('<Q', len(header)) + header + b'12')
  with pytest.raises(ValueError, match='outside the file'):
    convert.read_state_dict(str(tmp_path / 'short.safetensors'))
  (tmp_path / 'x.onnx').write_bytes(b'')
  with pytest.raises(ValueError, match='unknown checkpoint format'):
    convert.read_state_dict(str(tmp_path / 'x.onnx'))
  with pytest.raises(FileNotFoundError):
    convert.read_state_dict(str(tmp_path / 'missing.safetensors'))
  # numpy reads a non-zip .npz as a pickle and says only "pickled data": the message names
  # the file and what it is not.
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(bytes(range(256)) * 4)
  with pytest.raises(ValueError, match=f'^{garbage} is not a readable .npz archive '
                                        r'\(not a zip archive\)'):
    convert.read_state_dict(str(garbage))


def test_pth_needs_torch(tmp_path):
  path = tmp_path / 'model.pth'
  path.write_bytes(b'not really')
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    with pytest.raises(ImportError, match='needs torch'):
      convert.read_state_dict(str(path))
  else:
    pytest.skip('torch is installed; the .pth path is covered by check_timm_parity.py')


def test_wrappers_and_prefixes():
  inner = {'model.blocks.0.x': np.zeros(2), 'model.cls_token': np.zeros(3)}
  got = readers.normalize_state_dict({'state_dict': {'model': inner}, 'epoch': 3})
  assert sorted(got) == ['blocks.0.x', 'cls_token']
  mixed = {'model.a': np.zeros(1), 'b': np.zeros(1)}           # not every key: kept as is
  assert sorted(readers.normalize_state_dict(mixed)) == ['b', 'model.a']
  with pytest.raises(ValueError, match='no state dict found'):
    readers.normalize_state_dict({'epoch': 3, 'args': 'x'})


# --- command line and init_from --------------------------------------------------------------

def test_command_line_writes_a_model_dir_that_init_from_accepts(tmp_path, capsys):
  state = _random_state(_schema('deit_tiny_patch16_224'))
  src = readers.write_safetensors(str(tmp_path / 'deit.safetensors'), state)
  dst = str(tmp_path / 'deit_tiny')
  # timm's own name for the model is accepted.
  assert convert_main([src, dst, '--model', 'deit_tiny_patch16_224', '--num-classes',
                       '1000']) == 0
  out = capsys.readouterr().out
  assert 'deit_tiny_patch16_224: deit_tiny here' in out
  assert 'deit_tiny (training form, 1000 classes, 5,717,416 parameters)' in out
  assert io.is_model_dir(dst)
  # It carries timm's evaluation of the weights: bicubic, crop 0.9, ImageNet mean/std.
  assert 'input contract: eval_crop_fraction 0.9, resize bicubic' in out
  contract = io.read_spec(dst).input
  assert (contract.resize, contract.eval_crop_fraction) == ('bicubic', 0.9)
  assert contract.mean == (0.485, 0.456, 0.406)
  model, variables = io.load_model(dst)
  assert model.num_classes == 1000
  # init_from / teacher.init_from read it and fit it to a fresh model.
  _, source = pretrained.read(dst)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  fitted, unused = io.fit(target['params'], source['params'])
  assert not unused
  np.testing.assert_array_equal(fitted['blocks_2']['mlp']['fc2']['kernel'],
                                state['blocks.2.mlp.fc2.weight'].T)
  del variables


def test_timm_names_map_to_registered_ones():
  assert convert.registered_name('deit_tiny_patch16_224') == 'deit_tiny'
  assert convert.registered_name('vit_tiny_patch16_224.augreg_in21k_ft_in1k') == 'vit_tiny'
  assert convert.registered_name('levit_128s.fb_dist_in1k') == 'levit_128s'
  assert convert.registered_name('vit_small_patch16_384') == 'vit_small'
  assert convert.registered_name('mobilevit_xs') == 'mobilevit_xs'
  assert convert.registered_name('resnet50') == 'resnet50'      # unknown: the error lists them


def test_converted_weights_carry_the_contract_they_were_published_with():
  # timm's ViTs (augreg) normalise to [-1, 1]; DeiT, LeViT, PoolFormer use ImageNet's
  # statistics; all of timm's resize bicubically; MAE fine-tuning crops 224 of 256.
  assert convert.published_contract('vit_tiny_patch16_224.augreg_in21k_ft_in1k') == dict(
      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), eval_crop_fraction=0.9, resize='bicubic')
  assert convert.published_contract('levit_128s') == dict(resize='bicubic')    # crop 0.9 already
  assert convert.published_contract('poolformer_m36') == dict(eval_crop_fraction=0.95,
                                                              resize='bicubic')
  assert convert.published_contract('mae_vit_tiny') == dict(resize='bicubic')
  assert convert.published_contract('vit_tiny') == {}   # a timm ViT or a DeiT: not known
  assert convert.published_contract('riformer_s12') == {}


def test_command_line_reports_errors(tmp_path, capsys):
  state = _random_state(_schema('vit_tiny_patch16_224'))
  src = readers.write_safetensors(str(tmp_path / 'vit.safetensors'), state)
  assert convert_main([src, str(tmp_path / 'out'), '--model', 'levit_128s']) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: the checkpoint does not fit levit_128s')
  assert not os.path.exists(tmp_path / 'out')


def test_parse_overrides():
  assert parse_overrides(['num_heads=12', 'tdrl.num_branches=3', 'global_pool=avg',
                          'depths=(1, 2)']) == {
                              'num_heads': 12, 'tdrl': {'num_branches': 3},
                              'global_pool': 'avg', 'depths': (1, 2)}
