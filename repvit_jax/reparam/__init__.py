"""Re-parameterization: pure fuse algebra on arrays, and the tree walk `reparameterize`.

The algebra (`fold_batchnorm`, `fold_partial_batchnorm`, `merge_linear_chain`,
`sum_branches`, `batchnorm_to_affine`) is usable on its own, on any arrays. `reparameterize`
applies it to a variable tree, recognising each re-parameterizable layer by its structure.
"""

from repvit_jax.reparam import tdrl  # registers the RepLinear fuser
from repvit_jax.reparam import affine_mixer, conv_bn, heads  # registers the zoo's fusers
from repvit_jax.reparam.fuse import (BN_EPSILON, batchnorm_to_affine, fold_batchnorm,
                                     fold_partial_batchnorm, merge_linear_chain, sum_branches)
from repvit_jax.reparam.fuse import fold_affine_into_norm, fold_preceding_batchnorm
from repvit_jax.reparam.tree import Fuser, register_fuser, reparameterize

__all__ = ['BN_EPSILON', 'batchnorm_to_affine', 'fold_batchnorm', 'fold_partial_batchnorm',
           'merge_linear_chain', 'sum_branches', 'Fuser', 'register_fuser', 'reparameterize',
           'fold_affine_into_norm', 'fold_preceding_batchnorm']
