"""Tests for repvit_jax.train.metrics: jsonl writer, resume truncation, progress line."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from repvit_jax.train import metrics as metrics_lib


def test_jsonl_round_trip(tmp_path):
  w = metrics_lib.MetricWriter(tmp_path, tensorboard=False)
  w.write(1, {"train/loss": jnp.float32(1.5), "lr": np.float64(0.001)})
  w.write(2, {"train/loss": 1.25, "eval/accuracy": jnp.array(0.5)})
  w.close()
  want = [{"step": 1, "train/loss": 1.5, "lr": 0.001},
          {"step": 2, "train/loss": 1.25, "eval/accuracy": 0.5}]
  assert metrics_lib.read_metrics(tmp_path / "metrics.jsonl") == want
  assert metrics_lib.read_metrics(tmp_path) == want
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[0])["step"] == 1
  assert isinstance(json.loads(lines[0])["step"], int)


def test_append_across_runs_and_resume_truncation(tmp_path):
  with metrics_lib.MetricWriter(tmp_path, tensorboard=False) as w:
    for step in range(1, 6):
      w.write(step, {"loss": float(step)})
  # A killed run can leave a torn last line.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')
  # Resuming from the checkpoint at step 3 drops steps 4, 5 and the torn line.
  with metrics_lib.MetricWriter(tmp_path, tensorboard=False, resume_step=3) as w:
    assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [1, 2, 3]
    w.write(4, {"loss": 40.0})
  rows = metrics_lib.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[-1]["loss"] == 40.0
  # Without resume_step an existing file is appended to, untouched.
  with metrics_lib.MetricWriter(tmp_path, tensorboard=False) as w:
    w.write(5, {"loss": 50.0})
  assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [1, 2, 3, 4, 5]


def test_non_chief_writes_nothing(tmp_path):
  w = metrics_lib.MetricWriter(tmp_path / "run", is_chief=False)
  w.write(1, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "run").exists()


def test_tensorboard_event_file(tmp_path):
  with metrics_lib.MetricWriter(tmp_path, tensorboard=True) as w:
    w.write(7, {"train/loss": 2.5})
  events = [f for f in os.listdir(tmp_path) if "tfevents" in f]
  assert len(events) == 1 and os.path.getsize(tmp_path / events[0]) > 0
  if importlib.util.find_spec("tensorflow") is not None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    found = []
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / events[0])):
      for v in event.summary.value:
        value = v.simple_value if v.HasField("simple_value") else \
            float(tf.make_ndarray(v.tensor))
        found.append((event.step, v.tag, value))
    assert found == [(7, "train/loss", 2.5)]


def test_progress_line_format():
  clock = iter([100.0, 110.0, 120.0, 121.0])
  lines = []
  p = metrics_lib.Progress(1000, 256, start_step=100, time_fn=lambda: next(clock),
                           print_fn=lines.append)
  # 20 steps x 256 images in 10 s = 512 img/s; 880 steps left at 0.5 s each = 7m20s.
  line = p.log(120, {"loss": 1.23456})
  assert line == "step 120/1000 | loss 1.235 | 512 img/s | ETA 7m20s"
  assert lines == [line]
  # The rate uses the last interval only: 880 steps in 10 s -> 0 s left.
  assert p.log(1000, {"loss": 0.5, "lr": 1e-4}) == \
      "step 1000/1000 | loss 0.5 | lr 0.0001 | 22528 img/s | ETA 0s"
  # No steps since the last call: no rate, no ETA.
  assert p.log(1000, {}) == "step 1000/1000"


def test_progress_counts_the_images_it_is_given():
  # Multi-scale batches vary: 10 steps that trained 3,000 images in 5 s are 600 img/s.
  clock = iter([0.0, 5.0])
  p = metrics_lib.Progress(100, 256, time_fn=lambda: next(clock), print_fn=lambda line: None)
  assert p.log(10, images=3000) == "step 10/100 | 600 img/s | ETA 45s"


def test_progress_leaves_compilation_and_the_first_step_out_of_the_rate():
  """A compile inside an interval is excluded; the first step's line has no rate (its
  interval is set-up), and the next interval starts after it."""
  clock = iter([0.0, 30.0, 40.0, 52.0])
  p = metrics_lib.Progress(101, 10, time_fn=lambda: next(clock), print_fn=lambda line: None)
  assert p.log(1, {"loss": 2.5}, rate=False) == "step 1/101 | loss 2.5"     # at t=30
  p.exclude(8.0)                  # a new batch shape compiled for 8 s of the next 10
  assert p.log(11, {}) == "step 11/101 | 50 img/s | ETA 18s"               # 10 steps in 2 s
  assert p.log(21, {}) == "step 21/101 | 8.3 img/s | ETA 1m36s"            # 12 s: no exclusion


def test_progress_prints(capsys):
  p = metrics_lib.Progress(10, 8)
  line = p.log(5, {"loss": 2.0})
  assert capsys.readouterr().out == line + "\n"
  assert line.startswith("step 5/10 | loss 2 | ") and "img/s | ETA " in line


def test_format_duration():
  assert metrics_lib.format_duration(45) == "45s"
  assert metrics_lib.format_duration(192) == "3m12s"
  assert metrics_lib.format_duration(2 * 3600 + 5 * 60 + 7) == "2h05m"
  assert metrics_lib.format_duration(27 * 3600) == "1d03h"
