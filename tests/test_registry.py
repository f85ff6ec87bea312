"""create_model: names, overrides, deploy forms, clear errors."""

import pytest

import repvit_jax as rj


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
