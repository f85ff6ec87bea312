"""repvit-jax: lightweight vision transformers that train in one form and deploy in another.

    import repvit_jax
    model = repvit_jax.create_model('tdrl_vit_tiny')
    variables = model.init(rng, images, train=False)
    ...  # train
    deploy_variables = repvit_jax.reparameterize(variables)
    logits = repvit_jax.create_model('tdrl_vit_tiny', deploy=True).apply(
        deploy_variables, images, train=False)   # == model in eval mode

This module never imports TensorFlow; the input pipelines (repvit_jax.data) do.
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = '0.1.0'

# Where each public name lives. The package imports them when first used (PEP 562), so that
# `import repvit_jax.utils.host_memory` or a command's first lines do not import JAX and Flax.
_SUBMODULES = ('io', 'layers', 'models', 'reparam')
_NAMES = {
    'features': 'repvit_jax.models',
    'load_model': 'repvit_jax.io', 'save_model': 'repvit_jax.io',
    'TDRL': 'repvit_jax.layers', 'RepLinear': 'repvit_jax.layers',
    'InputSpec': 'repvit_jax.models', 'ModelSpec': 'repvit_jax.models',
    'create_model': 'repvit_jax.models', 'list_models': 'repvit_jax.models',
    'count_params': 'repvit_jax.reparam.check',
    **{name: 'repvit_jax.reparam' for name in (
        'batchnorm_to_affine', 'fold_affine_into_norm', 'fold_batchnorm',
        'fold_partial_batchnorm', 'fold_preceding_batchnorm', 'merge_linear_chain',
        'reparameterize', 'sum_branches')},
}

__all__ = list(_NAMES) + list(_SUBMODULES)


def __getattr__(name: str):
  if name in _SUBMODULES or importlib.util.find_spec(f'repvit_jax.{name}') is not None:
    return importlib.import_module(f'repvit_jax.{name}')
  if name in _NAMES:
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module repvit_jax has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
  from repvit_jax import io, layers, models, reparam  # noqa: F401
  from repvit_jax.io import load_model, save_model  # noqa: F401
  from repvit_jax.layers import TDRL, RepLinear  # noqa: F401
  from repvit_jax.models import (InputSpec, ModelSpec, create_model, features,  # noqa: F401
                                 list_models)
  from repvit_jax.reparam import (batchnorm_to_affine, fold_affine_into_norm,  # noqa: F401
                                  fold_batchnorm, fold_partial_batchnorm,
                                  fold_preceding_batchnorm, merge_linear_chain,
                                  reparameterize, sum_branches)
  from repvit_jax.reparam.check import count_params  # noqa: F401
