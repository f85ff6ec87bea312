"""Model families and the registry that names them."""

from repvit_jax.models import vit  # registers vit_*, deit_*, tdrl_vit_*
from repvit_jax.models.registry import create_model, get_spec, list_models, register
from repvit_jax.models.vit import VisionTransformer

__all__ = ['create_model', 'get_spec', 'list_models', 'register', 'VisionTransformer']
