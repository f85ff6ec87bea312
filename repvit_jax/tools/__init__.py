"""The command lines: `evaluate`, `predict`, `analyze`, `export`, `convert`, each run as
`repvit-<command>` (console scripts) or `python -m repvit_jax.tools.<command>`, with what they
share in `cli` (argument checks, one error line) and `runs` (what a training run says about
itself). Tools read models through `repvit_jax.io`, never through the trainer."""
