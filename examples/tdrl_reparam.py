"""Build a TDRL ViT-Tiny, fold it into a vanilla ViT-Tiny, and check they agree.

    python examples/tdrl_reparam.py

Uses random non-trivial BatchNorm statistics (a fresh BatchNorm is the identity and would
hide a wrong fold) and prints the relative error and both parameter counts.
"""

import jax

import repvit_jax as rj
from repvit_jax.reparam import check


def main():
  images = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
  train_model = rj.create_model('tdrl_vit_tiny')
  deploy_model = rj.create_model('tdrl_vit_tiny', deploy=True)   # == create_model('vit_tiny')

  print('initialising the TDRL ViT-Tiny (compiling) ...', flush=True)
  variables = jax.jit(lambda x: train_model.init(jax.random.key(1), x, train=False))(images)
  variables = check.randomize_batch_stats(check.perturb_params(variables, seed=0), seed=1)

  print('folding it and running both forms on 2 images (compiling both) ...', flush=True)
  result = check.equivalence_error(train_model, deploy_model, variables, images)
  print(f'train form (TDRL ViT-Tiny):    {result["train_params"]:>12,} parameters')
  print(f'deploy form (vanilla ViT-Tiny): {result["deploy_params"]:>11,} parameters')
  print(f'deploy vs train form (eval mode), relative error: {result["error"]:.2e}')


if __name__ == '__main__':
  main()
