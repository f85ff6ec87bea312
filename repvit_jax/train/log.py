"""The trainer's console: one line at a time, from process 0 only.

Every line a training run prints goes through here, so that a pod of N processes prints
each line once: `info` to stdout (progress, set-up phases, saved files), `warn` to stderr
(a `warning: ...` that does not stop the run). Errors that stop the run are raised and
printed once by the train command.
"""

from __future__ import annotations

import sys

import jax


def info(message: str) -> None:
  """A line on stdout, from process 0."""
  if jax.process_index() == 0:
    print(message, flush=True)


def warn(line: str) -> None:
  """A line on stderr (`warning: ...`), from process 0."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


__all__ = ['info', 'warn']
