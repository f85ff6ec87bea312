"""create_model: names, overrides, deploy forms, clear errors."""

import numpy as np
import pytest

import repvit_jax as rj
from conftest import load_config


def test_known_names():
  assert {'vit_tiny', 'vit_small', 'vit_base', 'deit_tiny', 'tdrl_vit_tiny',
          'tdrl_vit_small'} <= set(rj.list_models())


def test_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match=r"unknown model 'vit_huge'.*tdrl_vit_tiny.*vit_tiny"):
    rj.create_model('vit_huge')


def test_unknown_override():
  with pytest.raises(ValueError, match=r"vit_tiny has no option 'widht'.*width"):
    rj.create_model('vit_tiny', widht=3)


def test_tdrl_options_override_field_by_field():
  model = rj.create_model('tdrl_vit_tiny', tdrl={'num_branches': 4, 'layers': ['qkv', 'fc1']})
  assert model.tdrl.num_branches == 4 and model.tdrl.layers == ('qkv', 'fc1')
  assert model.tdrl.qkv_rectify == 'bn'   # untouched fields keep their defaults
  with pytest.raises(ValueError, match=r"no option\(s\) \['branches'\]"):
    rj.create_model('tdrl_vit_tiny', tdrl={'branches': 4})
  with pytest.raises(ValueError, match='unknown TDRL layers'):
    rj.create_model('tdrl_vit_tiny', tdrl={'layers': ['qkv', 'head']})


def test_tdrl_options_on_a_vanilla_model_are_an_error():
  with pytest.raises(ValueError, match='off for this model'):
    rj.create_model('vit_tiny', tdrl={'num_branches': 3})


def test_deploy_form_keeps_architecture_overrides():
  model = rj.create_model('tdrl_vit_tiny', num_classes=10, deploy=True, depth=3,
                          tdrl={'num_branches': 3})
  assert model == rj.create_model('vit_tiny', num_classes=10, depth=3)


def test_model_spec_round_trips_and_its_deploy_form_drops_training_structure():
  spec = rj.ModelSpec.registered('tdrl_vit_tiny', num_classes=10,
                                 overrides={'depth': 2, 'tdrl': {'num_branches': 3},
                                            'dtype': 'bfloat16'})
  assert spec.dtype == 'bfloat16' and 'dtype' not in spec.overrides
  assert rj.ModelSpec.from_json(spec.to_json()) == spec.replace(dtype='float32')
  deploy = spec.deploy_form()
  assert deploy.deploy and deploy.dtype == 'float32' and deploy.trained_dtype == 'bfloat16'
  assert deploy.overrides == {'depth': 2}
  assert deploy.build() == rj.create_model('vit_tiny', num_classes=10, depth=2)
  riformer = rj.ModelSpec.registered('riformer_s12', overrides={'mixer': 'affine'})
  assert riformer.deploy_form().overrides == {}
  # Class names travel with the record (and are left out of it when unknown).
  named = spec.replace(class_names=[str(k) for k in range(10)])
  assert named.class_names == tuple('0123456789') and 'class_names' not in spec.to_json()
  assert rj.ModelSpec.from_json(named.to_json()).class_names == named.class_names
  assert named.deploy_form().class_names == named.class_names
  with pytest.raises(ValueError, match='3 names for 10 classes'):
    spec.replace(class_names=('a', 'b', 'c'))
  with pytest.raises(ValueError, match="unknown model 'vit_tinny'"):
    rj.ModelSpec('vit_tinny')


def test_model_spec_from_a_config_carries_the_input_contract():
  config = load_config('mobilevit_xs.py:demo')
  spec = rj.ModelSpec.from_config(config, num_classes=10)
  assert spec.input == rj.InputSpec(image_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                    eval_crop_fraction=1.0)
  assert spec.overrides['channels'] == [16, 24, 32, 48, 64] and spec.trained_dtype == 'float32'
  # The contract normalises raw pixels as the data pipeline does: (x / 255 - mean) / std.
  imagenet = rj.InputSpec()
  np.testing.assert_allclose(imagenet.normalize(np.full((1, 3), 255.0)),
                             [[(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]],
                             rtol=1e-6)
  assert rj.models.get_registration('mobilevit_xs').input.image_size == 256
