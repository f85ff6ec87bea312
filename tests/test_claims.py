"""benchmarks/claims.py: the statistics, the verdict, the report, and one tiny claim end to end
(two arms on the embedded digits with a validation split), resumed from its record."""

import dataclasses
import json
import os

import pytest
from conftest import benchmark, xla_flags

claims = benchmark('claims')


def test_mean_std_difference_and_verdict():
  assert claims.mean_std([0.9]) == (0.9, 0.0)
  mean, std = claims.mean_std([0.90, 0.92, 0.94])
  assert mean == pytest.approx(0.92) and std == pytest.approx(0.02)
  diff, se = claims.difference([0.90, 0.92, 0.94], [0.88, 0.89, 0.90])
  # std 0.02 and 0.01 over 3 seeds each: SE = sqrt(0.02^2/3 + 0.01^2/3).
  assert diff == pytest.approx(0.03) and se == pytest.approx((0.0005 / 3) ** 0.5)
  assert claims.verdict(0.03, 0.0129, 3).startswith('reproduced')
  assert claims.verdict(-0.03, 0.0129, 3).startswith('reversed')
  assert claims.verdict(0.02, 0.0129, 3).startswith('within noise')
  assert claims.verdict(0.5, 0.0, 1) == 'too few seeds'


def run(claim, arm, seed, test, val, flags=()):
  return {'claim': claim, 'arm': arm, 'seed': seed, 'config': f'configs/{arm}.py', 'flags':
          list(flags), 'recipe': 'r', 'steps': 10, 'test_accuracy': test, 'val_accuracy': val,
          'deploy_params': 1000, 'model': arm, 'wall_s': 60.0, 'device': '1 x cpu',
          'curve': [[5, val - 0.1], [10, val]]}


def test_report_table_and_figure(tmp_path, monkeypatch):
  claim = claims.Claim('c', 'Does b beat a?', arms=(claims.Arm('a', 'configs/a.py'),
                                                   claims.Arm('b', 'configs/b.py')),
                       reference='a', paper='+1.0 on ImageNet')
  record = {'runs': [run('c', 'a', s, t, 0.8) for s, t in enumerate([0.80, 0.81, 0.82])] +
                    [run('c', 'b', s, t, 0.9) for s, t in enumerate([0.90, 0.91, 0.92])] +
                    # Another flag set is another experiment: left out of this table.
                    [run('c', 'b', 0, 0.10, 0.1, ['--config.x=1'])]}
  path = tmp_path / 'claims.json'
  path.write_text(json.dumps(record))
  monkeypatch.setattr(claims, 'recipe_hash', lambda config: 'r')
  monkeypatch.setattr(claims, 'total_steps', lambda arm, extra: 10)
  text = claims.report([claim], [], str(path), str(tmp_path / 'figures'))
  assert '| a | 3 | 0.8100 +- 0.0100 | 0.8000 +- 0.0000 | 0.001M | 10 | 1.0 | 1 x cpu |' in text
  assert '| b - a | +10.00 pt | 0.82 pt | reproduced in direction (> 2 SE) | |' in text
  assert 'Paper: +1.0 on ImageNet.' in text
  assert (tmp_path / 'claims.md').read_text() == text
  assert (tmp_path / 'figures' / 'claims_c.png').stat().st_size > 10_000


@pytest.mark.slow
def test_a_claim_end_to_end_then_not_redone(tmp_path, monkeypatch, capfd):
  tiny = ('--config.model.width=16', '--config.model.depth=1', '--config.model.num_heads=2',
          '--config.batch_size=16', '--config.eval_every=4', '--config.checkpoint_every=100',
          '--config.data.validation_size=200', '--config.optimizer.warmup_steps=2')
  claim = claims.Claim('tiny', 'Does TDRL beat the ViT on digits?',
                       arms=(claims.Arm('vit', 'configs/vit_tiny.py:demo', tiny),
                             claims.Arm('tdrl', 'configs/tdrl_vit_tiny.py:demo', tiny,
                                        steps_factor=0.5)),
                       reference='vit')
  monkeypatch.setitem(claims.CLAIMS, 'tiny', claim)
  monkeypatch.setenv('XLA_FLAGS', xla_flags(1))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  record = tmp_path / 'claims.json'
  args = ['--claims=tiny', '--seeds=0', f'--runs-dir={tmp_path}/runs', f'--record={record}',
          f'--figures={tmp_path}/figures', '--config.total_steps=8']
  assert claims.main(args) == 0
  runs = json.loads(record.read_text())['runs']
  assert [(r['arm'], r['seed'], r['steps']) for r in runs] == [('tdrl', 0, 4), ('vit', 0, 8)]
  for r in runs:
    assert 0.0 <= r['test_accuracy'] <= 1.0 and 0.0 <= r['val_accuracy'] <= 1.0
    # TDRL deploys as the same plain ViT: patch embed 3088, one block 3280, class token and
    # positions 288, fc_norm 32, head 170.
    assert r['model'] == {'vit': 'vit_tiny', 'tdrl': 'tdrl_vit_tiny'}[r['arm']]
    assert r['deploy_params'] == runs[0]['deploy_params'] == 6858
    assert r['curve'][-1][0] == r['steps'] and r['curve'][-1][1] == pytest.approx(
        r['val_accuracy'], abs=1e-6)
    assert r['flags'][-1] == '--config.total_steps=8' and r['wall_s'] > 0
  # The second call finds both in the record and trains nothing.
  capfd.readouterr()
  assert claims.main(args) == 0
  out = capfd.readouterr().out
  assert out.count('recorded; not redone') == 2 and 'train.py' not in out
  assert '| tdrl |' in out and (tmp_path / 'figures' / 'claims_tiny.png').exists()
  # An edited recipe is another experiment: nothing of it is recorded yet.
  monkeypatch.setattr(claims, 'recipe_hash', lambda config: 'edited')
  assert claims.main([*args, '--dry-run']) == 0
  assert capfd.readouterr().out.count('train.py') == 2


@pytest.mark.slow
def test_an_arm_starts_from_a_stage_trained_once_per_seed(tmp_path, monkeypatch, capfd):
  """MAE pre-training as a stage, fine-tuned by one arm; the scratch arm is the same
  experiment as another claim's recorded run, so it is not trained again."""
  encoder = ('--config.model.patch_size=8', '--config.model.width=16', '--config.model.depth=1',
             '--config.model.num_heads=2', '--config.batch_size=16',
             '--config.data.validation_size=200', '--config.optimizer.warmup_steps=2',
             '--config.checkpoint_every=100')
  pre = claims.Arm('pre', 'configs/mae_lite_tiny.py:demo', encoder + (
      '--config.model.decoder_width=16', '--config.model.decoder_depth=1',
      '--config.model.decoder_num_heads=2', '--config.eval_every=0'))
  scratch = claims.Arm('scratch', 'configs/vit_tiny.py:demo', encoder + ('--config.eval_every=4',))
  tuned = dataclasses.replace(scratch, name='mae', uses=(('init_from', 'pre'),))
  claim = claims.Claim('staged', 'Does pre-training help?', arms=(scratch, tuned),
                       reference='scratch', stages=(pre,))
  monkeypatch.setitem(claims.CLAIMS, 'staged', claim)
  monkeypatch.setenv('XLA_FLAGS', xla_flags(1))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  record = tmp_path / 'claims.json'
  common = ['--seeds=0', f'--runs-dir={tmp_path}/runs', f'--record={record}',
            f'--figures={tmp_path}/figures', '--config.total_steps=4']
  # The scratch arm's experiment is already recorded, under another claim and arm name.
  monkeypatch.setitem(claims.CLAIMS, 'other', claims.Claim('other', '?', (
      dataclasses.replace(scratch, name='vit'),), 'vit'))
  assert claims.main(['--claims=other', *common]) == 0
  capfd.readouterr()
  assert claims.main(['--claims=staged', *common]) == 0
  out = capfd.readouterr().out
  assert '[staged/scratch/seed0] recorded; not redone' in out
  commands = [line for line in out.splitlines() if 'train.py' in line]
  assert len(commands) == 2 and '[staged/pre/seed0]' in commands[0]
  stage_dir = tmp_path / 'runs' / 'stages' / 'pre' / 'seed0'
  assert f'--config.init_from={stage_dir}' in commands[1]
  assert 'init_from:' in out        # train.py's line: the arm started from the stage's weights
  runs = json.loads(record.read_text())['runs']
  mae = next(r for r in runs if r['arm'] == 'mae')
  assert mae['uses']['init_from']['stage'] == 'pre' and mae['stages_wall_s'] > 0
  assert mae['uses']['init_from']['config'] == 'configs/mae_lite_tiny.py:demo'
  assert '| mae | 1 |' in out and ' + ' in out.split('| mae | 1 |')[1].split('\n')[0]
  # The stage is done: a second arm run (here: the same one again) does not retrain it; a
  # stage directory trained with another recipe is refused.
  monkeypatch.setattr(claims, 'recipe_hash', lambda config: 'edited')
  with pytest.raises(SystemExit, match="stage 'pre' in .* was trained with another recipe"):
    claims.main(['--claims=staged', '--arms=mae', *common])


def test_a_teacher_that_is_also_an_arm_is_trained_once(tmp_path, monkeypatch):
  trained = []

  def train(claim, arm, seed, workdir, extra, runs_dir):
    del claim, seed, extra, runs_dir
    trained.append((arm.name, workdir))
    return 5.0

  monkeypatch.setattr(claims, 'train', train)
  monkeypatch.setattr(claims, 'finish', lambda claim, arm, seed, workdir, extra, wall: {
      **claims.identity(claim, arm, extra), 'seed': seed, 'workdir': workdir, 'wall_s': wall,
      'test_accuracy': 0.5, 'val_accuracy': 0.5})
  monkeypatch.setattr(claims, 'recipe_hash', lambda config: 'r')
  monkeypatch.setattr(claims, 'total_steps', lambda arm, extra: 10)
  teacher = claims.Arm('teacher', 'configs/t.py')
  student = claims.Arm('student', 'configs/s.py', uses=(('teacher.init_from', 'teacher'),))
  claim = claims.Claim('c', '?', arms=(teacher, student), reference='teacher', stages=(teacher,))
  record = str(tmp_path / 'claims.json')
  runs = [claims.run_one(claim, arm, 0, str(tmp_path), [], record) for arm in claim.arms]
  stage_dir = str(tmp_path / 'stages' / 'teacher' / 'seed0')
  assert trained == [('teacher', stage_dir), ('student', str(tmp_path / 'c' / 'student' / 'seed0'))]
  assert runs[0]['workdir'] == os.path.join('stages', 'teacher', 'seed0')
  assert 'stages_wall_s' not in runs[0] and runs[1]['stages_wall_s'] == 5.0
  assert runs[1]['uses']['teacher.init_from']['stage'] == 'teacher'
  assert len(json.loads(open(record).read())['runs']) == 2
  # Another claim's teacher of one fixed seed for every student: that recorded run, linked
  # (its deploy model marks it finished), not trained again.
  os.makedirs(os.path.join(stage_dir, 'deploy'))
  open(os.path.join(stage_dir, 'deploy', 'model.json'), 'w').close()
  fixed = dataclasses.replace(teacher, name='one_teacher', seed=0)
  pupil = dataclasses.replace(student, name='pupil', uses=(('teacher.init_from', 'one_teacher'),))
  other = claims.Claim('d', '?', arms=(pupil,), reference='pupil', stages=(fixed,))
  trained.clear()
  run = claims.run_one(other, pupil, 2, str(tmp_path), [], record)
  linked = tmp_path / 'stages' / 'one_teacher' / 'seed0'
  assert os.path.realpath(linked) == os.path.realpath(stage_dir)
  assert trained == [('pupil', str(tmp_path / 'd' / 'pupil' / 'seed2'))]
  assert run['uses']['teacher.init_from']['seed'] == 0 and run['stages_wall_s'] == 5.0


def test_the_tdrl_claims_arms_share_one_recipe_under_1m_deployed_parameters():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from conftest import load_config  # pylint: disable=import-outside-toplevel
  from repvit_jax.models.spec import ModelSpec  # pylint: disable=import-outside-toplevel
  tdrl, vit = load_config('tdrl_vit_tiny.py:fashion'), load_config('vit_tiny.py:fashion')
  assert tdrl.data.validation_size > 0 and tdrl.data.name == 'fashion_mnist'
  # The arms differ only in the model's name and its TDRL block.
  tdrl_dict, vit_dict = tdrl.to_dict(), vit.to_dict()
  assert tdrl_dict['model'].pop('tdrl') and tdrl_dict['model'].pop('name') == 'tdrl_vit_tiny'
  assert vit_dict['model'].pop('name') == 'vit_tiny' and tdrl_dict == vit_dict
  size = tdrl.data.image_size
  spec = ModelSpec.from_config(tdrl, num_classes=10).deploy_form()
  shapes = jax.eval_shape(lambda: spec.build().init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  params = sum(x.size for x in jax.tree.leaves(shapes['params']))
  assert 250_000 < params <= 1_000_000


def test_the_levit_claims_arms_differ_only_in_their_teacher():
  from conftest import load_config  # pylint: disable=import-outside-toplevel
  alone = load_config('levit_128s.py:fashion').to_dict()
  arms = {arm.name: arm for arm in claims.CLAIMS['levit'].arms}
  teachers = {}
  for name in ('levit_hard', 'levit_soft', 'levit_hard_levit'):
    config = load_config(arms[name].config.split('/', 1)[1]).to_dict()
    teachers[name] = config.pop('teacher')
    assert config == {k: v for k, v in alone.items() if k != 'teacher'}, name
  assert teachers['levit_hard']['model'] == 'vit_tiny' and teachers['levit_hard']['kind'] == 'hard'
  assert teachers['levit_soft']['kind'] == 'soft'
  # The probe's teacher is LeViT itself (no overrides), trained twice as long, one for all seeds.
  assert teachers['levit_hard_levit'] == {**teachers['levit_hard'], 'model': 'levit_128s',
                                          'overrides': {}}
  stage = claims.CLAIMS['levit'].stage('levit_teacher')
  assert stage.config == 'configs/levit_128s.py:fashion' and stage.steps_factor == 2.0
  assert claims.total_steps(stage, []) == 2 * claims.total_steps(arms['levit'], [])
  assert stage.run_seed(0) == stage.run_seed(2) == 3


def test_a_run_waits_for_the_record_another_claim_is_writing(tmp_path):
  import threading  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / 'claims.json')
  claims.add_to_record(run('c', 'a', 0, 0.9, 0.9), {'claim': 'c', 'arm': 'a', 'x': 0}, path)
  second = run('c', 'b', 0, 0.8, 0.8)
  with claims.record_lock(path):     # another claims.py, between reading and writing the file
    writer = threading.Thread(target=claims.add_to_record,
                              args=(second, {'claim': 'c', 'arm': 'b', 'x': 1}, path))
    writer.start()
    writer.join(timeout=0.5)
    assert writer.is_alive() and len(claims.load_record(path)['runs']) == 1
  writer.join(timeout=10)
  assert [r['arm'] for r in claims.load_record(path)['runs']] == ['a', 'b']


def test_the_device_names_the_cores_a_confined_process_has(monkeypatch):
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1})
  assert claims.cpu_cores() == '2 cores'
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {1})
  assert claims.cpu_cores() == '1 of 2 cores'


def test_an_invocation_that_never_came_back_counts_until_its_last_metrics_line(tmp_path):
  clock, metrics = tmp_path / 'claims_wall_s.json', tmp_path / 'metrics.jsonl'
  assert claims._time_spent(str(clock), str(metrics)) == 0.0  # pylint: disable=protected-access
  clock.write_text(json.dumps({'wall_s': 100.0, 'running_since': 1000.0}))
  metrics.write_text('{}\n')
  os.utime(metrics, (1250.0, 1250.0))
  assert claims._time_spent(str(clock), str(metrics)) == 350.0  # pylint: disable=protected-access
  clock.write_text(json.dumps({'wall_s': 100.0}))
  assert claims._time_spent(str(clock), str(metrics)) == 100.0  # pylint: disable=protected-access
