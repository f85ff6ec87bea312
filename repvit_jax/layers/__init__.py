"""Building blocks shared by the model families."""

from repvit_jax.layers.activations import gelu, traced_as
from repvit_jax.layers.conv_bn import BNLinear, ConvBN, LinearBN
from repvit_jax.layers.dense import Dense, rows_dot_general
from repvit_jax.layers.posemb import resample_posemb, sincos_2d
from repvit_jax.layers.rep_linear import (TDRL, LinearBNStack, RepLinear, apply_linear,
                                          make_linear)
from repvit_jax.layers.transformer import Attention, Block, DropPath, Mlp

__all__ = ['TDRL', 'LinearBNStack', 'RepLinear', 'apply_linear', 'make_linear', 'sincos_2d',
           'resample_posemb', 'Attention', 'Block', 'DropPath', 'Mlp', 'ConvBN', 'LinearBN',
           'BNLinear', 'Dense', 'rows_dot_general', 'gelu', 'traced_as']
