"""What makes a run safe to stop and start again, in one place.

- `checkpoint`: the Checkpointer (orbax, asynchronous saves, checksums, the best step kept
  beside the newest) and the fallback to the newest step that reads back;
- `health`: the loss and gradient norms per step, a non-finite one stopping the run with the
  kept checkpoint that predates it and the flags that resume from it;
- `config_record`: workdir/config.json, and the check that a resumed run computes what the
  run it resumes computed;
- `workdir_lock`: one training run per workdir.

The layout of a checkpoint step, which tools read too, is `repvit_jax.io.checkpoint_steps`.
"""
