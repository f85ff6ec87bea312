"""Training: sharded steps, checkpoints, metrics and the loop (`run(config, workdir)`)."""

from repvit_jax.train.loop import TrainingError, run

__all__ = ['run', 'TrainingError']
