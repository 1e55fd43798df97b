"""Tests for gdattn/io.py: metrics log, JSON files, checkpoints, plots."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gdattn import io


def test_writer_reader_roundtrip(tmp_path):
  workdir = str(tmp_path / "run")
  with io.MetricsWriter(workdir) as writer:
    writer.write(
        0, {"split": "train", "nll": jnp.float32(1.5), "acc": np.float64(0.25)}
    )
    writer.write(
        np.int64(10), {"split": "val", "nll": jnp.array(0.5), "model": "gd"}
    )
  records = io.read_metrics(workdir)
  assert records == [
      {"step": 0, "split": "train", "nll": 1.5, "acc": 0.25},
      {"step": 10, "split": "val", "nll": 0.5, "model": "gd"},
  ]
  assert all(type(r["nll"]) is float for r in records)
  assert all(type(r["step"]) is int for r in records)


def test_writer_flushes_each_write(tmp_path):
  writer = io.MetricsWriter(str(tmp_path))
  writer.write(3, {"nll": 1.0})
  # Still open: the record must already be on disk for a reader (or a kill).
  assert io.read_metrics(str(tmp_path)) == [{"step": 3, "nll": 1.0}]
  writer.close()


def test_writer_rejects_non_scalars_and_step_key(tmp_path):
  with io.MetricsWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="metric 'nll': expected a scalar"):
      writer.write(0, {"nll": jnp.ones(3)})
    with pytest.raises(ValueError, match="'step' is reserved"):
      writer.write(0, {"step": 1})


def test_resume_truncates_records_after_checkpoint(tmp_path):
  workdir = str(tmp_path)
  with io.MetricsWriter(workdir) as writer:
    for step in (100, 200, 300):
      writer.write(step, {"split": "val", "nll": step / 100})
  # Simulates a kill mid-write after step 300: a torn line without newline.
  with open(os.path.join(workdir, io.METRICS_FILE), "a") as f:
    f.write('{"step": 400, "nl')
  # Resume from the checkpoint at step 200, then log 300 again.
  with io.MetricsWriter(workdir) as writer:
    assert writer.truncate_after(200) == 1  # the torn line is not a record.
    writer.write(300, {"split": "val", "nll": 9.0})
  records = io.read_metrics(workdir)
  got = [(r["step"], r["nll"]) for r in records]
  assert got == [(100, 1.0), (200, 2.0), (300, 9.0)]


def test_torn_last_line_does_not_swallow_next_record(tmp_path):
  path = os.path.join(str(tmp_path), io.METRICS_FILE)
  with open(path, "w") as f:
    f.write('{"step": 1, "nll": 1.0}\n{"step": 2, "n')
  with io.MetricsWriter(str(tmp_path)) as writer:
    writer.write(2, {"nll": 2.0})
  assert io.read_metrics(str(tmp_path)) == [
      {"step": 1, "nll": 1.0},
      {"step": 2, "nll": 2.0},
  ]


def test_truncate_none_clears_log(tmp_path):
  with io.MetricsWriter(str(tmp_path)) as writer:
    writer.write(1, {"nll": 1.0})
    assert writer.truncate_after(None) == 1
    writer.write(1, {"nll": 2.0})
  assert io.read_metrics(str(tmp_path)) == [{"step": 1, "nll": 2.0}]


def test_read_metrics_missing_file(tmp_path):
  assert io.read_metrics(str(tmp_path / "nothing")) == []


def test_save_config_from_configdict_and_dataclass(tmp_path):
  config = ml_collections.ConfigDict()
  config.seed = 3
  config.model = ml_collections.ConfigDict({"kernel": "softmax", "depth": 2})
  config.lr_schedule = (0.1, 0.01)
  path = io.save_config(str(tmp_path / "a"), config)
  with open(path) as f:
    assert json.load(f) == {
        "seed": 3,
        "model": {"kernel": "softmax", "depth": 2},
        "lr_schedule": [0.1, 0.01],
    }

  @dataclasses.dataclass(frozen=True)
  class Cfg:
    seed: int = 1
    dtype: type = jnp.float32

  path = io.save_config(str(tmp_path / "b"), Cfg())
  with open(path) as f:
    assert json.load(f)["seed"] == 1


def test_save_results(tmp_path):
  results = {"test_nll": jnp.float32(0.5), "best_step": 7}
  path = io.save_results(str(tmp_path), results)
  with open(path) as f:
    assert json.load(f) == {"test_nll": 0.5, "best_step": 7}


def _state(seed):
  params = {"w_CxE": jnp.arange(6.0).reshape(3, 2) + seed, "s": jnp.array(1.5)}
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)
  # One real update so that mu, nu and count are not their zero init.
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)
  return {
      "params": params,
      "opt_state": opt_state,
      "step": jnp.array(seed, jnp.int32),
      "key": jax.random.key(seed),
  }


def test_checkpoint_roundtrip_with_key_and_adam(tmp_path):
  ckpt = io.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() is None
  state = _state(seed=5)
  assert ckpt.save(5, state)
  ckpt.close()

  # A fresh Checkpointer, as after a restart, restores into a different state.
  ckpt = io.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() == 5
  restored = ckpt.restore(None, _state(seed=0))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(
      jax.random.key_data(restored["key"]), jax.random.key_data(state["key"])
  )
  data = lambda t: jax.tree.leaves(io._keys_to_data(t))  # keys as uint32.
  for got, want in zip(data(restored), data(state), strict=True):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  ckpt.close()


def test_latest_step_and_max_to_keep(tmp_path):
  ckpt = io.Checkpointer(str(tmp_path), max_to_keep=2)
  for step in (10, 20, 30):
    assert ckpt.save(step, _state(step))
  assert ckpt.latest_step() == 30
  assert ckpt.all_steps() == [20, 30]
  assert sorted(os.listdir(tmp_path)) == ["20", "30"]
  # Orbax quirk: a step not after the latest is skipped, not an error.
  assert not ckpt.save(15, _state(15))
  restored = ckpt.restore(20, _state(0))
  assert int(restored["step"]) == 20
  ckpt.close()


def test_restore_without_checkpoint_raises(tmp_path):
  ckpt = io.Checkpointer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(None, _state(0))
  ckpt.close()


@pytest.mark.parametrize("with_model", [False, True])
def test_plot_curves_writes_png(tmp_path, with_model):
  with io.MetricsWriter(str(tmp_path)) as writer:
    for model in ("gd", "tf") if with_model else (None,):
      for step in (0, 100, 200):
        for split in ("train", "val", "test"):
          record = {"split": split, "nll": 1 / (step + 1), "accuracy": step / 3}
          if model:
            record["model"] = model
          writer.write(step, record)
  path = str(tmp_path / "curves.png")
  assert io.plot_curves(str(tmp_path), path) == path
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 1000
  # Records work as input too, including a metric no record has.
  path2 = str(tmp_path / "curves2.png")
  records = io.read_metrics(str(tmp_path))
  io.plot_curves(records, path2, metrics=("nll", "missing"))
  assert os.path.getsize(path2) > 1000


def test_save_survives_sigkill_right_after(tmp_path):
  # A child saves, logs and then SIGKILLs itself with no chance to clean up.
  child = textwrap.dedent(f"""
      import os, signal, jax
      from gdattn import io
      ckpt = io.Checkpointer({str(tmp_path / "ckpt")!r})
      ckpt.save(7, {{"w": jax.numpy.ones(3), "key": jax.random.key(7)}})
      io.MetricsWriter({str(tmp_path)!r}).write(7, {{"nll": 0.5}})
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", child], cwd=root, check=False)
  assert proc.returncode == -signal.SIGKILL
  ckpt = io.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() == 7
  restored = ckpt.restore(7, {"w": jnp.zeros(3), "key": jax.random.key(0)})
  np.testing.assert_array_equal(restored["w"], np.ones(3))
  np.testing.assert_array_equal(
      jax.random.key_data(restored["key"]),
      jax.random.key_data(jax.random.key(7)),
  )
  ckpt.close()
  assert io.read_metrics(str(tmp_path)) == [{"step": 7, "nll": 0.5}]
