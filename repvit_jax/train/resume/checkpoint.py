"""Checkpoints of the train state with Orbax: keep the latest N and the best by a metric.

Layout: `<directory>/<step>/state/...` (one Orbax `CheckpointManager` item named
`state`, plus the metrics saved with it; `repvit_jax.io.checkpoint_steps` reads it). The
trainer uses `workdir/checkpoints`.
Saves are asynchronous; Orbax writes each step into a temporary directory and renames
it only once complete, so a process killed mid-save never leaves a half-written step
that `latest_step` would return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import re
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from repvit_jax.io import digest
from repvit_jax.io.checkpoint_steps import (ERRORS_FILE, STATE_ITEM, PyTree, capture_stderr,
                                            first_line, read_tree_metadata, step_dir_of,
                                            step_metadata, verify_step, warn_on_stderr)
from repvit_jax.utils.treepath import path_str

# Checkpoints that will not be used (unreadable, or newer than a chosen resume step) are moved
# here, beside the checkpoint directory, as `<step>-<reason>`; nothing is ever deleted.
SET_ASIDE_SUBDIR = "set_aside"
class CheckpointMismatch(ValueError):
  """The checkpoint is readable but holds a different train state (another config)."""


class SaveError(RuntimeError):
  """A checkpoint step could not be written (a full disk, a permission): the message names
  the step, the directory, the reason, the free space and the last good checkpoint."""


class _OrbaxLogToFile(logging.Filter):
  """Sends Orbax's (and asyncio's) log records of WARNING and above, and the unraisable
  exceptions of their background writes (tracebacks, one per thread and task), to a file
  instead of the console, where the failure is one line. It stays installed once a Checkpointer opened: asyncio reports a failed
  write's futures only when they are garbage collected, which can be at the process's exit.
  The records go to the errors file of the latest Checkpointer opened."""

  def __init__(self):
    super().__init__()
    self.path = None
    self._previous_hook = sys.unraisablehook
    self._format = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(pathname)s:"
                                     "%(lineno)d] %(message)s")

  def install(self, path: str) -> None:
    """Sends Orbax's records to `path` from now on (installs the filter and hook once)."""
    self.path = path
    for logger in _orbax_loggers():
      logger.addFilter(self)     # a no-op when it is there already
    if getattr(sys.unraisablehook, "__self__", None) is not self:
      self._previous_hook = sys.unraisablehook
      sys.unraisablehook = self._unraisable

  def _unraisable(self, unraisable) -> None:
    """TensorStore's callbacks into an event loop Orbax has closed after a failed write
    ("Event loop is closed"), and the coroutines such a failure abandons, go to the file."""
    code = getattr(unraisable.object, "cr_code", None)
    abandoned = code is not None and any(
        f"{os.sep}{name}{os.sep}" in code.co_filename for name in ("orbax", "asyncio"))
    closed_loop = (isinstance(unraisable.exc_value, RuntimeError)
                   and str(unraisable.exc_value) == "Event loop is closed")
    if not (abandoned or closed_loop) or self.path is None:
      self._previous_hook(unraisable)
      return
    with contextlib.suppress(OSError):
      with open(self.path, "a", encoding="utf-8") as log:
        log.write(f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n"
                  + "".join(traceback.format_exception(unraisable.exc_type,
                                                       unraisable.exc_value,
                                                       unraisable.exc_traceback)))

  def filter(self, record: logging.LogRecord) -> bool:
    # asyncio's "Future exception was never retrieved" records are the same failures, seen
    # from the event loops Orbax runs its writes on.
    ours = f"{os.sep}orbax{os.sep}" in (record.pathname or "") or record.name == "asyncio"
    if not ours or record.levelno < logging.WARNING or self.path is None:
      return True
    try:
      with open(self.path, "a", encoding="utf-8") as log:
        log.write(self._format.format(record) + "\n")
    except OSError:
      pass    # a full or read-only disk: the one error line is what the user gets
    return False


def _metric_value(metrics: Mapping[str, Any] | None, name: str) -> float | None:
  if not metrics or name not in metrics:
    return None
  try:
    value = float(metrics[name])
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) else None


@dataclasses.dataclass
class _BestByMetric:
  """Preserves the `n` checkpoints with the best finite `metric`.

  Unlike Orbax's `BestN`, a checkpoint whose metrics lack `metric` (e.g. saved between
  evaluations, with training metrics only) is simply not a candidate, so every save
  can record whatever metrics it has.
  """

  metric: str
  n: int
  mode: str = "max"

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
    del context
    scored = [(v, i) for i, info in enumerate(checkpoints)
              if (v := _metric_value(info.metrics, self.metric)) is not None]
    # Ties go to the later checkpoint.
    scored.sort(key=lambda vi: (vi[0] if self.mode == "max" else -vi[0], vi[1]),
                reverse=True)
    best = {i for _, i in scored[:self.n]}
    return [i in best for i in range(len(checkpoints))]


def _check_matches(target: PyTree, stored: PyTree, where: str):
  """Raises a ValueError naming the leaves where `target` and the checkpoint differ.

  Checked here rather than left to Orbax, whose errors surface mid-read.
  """
  want = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
  have = {path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
  problems = [f"{k}: not in the checkpoint" for k in sorted(want.keys() - have.keys())]
  problems += [f"{k}: in the checkpoint only" for k in sorted(have.keys() - want.keys())]
  for k in sorted(want.keys() & have.keys()):
    x, m = want[k], have[k]
    if not hasattr(x, "shape") or getattr(m, "shape", None) is None:
      continue
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
      continue  # stored as raw key data, with a trailing key dimension
    if tuple(x.shape) != tuple(m.shape):
      problems.append(f"{k}: shape {tuple(m.shape)} in the checkpoint, "
                      f"{tuple(x.shape)} expected")
  if problems:
    shown = "\n  ".join(problems[:8])
    more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
    raise CheckpointMismatch(
        f"checkpoint {where} does not match the train state of this config "
        f"(different model, optimizer or image size?):\n  {shown}{more}\n"
        "Resume with the config the run was started with, or use a fresh workdir.")


def _abstract_leaf(x):
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x


class Checkpointer:
  """Saves and restores the train state (a plain pytree) in `directory`.

  Args:
    directory: the checkpoint directory (created if missing), e.g. `workdir/checkpoints`.
    max_to_keep: how many of the most recent checkpoints to keep (None: all).
    best_metric: metric name ranking checkpoints for `keep_best`; checkpoints saved
      without it (or with a non-finite value) are never "best".
    best_mode: 'max' or 'min'.
    keep_best: how many best checkpoints to keep on top of the latest ones (0: none).
    async_save: write in a background thread after the device-to-host copy.
    warn: where one-line warnings go (default: stderr, process 0 only).
    metadata: JSON data saved with every step (the trainer's: {'model': ModelSpec JSON});
      `step_metadata` reads it back.
  """

  def __init__(self, directory, *, max_to_keep: int | None = 3,
               best_metric: str | None = "eval/accuracy", best_mode: str = "max",
               keep_best: int = 1, async_save: bool = True,
               warn: Callable[[str], None] | None = None,
               metadata: Mapping[str, Any] | None = None):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be None or >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self._metadata = dict(metadata) if metadata is not None else None
    self._warn = warn or warn_on_stderr
    # Orbax reads every step's metrics when it opens the directory; one unreadable metrics
    # file would stop it there, so such a step is set aside first.
    for step in _steps_with_unreadable_metrics(self.directory):
      moved = _move_aside(self.directory, step, "unreadable")
      self._warn(f"warning: the metrics of checkpoint step {step} are unreadable; moved the "
                 f"checkpoint to {moved}")
    policies = [ocm.LatestN(n=max_to_keep)]
    if best_metric and keep_best > 0:
      policies.append(_BestByMetric(best_metric, keep_best, best_mode))
    worst = -math.inf if best_mode == "max" else math.inf

    def best_fn(metrics):
      value = _metric_value(metrics, best_metric) if best_metric else None
      return worst if value is None else value

    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        # Setting best_fn is what makes Orbax store the metrics with each step;
        # the preservation policy above does the actual selection.
        best_fn=best_fn,
        best_mode=best_mode,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._mngr = ocp.CheckpointManager(self.directory, item_names=(STATE_ITEM,),
                                       options=options)
    self._saving: int | None = None       # the step of the save in flight, if any
    _ORBAX_LOG.install(os.path.join(os.path.dirname(self.directory), ERRORS_FILE))

  def all_steps(self) -> list[int]:
    """Steps of the checkpoints kept (including one still being written), ascending."""
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    """The newest checkpoint's step, or None when there is none.

    In a new process this only sees finished checkpoints: a save cut short by the
    process dying is never listed.
    """
    return self._mngr.latest_step()

  def save(self, step: int, state: PyTree, *, metrics: Mapping[str, Any] | None = None,
           force: bool = False) -> bool:
    """Starts saving `state` as checkpoint `step` (returns once it is on the host).

    Args:
      step: the train step; a step already saved (or being saved) is skipped.
      state: pytree of jax arrays (possibly sharded), numpy arrays and python scalars.
      metrics: scalars stored with the checkpoint; `best_metric` among them makes it
        a candidate for "best".
      force: save even if Orbax's save policy would skip this step.

    Returns:
      True if a save was started.
    """
    step = int(step)
    # Orbax waits for the previous save before it starts a new one anyway; waiting here
    # first attributes a failure to the step that failed.
    self.wait_until_finished()
    if step in self._mngr.all_steps():
      return False
    self._check_space(step, state)
    stored = {}
    for k, v in (metrics or {}).items():
      try:
        stored[k] = float(v)
      except (TypeError, ValueError):
        continue
    # Digested before the asynchronous write starts: what the state was, not what reached disk.
    record = dict(self._metadata or {})
    record[digest.METADATA_KEY] = digest.tree_digests(state)
    if 'model' in record:
      record[digest.SPEC_KEY] = digest.spec_digest(record['model'])
    try:
      started = self._mngr.save(
          step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
          metrics=stored, force=force, custom_metadata=record)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from None
    if started:
      self._saving = step
    return bool(started)

  def _check_space(self, step: int, state: PyTree) -> None:
    """SaveError before anything is written when the disk cannot hold the step (every process
    checks its own shards; all agree)."""
    needed = sum(shard.data.nbytes for leaf in jax.tree.leaves(state)
                 if isinstance(leaf, jax.Array) for shard in leaf.addressable_shards
                 if shard.replica_id == 0)
    needed += sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state)
                  if not isinstance(leaf, jax.Array))
    free = _free_bytes(self.directory)
    short = free is not None and free < needed * 1.05 + 2**20
    if jax.process_count() > 1:
      short = bool(np.any(multihost_utils.process_allgather(np.asarray(short))))
    if short:
      raise self._save_failed(step, None, f"the step needs about {_size(needed)}")

  def check_saves(self) -> None:
    """Raises SaveError if the last asynchronous save failed; returns at once otherwise
    (also while it is still being written)."""
    if self._saving is None or self._mngr.is_saving_in_progress():
      return
    self.wait_until_finished()

  def _save_failed(self, step: int, error: BaseException | None,
                   reason: str | None = None) -> SaveError:
    """The one-line SaveError for `step`; its partial files are removed (process 0)."""
    free = _free_bytes(self.directory)
    if error is not None:
      reason = _os_reason(error)
      with contextlib.suppress(OSError):
        with open(os.path.join(os.path.dirname(self.directory), ERRORS_FILE), "a",
                  encoding="utf-8") as log:
          log.write(f"--- saving checkpoint step {step}, {time.ctime()}:\n"
                    + "".join(traceback.format_exception(error)))
    if jax.process_index() == 0:
      for partial in epath.Path(self.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)
    good = [s for s in _finished_steps(self.directory) if s != step]
    last = (f"the last good checkpoint is step {max(good)}: free some space (or lower "
            "--config.keep_checkpoints) and run again with the same workdir to resume from it"
            if good else "no checkpoint was saved before it: free some space and run again")
    free_text = f", {_size(free)} free there" if free is not None else ""
    return SaveError(f"could not save checkpoint step {step} in {self.directory} ({reason}"
                     f"{free_text}); {last}")

  def restore(self, state_like: PyTree, step: int | None = None) -> PyTree:
    """Restores checkpoint `step` (default: latest) onto `state_like`'s shapes/shardings.

    Args:
      state_like: pytree with the structure of the saved state whose leaves are
        arrays or `jax.ShapeDtypeStruct`s (with `.sharding`) giving target shape, dtype
        and placement; python scalars restore as python scalars.
      step: which checkpoint; None for the latest.

    Returns:
      the restored pytree, placed on the target shardings.
    """
    self.wait_until_finished()  # a save in flight is not on disk yet
    step_dir, step = step_dir_of(self.directory, step)
    target = jax.tree.map(_abstract_leaf, state_like)
    _check_matches(target, read_tree_metadata(os.path.join(step_dir, STATE_ITEM)),
                   step_dir)
    restored = self._mngr.restore(
        step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)}))
    verify_step(step_dir, restored[STATE_ITEM])
    return restored[STATE_ITEM]

  def restore_newest_readable(self, state_like: PyTree,
                              steps: Sequence[int] | None = None) -> tuple[PyTree, int]:
    """Restores the newest of `steps` (default: all kept) that reads back; returns (state, step).

    A checkpoint that fails to read (a truncated data file, emptied metadata) costs one
    warning line naming its step and why; once an older one restores, the unreadable newer
    ones are moved to `set_aside/<step>-unreadable` (never deleted), so that new saves do
    not collide with them.

    Raises:
      CheckpointMismatch: a checkpoint is readable but of another config (not a fallback case).
      ValueError: no checkpoint restores (one line naming the steps and the first reason);
        nothing is moved.
    """
    self.wait_until_finished()
    candidates = sorted(self.all_steps() if steps is None else steps, reverse=True)
    log_path = os.path.join(os.path.dirname(self.directory), ERRORS_FILE)
    failed = []
    for step in candidates:
      failure = []
      try:
        with capture_stderr(log_path, failure):
          try:
            state = self.restore(state_like, step)
          except CheckpointMismatch:
            raise
          except Exception:  # pylint: disable=broad-except
            failure.append(f"--- checkpoint step {step}, {time.ctime()}:\n"
                           + traceback.format_exc())
            raise
      except CheckpointMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except
        failed.append((step, first_line(e)))
        continue
      for bad, reason in failed:     # one line each, once the outcome is known
        moved = self.set_aside(bad, "unreadable")
        self._warn(f"warning: checkpoint step {bad} in {self.directory} could not be restored "
                   f"({reason}; details in {log_path}); moved it to {moved} and used step "
                   f"{step}")
      return state, step
    steps_text = ", ".join(str(s) for s, _ in failed)
    raise ValueError(f"no checkpoint in {self.directory} could be restored (steps {steps_text}; "
                     f"step {failed[0][0]}: {failed[0][1]}); move the directory away to start "
                     "over, or restore it from a backup")

  def set_aside(self, step: int, reason: str) -> str:
    """Moves checkpoint `step` to `<parent>/set_aside/<step>-<reason>`; returns the new path.

    Process 0 moves it (the directory is shared); every process must call this.
    """
    self.wait_until_finished()
    target = _move_aside(self.directory, step, reason)
    self._mngr.reload()
    return target

  def metrics(self, step: int) -> dict | None:
    """The metrics saved with checkpoint `step` (None if none were)."""
    return self._mngr.metrics(step)

  def wait_until_finished(self):
    """Blocks until the pending asynchronous save (if any) is on disk.

    Raises:
      SaveError: that save failed (reported once).
    """
    step, self._saving = self._saving, None
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from None

  def close(self):
    """Waits for pending saves and releases the manager (SaveError if the last one failed)."""
    try:
      self.wait_until_finished()
    finally:
      self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


_ORBAX_LOG = _OrbaxLogToFile()


def _orbax_loggers() -> list[logging.Logger]:
  """The loggers Orbax's failures reach: absl's (its modules log through absl), its own and
  asyncio's."""
  return [logging.getLogger(name) for name in ("absl", "orbax", "asyncio")]


def _free_bytes(directory: str) -> int | None:
  try:
    return shutil.disk_usage(directory).free
  except OSError:
    return None


def _size(num_bytes: float) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB"):
    if num_bytes < 1024 or unit == "GiB":
      return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1024
  return f"{num_bytes:.1f} TiB"


def _os_reason(error: BaseException) -> str:
  """'No space left on device' for TensorStore's "[os_error_code='28']", else the first line."""
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if code:
    return os.strerror(int(code.group(1)))
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  return first_line(error)


def _finished_steps(directory: str) -> list[int]:
  """Steps whose save finished (Orbax renames a step's directory to its number when done)."""
  try:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
  except OSError:
    return []


def _move_aside(directory: str, step: int, reason: str) -> str:
  """Moves `directory/<step>` to `<parent>/set_aside/<step>-<reason>[-k]` (process 0; every
  process calls this and waits for it)."""
  step_dir = os.path.join(directory, str(step))
  aside = os.path.join(os.path.dirname(directory), SET_ASIDE_SUBDIR)
  target = os.path.join(aside, f"{step}-{reason}")
  suffix = 1
  while os.path.exists(target):
    suffix += 1
    target = os.path.join(aside, f"{step}-{reason}-{suffix}")
  if jax.process_index() == 0:
    os.makedirs(aside, exist_ok=True)
    shutil.move(step_dir, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"set_aside_{step}_{reason}")
  return target


def _steps_with_unreadable_metrics(directory: str) -> list[int]:
  """Steps under `directory` whose `metrics/metrics` JSON file exists but does not parse."""
  bad = []
  for path in ocp.utils.checkpoint_steps_paths(directory):
    metrics_file = os.path.join(os.fspath(path), "metrics", "metrics")
    if not os.path.isfile(metrics_file):
      continue
    try:
      with open(metrics_file, encoding="utf-8") as f:
        json.load(f)
    except (OSError, ValueError):
      bad.append(ocp.step.step_from_checkpoint_name(path.name))
  return sorted(bad)


