"""Runs the README's digits commands as written and regenerates the README's figures from them.

    python benchmarks/readme_figures.py                 # every run (the record keeps its wall time)
    python benchmarks/readme_figures.py --render        # only rewrite README.md from the record
    python benchmarks/readme_figures.py --smoke         # a walk: 4 steps each, then the tools

Each command of `RUNS` is the README's text (tests/test_readme.py checks it is there, word
for word), run with this Python in a scratch directory that holds links to `train.py` and
`configs/`, so `runs/...` starts empty and the repository's own `runs/` is left alone. Each
run's wall time, its console head and tail, and the figures read from its `metrics.jsonl`
go to the record, `benchmarks/results/readme_figures.json`, with the machine, its load and
the date; the README's blocks between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->`
are then rendered from the record (`render`: results and wall times, naming the machine; the
load and the date stay in the record), and tests/test_readme.py fails when they differ from
it, so the README cannot drift from what was measured.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from repvit_jax.tools import cli  # pylint: disable=wrong-import-position

RECORD = os.path.join(ROOT, 'benchmarks', 'results', 'readme_figures.json')
README = os.path.join(ROOT, 'README.md')

# (name, the README's command, what it is). In order: later commands start from earlier runs.
RUNS = (
    ('demo', 'train.py --config configs/tdrl_vit_tiny.py:demo --workdir runs/demo',
     'command 1: TDRL ViT on the digits, folded and exported'),
    ('mae_demo', 'train.py --config configs/mae_tdrl_vit_tiny.py:demo --workdir runs/mae_tdrl_demo',
     'MAE, TDRL encoder (`:demo`)'),
    ('mae_teacher', 'train.py --config configs/mae_lite_tiny.py:teacher_demo '
     '--workdir runs/mae_teacher', 'MAE teacher (`:teacher_demo`, 128 wide)'),
    ('dmae_demo', 'train.py --config configs/mae_tdrl_vit_tiny.py:dmae_demo --workdir '
     'runs/dmae_tdrl --config.teacher.init_from=runs/mae_teacher',
     'D-MAE, TDRL student (`:dmae_demo`)'),
    ('dmae_alpha0', 'train.py --config configs/mae_tdrl_vit_tiny.py:dmae_demo --workdir '
     'runs/dmae_alpha0 --config.teacher.init_from=runs/mae_teacher --config.teacher.alpha=0',
     'D-MAE with `--config.teacher.alpha=0`'),
    ('mae_ft', 'train.py --config configs/tdrl_vit_tiny.py:demo --workdir runs/mae_tdrl_demo_ft '
     '--config.init_from=runs/mae_tdrl_demo --config.model.patch_size=4 '
     '--config.model.num_heads=6 --config.total_steps=300 --config.eval_every=150',
     'fine-tune from the MAE demo (300 steps)'),
    ('scratch_ft', 'train.py --config configs/tdrl_vit_tiny.py:demo --workdir runs/scratch_ft '
     '--config.model.patch_size=4 --config.model.num_heads=6 --config.total_steps=300 '
     '--config.eval_every=150', 'the same from scratch (no `init_from`)'),
)
# The README's tool commands on command 1's run: walked with --smoke (they have no figures).
# `predict` is left out: it needs image files of the user's.
TOOLS = (
    ('evaluate', 'repvit-evaluate runs/demo'),
    ('export', 'repvit-export runs/demo exported --format tflite,tflite-int8,savedmodel --evaluate'),
    ('attention', 'repvit-analyze attention runs/demo analysis'),
    ('cka', 'repvit-analyze cka runs/demo runs/demo/deploy analysis --num-images 64'),
)
# A walk, not a measurement: every command, a few steps each.
SMOKE_FLAGS = ('--config.total_steps=4', '--config.eval_every=4', '--config.log_every=2',
               '--config.checkpoint_every=4')


def machine() -> Dict[str, object]:
  """The machine and its load when the runs started (the wall times depend on both)."""
  model = ''
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    model = names[0] if names else ''
  return {'cpu': model or platform.processor(), 'cores': os.cpu_count(),
          'load_1min': round(os.getloadavg()[0], 2), 'python': platform.python_version(),
          'date': time.strftime('%Y-%m-%d')}


def run_all(smoke: bool) -> Dict[str, dict]:
  """Runs every command of RUNS in order in a scratch directory; returns name -> result."""
  scratch = tempfile.mkdtemp(prefix='readme_figures_')
  for name in ('train.py', 'configs'):
    os.symlink(os.path.join(ROOT, name), os.path.join(scratch, name))
  results = {}
  try:
    for name, command, _ in RUNS:
      argv = [sys.executable, *shlex.split(command), *(SMOKE_FLAGS if smoke else ())]
      print(f'[{name}] {command}', flush=True)
      start = time.time()
      done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, check=False)
      wall = time.time() - start
      lines = (done.stdout + done.stderr).splitlines()
      if done.returncode != 0:
        raise SystemExit(f'error: {name} exited {done.returncode}:\n' + '\n'.join(lines[-20:]))
      workdir = os.path.join(scratch, shlex.split(command)[shlex.split(command).index(
          '--workdir') + 1])
      results[name] = {'command': command, 'wall_s': round(wall, 1), 'head': lines[:10],
                       'tail': lines[-5:], **figures(name, read_metrics(workdir))}
      print(f'[{name}] {wall:.0f} s: {json.dumps(results[name], default=str)[:300]}',
            flush=True)
    for name, command in TOOLS if smoke else ():
      print(f'[{name}] {command}', flush=True)
      start = time.time()
      # The console scripts pip installed beside this interpreter.
      program, *args = shlex.split(command)
      done = subprocess.run([os.path.join(os.path.dirname(sys.executable), program), *args],
                            cwd=scratch,
                            capture_output=True, text=True, check=False)
      lines = (done.stdout + done.stderr).splitlines()
      if done.returncode != 0:
        raise SystemExit(f'error: {name} exited {done.returncode}:\n' + '\n'.join(lines[-20:]))
      print(f'[{name}] {time.time() - start:.0f} s: {lines[-1] if lines else ""}', flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return results


def read_metrics(workdir: str) -> List[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _tenths(rows: List[dict], key: str) -> List[float]:
  """The mean of `key` over the first and the last tenth of the logged steps."""
  values = [r[key] for r in rows if key in r]
  tenth = max(1, len(values) // 10)
  return [round(sum(values[:tenth]) / tenth, 4), round(sum(values[-tenth:]) / tenth, 4)]


def figures(name: str, rows: List[dict]) -> dict:
  """What the README says of a run, from its metrics rows."""
  evals = [r for r in rows if any(k.startswith('eval/') for k in r)]
  out: dict = {'steps': max(r['step'] for r in rows)}
  if name in ('demo', 'mae_ft', 'scratch_ft'):
    out['evals'] = [{'step': r['step'], 'accuracy': round(r['eval/accuracy'], 4),
                     'deploy_accuracy': round(r['eval/deploy_accuracy'], 4)}
                    for r in evals if 'eval/deploy_accuracy' in r]
  if name.startswith(('mae_demo', 'dmae')):
    out['mae_loss'] = _tenths(rows, 'train/mae_loss')
    out['eval_loss'] = round(evals[-1]['eval/loss'], 4)
    out['train_mae_loss'] = [r['train/mae_loss'] for r in rows if 'train/mae_loss' in r]
  if name.startswith('dmae'):
    out['distill_loss'] = _tenths(rows, 'train/distill_loss')
  return out


def _wall(seconds: float) -> str:
  return f'{int(seconds // 60)}m{int(round(seconds % 60)):02d}s'


def _machine(record: dict) -> str:
  """The machine the runs ran on, as the README names it: CPU, cores and accelerator."""
  where = record['machine']
  name = f'{where["cores"]}-core {where["cpu"]} CPU'
  devices = next((l for l in record['runs']['demo']['head'] if l.startswith('devices:')), '')
  kind = re.match(r'devices: (\d+ x \w+)', devices)
  if kind is None or kind.group(1).endswith(' x cpu'):
    return name + ', no GPU'
  return f'{name}, {kind.group(1)}'


def render(record: dict) -> Dict[str, str]:
  """The README's figure blocks (name -> Markdown) from the record.

  The README says what a user can expect: results and wall times on the machine it names.
  The load, the date and the console output stay in the record (see benchmarks/README.md).
  """
  runs, machine_name = record['runs'], _machine(record)
  demo = runs['demo']
  last = demo['evals'][-1]
  held_out = re.search(r'(\d+) eval images', ' '.join(demo['head']))
  held_out = f' on the {held_out.group(1)} held-out digits' if held_out else ''
  blocks = {'demo': '\n'.join((
      f'| command | what it does | ends with | time on a {machine_name} |',
      '| --- | --- | --- | --- |',
      f'| 1 (the demo) | trains {demo["steps"]} steps, evaluates both forms{held_out}, '
      f'exports `runs/demo/deploy` | accuracy {last["accuracy"]:.4f} for the training form and '
      f'{last["deploy_accuracy"]:.4f} for the deploy form at step {last["step"]} | '
      f'{_wall(demo["wall_s"])} |'))}
  rows = [f'| run (600 steps unless said) | ends with | time on a {machine_name} |',
          '| --- | --- | --- |']
  for name, _, label in RUNS[1:]:
    r = runs[name]
    if name.startswith(('mae_demo', 'dmae')):
      result = (f'masked-patch loss {r["mae_loss"][0]:.3f} (first tenth) -> '
                f'{r["mae_loss"][1]:.3f} (last tenth), eval {r["eval_loss"]:.3f}')
      if name.startswith('dmae'):
        result = (f'distill loss {r["distill_loss"][0]:.3f} -> {r["distill_loss"][1]:.3f}; '
                  + result)
      if name == 'dmae_alpha0':
        same = r['train_mae_loss'] == runs['mae_demo']['train_mae_loss']
        result += ('; every logged masked-patch loss equal to the `:demo` run\'s, bit for bit'
                   if same else '; the masked-patch losses differ from the `:demo` run\'s')
    elif name.endswith('_ft'):
      result = 'deploy accuracy ' + ', '.join(
          f'{e["deploy_accuracy"]:.4f} at step {e["step"]}' for e in r['evals'])
    else:
      result = 'a trained teacher for the two D-MAE runs'
    rows.append(f'| {label} | {result} | {_wall(r["wall_s"])} |')
  mae, scratch = (runs[n]['evals'][-1]['deploy_accuracy'] for n in ('mae_ft', 'scratch_ft'))
  verdict = ('ahead of' if mae > scratch else 'level with' if mae == scratch else 'behind')
  blocks['mae'] = '\n'.join(rows) + (
      f'\n\nFine-tuned from the MAE demo, the deploy form ends {verdict} the same run from '
      f'scratch ({mae:.4f} vs {scratch:.4f}; one seed of a short run).')
  return blocks


def blocks_in(text: str) -> Dict[str, str]:
  """The README's figure blocks as they stand (name -> Markdown between the markers)."""
  return {m.group(1): m.group(2).strip('\n') for m in re.finditer(
      r'<!-- figures:(\w+) -->\n(.*?)<!-- /figures:\1 -->', text, flags=re.S)}


def write_readme(blocks: Dict[str, str], path: str = README) -> None:
  with open(path) as f:
    text = f.read()
  missing = set(blocks) - set(blocks_in(text))
  if missing:
    raise SystemExit(f'error: {path} has no <!-- figures:NAME --> block for {sorted(missing)}')
  for name, body in blocks.items():
    text = re.sub(rf'(<!-- figures:{name} -->\n).*?(<!-- /figures:{name} -->)',
                  lambda m, body=body: m.group(1) + body + '\n' + m.group(2), text, flags=re.S)
  with open(path, 'w') as f:
    f.write(text)
  print(f'wrote {path}')


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument('--render', action='store_true',
                      help='only rewrite the README from the record, running nothing')
  parser.add_argument('--smoke', action='store_true',
                      help='run every command for 4 steps, write nothing (a walk of the README)')
  parser.add_argument('--record', default=RECORD, help='the JSON record of the runs')
  args = parser.parse_args(argv)
  if args.render:
    with open(args.record) as f:
      record = json.load(f)
  else:
    record = {'machine': machine(), 'runs': {}}
    start = time.time()
    record['runs'] = run_all(args.smoke)
    record['total_wall_s'] = round(time.time() - start, 1)
    if args.smoke:
      print(f'walked {len(RUNS) + len(TOOLS)} commands in {record["total_wall_s"]:.0f} s')
      return 0
    with open(args.record, 'w') as f:
      json.dump(record, f, indent=1)
    print(f'wrote {args.record}')
  write_readme(render(record))
  return 0


if __name__ == '__main__':
  sys.exit(main())
