"""`python -m repvit_jax.train --config ... --workdir ...`: the `repvit-train` command."""

from repvit_jax.train import command

command.cli()
