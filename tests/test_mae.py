"""MAE: masking, the norm-pix loss, reparameterization, D-MAE / G2SD and fine-tuning maps."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import repvit_jax as rj
from repvit_jax import io
from repvit_jax.layers import sincos_2d
from repvit_jax.models import mae
from repvit_jax.reparam import check
from repvit_jax.train import pictures
from repvit_jax.train import mae as mae_task
from repvit_jax.train import losses as mae_losses
from repvit_jax.train.classification import ClassificationTask
from conftest import load_config, nontrivial_variables

# 32x32 images, 4x4 patches: 64 tokens, 16 visible at mask ratio 0.75.
TINY_MAE = dict(patch_size=4, width=16, depth=2, num_heads=2, mlp_ratio=2.0, decoder_width=8,
                decoder_depth=1, decoder_num_heads=2)
TINY_TEACHER = dict(patch_size=4, width=24, depth=2, num_heads=3, mlp_ratio=2.0,
                    decoder_width=12, decoder_depth=2, decoder_num_heads=3)
RNGS = {'params': jax.random.key(0), 'mask': jax.random.key(1)}


def images(batch=4, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, 32, 32, 3))


def test_num_visible_rounds():
  assert mae.num_visible(196, 0.75) == 49
  assert mae.num_visible(64, 0.75) == 16
  assert mae.num_visible(10, 0.75) == 2        # round(2.5) -> 2 (banker's), never 0
  assert mae.num_visible(3, 0.9) == 1
  with pytest.raises(ValueError, match='mask_ratio'):
    mae.num_visible(64, 1.0)


def test_masking_counts_determinism_and_variety():
  model = rj.create_model('mae_vit_tiny', **TINY_MAE)
  x = images(8)
  variables = model.init(RNGS, x, train=False)
  run = lambda seed: model.apply(variables, x, train=False, rngs={'mask': jax.random.key(seed)})
  a, b, c = run(3), run(3), run(4)
  mask = np.asarray(a['mask'])
  assert mask.shape == (8, 64)
  np.testing.assert_array_equal(mask.sum(1), np.full(8, 48.0))       # exactly 16 visible each
  assert len({tuple(row) for row in mask}) == 8                        # differ across examples
  np.testing.assert_array_equal(mask, np.asarray(b['mask']))           # deterministic per rng
  np.testing.assert_array_equal(np.asarray(a['pred']), np.asarray(b['pred']))
  assert not np.array_equal(mask, np.asarray(c['mask']))
  # ids_keep are exactly the unmasked patches; the shuffle is a permutation.
  keep = np.asarray(a['ids_keep'])
  for row in range(8):
    assert set(keep[row]) == set(np.flatnonzero(mask[row] == 0))
    assert sorted(np.asarray(a['ids_shuffle'])[row]) == list(range(64))
  assert a['latent'].shape == (8, 17, 16) and a['pred'].shape == (8, 64, 48)


def test_given_shuffle_is_used_and_jit_keeps_static_shapes():
  model = rj.create_model('mae_vit_tiny', **TINY_MAE)
  x = images(2)
  variables = model.init(RNGS, x, train=False)
  shuffle = jnp.tile(jnp.arange(64, dtype=jnp.int32)[::-1], (2, 1))
  out = jax.jit(lambda v, s: model.apply(v, x, train=False, ids_shuffle=s))(variables, shuffle)
  np.testing.assert_array_equal(np.asarray(out['ids_keep'][0]), np.arange(63, 47, -1))
  assert float(out['mask'][:, 48:].sum()) == 0.0 and float(out['mask'][:, :48].min()) == 1.0


def _numpy_loss(x, pred, mask, p, ddof=1):
  """MAE's loss written out patch by patch; ddof=1: PyTorch's unbiased `var()` of the target."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  losses = []
  for i in range(b):
    total, count = 0.0, 0
    for n in range((h // p) * (w // p)):
      r, q = divmod(n, w // p)
      patch = x[i, r * p:(r + 1) * p, q * p:(q + 1) * p, :].reshape(-1)   # (row, col, channel)
      target = (patch - patch.mean()) / np.sqrt(patch.var(ddof=ddof) + 1e-6)
      if mask[i, n]:
        total += np.mean((np.asarray(pred[i, n], np.float64) - target) ** 2)
        count += 1
    losses.append(total / count)
  return np.asarray(losses)


def test_norm_pix_masked_loss_matches_numpy():
  x = images(3, seed=5)
  pred = jax.random.normal(jax.random.key(6), (3, 64, 48))
  mask = np.asarray(mae.mask_from_shuffle(mae.random_shuffle(jax.random.key(7), 3, 64), 16)[2])
  target = mae_losses.pixel_targets(x, 4, norm_pix=True)
  ours = np.asarray(mae_losses.masked_patch_loss(pred, target, jnp.asarray(mask)))
  np.testing.assert_allclose(ours, _numpy_loss(x, np.asarray(pred), mask, 4), rtol=1e-5)
  # The biased variance is measurably another loss at patch 4 (48 values per patch).
  biased = _numpy_loss(x, np.asarray(pred), mask, 4, ddof=0)
  assert np.all(np.abs(ours - biased) > 1e-3 * np.abs(biased)), (ours, biased)
  np.testing.assert_array_equal(np.asarray(mae.unpatchify(mae.patchify(x, 4), 4)), np.asarray(x))


def test_encoder_layout_and_parameter_count():
  shapes = jax.eval_shape(lambda: rj.create_model('mae_vit_tiny').init(
      RNGS, jnp.zeros((1, 224, 224, 3)), train=False))['params']
  encoder = {k: v for k, v in shapes.items() if not k.startswith('decoder_') and k != 'mask_token'}
  assert set(encoder) == {'patch_embed', 'cls_token', 'norm'} | {f'blocks_{i}' for i in range(12)}
  # timm vit_tiny (5,717,416) less its pos_embed (197 x 192) and 1000-class head.
  assert rj.count_params(encoder) == 5_717_416 - 197 * 192 - (192 * 1000 + 1000) == 5_486_592
  assert shapes['decoder_embed']['kernel'].shape == (192, 96)
  assert shapes['decoder_pred']['kernel'].shape == (96, 16 * 16 * 3)
  assert shapes['mask_token'].shape == (1, 1, 96)
  assert rj.create_model('mae_vit_tiny').num_heads == 12


def test_reparameterized_tdrl_mae_is_the_vanilla_mae():
  x = images(2)
  model = rj.create_model('mae_tdrl_vit_tiny', tdrl={'train_path': 'branches'}, **TINY_MAE)
  variables = nontrivial_variables(model, x)
  deploy = rj.reparameterize(variables)
  vanilla = rj.create_model('mae_vit_tiny', **TINY_MAE)
  assert rj.create_model('mae_tdrl_vit_tiny', deploy=True, tdrl={'train_path': 'branches'},
                         **TINY_MAE) == vanilla
  abstract = jax.eval_shape(lambda: vanilla.init(RNGS, x, train=False))
  assert jax.tree.map(lambda a: a.shape, deploy) == jax.tree.map(lambda a: a.shape, abstract)
  rngs = {'mask': jax.random.key(9)}
  ours = model.apply(variables, x, train=False, rngs=rngs)
  theirs = vanilla.apply(deploy, x, train=False, rngs=rngs)
  np.testing.assert_array_equal(np.asarray(ours['mask']), np.asarray(theirs['mask']))
  assert check.relative_error(theirs['pred'], ours['pred']) <= 1e-5
  assert check.relative_error(theirs['latent'], ours['latent']) <= 1e-5
  # The deploy encoder is the vanilla ViT encoder: same names and shapes as vit's blocks.
  vit = jax.eval_shape(lambda: rj.create_model('vit_tiny', patch_size=4, width=16, depth=2,
                                               num_heads=2, mlp_ratio=2.0).init(
      jax.random.key(0), x, train=False))['params']
  assert jax.tree.map(lambda a: a.shape, deploy['params']['blocks_1']) == jax.tree.map(
      lambda a: a.shape, vit['blocks_1'])


def mae_config(teacher=None, **teacher_fields):
  config = load_config('mae_lite_tiny.py:demo')
  for key, value in TINY_MAE.items():
    config.model[key] = value
  config.teacher.pairs = ((2, 2),)
  if teacher:
    config.teacher.model = 'mae_vit_base'
    config.teacher.init_from = '/unused/in/this/test'
    config.teacher.overrides = ml_collections.ConfigDict(dict(TINY_TEACHER))
    config.teacher.kind = teacher
  for key, value in teacher_fields.items():
    config.teacher[key] = value
  return config


def teacher_frozen(task, x, decode):
  variables = task.teacher.init(RNGS, x, train=False, decode=decode)
  return {'teacher': check.perturb_params(variables, 3)}


def test_dmae_with_alpha_zero_equals_plain_mae():
  # The model's initial params and random streams do not depend on the teacher, and a zero
  # weight adds exactly nothing (the full demo runs agree bit for bit; see the README).
  x = images(4)
  batch = {'image': x, 'label': jnp.zeros((4,), jnp.int32)}
  plain = mae_task.MAETask(mae_config(), 10)
  dmae = mae_task.MAETask(mae_config('attention', alpha=0.0, hidden_alpha=0.0), 10)
  rng = jax.random.key(11)
  plain_vars = plain.init_variables(rng, x)
  dmae_vars = dmae.init_variables(rng, x)
  assert set(dmae_vars['params']) == set(plain_vars['params']) | {'distill'}
  shared = {k: v for k, v in dmae_vars['params'].items() if k != 'distill'}
  assert jax.tree.all(jax.tree.map(np.array_equal, shared, plain_vars['params']))
  frozen = teacher_frozen(dmae, x, decode=False)
  step_rng = jax.random.key(12)
  plain_loss, (_, plain_m) = plain.loss(plain_vars['params'], {}, batch, step_rng, {})
  dmae_loss, (_, dmae_m) = dmae.loss(dmae_vars['params'], {}, batch, step_rng, frozen)
  assert float(dmae_m['train/distill_loss']) > 0
  assert float(dmae_loss) == float(plain_loss)
  assert float(dmae_m['train/mae_loss']) == float(plain_m['train/mae_loss'])


def distill_grad(task, params, batch, frozen):
  """(loss, aux), gradient w.r.t. the distillation maps only (cheap: no student backward)."""
  def loss(distill):
    return task.loss(dict(params, distill=distill), {}, batch, jax.random.key(1), frozen)
  return jax.value_and_grad(loss, has_aux=True)(params['distill'])


def test_dmae_attention_and_hidden_terms():
  x = images(4)
  batch = {'image': x, 'label': jnp.zeros((4,), jnp.int32)}
  task = mae_task.MAETask(mae_config('attention', alpha=0.5, hidden_alpha=2.0), 10)
  variables = task.init_variables(jax.random.key(0), x)
  distill = variables['params']['distill']
  assert distill['attn_0']['kernel'].shape == (2, 3)           # student heads -> teacher heads
  assert distill['hidden_0']['kernel'].shape == (16, 24)       # student width -> teacher width
  frozen = teacher_frozen(task, x, decode=False)
  assert not any(k.startswith('decoder_') for k in frozen['teacher']['params'])
  (loss, (_, m)), g = distill_grad(task, variables['params'], batch, frozen)
  expected = m['train/mae_loss'] + 0.5 * m['train/distill_loss'] + 2.0 * m['train/hidden_loss']
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  assert float(jnp.abs(g['attn_0']['kernel']).max()) > 0
  assert float(jnp.abs(g['hidden_0']['kernel']).max()) > 0


def test_teacher_sees_the_students_visible_tokens():
  # A teacher identical to the student, with an identity head map: zero attention loss.
  x = images(3)
  config = mae_config('attention')
  config.teacher.overrides = ml_collections.ConfigDict(dict(TINY_MAE))
  config.teacher.pairs = ((1, 1), (2, 2))
  task = mae_task.MAETask(config, 10)
  variables = task.init_variables(jax.random.key(0), x)
  params = dict(variables['params'])
  params['distill'] = {f'attn_{i}': {'kernel': jnp.eye(2)} for i in range(2)}
  frozen = {'teacher': {'params': {k: v for k, v in params.items()
                                   if k != 'distill' and not k.startswith('decoder_')
                                   and k != 'mask_token'}}}
  _, (_, m) = task.loss(params, {}, {'image': x}, jax.random.key(5), frozen)
  assert float(m['train/distill_loss']) <= 1e-10


def test_g2sd_decoder_feature_distillation():
  x = images(4)
  task = mae_task.MAETask(mae_config('g2sd', decoder_layer=1), 10)
  variables = task.init_variables(jax.random.key(0), x)
  mlp = variables['params']['distill']['decoder_mlp']
  assert mlp['fc1']['kernel'].shape == (8, 12) and mlp['fc2']['kernel'].shape == (12, 12)
  frozen = teacher_frozen(task, x, decode=True)
  (loss, (_, m)), g = distill_grad(task, variables['params'], {'image': x}, frozen)
  assert float(m['train/distill_loss']) > 0
  np.testing.assert_allclose(float(loss), float(m['train/mae_loss'] + m['train/distill_loss']),
                             rtol=1e-6)
  assert float(jnp.abs(g['decoder_mlp']['fc1']['kernel']).max()) > 0
  # smooth-L1 with beta 2: quadratic inside, linear outside.
  np.testing.assert_allclose(np.asarray(mae_losses.smooth_l1(jnp.asarray([1.0, -3.0]), 2.0)),
                             [0.25, 2.0])


def test_load_frozen_reads_and_fits_a_teacher(tmp_path):
  x = images(1)
  teacher = rj.create_model('mae_vit_base', **TINY_TEACHER)
  variables = teacher.init(RNGS, x, train=False)
  io.save_model(str(tmp_path), variables, rj.ModelSpec.registered(
      'mae_vit_base', num_classes=10, deploy=False, overrides=TINY_TEACHER,
      image_size=32))
  frozen = mae_task.MAETask(mae_config('attention', init_from=str(tmp_path)), 10).load_frozen()
  # Attention distillation needs the encoder only.
  assert set(frozen['teacher']['params']) == {
      k for k in variables['params'] if not k.startswith('decoder_') and k != 'mask_token'}
  np.testing.assert_array_equal(frozen['teacher']['params']['blocks_1']['attn']['qkv']['kernel'],
                                variables['params']['blocks_1']['attn']['qkv']['kernel'])
  g2sd = mae_task.MAETask(mae_config('g2sd', init_from=str(tmp_path)), 10).load_frozen()
  assert 'decoder_blocks_1' in g2sd['teacher']['params']
  # A teacher of another shape is named in a clear error.
  config = mae_config('attention', init_from=str(tmp_path))
  config.teacher.overrides.width = 48
  with pytest.raises(ValueError, match=r'teacher .* does not fit the model .*blocks_0'):
    mae_task.MAETask(config, 10).load_frozen()


def test_bad_teacher_configs_are_clear():
  with pytest.raises(ValueError, match='out of range'):
    mae_task.MAETask(mae_config('attention', pairs=((3, 1),)), 10)
  with pytest.raises(ValueError, match='teacher.init_from is not'):
    mae_task.MAETask(mae_config('attention', init_from=None), 10)
  with pytest.raises(ValueError, match='same patches'):
    config = mae_config('attention')
    config.teacher.overrides.patch_size = 8
    mae_task.MAETask(config, 10)


def classifier_task(**model):
  arch = dict(name='tdrl_vit_tiny', patch_size=4, width=16, depth=2, num_heads=2,
              mlp_ratio=2.0, global_pool='avg')
  arch.update(model)
  config = ml_collections.ConfigDict(dict(model=arch, data=dict(image_size=32),
                                          teacher=dict(model=None)))
  return ClassificationTask(config, 10)


def test_adapt_pretrained_maps_an_mae_tree_into_the_classifier():
  x = images(2)
  tdrl_mae = rj.create_model('mae_tdrl_vit_tiny', **TINY_MAE)
  source = jax.device_get(dict(tdrl_mae.init(RNGS, x, train=False)))
  source['params'] = dict(source['params'], distill={'attn_0': {'kernel': np.ones((2, 3))}})
  task = classifier_task()
  adapted = task.adapt_pretrained(source)
  assert not any(k.startswith('decoder_') or k in ('mask_token', 'distill')
                 for k in adapted['params'])
  np.testing.assert_array_equal(adapted['params']['pos_embed'],
                                sincos_2d(8, 16, cls_token=True)[None])
  target = jax.eval_shape(lambda: task.model.init(jax.random.key(0), x, train=False))
  params, unused = io.fit(target['params'], adapted['params'], skip=r'^(head|fc_norm)/')
  assert unused == ['norm/bias', 'norm/scale']      # token-pool norm: unused by an avg-pool head
  qkv = params['blocks_0']['attn']['qkv']
  assert set(qkv) == {'skip', 'branch_1', 'branch_2', 'rectify_bn'}       # TDRL kept
  np.testing.assert_array_equal(qkv['branch_2']['linear_1']['kernel'],
                                source['params']['blocks_0']['attn']['qkv']['branch_2'][
                                    'linear_1']['kernel'])
  stats, _ = io.fit(target['batch_stats'], adapted['batch_stats'])
  assert jax.tree.structure(stats) == jax.tree.structure(jax.device_get(target['batch_stats']))
  # A vanilla classifier takes the folded encoder.
  vanilla = ClassificationTask(ml_collections.ConfigDict(dict(
      model=dict(name='vit_tiny', patch_size=4, width=16, depth=2, num_heads=2, mlp_ratio=2.0,
                 global_pool='avg'), data=dict(image_size=32), teacher=dict(model=None))), 10)
  folded = vanilla.adapt_pretrained(source)
  assert set(folded['params']['blocks_0']['attn']['qkv']) == {'kernel', 'bias'}


def test_adapt_pretrained_mismatch_lists_what_does_not_fit():
  x = images(2)
  source = jax.device_get(dict(rj.create_model('mae_tdrl_vit_tiny', **TINY_MAE).init(
      RNGS, x, train=False)))
  task = classifier_task(width=24, num_heads=3)
  adapted = task.adapt_pretrained(source)
  target = jax.eval_shape(lambda: task.model.init(jax.random.key(0), x, train=False))
  with pytest.raises(ValueError, match=r'does not fit the model \(\d+ mismatches\): '
                                       r'blocks_0/attn/\S+: shape \(16,\) in the init_from run, \(24,\) in the model'):
    io.fit(target['params'], adapted['params'], skip=r'^(head|fc_norm)/',
                   what='init_from run')


def test_reconstruction_grid_and_png(tmp_path):
  panels = np.random.default_rng(0).uniform(size=(3, 2, 8, 8, 3)).astype(np.float32)
  grid = pictures.image_grid(panels, gap=2, min_tile=16)
  assert grid.shape == (2 * 16 + 3 * 2, 3 * 16 + 4 * 2, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[2:18, 2:18], np.round(panels[0, 0].repeat(2, 0).repeat(
      2, 1) * 255))
  labelled = pictures.labelled_grid(panels, title='t', column_titles=('a', 'b', 'c'),
                                    row_labels=('loss 0.5', 'loss 0.25'), min_tile=16,
                                    font_size=10)
  assert labelled.shape[0] == grid.shape[0] + 2 * 16 and labelled.shape[1] > grid.shape[1]
  np.testing.assert_array_equal(labelled[32:, :grid.shape[1]], grid)   # below the titles
  assert labelled[:32].min() < 128                                      # some text drawn
  with pytest.raises(ValueError, match='3 columns x 2 rows'):
    pictures.labelled_grid(panels, title='t', column_titles=('a', 'b'))
  path = tmp_path / 'r.png'
  pictures.write_png(str(path), labelled)
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_reconstruction_picture_shows_no_hidden_pixel_and_tells_trained_from_untrained(
    tmp_path):
  """The picture's prediction and reconstruction depend on visible pixels only; its loss
  (the masked-patch loss of the pictured images) separates a trained model from an untrained
  one, and so do its reconstructed pixels."""
  config = mae_config()
  for key, value in dict(width=32, decoder_width=16).items():   # enough to learn in 120 steps
    config.model[key] = value
  config.eval_batch_size = 360
  task = mae_task.MAETask(config, 10)
  digits = task._fixed_images(360)                  # the trainer's eval images, normalised
  shown, train = jnp.asarray(digits[:8]), digits[8:]
  untrained = jax.jit(lambda: task.model.init(RNGS, shown[:1], train=False))()
  panels, untrained_loss = task.reconstruction_panels(untrained, shown)

  # Leak-free: scramble every masked pixel; only the original and the target may change.
  hidden = panels['hidden']
  noise = jax.random.normal(jax.random.key(3), shown.shape)
  scrambled, _ = task.reconstruction_panels(untrained, shown * (1 - hidden) + noise * hidden)
  for name in ('masked', 'prediction', 'reconstruction'):
    np.testing.assert_array_equal(np.asarray(scrambled[name]), np.asarray(panels[name]))
  assert not np.allclose(scrambled['target'], panels['target'])

  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, images, rng):
    grads, _ = jax.grad(task.loss, has_aux=True)(params, {}, {'image': images}, rng, None)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = untrained['params'], tx.init(untrained['params'])
  order = np.random.default_rng(0)
  for i in range(120):
    batch = train[order.choice(len(train), 64, replace=False)]
    params, opt_state = step(params, opt_state, jnp.asarray(batch), jax.random.key(i))
  trained_panels, trained_loss = task.reconstruction_panels({'params': params}, shown)

  def drawn_error(p, prediction):  # the squared error between two drawn columns, masked
    return float(jnp.sum((p[prediction] - p['target']) ** 2 * p['hidden'])
                 / jnp.sum(p['hidden']) / p['target'].shape[-1])

  # The printed loss is the error between the target and prediction columns as drawn.
  for p, loss in ((panels, untrained_loss), (trained_panels, trained_loss)):
    assert drawn_error(p, 'prediction') == pytest.approx(float(loss.mean()), rel=1e-4)
  predict_zero = drawn_error(dict(panels, zero=0 * hidden), 'zero')
  assert float(trained_loss.mean()) < 0.6 * predict_zero < 0.6 * float(untrained_loss.mean())

  # The trainer's hook writes one labelled picture per evaluation.
  task.after_eval({'params': params}, str(tmp_path), 120)
  png = (tmp_path / 'reconstructions' / 'step_120.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n'
  width, height = int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big')
  assert height == 8 * 96 + 9 * 2 + 2 * 19 and width > 3 * 96 + 4 * 2

  # Untrained beside trained, the same images and masks: one column each, their losses.
  image, losses = task.compare({'untrained': untrained, 'trained': {'params': params}}, shown,
                               title='mae')
  assert image.shape[1] > 4 * 96 + 5 * 2 and image.shape[0] == height
  np.testing.assert_allclose(losses[0], untrained_loss, rtol=1e-5)
  np.testing.assert_allclose(losses[1], trained_loss, rtol=1e-5)
