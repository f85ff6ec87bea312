"""Which checkpoints come from before a divergence.

The loss at step s is computed with the parameters saved as checkpoint s - 1, so a
checkpoint's health is the loss and gradient norm of the step after it. `HealthLog` records
them in `<checkpoint dir>/health.json` as the run goes:

  {"records": {"<step>": {"loss": L(step + 1), "grad_norm": G(step + 1),
                          "min_loss": lowest loss seen up to step + 1}},
   "applied_resume_steps": [...], "awaiting_advice": bool}

A checkpoint is healthy when both are finite and its loss is at most `DIVERGENCE_FACTOR` times
the lowest loss seen so far. After a non-finite loss the trainer names the latest healthy
checkpoint, and `--config.resume_step=N` resumes there.

The same `--config.resume_step=N` stays on the command line of a job that is pre-empted and
restarted; applying it again would throw away the progress made since. So a resume step is
applied when the run is answering a divergence (`awaiting_advice`, set when the trainer gave
its advice) or when it was never applied before; otherwise the run resumes from its latest
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

HEALTH_FILE = 'health.json'
# A loss ten times the lowest one seen is not noise for cross-entropy or pixel MSE.
DIVERGENCE_FACTOR = 10.0


class HealthLog:
  """Per-checkpoint health, persisted beside the checkpoints (written by process 0).

  Args:
    directory: the checkpoint directory.
    is_chief: whether this process writes the file.
  """

  def __init__(self, directory: str, is_chief: bool = True):
    self.path = os.path.join(directory, HEALTH_FILE)
    self.is_chief = is_chief
    self.records: Dict[int, Dict[str, float]] = {}
    self.applied_resume_steps: List[int] = []
    self.awaiting_advice = False
    try:
      with open(self.path, encoding='utf-8') as f:
        stored = json.load(f)
      self.records = {int(k): dict(v) for k, v in stored.get('records', {}).items()}
      self.applied_resume_steps = [int(s) for s in stored.get('applied_resume_steps', [])]
      self.awaiting_advice = bool(stored.get('awaiting_advice', False))
    except (OSError, ValueError, AttributeError, TypeError):
      pass    # no file yet, or one from a killed write: health is unknown, never wrong
    self.min_loss = math.inf
    self._awaiting: Optional[int] = None

  def start(self, step: int) -> None:
    """The run starts (or resumes) at `step`: the next loss measures checkpoint `step`."""
    self._awaiting = step if step > 0 else None
    earlier = [r['min_loss'] for s, r in self.records.items() if s <= step]
    self.min_loss = min(earlier, default=math.inf)

  def checkpoint_saved(self, step: int) -> None:
    self._awaiting = step

  def observe(self, rows: Iterable[Tuple[int, float, float]]) -> None:
    """Takes (step, loss, grad_norm) of consecutive steps, in order."""
    changed = False
    for step, loss, grad_norm in rows:
      if math.isfinite(loss):
        self.min_loss = min(self.min_loss, loss)
      if self._awaiting is not None and step == self._awaiting + 1:
        self.records[self._awaiting] = {'loss': float(loss), 'grad_norm': float(grad_norm),
                                        'min_loss': float(self.min_loss)}
        self._awaiting, changed = None, True
    if changed:
      self._write()

  def is_healthy(self, step: int) -> Optional[bool]:
    """True / False for a checkpoint whose next step was seen; None when unknown."""
    record = self.records.get(step)
    if record is None:
      return None
    loss, grad_norm, lowest = record['loss'], record['grad_norm'], record['min_loss']
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      return False
    return not math.isfinite(lowest) or loss <= DIVERGENCE_FACTOR * max(lowest, 1e-12)

  def latest_healthy(self, steps: Sequence[int]) -> Optional[int]:
    healthy = [s for s in steps if self.is_healthy(s)]
    return max(healthy) if healthy else None

  def describe(self, step: int) -> str:
    record = self.records.get(step)
    if record is None:
      return f'step {step} (next loss not seen)'
    return f'step {step} (next loss {record["loss"]:.4g})'

  def forget_after(self, step: int) -> None:
    """Drops the records of checkpoints after `step` (resuming from `step`)."""
    self.records = {s: r for s, r in self.records.items() if s <= step}
    self._write()

  def diverged(self) -> None:
    """The run stopped on a divergence and advised a resume step: the next one is honoured."""
    self.awaiting_advice = True
    self._write()

  def should_apply(self, resume_step: int) -> bool:
    """Whether `--config.resume_step=resume_step` is an answer to advice (or a first request),
    rather than the same flag on a restarted job."""
    return self.awaiting_advice or int(resume_step) not in self.applied_resume_steps

  def mark_applied(self, resume_step: int) -> None:
    self.applied_resume_steps.append(int(resume_step))
    self.awaiting_advice = False
    self._write()

  def _write(self) -> None:
    if not self.is_chief:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = self.path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump({'records': {str(k): v for k, v in sorted(self.records.items())},
                 'applied_resume_steps': self.applied_resume_steps,
                 'awaiting_advice': self.awaiting_advice}, f, indent=1)
    os.replace(tmp, self.path)


__all__ = ['HealthLog', 'DIVERGENCE_FACTOR', 'HEALTH_FILE']
