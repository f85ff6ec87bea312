"""Reading the checkpoint steps the trainer writes, below both the trainer and the tools.

Layout: `<workdir>/checkpoints/<step>/state/...` (one Orbax item named `state`, plus the
metrics saved with it, and Orbax's `_CHECKPOINT_METADATA` whose `custom_metadata` holds the
model record and the digests of every array). A step directory appears only once its save is
complete. `repvit_jax.train.resume.checkpoint.Checkpointer` writes this layout; `repvit_jax.io.read`
and the trainer's `init_from` read it through the functions here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import sys
import time
import traceback
from typing import Any, Callable

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from repvit_jax.io import digest
from repvit_jax.utils.stderr import captured_stderr

PyTree = Any
STATE_ITEM = "state"
CHECKPOINT_SUBDIR = "checkpoints"
# Full tracebacks of failed reads and writes (and Orbax's own error log), beside the
# checkpoint directory: the console gets one line.
ERRORS_FILE = "checkpoint_errors.log"
# Orbax's per-step metadata file; its `custom_metadata` holds the Checkpointer's `metadata`.
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"


def warn_on_stderr(line: str) -> None:
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def capture_stderr(path: str, failure: list, grace_s: float = 1.0):
  """Captures file descriptor 2 for the duration (`utils.stderr.captured_stderr`). Success (`failure`
  empty): replayed to stderr. Failure (`failure` holds the traceback text): both appended to
  `path`.

  A failed Orbax read logs each of its asyncio tasks' tracebacks, and TensorStore callbacks
  print more once the event loop has closed (within `grace_s`). They go into `path`, where the
  user can read them, instead of burying the one warning line. asyncio logs a failed task
  that nobody awaited ("Task exception was never retrieved") only when the task is garbage
  collected, which on a loaded machine came after the grace period: collect before and after.
  """
  def settle():
    if failure:
      gc.collect()
      time.sleep(grace_s)
      gc.collect()

  def release(captured: bytes):
    if not failure:
      os.write(2, captured)
      return
    try:
      with open(path, "ab") as log:
        log.write("".join(failure).encode() + captured)
    except OSError:
      pass    # a read-only workdir: the one warning line is what the user gets

  with captured_stderr(release, before_release=settle):
    yield


def first_line(error: BaseException) -> str:
  """Why a read failed, in one line, without TensorStore's status code and spec; where Orbax
  wraps TensorStore's reason in an error whose text is a bound method, the reason."""
  root = error
  while root.__cause__ is not None and (not str(root).strip()
                                        or "See full TensorStore details" in str(root)):
    root = root.__cause__
  if isinstance(root, json.JSONDecodeError):
    return f"a metadata file is not valid JSON ({root.msg} at line {root.lineno})"
  text = str(root).strip().splitlines()
  line = text[0] if text else ""
  line = re.sub(r"\s*\[tensorstore_spec=.*$|\s*See full TensorStore details:.*$", "", line)
  line = re.sub(r"^[A-Z_]{4,}: ", "", line)      # TensorStore's status code
  if not line:
    line = type(root).__name__
  elif isinstance(root, (KeyError, TypeError, AttributeError)):
    line = f"{type(root).__name__}: {line}"
  return line if len(line) <= 240 else line[:237] + "..."


def read_tree_metadata(state_dir: str) -> PyTree:
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(epath.Path(state_dir))
  finally:
    handler.close()
  return getattr(metadata, "tree", metadata)


def step_dir_of(directory: str, step: int | None) -> tuple[str, int]:
  paths = {ocp.step.step_from_checkpoint_name(p.name): p
           for p in ocp.utils.checkpoint_steps_paths(directory)}
  if not paths:
    raise FileNotFoundError(f"no finished checkpoint in {directory}")
  if step is None:
    step = max(paths)
  if step not in paths:
    raise FileNotFoundError(
        f"no checkpoint for step {step} in {directory}; have {sorted(paths)}")
  return os.fspath(paths[step]), step


def find_step_dir(path, step: int | None = None) -> str:
  """The step directory a path means: a workdir (holding `checkpoints/`) or a checkpoint
  directory -> its step `step` (None: the latest); a step directory -> itself.

  Raises:
    FileNotFoundError: `path` is missing or holds no finished checkpoint.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if os.path.isdir(os.path.join(path, STATE_ITEM)):
    return path
  directory = path
  if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
    directory = os.path.join(path, CHECKPOINT_SUBDIR)
  try:
    step_dir, _ = step_dir_of(directory, step)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"no checkpoint found under {path} ({e}); pass a workdir, its "
        f"'{CHECKPOINT_SUBDIR}' directory or a step directory") from None
  return step_dir


def step_metadata(step_dir: str, strict: bool = False) -> dict:
  """The `metadata` a Checkpointer saved with a step ({} for none).

  An unreadable metadata file gives {} too, or with `strict` a ValueError (its digests cannot
  be checked, so the step is not to be trusted).
  """
  path = os.path.join(step_dir, STEP_METADATA_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    if strict:
      raise ValueError(f"{path} is unreadable ({first_line(e)})") from None
    return {}
  custom = record.get("custom_metadata") if isinstance(record, dict) else None
  return dict(custom) if isinstance(custom, dict) else {}


def verify_step(step_dir: str, state: PyTree) -> None:
  """Checks a restored state against the digests saved with its step.

  Raises:
    digest.DigestMismatch: an array (or the model record) differs from what was saved.
    ValueError: the step's metadata file is unreadable.
  Steps saved without digests are not checked.
  """
  record = step_metadata(step_dir, strict=True)
  if digest.SPEC_KEY in record and (digest.spec_digest(record.get("model"))
                                     != record[digest.SPEC_KEY]):
    raise digest.DigestMismatch(f"{step_dir}: the model record changed on disk since it was "
                                "saved (checksum mismatch)")
  stored = record.get(digest.METADATA_KEY)
  if isinstance(stored, dict):
    digest.verify(state, stored, step_dir)


def read_newest_readable(path, warn: Callable[[str], None] | None = None
                         ) -> tuple[str, dict]:
  """(step directory, state) of the newest checkpoint under `path` that reads back and verifies.

  `path` as for `restore_variables`. A step directory is read as it is; in a workdir or
  checkpoint directory an unreadable or corrupt newer step costs one warning line and the
  next older one is tried, as training does (nothing is moved: this is a reader).

  Raises:
    FileNotFoundError: `path` holds no finished checkpoint.
    ValueError: no step reads back (one line: the steps and the first reason).
  """
  newest = find_step_dir(path)
  directory = os.path.dirname(newest)
  if os.path.isdir(os.path.join(os.path.abspath(os.fspath(path)), STATE_ITEM)):
    steps = [ocp.step.step_from_checkpoint_name(os.path.basename(newest))]
  else:
    steps = sorted((ocp.step.step_from_checkpoint_name(p.name)
                    for p in ocp.utils.checkpoint_steps_paths(directory)), reverse=True)
  warn = warn or warn_on_stderr
  log_path = os.path.join(os.path.dirname(directory), ERRORS_FILE)
  failed = []
  for step in steps:
    step_dir = os.path.join(directory, str(step))
    failure: list = []
    try:
      with capture_stderr(log_path, failure):
        try:
          return step_dir, restore_variables(step_dir)
        except Exception:  # pylint: disable=broad-except
          failure.append(f"--- checkpoint step {step}, {time.ctime()}:\n"
                         + traceback.format_exc())
          raise
    except Exception as e:  # pylint: disable=broad-except
      failed.append((step, first_line(e)))
      if len(steps) > 1:
        warn(f"warning: checkpoint step {step} in {directory} could not be read "
             f"({failed[-1][1]}); trying an older one")
  if len(steps) == 1:
    raise ValueError(f"checkpoint {newest} could not be read ({failed[0][1]}); give its "
                     "workdir to read the newest step that can be")
  raise ValueError(f"no checkpoint in {directory} could be read (steps "
                   f"{', '.join(str(s) for s, _ in failed)}; step {failed[0][0]}: "
                   f"{failed[0][1]})")


def restore_variables(path, step: int | None = None) -> dict:
  """Reads the saved train state as host numpy arrays, without a target (for init_from).

  Args:
    path: a workdir (holding `checkpoints/`), a checkpoint directory, or one step's
      directory (`.../checkpoints/<step>`).
    step: which checkpoint in a checkpoint directory; None for the latest.

  Returns:
    the saved state pytree (nested dicts) with numpy leaves; python scalars come back
    as 0-d numpy arrays and PRNG keys as their uint32 key data.

  Raises:
    FileNotFoundError: `path` is missing or holds no finished checkpoint.
  """
  state_dir = os.path.join(find_step_dir(path, step), STATE_ITEM)
  tree = read_tree_metadata(state_dir)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    state = handler.restore(epath.Path(state_dir),
                            args=ocp.args.PyTreeRestore(restore_args=restore_args))
  finally:
    handler.close()
  verify_step(os.path.dirname(state_dir), state)
  return state
