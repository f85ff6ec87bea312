"""Model families and the registry that names them."""

from repvit_jax.models import vit  # registers vit_*, deit_*, tdrl_vit_*
from repvit_jax.models import mae  # registers mae_vit_tiny, mae_tdrl_vit_tiny, mae_vit_base
from repvit_jax.models import levit  # registers levit_128s ... levit_384
from repvit_jax.models import mobilevit  # registers mobilevit_xxs, mobilevit_xs, mobilevit_s
from repvit_jax.models import metaformer  # registers poolformer_*, riformer_*
from repvit_jax.models.inputs import InputSpec
from repvit_jax.models.registry import create_model, get_registration, list_models, register
from repvit_jax.models.spec import ModelSpec
from repvit_jax.models.vit import VisionTransformer

__all__ = ['create_model', 'get_registration', 'list_models', 'register', 'ModelSpec',
           'InputSpec', 'VisionTransformer']
