"""Tests for repvit_jax.train.resume.checkpoint: round trip, retention, restore_variables."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from repvit_jax.train.resume import checkpoint as checkpoint_lib
from repvit_jax.io.checkpoint_steps import restore_variables
from repvit_jax.train.resume.checkpoint import Checkpointer, CheckpointMismatch
from conftest import xla_flags


def _state(seed=0, step=0):
  rng = np.random.RandomState(seed)
  params = {
      "blocks_0": {"kernel": jnp.asarray(rng.randn(4, 3), jnp.float32),
                   "bias": jnp.asarray(rng.randn(3), jnp.float32)},
      "head": {"kernel": jnp.asarray(rng.randn(3, 2), jnp.bfloat16)},
  }
  tx = optax.adamw(1e-3)
  return {
      "params": params,
      "batch_stats": {"bn": {"mean": jnp.asarray(rng.randn(3), jnp.float32)}},
      "opt_state": tx.init(params),
      "step": step,
      "count": jnp.int32(step),
      "rng": jax.random.key(seed),
  }


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if isinstance(x, int):
      assert type(y) is int and x == y
      continue
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_values_and_dtypes(tmp_path):
  state = _state(seed=1, step=7)
  ckpt = Checkpointer(tmp_path / "checkpoints")
  assert ckpt.latest_step() is None
  assert ckpt.save(7, state)
  ckpt.close()

  ckpt = Checkpointer(tmp_path / "checkpoints")
  assert ckpt.latest_step() == 7
  # Target from concrete arrays.
  _assert_same(ckpt.restore(_state(seed=2, step=0)), state)
  # Target from abstract values carrying a sharding.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
      if isinstance(x, jax.Array) else x, _state(seed=3))
  restored = ckpt.restore(abstract)
  _assert_same(restored, state)
  assert restored["params"]["head"]["kernel"].sharding == sharding
  ckpt.close()


def test_save_same_step_twice_is_skipped(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(3, _state())
    assert not ckpt.save(3, _state(seed=5))
  with Checkpointer(tmp_path) as ckpt:
    _assert_same(ckpt.restore(_state()), _state())


def test_keeps_latest_and_best(tmp_path):
  # eval/accuracy per step; step 3 was saved without an eval.
  accs = {1: 0.1, 2: 0.9, 3: None, 4: 0.5, 5: 0.2}
  with Checkpointer(tmp_path, max_to_keep=2, keep_best=1) as ckpt:
    for step, acc in accs.items():
      m = {"train/loss": 1.0 / step}
      if acc is not None:
        m["eval/accuracy"] = acc
      assert ckpt.save(step, _state(step=step), metrics=m)
  # latest two (4, 5) + best accuracy (2)
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 4, 5]
  # The best survives a restart (metrics are read back from disk); a step without
  # the metric is never "best".
  with Checkpointer(tmp_path, max_to_keep=2, keep_best=1) as ckpt:
    assert ckpt.metrics(2)["eval/accuracy"] == pytest.approx(0.9)
    ckpt.save(6, _state(step=6), metrics={"train/loss": 0.1})
    ckpt.save(7, _state(step=7))
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 6, 7]


def test_best_mode_min(tmp_path):
  losses = {1: 0.3, 2: 0.1, 3: 0.5, 4: 0.4}
  with Checkpointer(tmp_path, max_to_keep=1, best_metric="eval/loss", best_mode="min",
                    keep_best=1) as ckpt:
    for step, loss in losses.items():
      ckpt.save(step, _state(step=step), metrics={"eval/loss": loss})
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 4]


def test_unfinished_checkpoint_is_ignored(tmp_path):
  ckdir = tmp_path / "checkpoints"
  with Checkpointer(ckdir) as ckpt:
    ckpt.save(1, _state(step=1))
  # What a process killed mid-save leaves: a temporary step directory.
  (ckdir / "2.orbax-checkpoint-tmp-1234").mkdir()
  (ckdir / "2.orbax-checkpoint-tmp-1234" / "state").mkdir()
  assert int(restore_variables(tmp_path)["step"]) == 1
  with Checkpointer(ckdir) as ckpt:
    assert ckpt.latest_step() == 1


def test_restore_variables_workdir_and_checkpoint_dir(tmp_path):
  state = _state(seed=4, step=20)
  with Checkpointer(tmp_path / "checkpoints") as ckpt:
    ckpt.save(10, _state(seed=9, step=10))
    ckpt.save(20, state)
  for path in (tmp_path, tmp_path / "checkpoints", str(tmp_path / "checkpoints" / "20")):
    v = restore_variables(path)
    assert isinstance(v["params"]["blocks_0"]["kernel"], np.ndarray)
    np.testing.assert_array_equal(v["params"]["blocks_0"]["kernel"],
                                  np.asarray(state["params"]["blocks_0"]["kernel"]))
    assert v["params"]["head"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(v["batch_stats"]["bn"]["mean"],
                                  np.asarray(state["batch_stats"]["bn"]["mean"]))
    assert int(v["step"]) == 20
  older = restore_variables(tmp_path, step=10)
  np.testing.assert_array_equal(
      older["params"]["head"]["kernel"].astype(np.float32),
      np.asarray(_state(seed=9)["params"]["head"]["kernel"]).astype(np.float32))


def test_restore_variables_missing_or_empty(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    restore_variables(missing)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty"):
    restore_variables(tmp_path / "empty")
  with pytest.raises(FileNotFoundError):
    Checkpointer(tmp_path / "fresh").restore(_state())


def test_mismatched_target_is_a_clear_error(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state())
    wrong = _state()
    wrong["params"]["blocks_0"]["kernel"] = jnp.zeros((5, 3))
    with pytest.raises(ValueError, match=r"params/blocks_0/kernel: shape \(4, 3\)"):
      ckpt.restore(wrong)
    extra = _state()
    extra["params"]["new"] = jnp.zeros(2)
    with pytest.raises(ValueError, match="params/new: not in the checkpoint"):
      ckpt.restore(extra)


_SHARDED = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from repvit_jax.io.checkpoint_steps import restore_variables
    from repvit_jax.train.resume.checkpoint import Checkpointer
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = jax.device_put(jnp.arange(128.0).reshape(16, 8), NamedSharding(mesh, P("data")))
    ckpt = Checkpointer(sys.argv[1])
    ckpt.save(1, {"x": x, "step": 1})
    ckpt.close()
    target = {"x": jax.ShapeDtypeStruct((16, 8), jnp.float32,
                                        sharding=NamedSharding(mesh, P(None, "data"))),
              "step": 0}
    out = Checkpointer(sys.argv[1]).restore(target)
    assert out["x"].sharding == target["x"].sharding, out["x"].sharding
    assert len(out["x"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(out["x"]), np.arange(128.0).reshape(16, 8))
    np.testing.assert_array_equal(restore_variables(sys.argv[1])["x"],
                                  np.arange(128.0).reshape(16, 8))
    # The digest of an array sharded over devices, computed where it lives (as for a
    # multi-host array), equals the digest of its host copy.
    from repvit_jax.io import digest
    h1, h2 = (int(h) for h in digest._jitted_sums(out["x"]))
    assert digest.array_digest(np.asarray(out["x"])).endswith(f"{h1:08x}{h2:08x}")
    print("OK", out["step"])
""")


def test_sharded_save_restore_on_8_cpu_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert res.returncode == 0, res.stderr[-3000:]
  assert "OK 1" in res.stdout


# ---------------------------------------------------------------------------------------------
# A corrupt newest checkpoint: fall back to an older one, set the bad one aside, never delete.

def _three_checkpoints(tmp_path):
  directory = tmp_path / "checkpoints"
  with Checkpointer(directory, best_metric=None) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(seed=step, step=step), metrics={"train/loss": 1.0})
  return directory


def _truncate_data_files(step_dir):
  for path in step_dir.glob("state/**/d/*"):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _empty_metadata(step_dir):
  (step_dir / "state" / "_METADATA").write_text("")


@pytest.mark.parametrize("damage", [_truncate_data_files, _empty_metadata])
def test_unreadable_newest_checkpoint_falls_back_to_an_older_one(tmp_path, damage):
  directory = _three_checkpoints(tmp_path)
  damage(directory / "3")
  warnings = []
  ckpt = Checkpointer(directory, best_metric=None, warn=warnings.append)
  state, step = ckpt.restore_newest_readable(_state())
  assert step == 2
  _assert_same(state, _state(seed=2, step=2))
  aside = tmp_path / "set_aside" / "3-unreadable"
  assert len(warnings) == 1, warnings       # one line per unreadable step
  assert warnings[0].startswith(f"warning: checkpoint step 3 in {directory} could not be "
                                "restored (")
  assert warnings[0].endswith(f"; details in {tmp_path / 'checkpoint_errors.log'}); moved it "
                              f"to {aside} and used step 2")
  reason = warnings[0].split(" restored (")[1].split("; details")[0]
  assert {"_truncate_data_files": "Error reading",
          "_empty_metadata": "a metadata file is not valid JSON"}[damage.__name__] in reason
  assert "\n" not in warnings[0] and "bound method" not in reason and ": " not in reason[:12]
  assert aside.is_dir() and ckpt.all_steps() == [1, 2]
  assert "Traceback" in (tmp_path / "checkpoint_errors.log").read_text()   # the details, kept
  assert ckpt.save(3, _state(seed=7, step=3))     # the step is free again
  ckpt.close()


def _flip_bytes_in_largest_file(step_dir):
  """Bit rot: 64 bytes XOR-ed in the middle of the step's largest array data file."""
  path = max((p for p in step_dir.glob("state/**/d/*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  for i in range(middle, middle + 64):
    data[i] ^= 0x5A
  path.write_bytes(bytes(data))


def test_bit_rot_is_found_at_restore_and_the_older_step_is_used(tmp_path):
  # Arrays large enough that the largest file holds array data (not an index node, which
  # has a CRC of its own).
  def state(step):
    return {"w": jnp.asarray(np.random.RandomState(step).randn(256, 256), jnp.float32),
            "step": jnp.int32(step)}
  directory = tmp_path / "checkpoints"
  with Checkpointer(directory, best_metric=None) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state(step))
  _flip_bytes_in_largest_file(directory / "3")
  with pytest.raises(ValueError, match=r"w changed on disk since it was saved \(checksum"):
    restore_variables(directory / "3")
  warnings = []
  ckpt = Checkpointer(directory, best_metric=None, warn=warnings.append)
  restored, step = ckpt.restore_newest_readable(state(0))
  assert step == 2
  _assert_same(restored, state(2))
  assert "checksum mismatch" in warnings[0] and "step 3" in warnings[0], warnings
  assert (tmp_path / "set_aside" / "3-unreadable").is_dir()
  ckpt.close()


def test_every_saved_array_has_a_digest_that_a_targetless_read_verifies(tmp_path):
  with Checkpointer(tmp_path / "checkpoints", metadata={"model": {"name": "m"}}) as ckpt:
    ckpt.save(1, _state(seed=1, step=1))
  from repvit_jax.io import checkpoint_steps, digest
  record = checkpoint_steps.step_metadata(str(tmp_path / "checkpoints" / "1"))
  arrays = [k for k, v in jax.tree_util.tree_flatten_with_path(_state())[0]
            if hasattr(v, "dtype")]
  assert len(record[digest.METADATA_KEY]) == len(arrays) == 13
  assert record[digest.SPEC_KEY] == digest.spec_digest({"name": "m"})
  # The numpy read (keys as key data, optax states as dicts) verifies every array, cleanly.
  # (The python int `step` is stored as a scalar, without a digest.)
  read_back = digest.tree_digests(restore_variables(tmp_path))
  assert {k: read_back[k] for k in record[digest.METADATA_KEY]} == record[digest.METADATA_KEY]
  # A digest names the dtype and shape, and changes with any one bit.
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  y = x.copy()
  y.view(np.uint32)[2, 3] ^= 1 << 31
  assert digest.array_digest(x).startswith("float32 (3, 4) ")
  assert digest.array_digest(x) != digest.array_digest(y)


def test_readers_fall_back_to_the_newest_readable_step_and_move_nothing(tmp_path, capfd):
  from repvit_jax import io
  directory = _three_checkpoints(tmp_path)
  _truncate_data_files(directory / "3")
  spec, variables = io.read(str(tmp_path))
  assert spec is None
  _assert_same(variables["params"], jax.device_get(_state(seed=2, step=2)["params"]))
  err = capfd.readouterr().err
  warnings = [l for l in err.splitlines() if l.startswith("warning: ")]
  assert len(warnings) == 1 and warnings[0].startswith(
      f"warning: checkpoint step 3 in {directory} could not be read ("), err
  assert "Traceback" not in err and "Event loop is closed" not in err
  assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["1", "2", "3"]
  with pytest.raises(ValueError, match="could not be"):   # the step itself, when named
    io.read(str(directory / "3"))


def test_unreadable_metrics_set_the_checkpoint_aside_when_opening(tmp_path):
  directory = _three_checkpoints(tmp_path)
  (directory / "3" / "metrics" / "metrics").write_text("")
  warnings = []
  with Checkpointer(directory, best_metric=None, warn=warnings.append) as ckpt:
    assert ckpt.latest_step() == 2
  assert warnings == ["warning: the metrics of checkpoint step 3 are unreadable; moved the "
                      f"checkpoint to {tmp_path / 'set_aside' / '3-unreadable'}"]


def test_no_readable_checkpoint_is_one_error_and_moves_nothing(tmp_path):
  directory = _three_checkpoints(tmp_path)
  for step in (1, 2, 3):
    _empty_metadata(directory / str(step))
  ckpt = Checkpointer(directory, best_metric=None, warn=lambda line: None)
  with pytest.raises(ValueError, match=r"no checkpoint in .* could be restored \(steps 3, 2, 1;"):
    ckpt.restore_newest_readable(_state())
  assert ckpt.all_steps() == [1, 2, 3] and not (tmp_path / "set_aside").exists()
  ckpt.close()


def test_another_configs_checkpoint_is_an_error_not_a_fallback(tmp_path):
  directory = _three_checkpoints(tmp_path)
  other = _state()
  other["params"]["blocks_0"]["kernel"] = jnp.zeros((5, 3))
  ckpt = Checkpointer(directory, best_metric=None, warn=lambda line: None)
  with pytest.raises(CheckpointMismatch, match="blocks_0/kernel: shape"):
    ckpt.restore_newest_readable(other)
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()


def test_a_disk_too_full_for_a_step_is_one_error_before_anything_is_written(tmp_path,
                                                                            monkeypatch):
  ckpt = Checkpointer(tmp_path / "checkpoints")
  assert ckpt.save(1, _state(step=1))
  ckpt.wait_until_finished()
  full = type("Usage", (), {"total": 2**30, "used": 2**30 - 5000, "free": 5000})()
  monkeypatch.setattr(checkpoint_lib.shutil, "disk_usage", lambda path: full)
  with pytest.raises(checkpoint_lib.SaveError) as error:
    ckpt.save(2, _state(step=2))
  assert str(error.value).startswith(
      f"could not save checkpoint step 2 in {tmp_path / 'checkpoints'} (the step needs about ")
  assert str(error.value).endswith(
      ", 4.9 KiB free there); the last good checkpoint is step 1: free some space (or lower "
      "--config.keep_checkpoints) and run again with the same workdir to resume from it")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  monkeypatch.undo()
  ckpt.close()
