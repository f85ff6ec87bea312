"""The papers' claims measured here: every arm x seed trained by `train.py`, then tabulated.

    python benchmarks/claims.py --claims tdrl --seeds 0,1,2
    python benchmarks/claims.py --claims tdrl --report     # table and figure from the record

Each run is `train.py --config <arm's config> --config.seed=<seed>` in its own workdir
(`--runs-dir`/<claim>/<arm>/seed<seed>): a run that was interrupted resumes there. An arm may
start from stages (pre-training, a teacher: `Arm.uses`), trained first for the same seed in
`--runs-dir`/stages/<stage>/seed<seed> and shared by every arm and claim naming them. A
finished arm is evaluated in its deploy form on the validation split (the run's eval split,
on which recipes were chosen) and once on the test split, and appended to the record,
`benchmarks/results/claims.json`:

    {"runs": [{"claim", "arm", "seed", "config", "flags", "recipe", "steps", ["uses"],
               "test_accuracy", "val_accuracy", "deploy_params", "model", "wall_s",
               ["stages_wall_s"], "device", "curve", "workdir" (relative to --runs-dir)},
              ...]}

A run already in the record as the same experiment (seed, config file, flags, recipe: a hash
of the config the file gives, steps, and the same of each stage it starts from) is not redone,
whichever claim recorded it, so the record can be committed run by run and completed on
another machine; editing a recipe makes its runs another experiment. Nothing here names a
device: on a GPU or TPU host the same command trains there.

The report: each arm's mean +- std (sample std over seeds), each arm's difference from the
claim's reference arm with its standard error (sqrt(s_a^2/n_a + s_b^2/n_b)) and a verdict
(reproduced in direction: difference > 2 SE; reversed: < -2 SE; else within noise); the
differences are each arm against the reference arm, or the pairs a claim names, as
Markdown (benchmarks/results/claims.md) and one figure per claim (each seed a dot, the mean
with its standard-error bar; the validation curves beside it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, 'benchmarks', 'results', 'claims.json')
FIGURES = os.path.join(ROOT, 'benchmarks', 'figures')


@dataclasses.dataclass(frozen=True)
class Arm:
  """One contender: a config file (with its variant) and the flags that make this arm.

  A claim's stages (pre-training, teachers) are `Arm`s too: trained per seed before the arms
  that use them, never evaluated or tabulated.
  """
  name: str
  config: str
  flags: tuple = ()
  # Multiplies the config's total_steps (equal training time for a cheaper step).
  steps_factor: float = 1.0
  # (config key, stage name): the run gets --config.<key>=<that stage's workdir, same seed>,
  # e.g. ('init_from', 'mae_pretraining') or ('teacher.init_from', 'teacher').
  uses: tuple = ()
  # A stage trained once, with this seed, for every seed of the arms using it (one teacher
  # for all students, as the papers have); None: one run per seed.
  seed: Optional[int] = None

  def run_seed(self, seed: int) -> int:
    return seed if self.seed is None else self.seed


@dataclasses.dataclass(frozen=True)
class Claim:
  """A paper's claim as arms on one recipe; `reference` is the arm the others are compared to."""
  name: str
  question: str
  arms: tuple
  reference: str
  # The paper's own figure beside ours, in words.
  paper: str = ''
  # (arm, compared with, in what sense): the differences tabulated. Default: every arm
  # against the reference arm.
  comparisons: tuple = ()
  # The runs the arms start from (`Arm.uses` names them). A stage may also be an arm (a
  # teacher tabulated beside its students): it is trained once, in its stage directory.
  stages: tuple = ()

  def stage(self, name: str) -> Arm:
    for stage in self.stages:
      if stage.name == name:
        return stage
    raise KeyError(f'claim {self.name!r} has no stage {name!r}; its stages: '
                   f'{[s.name for s in self.stages]}')

  def pairs(self) -> tuple:
    return self.comparisons or tuple((arm.name, self.reference, '')
                                     for arm in self.arms if arm.name != self.reference)


# Label-scarce fine-tuning: a fixed class-balanced 10% of the train split (5,501 images),
# 20 passes over it.
TEN_PERCENT = ('--config.data.train_fraction=0.1', '--config.total_steps=3438',
               '--config.eval_every=688')


def _fine_tuned(name: str, config: str, flags: tuple = (), stage: str = '') -> Arm:
  return Arm(name, config, flags, uses=(('init_from', stage),) if stage else ())


# Pre-training stages on Fashion-MNIST's train images (labels unused), shared by the claims;
# one D-MAE teacher for every seed.
MAE_VIT = Arm('mae_vit', 'configs/mae_lite_tiny.py:fashion')
MAE_TDRL_VIT = Arm('mae_tdrl_vit', 'configs/mae_tdrl_vit_tiny.py:fashion')
MAE_TEACHER = Arm('mae_teacher', 'configs/mae_lite_tiny.py:teacher_fashion', seed=0)
DMAE_VIT = Arm('dmae_vit', 'configs/mae_lite_tiny.py:dmae_fashion',
               uses=(('teacher.init_from', 'mae_teacher'),))
VIT, TDRL_VIT = 'configs/vit_tiny.py:fashion', 'configs/tdrl_vit_tiny.py:fashion'
# LeViT's teacher: the best classifier of the tdrl claim, its vit_1.5x_steps arm (the
# recorded run of seed 1), one teacher for every seed.
VIT_TEACHER = Arm('vit_teacher', VIT, steps_factor=1.5, seed=1)
# The probe of the levit claim: that ViT is less accurate than LeViT alone on this data, where
# the paper's teacher is the stronger model; so also a teacher that is stronger, LeViT's own
# recipe trained twice as long, one teacher for every seed.
LEVIT_TEACHER = Arm('levit_teacher', 'configs/levit_128s.py:fashion', steps_factor=2.0, seed=3)
# RIFormer's teacher, and a contender of its own.
POOLFORMER = Arm('poolformer', 'configs/poolformer_s12.py:fashion')
RIFORMER_MI = Arm('riformer_mi_init', 'configs/riformer_s12.py:fashion',
                  uses=(('feature_teacher.init_from', 'poolformer'),))
# The probe of the riformer claim: with all labels the token mixer is worth nothing at this
# size; with 10% of them (teacher trained on the same 10%) it may be.
POOLFORMER_10PCT = Arm('poolformer_10pct', 'configs/poolformer_s12.py:fashion', TEN_PERCENT)
RIFORMER_MI_10PCT = Arm('riformer_mi_init_10pct', 'configs/riformer_s12.py:fashion', TEN_PERCENT,
                        uses=(('feature_teacher.init_from', 'poolformer_10pct'),))
MAE_ARMS = (_fine_tuned('mae', VIT, stage='mae_vit'),
            _fine_tuned('mae_10pct', VIT, TEN_PERCENT, 'mae_vit'))


CLAIMS: Dict[str, Claim] = {
    'tdrl': Claim(
        name='tdrl',
        question='Does TDRL training make the deployed (plain) ViT more accurate?',
        arms=(Arm('vit', 'configs/vit_tiny.py:fashion'),
              Arm('tdrl', 'configs/tdrl_vit_tiny.py:fashion'),
              # A TDRL step costs up to 1.5x a vanilla one: the vanilla ViT with 1.5x the
              # steps has at least TDRL's training time.
              Arm('vit_1.5x_steps', 'configs/vit_tiny.py:fashion', steps_factor=1.5)),
        reference='vit',
        paper='ImageNet-1k, ViT-Tiny with MAE-Lite pre-training: 78.0 -> 78.7 top-1 (+0.7) '
              'with TDRL; ViT-Small +0.5',
        comparisons=(('tdrl', 'vit', 'the same steps'),
                     ('tdrl', 'vit_1.5x_steps', 'at least the same training time'),
                     ('vit_1.5x_steps', 'vit', 'what 1.5x the steps buys the ViT'))),
    'mae': Claim(
        name='mae',
        question='Does MAE pre-training on the same images, without their labels, make the '
                 'fine-tuned ViT more accurate, with all labels and with 10% of them?',
        stages=(MAE_VIT, MAE_TDRL_VIT),
        arms=(_fine_tuned('scratch', VIT), MAE_ARMS[0],
              _fine_tuned('scratch_10pct', VIT, TEN_PERCENT), MAE_ARMS[1],
              _fine_tuned('tdrl_scratch', TDRL_VIT),
              _fine_tuned('tdrl_mae', TDRL_VIT, stage='mae_tdrl_vit'),
              _fine_tuned('tdrl_scratch_10pct', TDRL_VIT, TEN_PERCENT),
              _fine_tuned('tdrl_mae_10pct', TDRL_VIT, TEN_PERCENT, 'mae_tdrl_vit')),
        reference='scratch',
        paper='ImageNet-1k, ViT-Tiny fine-tuned 300 epochs: from scratch 75.8, MAE-Lite '
              'pre-trained 78.0 (+2.2); TDRL on the same pre-training 78.7 (+0.7 over MAE-Lite)',
        comparisons=(('mae', 'scratch', 'all labels'),
                     ('mae_10pct', 'scratch_10pct', '10% of the labels'),
                     ('tdrl_mae', 'tdrl_scratch', 'TDRL ViT, all labels'),
                     ('tdrl_mae_10pct', 'tdrl_scratch_10pct', 'TDRL ViT, 10% of the labels'),
                     ('tdrl_mae', 'mae', 'TDRL on MAE pre-training (the TDRL paper)'),
                     ('tdrl_mae_10pct', 'mae_10pct',
                      'TDRL on MAE pre-training, 10% of the labels'))),
    'dmae': Claim(
        name='dmae',
        question="Does distilling a wider MAE's attention into the small MAE during "
                 'pre-training make the fine-tuned ViT more accurate?',
        stages=(MAE_VIT, MAE_TEACHER, DMAE_VIT),
        arms=(MAE_ARMS[0], _fine_tuned('dmae', VIT, stage='dmae_vit'),
              MAE_ARMS[1], _fine_tuned('dmae_10pct', VIT, TEN_PERCENT, 'dmae_vit')),
        reference='mae',
        paper='ImageNet-1k, ViT-Tiny fine-tuned: MAE-Lite 78.0, D-MAE-Lite (attention '
              'distilled from MAE-Base) 78.4 (+0.4)',
        comparisons=(('dmae', 'mae', 'all labels'),
                     ('dmae_10pct', 'mae_10pct', '10% of the labels'))),
    'riformer': Claim(
        name='riformer',
        question='Does module imitation of a PoolFormer recover what removing the token mixer '
                 'loses?',
        stages=(POOLFORMER, POOLFORMER_10PCT),
        arms=(POOLFORMER,
              Arm('riformer', 'configs/riformer_s12.py:plain_fashion'),
              Arm('riformer_kd', 'configs/riformer_s12.py:kd_fashion',
                  uses=(('teacher.init_from', 'poolformer'),)),
              dataclasses.replace(RIFORMER_MI, name='riformer_mi',
                                  flags=('--config.feature_teacher.init_student=False',)),
              RIFORMER_MI,
              POOLFORMER_10PCT,
              Arm('riformer_10pct', 'configs/riformer_s12.py:plain_fashion', TEN_PERCENT),
              RIFORMER_MI_10PCT),
        reference='riformer',
        paper='ImageNet-1k, S12: identity mixer 72.31 vs pooling (PoolFormer) 75.01; soft labels '
              'from a PoolFormer-M48 73.63, module imitation 74.83, and starting from the '
              "teacher's weights 75.36",
        comparisons=(('riformer', 'poolformer', 'removing the token mixer'),
                     ('riformer_kd', 'riformer', "the teacher's soft labels"),
                     ('riformer_mi', 'riformer_kd', 'module imitation beyond soft labels'),
                     ('riformer_mi_init', 'riformer_mi', "the teacher's weights as the start"),
                     ('riformer_mi_init', 'poolformer', 'all of it, against the teacher'),
                     ('riformer_10pct', 'poolformer_10pct',
                      'removing the token mixer, 10% of the labels (probe)'),
                     ('riformer_mi_init_10pct', 'riformer_10pct',
                      'module imitation from the teacher, 10% of the labels (probe)'))),
    'levit': Claim(
        name='levit',
        question='Does distillation make LeViT more accurate: from the ViT of the tdrl claim, '
                 'and (probe) from a teacher more accurate than LeViT alone?',
        stages=(VIT_TEACHER, LEVIT_TEACHER),
        arms=(Arm('levit', 'configs/levit_128s.py:fashion'),
              Arm('levit_hard', 'configs/levit_128s.py:hard_fashion',
                  uses=(('teacher.init_from', 'vit_teacher'),)),
              Arm('levit_soft', 'configs/levit_128s.py:soft_fashion',
                  uses=(('teacher.init_from', 'vit_teacher'),)),
              Arm('levit_hard_levit', 'configs/levit_128s.py:hard_levit_fashion',
                  uses=(('teacher.init_from', 'levit_teacher'),))),
        reference='levit',
        paper='ImageNet-1k, LeViT-128S (1000 epochs) 76.6 with hard distillation from a '
              'RegNetY-16GF teacher (its figure without distillation is not quoted here); the '
              'same distillation in DeiT: DeiT-Ti 72.2 -> 74.5 at 300 epochs',
        comparisons=(('levit_hard', 'levit', "the teacher's argmax"),
                     ('levit_soft', 'levit', "the teacher's soft labels"),
                     ('levit_hard_levit', 'levit',
                      'the argmax of LeViT trained 2x as long (probe)'))),
}


# ---------------------------------------------------------------------------------------------
# Statistics and the verdict.


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def difference(arm: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
  """(mean(arm) - mean(reference), its standard error) for independent seeds."""
  (ma, sa), (mb, sb) = mean_std(arm), mean_std(reference)
  return ma - mb, math.sqrt(sa ** 2 / len(arm) + sb ** 2 / len(reference))


def verdict(diff: float, se: float, n: int) -> str:
  if n < 2:
    return 'too few seeds'
  if diff > 2 * se:
    return 'reproduced in direction (> 2 SE)'
  if diff < -2 * se:
    return 'reversed (< -2 SE)'
  return 'within noise (within 2 SE)'


# ---------------------------------------------------------------------------------------------
# Running and recording.


def load_record(path: str = RECORD) -> dict:
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  return {'runs': []}


def save_record(record: dict, path: str = RECORD) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  record['runs'].sort(key=lambda r: (r['claim'], r['arm'], r['seed']))
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1)
    f.write('\n')
  os.replace(tmp, path)


@contextlib.contextmanager
def record_lock(path: str = RECORD):
  """Holds an exclusive lock on the record while a run is added to it: claims run side by
  side (one per core: `taskset -c 0 python benchmarks/claims.py ...`, another on core 1) read,
  extend and write one file."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path + '.lock', 'w', encoding='utf-8') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def add_to_record(run: dict, ident: dict, path: str = RECORD) -> None:
  """Adds `run` to the record, replacing a run of the same experiment and seed."""
  with record_lock(path):
    record = load_record(path)
    record['runs'] = [r for r in record['runs'] if not matches(r, ident, run['seed'])]
    record['runs'].append(run)
    save_record(record, path)


# Config fields that say how a run is carried out (cadence, placement, processes), not what
# it computes: left out of the recipe hash, so that a new operational field does not make
# every recorded run another experiment.
OPERATIONAL = ('log_every', 'eval_every', 'evals', 'checkpoint_every', 'keep_checkpoints',
               'mesh', 'distributed', 'eval_batch_size', 'resume_step', 'allow_config_change')
# Fields added to the configs after runs were recorded, at the value that computes what those
# runs computed: left out of the hash at that value, so the records stay the same experiment.
NEUTRAL = {('data', 'train_fraction'): 1.0, ('data', 'eval_resize'): 'bilinear'}


def recipe_hash(config: str) -> str:
  """A short hash of the config a file gives now, operational fields aside: an edited recipe
  is another experiment."""
  sys.path.insert(0, ROOT)
  from repvit_jax import configs  # pylint: disable=import-outside-toplevel
  recipe = json.loads(configs.load(config).to_json_best_effort(sort_keys=True))
  for field in OPERATIONAL:
    recipe.pop(field, None)
  for (group, field), value in NEUTRAL.items():
    if recipe.get(group, {}).get(field) == value:
      del recipe[group][field]
  return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def experiment(claim: Claim, arm: Arm, extra: Sequence[str]) -> dict:
  """What makes two runs the same experiment, the seed aside: config file, flags, recipe,
  steps, and the experiments of the stages it starts from. Claim and arm names are labels:
  a run recorded under one claim serves every claim with the same experiment."""
  out = {'config': arm.config, 'flags': list(tuple(arm.flags) + tuple(extra)),
         'recipe': recipe_hash(arm.config), 'steps': total_steps(arm, extra)}
  if arm.seed is not None:
    out['seed'] = arm.seed
  if arm.uses:
    out['uses'] = {key: {'stage': name, **experiment(claim, claim.stage(name), extra)}
                   for key, name in arm.uses}
  return out


def identity(claim: Claim, arm: Arm, extra: Sequence[str]) -> dict:
  """The record's labels for a run of `arm` and its experiment."""
  return {'claim': claim.name, 'arm': arm.name, **experiment(claim, arm, extra)}


def matches(run: dict, ident: dict, seed: Optional[int] = None) -> bool:
  keys = [k for k in ident if k not in ('claim', 'arm')]
  return (all(run.get(k) == ident[k] for k in keys) and ('uses' in run) == ('uses' in ident)
          and seed in (None, run['seed']))


def recorded(record: dict, ident: dict, seed: int) -> Optional[dict]:
  return next((run for run in record['runs'] if matches(run, ident, seed)), None)


def total_steps(arm: Arm, extra: Sequence[str]) -> int:
  """The arm's step count: the config's (or an extra flag's) total_steps x steps_factor."""
  sys.path.insert(0, ROOT)
  from repvit_jax import configs  # pylint: disable=import-outside-toplevel
  steps = configs.load(arm.config).total_steps
  for flag in tuple(arm.flags) + tuple(extra):
    if flag.startswith('--config.total_steps='):
      steps = int(flag.split('=', 1)[1])
  return int(round(steps * arm.steps_factor))


def stage_workdir(runs_dir: str, stage: Arm, seed: int) -> str:
  """Stages live beside the claims, by name: every claim naming a stage shares its runs."""
  return os.path.join(runs_dir, 'stages', stage.name, f'seed{stage.run_seed(seed)}')


def train_command(claim: Claim, arm: Arm, seed: int, workdir: str, extra: Sequence[str],
                  runs_dir: str) -> List[str]:
  flags = [f for f in tuple(arm.flags) + tuple(extra) if not f.startswith('--config.total_steps=')]
  flags += [f'--config.{key}={stage_workdir(runs_dir, claim.stage(name), seed)}'
            for key, name in arm.uses]
  return [sys.executable, os.path.join(ROOT, 'train.py'), f'--config={arm.config}',
          f'--workdir={workdir}', f'--config.seed={seed}',
          f'--config.total_steps={total_steps(arm, extra)}', *flags]


def validation_curve(workdir: str) -> List[List[float]]:
  """[[step, validation accuracy of the deploy form], ...] from the run's metrics.jsonl."""
  curve = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        row = json.loads(line)
        value = row.get('eval/deploy_accuracy', row.get('eval/accuracy'))
        if value is not None:
          curve[int(row['step'])] = float(value)
  return [[step, curve[step]] for step in sorted(curve)]


def cpu_cores() -> str:
  """'2 cores', or '1 of 2 cores' for a process confined to some of them (`taskset`)."""
  total = os.cpu_count()
  usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else total
  return f'{total} cores' if usable == total else f'{usable} of {total} cores'


def device_name() -> str:
  """'1 x cpu (2 cores, <CPU model>)', '1 x NVIDIA H100 80GB HBM3', ...: walls compare only
  between runs on the same kind of device."""
  import jax  # pylint: disable=import-outside-toplevel
  here = os.path.dirname(os.path.abspath(__file__))
  if here not in sys.path:
    sys.path.insert(0, here)
  import common  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  kind = devices[0].device_kind
  if devices[0].platform == 'cpu':
    kind = f'cpu ({cpu_cores()}, {common.cpu_model()})'
  return f'{len(devices)} x {kind}'


def finish(claim: Claim, arm: Arm, seed: int, workdir: str, extra: Sequence[str],
           wall_s: float) -> dict:
  """Evaluates a trained workdir's deploy form on validation and test: the run's record."""
  import jax  # pylint: disable=import-outside-toplevel
  from repvit_jax import io  # pylint: disable=import-outside-toplevel
  from repvit_jax.tools.evaluate import evaluate  # pylint: disable=import-outside-toplevel
  val = evaluate(workdir, batch_size=500)
  test = evaluate(workdir, changes={'eval_split': 'test'}, batch_size=500)
  if val['split'] == test['split']:
    raise SystemExit(f'error: {workdir} evaluates on {val["split"]!r}, the test split; a claim '
                     'needs a validation split (data.validation_size) to choose on')
  spec, variables = io.read(os.path.join(workdir, 'deploy'))
  params = sum(int(x.size) for x in jax.tree.leaves(variables['params']))
  form = 'deploy' if 'deploy' in test['forms'] else 'model'
  return {
      **identity(claim, arm, extra), 'seed': seed,
      'test_accuracy': test['forms'][form]['top1'], 'val_accuracy': val['forms'][form]['top1'],
      'deploy_params': params, 'model': spec.name, 'wall_s': round(wall_s, 1),
      'device': device_name(), 'curve': validation_curve(workdir),
  }


def _time_spent(clock: str, metrics: str) -> float:
  """Seconds the run's earlier invocations took; one that never came back (`running_since`
  still set) counts until metrics.jsonl was last written."""
  if not os.path.exists(clock):
    return 0.0
  with open(clock, encoding='utf-8') as f:
    recorded = json.load(f)
  spent = recorded['wall_s']
  if 'running_since' in recorded and os.path.exists(metrics):
    spent += max(0.0, os.path.getmtime(metrics) - recorded['running_since'])
  return spent


def train(claim: Claim, arm: Arm, seed: int, workdir: str, extra: Sequence[str],
          runs_dir: str) -> float:
  """Trains (or resumes) one run in `workdir`; returns the wall seconds of all its invocations.

  Wall time survives interruptions: each train.py invocation adds its own, and one killed with
  this script (the machine went away) counts until its last metrics line.
  """
  os.makedirs(workdir, exist_ok=True)
  clock = os.path.join(workdir, 'claims_wall_s.json')
  spent = _time_spent(clock, os.path.join(workdir, 'metrics.jsonl'))
  command = train_command(claim, arm, seed, workdir, extra, runs_dir)
  label = f'{claim.name}/{arm.name}/seed{seed}'
  print(f'[{label}] {" ".join(command[1:])}', flush=True)
  start = time.time()
  with open(clock, 'w', encoding='utf-8') as f:
    json.dump({'wall_s': spent, 'running_since': start}, f)
  result = subprocess.run(command, cwd=ROOT, check=False)
  spent += time.time() - start
  with open(clock, 'w', encoding='utf-8') as f:
    json.dump({'wall_s': spent}, f)
  if result.returncode != 0:
    raise SystemExit(f'error: {label} stopped (exit {result.returncode}); run the same command '
                     f'again to resume it in {workdir}')
  return spent


STAGE_DONE = 'claims_stage.json'


def stage_order(claim: Claim, arm: Arm) -> List[str]:
  """The stages `arm` depends on, directly or through other stages, each once, every stage
  after the stages it uses."""
  order = []

  def visit(run: Arm):
    for _, name in run.uses:
      if name not in order:
        visit(claim.stage(name))
        order.append(name)

  visit(arm)
  return order


def run_stages(claim: Claim, arm: Arm, seed: int, runs_dir: str, extra: Sequence[str],
               record_path: str) -> float:
  """Trains the stages `arm` depends on that are not done yet; returns the wall seconds of all
  of them, each counted once."""
  return sum(run_stage(claim, claim.stage(name), seed, runs_dir, extra, record_path)
             for name in stage_order(claim, arm))


def recorded_workdir(record_path: str, expected: dict, seed: int, runs_dir: str):
  """(workdir, record row) of a finished arm run of the experiment `expected`, or None."""
  for run in load_record(record_path)['runs']:
    if matches(run, expected, seed):
      workdir = os.path.join(runs_dir, run.get('workdir') or os.path.join(
          run['claim'], run['arm'], f'seed{seed}'))
      if os.path.exists(os.path.join(workdir, 'deploy', 'model.json')):
        return workdir, run
  return None


def run_stage(claim: Claim, stage: Arm, seed: int, runs_dir: str, extra: Sequence[str],
              record_path: str) -> float:
  """One stage for one seed, trained once; its marker file holds its experiment and wall time.
  A stage some claim already ran as an arm (a teacher that is another claim's contender) is
  that run, linked into place. A stage directory trained with another recipe is an error, not
  silently reused."""
  seed = stage.run_seed(seed)
  workdir = stage_workdir(runs_dir, stage, seed)
  marker = os.path.join(workdir, STAGE_DONE)
  expected = experiment(claim, stage, extra)
  expected.pop('seed', None)          # the run's seed is compared as the seed
  found = None if os.path.lexists(workdir) else recorded_workdir(record_path, expected, seed,
                                                                 runs_dir)
  if found:
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    os.symlink(found[0], workdir)
    print(f'[{claim.name}/{stage.name}/seed{seed}] the recorded run {found[1]["claim"]}/'
          f'{found[1]["arm"]}/seed{seed}: {found[0]}', flush=True)
    with open(marker, 'w', encoding='utf-8') as f:
      json.dump({'experiment': expected, 'wall_s': found[1]['wall_s']}, f, indent=1)
  if os.path.exists(marker):
    with open(marker, encoding='utf-8') as f:
      done = json.load(f)
    if done['experiment'] != expected:
      raise SystemExit(f'error: stage {stage.name!r} in {workdir} was trained with another '
                       'recipe or flags than the claim now gives; move that directory away '
                       '(or give --runs-dir another folder) and run again')
    return done['wall_s']
  spent = train(claim, stage, seed, workdir, extra, runs_dir)
  os.makedirs(workdir, exist_ok=True)
  with open(marker, 'w', encoding='utf-8') as f:
    json.dump({'experiment': expected, 'wall_s': spent}, f, indent=1)
  return spent


def run_one(claim: Claim, arm: Arm, seed: int, runs_dir: str, extra: Sequence[str],
            record_path: str) -> dict:
  """Trains (or resumes) one arm x seed after its stages, evaluates it, adds it to the record."""
  upstream = run_stages(claim, arm, seed, runs_dir, extra, record_path)
  if arm in claim.stages:        # a stage that is also a contender (a teacher): trained once
    workdir = stage_workdir(runs_dir, arm, seed)
    spent = run_stage(claim, arm, seed, runs_dir, extra, record_path)
  else:
    workdir = os.path.join(runs_dir, claim.name, arm.name, f'seed{seed}')
    spent = train(claim, arm, seed, workdir, extra, runs_dir)
  run = finish(claim, arm, seed, workdir, extra, spent)
  run['workdir'] = os.path.relpath(workdir, runs_dir)
  if arm.uses:
    run['stages_wall_s'] = round(upstream, 1)
  add_to_record(run, identity(claim, arm, extra), record_path)
  print(f'[{claim.name}/{arm.name}/seed{seed}] test {run["test_accuracy"]:.4f} val '
        f'{run["val_accuracy"]:.4f} in {spent / 60:.1f} min; recorded in {record_path}',
        flush=True)
  return run


# ---------------------------------------------------------------------------------------------
# The report.


def runs_of(record: dict, claim: Claim, extra: Sequence[str]) -> Dict[str, List[dict]]:
  """The recorded runs of each arm of `claim`, as the arm is defined now (recipe and flags)."""
  out = {}
  for arm in claim.arms:
    ident = identity(claim, arm, extra)
    out[arm.name] = sorted((r for r in record['runs'] if matches(r, ident)),
                           key=lambda r: r['seed'])
  return out


def markdown(claim: Claim, runs: Dict[str, List[dict]]) -> str:
  """The claim's table: each arm's accuracies and cost, then each difference and verdict."""
  lines = [f'**{claim.name}**: {claim.question}', '',
           '| arm | seeds | test acc. (deploy) | val. acc. | deploy params | steps | '
           'wall (min) | device |', '|---|---|---|---|---|---|---|---|']
  staged = False
  for arm in claim.arms:
    rs = runs[arm.name]
    if not rs:
      lines.append(f'| {arm.name} | 0 | (not run) | | | | | |')
      continue
    tm, ts = mean_std([r['test_accuracy'] for r in rs])
    vm, vs = mean_std([r['val_accuracy'] for r in rs])
    wall = f"{sum(r['wall_s'] for r in rs) / len(rs) / 60:.1f}"
    if any('stages_wall_s' in r for r in rs):
      staged = True
      wall += f" + {sum(r.get('stages_wall_s', 0) for r in rs) / len(rs) / 60:.1f}"
    devices = ', '.join(sorted({r['device'] for r in rs}))
    lines.append(f'| {arm.name} | {len(rs)} | {tm:.4f} +- {ts:.4f} | {vm:.4f} +- {vs:.4f} | '
                 f'{rs[0]["deploy_params"] / 1e6:.3f}M | {rs[0]["steps"]} | {wall} | '
                 f'{devices} |')
  if staged:
    lines += ['', 'wall: the arm\'s own run + the stages it starts from (pre-training, '
                  'teachers), per seed.']
  lines += ['', '| arms | difference (test) | SE | verdict | compared at |',
            '|---|---|---|---|---|']
  for name, against, sense in claim.pairs():
    if not runs[name] or not runs[against]:
      continue
    diff, se = difference([r['test_accuracy'] for r in runs[name]],
                          [r['test_accuracy'] for r in runs[against]])
    n = min(len(runs[name]), len(runs[against]))
    lines.append(f'| {name} - {against} | {diff * 100:+.2f} pt | {se * 100:.2f} pt | '
                 f'{verdict(diff, se, n)} |{f" {sense}" if sense else ""} |')
  if claim.paper:
    lines += ['', f'Paper: {claim.paper}.']
  return '\n'.join(lines)


def figure(claim: Claim, runs: Dict[str, List[dict]], path: str) -> Optional[str]:
  """Each seed's test accuracy as a dot, the mean with its SE bar; validation curves beside."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print('warning: matplotlib is not installed (pip install -e .[analysis]): no figure',
          file=sys.stderr)
    return None
  arms = [arm.name for arm in claim.arms if runs[arm.name]]
  if not arms:
    return None
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
  colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for i, name in enumerate(arms):
    values = [r['test_accuracy'] * 100 for r in runs[name]]
    mean, std = mean_std(values)
    se = std / math.sqrt(len(values))
    offsets = [(j - (len(values) - 1) / 2) * 0.06 for j in range(len(values))]
    left.scatter([i + o for o in offsets], values, color=colours[i % len(colours)], alpha=0.6,
                 zorder=3, label=None)
    left.errorbar([i + 0.25], [mean], yerr=[se], fmt='D', color=colours[i % len(colours)],
                  capsize=5, zorder=4)
    for run in runs[name]:
      curve = run.get('curve') or []
      if curve:
        right.plot([c[0] for c in curve], [c[1] * 100 for c in curve],
                   color=colours[i % len(colours)], alpha=0.7,
                   label=name if run is runs[name][0] else None)
  left.set_xticks(range(len(arms)), arms)
  left.set_xlim(-0.5, len(arms) - 0.3)
  left.set_ylabel('test accuracy, deploy form (%)')
  left.set_title(f'{claim.name}: each seed (dots), mean +- SE (diamond)')
  left.grid(axis='y', alpha=0.3)
  right.set_xlabel('step')
  right.set_ylabel('validation accuracy, deploy form (%)')
  right.set_title('learning curves (one line per seed)')
  values = [c[1] * 100 for name in arms for r in runs[name] for c in (r.get('curve') or [])]
  if values:
    top = max(values)
    right.set_ylim(max(min(values), top - 15), top + 1)
  right.grid(alpha=0.3)
  right.legend(loc='lower right')
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def report(claims: Sequence[Claim], extra: Sequence[str], record_path: str,
           figures_dir: str) -> str:
  record = load_record(record_path)
  parts = []
  for claim in claims:
    runs = runs_of(record, claim, extra)
    parts.append(markdown(claim, runs))
    written = figure(claim, runs, os.path.join(figures_dir, f'claims_{claim.name}.png'))
    if written:
      parts.append(f'\n![{claim.name}]({os.path.relpath(written, os.path.dirname(record_path))})')
  text = '\n\n'.join(parts) + '\n'
  with open(os.path.splitext(record_path)[0] + '.md', 'w', encoding='utf-8') as f:
    f.write(text)
  return text


def parse_list(text: str) -> List[str]:
  return [item.strip() for item in text.split(',') if item.strip()]


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument('--claims', default='tdrl', help=f'comma list of {sorted(CLAIMS)}')
  parser.add_argument('--seeds', default='0,1,2', help='comma list of ints')
  parser.add_argument('--arms', default='', help='comma list: only these arms (empty: all of them)')
  parser.add_argument('--runs-dir', default=os.path.join(ROOT, 'runs', 'claims'),
                      help='where the workdirs go')
  parser.add_argument('--record', default=RECORD, help='the JSON record of finished runs')
  parser.add_argument('--figures', default=FIGURES, help='where the figures go')
  parser.add_argument('--report', action='store_true', help='only tabulate the record')
  parser.add_argument('--dry-run', action='store_true', help='print the commands only')
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith('--config.')]
  if bad:
    parser.error(f'unknown arguments {bad}; flags for every run are given as --config.KEY=VALUE')
  unknown = [c for c in parse_list(args.claims) if c not in CLAIMS]
  if unknown:
    parser.error(f'unknown claim(s) {unknown}; known: {sorted(CLAIMS)}')
  claims = [CLAIMS[c] for c in parse_list(args.claims)]
  try:
    seeds = [int(s) for s in parse_list(args.seeds)]
  except ValueError:
    parser.error(f'--seeds takes a comma list of ints, got {args.seeds!r}')
  only = set(parse_list(args.arms))
  known_arms = {arm.name for claim in claims for arm in claim.arms}
  if only - known_arms:
    parser.error(f'unknown arm(s) {sorted(only - known_arms)}; known: {sorted(known_arms)}')
  if not args.report:
    record = load_record(args.record)
    listed = set()      # stages a dry run has printed
    for claim in claims:
      for seed in seeds:        # seed-major: every arm has a seed before any has two
        for arm in claim.arms:
          if only and arm.name not in only:
            continue
          if recorded(record, identity(claim, arm, extra), seed):
            print(f'[{claim.name}/{arm.name}/seed{seed}] recorded; not redone')
            continue
          if args.dry_run:
            as_stage = [arm.name] if arm in claim.stages else []
            for name in stage_order(claim, arm) + as_stage:
              stage = claim.stage(name)
              stage_dir = stage_workdir(args.runs_dir, stage, seed)
              if stage_dir not in listed and not os.path.exists(
                  os.path.join(stage_dir, STAGE_DONE)):
                listed.add(stage_dir)
                expected = experiment(claim, stage, extra)
                expected.pop('seed', None)
                found = recorded_workdir(args.record, expected, stage.run_seed(seed),
                                         args.runs_dir)
                if found:
                  print(f'[{claim.name}/{stage.name}/seed{seed}] the recorded run {found[0]}')
                  continue
                print(' '.join(train_command(claim, stage, stage.run_seed(seed), stage_workdir(
                    args.runs_dir, stage, seed), extra, args.runs_dir)[1:]))
            if not as_stage:
              workdir = os.path.join(args.runs_dir, claim.name, arm.name, f'seed{seed}')
              print(' '.join(train_command(claim, arm, seed, workdir, extra, args.runs_dir)[1:]))
            continue
          run_one(claim, arm, seed, args.runs_dir, extra, args.record)
          record = load_record(args.record)
  if not args.dry_run:
    print(report(claims, extra, args.record, args.figures))
  return 0


if __name__ == '__main__':
  sys.exit(main())
