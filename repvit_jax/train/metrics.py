"""Metric logging: JSON lines and TensorBoard in the workdir, and a console progress line.

`MetricWriter` appends `{"step": int, "<key>": float, ...}` lines to
`workdir/metrics.jsonl` and mirrors the scalars to TensorBoard event files in the
workdir (tensorboardX). Only the chief process writes. A resumed run passes `resume_step=k` so
that lines a killed run wrote after its last checkpoint (steps > k) are dropped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping

METRICS_FILE = "metrics.jsonl"


def _to_float(value: Any) -> float:
  # jax / numpy scalars and 0-d or 1-element arrays all go through float().
  return float(value.item() if hasattr(value, "item") else value)


def _parse_lines(text: str) -> list[dict]:
  rows = []
  for line in text.splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      # A process killed mid-write leaves a truncated last line; skip it.
      continue
    if isinstance(row, dict) and "step" in row:
      rows.append(row)
  return rows


def read_metrics(path) -> list[dict]:
  """Reads a metrics.jsonl (or the one in a workdir) back as a list of dicts.

  Args:
    path: the file, or a directory holding `metrics.jsonl`.

  Returns:
    one dict per well-formed line, in file order: {"step": int, key: float, ...}.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  with open(path, encoding="utf-8") as f:
    return _parse_lines(f.read())


class _TensorBoard:
  """Scalar writer over tensorboardX (a dependency of the package)."""

  def __init__(self, logdir: str, purge_step: int | None):
    import tensorboardX  # pylint: disable=g-import-not-at-top  (only the chief writes)
    # purge_step makes TensorBoard drop events at >= purge_step from the old run.
    self._tbx = tensorboardX.SummaryWriter(logdir=logdir, purge_step=purge_step)

  def write(self, step: int, scalars: Mapping[str, float]):
    for k, v in scalars.items():
      self._tbx.add_scalar(k, v, global_step=step)
    self._tbx.flush()

  def close(self):
    if self._tbx is not None:
      self._tbx.close()
    self._tbx = None


class MetricWriter:
  """Writes scalar metrics to `workdir/metrics.jsonl` and TensorBoard (chief only).

  Args:
    workdir: run directory (created if missing).
    tensorboard: also write TensorBoard event files into `workdir`.
    is_chief: only the chief process (`jax.process_index() == 0`) writes anything.
    resume_step: when resuming from a checkpoint at step k, lines with step > k are
      removed from an existing metrics.jsonl, so that it keeps one line per step.
  """

  def __init__(self, workdir, *, tensorboard: bool = True, is_chief: bool = True,
               resume_step: int | None = None):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self.is_chief = is_chief
    self._file = None
    self._tb = None
    if not is_chief:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self._repair(resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      purge = None if resume_step is None else resume_step + 1
      self._tb = _TensorBoard(self.workdir, purge)

  def _repair(self, resume_step: int | None):
    """Drops lines past `resume_step` and any torn last line, atomically."""
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      text = f.read()
    rows = _parse_lines(text)
    kept = [r for r in rows if resume_step is None or r["step"] <= resume_step]
    torn = len(rows) != sum(1 for line in text.splitlines() if line.strip())
    if len(kept) == len(rows) and not torn and (not text or text.endswith("\n")):
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping[str, Any]):
    """Appends `{"step": step, **metrics}` as one line (values as floats) and flushes."""
    if not self.is_chief:
      return
    if self._file is None:
      raise RuntimeError("MetricWriter is closed")
    scalars = {k: _to_float(v) for k, v in metrics.items()}
    row = {"step": int(step), **scalars}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      self._tb.write(int(step), scalars)

  def close(self):
    """Flushes and closes the files; further writes raise (on the chief)."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def format_duration(seconds: float) -> str:
  """'45s', '3m12s', '2h05m' (and '>99d' past reason)."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  if s >= 100 * 86400:
    return ">99d"
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  if h >= 24:
    return f"{h // 24}d{h % 24:02d}h"
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{sec:02d}s"
  return f"{sec}s"


def _format_value(value: Any) -> str:
  try:
    return f"{_to_float(value):.4g}"
  except (TypeError, ValueError):
    return str(value)


class Progress:
  """Console progress line: the step, the loss, the rate (images per second) and the ETA.

  The rate and the ETA use the interval since the previous `log` call (the first call:
  since construction, or since `restart`), less the seconds handed to `exclude`
  (compilation), so that they describe steady-state steps only.

  Args:
    total_steps: last step of the run.
    global_batch_size: images per step over all processes.
    start_step: the step the run starts (or resumes) from.
    time_fn, print_fn: injectable clock and printer (tests).
  """

  def __init__(self, total_steps: int, global_batch_size: int, start_step: int = 0, *,
               time_fn: Callable[[], float] = time.perf_counter,
               print_fn: Callable[[str], None] | None = None):
    self.total_steps = int(total_steps)
    self.global_batch_size = int(global_batch_size)
    self._time_fn = time_fn
    self._print_fn = print_fn or (lambda line: print(line, file=sys.stdout, flush=True))
    self._last_step = int(start_step)
    self._last_time = time_fn()
    self._excluded = 0.0

  def restart(self, step: int) -> None:
    """Measures the next interval from now and `step` (after compiling the first step)."""
    self._last_step, self._last_time, self._excluded = int(step), self._time_fn(), 0.0

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (a compilation inside the current interval) out of the rate and the ETA."""
    self._excluded += float(seconds)

  def log(self, step: int, metrics: Mapping[str, Any] | None = None,
          images: int | None = None, rate: bool = True) -> str:
    """Prints and returns one progress line for `step`.

    `images`: images trained on since the previous call, when batches vary in size (the
    multi-scale sampler); None counts `global_batch_size` per step. `rate=False` leaves out
    the rate and the ETA (the first step: its interval is set-up time).
    """
    now = self._time_fn()
    step = int(step)
    steps = step - self._last_step
    elapsed = now - self._last_time - self._excluded
    parts = [f"step {step}/{self.total_steps}"]
    parts += [f"{k} {_format_value(v)}" for k, v in (metrics or {}).items()]
    if rate and steps > 0 and elapsed > 0:
      rate = (steps * self.global_batch_size if images is None else images) / elapsed
      parts.append(f"{rate:.0f} img/s" if rate >= 10 else f"{rate:.1f} img/s")
      parts.append(f"ETA {format_duration((self.total_steps - step) * elapsed / steps)}")
    self._last_step, self._last_time, self._excluded = step, now, 0.0
    line = " | ".join(parts)
    self._print_fn(line)
    return line
