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

from repvit_jax import io, layers, models, reparam
from repvit_jax.models import features
from repvit_jax.io import load_model, save_model
from repvit_jax.layers import TDRL, RepLinear
from repvit_jax.models import InputSpec, ModelSpec, create_model, list_models
from repvit_jax.reparam import (batchnorm_to_affine, fold_affine_into_norm, fold_batchnorm,
                                fold_partial_batchnorm, fold_preceding_batchnorm,
                                merge_linear_chain, reparameterize, sum_branches)
from repvit_jax.reparam.check import count_params

__version__ = '0.1.0'

__all__ = ['TDRL', 'RepLinear', 'create_model', 'list_models', 'ModelSpec', 'InputSpec',
           'reparameterize',
           'batchnorm_to_affine', 'fold_affine_into_norm', 'fold_batchnorm',
           'fold_partial_batchnorm', 'fold_preceding_batchnorm',
           'merge_linear_chain', 'sum_branches', 'count_params', 'load_model', 'save_model',
           'features', 'io', 'layers', 'models', 'reparam']
