"""Capturing what C++ libraries write to stderr, so that the user sees one line, not their logs."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable


@contextlib.contextmanager
def captured_stderr(release: Callable[[bytes], None],
                    before_release: Callable[[], None] = lambda: None):
  """Runs the block with file descriptor 2 (C++ libraries' lines too) written to a temporary
  file; then calls `before_release()` (still captured), restores stderr and hands what was
  written to `release(text)`, which decides what reaches the user."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      before_release()
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      release(capture.read())
