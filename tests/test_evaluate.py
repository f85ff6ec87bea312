"""repvit_jax.tools.evaluate and repvit_jax.tools.predict on a tiny TDRL ViT saved inside a workdir."""

import json
import shutil
import jax
import numpy as np
import pytest

import repvit_jax as rj
from repvit_jax import io
from repvit_jax.tools import evaluate, predict, runs
from repvit_jax.train import pictures
from repvit_jax.data import digits
from repvit_jax.reparam import check
from repvit_jax.train.resume import config_record

from conftest import TINY_VIT, load_config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir: config.json (digits) and a training-form TDRL model in deploy/."""
  root = tmp_path_factory.mktemp('run')
  config = load_config('tdrl_vit_tiny.py:demo')
  config.model.update(TINY_VIT)
  config_record.write(str(root), config)
  # Named as the trainer names them (tasks.build); 'd0'..'d9' to tell them from the data's.
  spec = rj.ModelSpec.from_config(config, num_classes=10).replace(
      class_names=[f'd{k}' for k in range(10)])
  model = spec.build()
  variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                                         train=False))()
  variables = check.randomize_batch_stats(check.perturb_params(variables, 0), 1)
  rj.save_model(str(root / 'deploy'), variables, spec)
  return root, model, variables


@pytest.fixture(scope='module')
def reference(workdir):
  """The eval split through the data pipeline, and the model's logits on it."""
  _, model, variables = workdir
  images, labels = runs.eval_split(load_config('tdrl_vit_tiny.py:demo').data)
  return labels, np.asarray(jax.jit(lambda x: model.apply(variables, x, train=False))(images))


def test_evaluate_reports_both_forms_as_computed_directly(workdir, reference, tmp_path):
  root = workdir[0]
  labels, logits = reference
  out = str(tmp_path / 'eval.json')
  assert evaluate.main([str(root / 'deploy'), '--json', out, '--batch-size', '100']) == 0
  record = json.load(open(out))
  assert record['images'] == 360 and set(record['forms']) == {'training', 'deploy'}
  top5 = np.mean([l in np.argsort(-row)[:5] for row, l in zip(logits, labels)])
  for form in ('training', 'deploy'):
    assert record['forms'][form]['top1'] == pytest.approx(runs.accuracy(logits, labels),
                                                          abs=1.5 / 360)
    assert record['forms'][form]['top5'] == pytest.approx(top5, abs=1.5 / 360)
  assert evaluate.main([str(root / 'deploy'), '--config.data.nope=1']) == 1


def test_predict_reads_image_files_with_the_saved_contract(workdir, reference, tmp_path,
                                                          capsys):
  root = workdir[0]
  test_images, _ = digits.load_split('test')
  paths = []
  for i in range(3):
    pixels = np.repeat(np.round(test_images[i] * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    paths.append(str(tmp_path / f'{i}.png'))
    pictures.write_png(paths[-1], pixels)
  results = predict.predict(str(root / 'deploy'), paths, top_k=3)
  for (path, best), row in zip(results, reference[1][:3]):
    assert [label for label, _, _ in best] == list(np.argsort(-row)[:3])
    assert best[0][1] == f'd{best[0][0]}'                 # the names model.json records
  assert predict.main([str(root / 'deploy'), paths[0]]) == 0
  assert capsys.readouterr().out.startswith(f'{paths[0]}: ')
  # A deploy directory copied out of its workdir still knows its classes (model.json).
  copied = tmp_path / 'copied'
  shutil.copytree(root / 'deploy', copied)
  assert io.read_spec(str(copied)).class_names == tuple(f'd{k}' for k in range(10))
  assert predict.predict(str(copied), paths[:1], top_k=1)[0][1][0] == results[0][1][0]
  assert predict.main([str(root / 'deploy'), str(tmp_path / 'missing.png')]) == 1
  assert one_error_line(capsys) == f'error: image {tmp_path / "missing.png"} not found'
  (tmp_path / 'bad.png').write_bytes(b'not a png')
  assert predict.main([str(root / 'deploy'), str(tmp_path / 'bad.png')]) == 1
  assert 'bad.png: cannot read it as an image' in one_error_line(capsys)
  # A folder: its image files, in order.
  (tmp_path / 'bad.png').unlink()
  assert predict.main([str(root / 'deploy'), str(tmp_path)]) == 0
  assert [l.split(':')[0] for l in capsys.readouterr().out.splitlines()] == paths
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert predict.main([str(root / 'deploy'), str(empty)]) == 1
  assert 'is a directory without image files' in one_error_line(capsys)


def one_error_line(capsys) -> str:
  """The one line a user sees on a mistake: no traceback, one `error:` line."""
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in err, err
  return lines[0]


def test_evaluate_checks_its_output_and_the_model_record_before_working(workdir, tmp_path,
                                                                        capsys):
  root = workdir[0]
  assert evaluate.main([str(root / 'deploy'), '--json', str(tmp_path / 'no' / 'x.json')]) == 0
  capsys.readouterr()
  (tmp_path / 'file').write_text('')
  assert evaluate.main([str(root / 'deploy'), '--json', str(tmp_path / 'file' / 'x.json')]) == 1
  assert 'is a file, not a directory' in one_error_line(capsys)
  assert capsys.readouterr().out == ''          # refused before evaluating
  # A model.json that lies about the width: one line, as export says it.
  import shutil  # pylint: disable=import-outside-toplevel
  liar = tmp_path / 'liar'
  shutil.copytree(root / 'deploy', liar)
  record = json.loads((liar / 'model.json').read_text())
  record['overrides']['width'] = 2 * record['overrides']['width']
  (liar / 'model.json').write_text(json.dumps(record))
  assert evaluate.main([str(liar)]) == 1
  assert 'give the model and --set key=value overrides the run used' in one_error_line(capsys)


def test_a_contract_round_trips_through_the_data_config():
  from repvit_jax import data  # pylint: disable=import-outside-toplevel
  from repvit_jax.models.inputs import InputSpec  # pylint: disable=import-outside-toplevel
  contract = InputSpec(64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), eval_crop_fraction=0.9,
                       resize='bicubic')
  config = data.default_config()
  config.update(contract.data_fields())
  assert config.eval_resize == 'bicubic' and config.image_size == 64
  assert InputSpec.from_data_config(config.to_dict(), InputSpec()) == contract
  with pytest.raises(ValueError, match='resize must be one of'):
    InputSpec(resize='nearest')
