"""The generic loop is task-agnostic: a toy task plugs in, trains, resumes.

Also the workdir's safety: a changed config is refused, a finished model is
final, two runs cannot share a workdir, a corrupt checkpoint falls back.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gdattn import config as config_lib
from gdattn import io
from gdattn import steps
from gdattn import tasks
from gdattn import train
from gdattn import workdir as workdir_lib
from gdattn.configs import synthetic as synthetic_config
from gdattn.tasks.base import Datasets


# A toy task in a dozen lines: least squares y = <w, x> with fresh samples.
@dataclasses.dataclass(frozen=True)
class ToyData:
  dim: int = 3


@dataclasses.dataclass(frozen=True)
class ToyModel:
  pass


class ToyTask:
  name, data_config, model_config = "toy", ToyData, ToyModel
  model_names, select_metric = ("linear",), "mse"

  def validate(self, d, m): config_lib.require(d.dim >= 1, "data.dim", ">= 1", d.dim)

  def make_datasets(self, d):
    w = jnp.arange(1.0, d.dim + 1)
    sample = lambda key, n: (x := jax.random.normal(key, (n, d.dim)), x @ w)
    return Datasets(sample_train=sample, steps_per_epoch=2,
                    evals={"val": sample(jax.random.key(1), 64),
                           "test": sample(jax.random.key(2), 64)})

  def make_model(self, name, m, info, rngs): return nnx.Linear(3, 1, rngs=rngs)
  def loss(self, model, batch): return jnp.mean((model(batch[0])[:, 0] - batch[1]) ** 2)
  def predict(self, model, batch): return model(batch[0])[:, 0]
  def metrics(self, pred, data): return {"mse": jnp.mean((pred - data[1]) ** 2)}
  def summary(self, datasets): return {}


tasks.register(ToyTask())


def toy_config(**train):
  return {"task": "toy", "models": ("linear",), "num_seeds": 2,
          "optim": {"learning_rate": 0.3, "clip_norm": None},
          "train": {"batch_size": 16, "microbatch_size": 8, "num_epochs": 30,
                    "eval_every": 10, "progress": False, **train}}


def test_toy_task_trains_checkpoints_and_resumes(tmp_path):
  run = train.train(toy_config(), str(tmp_path / "full"))
  member = run.results["linear"]["members"][0]
  assert member["test_mse"] < 0.05 * 14  # well below the variance of y (14)
  # The returned best parameters reproduce the reported test metric.
  model = run.models["linear"].model(0)
  test = run.datasets.evals["test"]
  np.testing.assert_allclose(
      float(jnp.mean((model(test[0])[:, 0] - test[1]) ** 2)),
      member["test_mse"], rtol=1e-5)
  # Stop after 10 epochs, then resume to 30: the same results as one run.
  part = str(tmp_path / "part")
  train.train(toy_config(num_epochs=30), part)
  shutil.rmtree(os.path.join(part, "linear", "checkpoints", "30"))
  shutil.rmtree(os.path.join(part, "linear", "checkpoints", "20"))
  os.remove(os.path.join(part, "linear", "results.json"))
  resumed = train.train(toy_config(num_epochs=30), part)
  assert resumed.models["linear"].resumed_from == 10
  assert resumed.results == run.results


def _elapsed(model_dir):
  return [(r["step"], r.get(train.ELAPSED)) for r in io.read_metrics(model_dir)
          if r["split"] == train.TRAIN_LOSS and r["seed"] == 0]


def test_training_time_is_summed_over_resumed_parts(tmp_path):
  def cut_back_to_epoch_10(model_dir, elapsed_at_10):
    # As if killed after the epoch-10 checkpoint, that part having taken
    # `elapsed_at_10` seconds (None: logged before the loop timed itself).
    for step in ("20", "30"):
      shutil.rmtree(os.path.join(model_dir, "checkpoints", step))
    os.remove(os.path.join(model_dir, "results.json"))
    records = io.read_metrics(model_dir)
    for r in records:
      if train.ELAPSED in r:
        del r[train.ELAPSED]
        if elapsed_at_10 is not None:
          r[train.ELAPSED] = elapsed_at_10
    with open(os.path.join(model_dir, io.METRICS_FILE), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)

  model_dir = os.path.join(tmp_path, "linear")
  train.train(toy_config(), str(tmp_path))
  first = _elapsed(model_dir)
  assert [s for s, _ in first] == [10, 20, 30]
  assert 0 < first[0][1] <= first[1][1] <= first[2][1]
  assert train.training_seconds(model_dir) == first[2][1]
  assert train.training_seconds(model_dir, 10) == first[0][1]
  # The resumed part adds its time to the logged total of the first part.
  cut_back_to_epoch_10(model_dir, 1000.0)
  train.train(toy_config(), str(tmp_path))
  resumed = _elapsed(model_dir)
  assert resumed[0] == (10, 1000.0) and 1000.0 < resumed[1][1] <= resumed[2][1]
  assert train.training_seconds(model_dir) == resumed[2][1]
  # A first part without a logged time leaves the total unknown.
  cut_back_to_epoch_10(model_dir, None)
  train.train(toy_config(), str(tmp_path))
  assert [e for _, e in _elapsed(model_dir)] == [None, None, None]
  assert train.training_seconds(model_dir) is None


def test_changed_config_is_refused_naming_each_field(tmp_path):
  smoke = synthetic_config.get_config("smoke")
  smoke.models = ("gd",)
  train.train(smoke, str(tmp_path))
  changed = synthetic_config.get_config("smoke")
  changed.models = ("gd",)
  changed.data.seed = 6
  changed.optim.learning_rate = 0.5
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"config.data.seed: 5 .* 6 now.*config.optim."
                           r"learning_rate.*--overwrite"):
    train.train(changed, str(tmp_path))
  # The refused run wrote nothing: the config on disk is the old one.
  assert io.load_json(os.path.join(tmp_path, "config.json"))["data"]["seed"] == 5
  # Execution-only fields may change; --overwrite starts again.
  smoke.train.progress = True
  train.train(smoke, str(tmp_path))
  res = train.train(changed, str(tmp_path), overwrite=True).results
  assert io.load_json(os.path.join(tmp_path, "config.json"))["data"]["seed"] == 6
  assert res["gd"]["members"][0]["lr"] == 0.5


def test_early_stopped_model_is_final(tmp_path):
  cfg = toy_config(patience=1, num_epochs=200)
  cfg["optim"]["learning_rate"] = 5.0  # diverges at once: no gain after eval 1
  cfg["optim"]["clip_norm"] = 1.0
  first = train.train(cfg, str(tmp_path)).results["linear"]
  assert first["stopped_early"] and first["epochs_run"] < 200
  records = len(io.read_metrics(os.path.join(tmp_path, "linear")))
  again = train.train(cfg, str(tmp_path)).results["linear"]
  assert again == first
  assert len(io.read_metrics(os.path.join(tmp_path, "linear"))) == records


def test_two_runs_cannot_share_a_workdir(tmp_path):
  cfg = config_lib.from_configdict(toy_config())
  with workdir_lib.open_workdir(str(tmp_path), cfg):
    with pytest.raises(workdir_lib.WorkdirError, match=r"in use by pid \d+"):
      workdir_lib.open_workdir(str(tmp_path), cfg)
  # Released on close (and by the kernel when a process dies).
  workdir_lib.open_workdir(str(tmp_path), cfg).close()


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  run = train.train(toy_config(), str(tmp_path / "ref"))
  part = str(tmp_path / "part")
  train.train(toy_config(), part)
  ckpt = os.path.join(part, "linear", "checkpoints")
  os.remove(os.path.join(part, "linear", "results.json"))
  for root, _, files in os.walk(os.path.join(ckpt, "30")):
    for f in files:  # truncate every file of the newest checkpoint
      open(os.path.join(root, f), "w").close()
  again = train.train(toy_config(), part)
  assert again.models["linear"].resumed_from == 20
  assert "unreadable checkpoint" in caplog.text
  assert again.results == run.results


class HugeLossToyTask(ToyTask):
  """The toy task with a test metric of ~1e25: diverged, yet finite."""
  name = "toy_huge"

  def metrics(self, pred, data):
    return {"mse": jnp.mean((pred - data[1]) ** 2) + 1e25}


tasks.register(HugeLossToyTask())


def test_finite_but_diverged_test_metric_is_warned_about(tmp_path, caplog):
  run = train.train({**toy_config(num_epochs=10), "task": "toy_huge"},
                    str(tmp_path))
  assert run.results["linear"]["members"][0]["test_mse"] > 1e24
  warned = [r.getMessage() for r in caplog.records
            if "out of range" in r.getMessage()]
  assert len(warned) == 2, caplog.text  # one per member (seed)
  assert "linear seed 0" in warned[0] and "diverged" in warned[0]


def test_old_workdir_without_format_marker_is_refused(tmp_path):
  cfg = config_lib.from_configdict(toy_config())
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump({"models": ["gd"]}, f)
  with pytest.raises(workdir_lib.WorkdirError, match="older gdattn"):
    workdir_lib.open_workdir(str(tmp_path), cfg)


def test_unknown_task_and_nested_model_field_are_named():
  with pytest.raises(ValueError, match=r"config.task must be one of .*'toy'"):
    config_lib.from_configdict({"task": "tyo"})
  c = synthetic_config.get_config("smoke")
  c.model.trained_tf.unlock()
  c.model.trained_tf.num_head = 3
  with pytest.raises(ValueError, match=r"model.trained_tf.*'num_head' \(did you"
                                       r" mean 'num_heads'\?\)"):
    config_lib.from_configdict(c)


def read_scalars(logdir):
  """{tag: [(step, value)]} from TensorBoard event files (TFRecord framing:
  length, its crc, the Event proto, its crc)."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_tensorboard_event_files_hold_the_metrics(tmp_path):
  train.train(toy_config(tensorboard=True), str(tmp_path))
  board = os.path.join(tmp_path, "linear", "tensorboard", "seed0_lr0.3")
  scalars = read_scalars(board)
  jsonl = [r for r in io.read_metrics(os.path.join(tmp_path, "linear"))
           if r["split"] == "test" and r["seed"] == 0]
  assert [s for s, _ in scalars["test/mse"]] == [10, 20, 30]
  np.testing.assert_allclose([v for _, v in scalars["test/mse"]],
                             [r["mse"] for r in jsonl], rtol=1e-6)


def test_every_synthetic_model_trains_at_k1_with_seeds(tmp_path):
  # GDMLP at K = 1 has no MLP; it used to crash the members' chunked map.
  c = synthetic_config.get_config("smoke")
  c.models = ("gdmlp",)
  c.num_seeds = 2
  c.train.num_epochs = 2
  res = train.train(c, str(tmp_path)).results
  assert all(np.isfinite(m["test_nll"]) for r in res.values()
             for m in r["members"])


def _first_update(lr_scales):
  o = config_lib.OptimConfig(clip_norm=1e-3, lr_scales=lr_scales)
  tx = steps.make_optimizer(o)
  params = {"backbone": {"w": jnp.ones(3)}, "head": {"v": jnp.ones(2)}}
  grads = {"backbone": {"w": jnp.full(3, 1e-4)}, "head": {"v": jnp.full(2, 1e3)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_lr_scales_give_each_group_its_own_clip_and_adam():
  # One group: the global clip shrinks the backbone's gradient to ~7e-11,
  # far below Adam's eps, so it hardly moves.
  one = _first_update({})
  assert float(jnp.abs(one["backbone"]["w"]).max()) < 1e-2
  np.testing.assert_allclose(one["head"]["v"], -1.0, rtol=1e-4)
  # Its own group: clipped and normalised alone, then scaled by 0.5.
  two = _first_update({"backbone": 0.5})
  np.testing.assert_allclose(two["backbone"]["w"], -0.5, rtol=1e-3)
  np.testing.assert_allclose(two["head"]["v"], -1.0, rtol=1e-4)


def test_lr_scales_are_checked():
  cfg = toy_config()
  cfg["optim"]["lr_scales"] = {"backbone": -1.0}
  with pytest.raises(ValueError, match=r"config.optim.lr_scales"):
    config_lib.from_configdict(cfg)
  with pytest.raises(ValueError, match=r"optim.lr_scales: expected keys among "
                     r"the model's top-level parameter groups \['bias', "
                     r"'kernel'\], got \['backbone'\]"):
    steps.check_param_groups({"backbone": 1.0},
                             {"kernel": 0, "bias": 0}, "optim")
  cfg["optim"]["lr_scales"] = {"backbone": 0.1}
  with pytest.raises(ValueError, match=r"got \['backbone'\]"):
    train.train(cfg, "/nonexistent-never-written")


def test_workdir_saved_before_a_later_field_resumes(tmp_path):
  cfg = config_lib.from_configdict(toy_config())
  saved = workdir_lib.config_dict(cfg)
  del saved["optim"]["lr_scales"]  # as written before the field existed
  assert workdir_lib.config_changes(saved, workdir_lib.config_dict(cfg)) == []
  changed = dataclasses.replace(cfg, optim=dataclasses.replace(
      cfg.optim, lr_scales={"kernel": 0.1}))
  assert workdir_lib.config_changes(
      saved, workdir_lib.config_dict(changed)) == [
          ("optim.lr_scales.kernel", "<absent>", 0.1)]


def test_default_optimizer_state_keeps_the_checkpointed_layout():
  # Checkpoints written before lr_scales existed hold (clip, adam, schedule)
  # states: without lr_scales the optimizer must keep that layout to resume.
  tx = steps.make_optimizer(config_lib.OptimConfig())
  state = tx.init({"w": jnp.ones(2)})
  assert [type(s).__name__ for s in state] == [
      "EmptyState", "ScaleByAdamState", "ScaleByScheduleState"]


def test_unrolled_loops_train_the_same_model(tmp_path):
  # train.unroll only changes how XLA is given the loops (no loop around the
  # model, for convolutions on CPU): the same updates, up to rounding.
  looped = train.train(toy_config(num_epochs=20), str(tmp_path / "loop"))
  unrolled = train.train(toy_config(num_epochs=20, unroll=True),
                         str(tmp_path / "unroll"))
  for a, b in zip(jax.tree.leaves(looped.models["linear"].best_params),
                  jax.tree.leaves(unrolled.models["linear"].best_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert (looped.results["linear"]["members"][0]["best_epoch"]
          == unrolled.results["linear"]["members"][0]["best_epoch"])
  # No XLA loop is left around the model in the compiled epoch (the point).
  trainer = unrolled.models["linear"].trainer
  ds = trainer.datasets
  hlo = trainer.program.run_epoch.lower(
      trainer.params, trainer.opt_state, trainer.keys, trainer.lr_S, ds.train,
      np.int32(0)).compile().as_text()
  loops = [line for line in hlo.splitlines() if " while(" in line]
  # The only loops left are inside the random-number generator (threefry).
  assert all("threefry" in line or "_uniform" in line for line in loops)
  # It is an execution field: a run may resume with it changed.
  assert "train.unroll" in config_lib.EXECUTION_FIELDS
  train.train(toy_config(num_epochs=20), str(tmp_path / "unroll"))
