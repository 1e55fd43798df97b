"""End-to-end tests of gdattn/train.py on the ':smoke' config.

Covers: outputs (metrics, checkpoints, plot, results), SIGKILL + resume giving
exactly the uninterrupted metrics, vmapped seeds equal to separate runs, the
same metrics on 8 simulated devices, microbatched = whole-batch gradients,
members in chunks = all members vmapped, the NaN guard and config validation.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gdattn import config as config_lib
from gdattn import tasks
from gdattn.configs import synthetic as synthetic_config
from gdattn import io
from gdattn import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# vmap and sharding may reorder float32 reductions; metrics agree to this.
REORDER_RTOL = 1e-4


def smoke(**overrides):
  c = synthetic_config.get_config("smoke")
  c.models = ("gd",)
  for key, value in overrides.items():
    target = c
    *path, leaf = key.split(".")
    for p in path:
      target = target[p]
    target[leaf] = value
  return c


def _run_main(workdir, *flags, env=None, wait=True):
  cmd = [sys.executable, "-m", "experiments.main",
         "--config=gdattn/configs/synthetic.py:smoke",
         f"--workdir={workdir}", *flags]
  proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if wait:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
  return proc


def _test_metrics(workdir, model="gd"):
  with open(os.path.join(workdir, "results.json")) as f:
    return {k: v for k, v in json.load(f)[model]["members"][0].items()}


def test_end_to_end_outputs(tmp_path):
  workdir = str(tmp_path)
  results = train.train_and_evaluate(smoke(models=("gd", "trained_tf")), workdir)
  for name in ("gd", "trained_tf"):
    res = results[name]
    member = res["members"][0]
    assert 0 <= member["test_accuracy"] <= 1 and np.isfinite(member["test_nll"])
    # Learnt something: below uniform predictions (ln C, C = 6 classes).
    assert member["test_nll"] < np.log(6) - 0.05, (name, member)
    assert 0 < res["bayes"]["bayes_max_prob"] <= 1
    assert io.Checkpointer(os.path.join(workdir, name, "checkpoints")).latest_step() == 6
    records = io.read_metrics(os.path.join(workdir, name))
    assert {r["split"] for r in records} == {"train", "val", "test", "train_loss"}
    assert sorted({r["step"] for r in records}) == [2, 4, 6]
  assert results["gd"]["num_params"] < results["trained_tf"]["num_params"]
  assert os.path.getsize(os.path.join(workdir, "curves.png")) > 1000
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["models"] == ["gd", "trained_tf"]


def test_sigkill_and_resume_match_uninterrupted_run(tmp_path):
  flags = ["--config.models=gd", "--config.train.num_epochs=40",
           "--config.train.eval_every=4", "--config.optim.learning_rate=0.02"]
  full = str(tmp_path / "full")
  _run_main(full, *flags)
  killed = str(tmp_path / "killed")
  proc = _run_main(killed, *flags, wait=False)
  ckpt_dir = os.path.join(killed, "gd", "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if steps and max(map(int, steps)) >= 8:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "results.json"))
  _run_main(killed, *flags)
  assert _test_metrics(killed) == _test_metrics(full)
  # The resumed log has each evaluation once, as the uninterrupted one.
  steps = [(r["step"], r["split"]) for r in io.read_metrics(os.path.join(killed, "gd"))]
  full_steps = [(r["step"], r["split"]) for r in io.read_metrics(os.path.join(full, "gd"))]
  assert steps == full_steps


def test_vmapped_seeds_equal_separate_runs(tmp_path):
  together = train.train_and_evaluate(
      smoke(num_seeds=2, **{"optim.learning_rate": 0.02}), str(tmp_path / "a"))
  alone = train.train_and_evaluate(
      smoke(seed=1, **{"optim.learning_rate": 0.02}), str(tmp_path / "b"))
  member = together["gd"]["members"][1]
  assert member["seed"] == 1
  for key, value in alone["gd"]["members"][0].items():
    np.testing.assert_allclose(member[key], value, rtol=REORDER_RTOL, err_msg=key)
  # The two seeds really differ.
  assert together["gd"]["members"][0]["best_val_nll"] != member["best_val_nll"]


def test_microbatched_gradients_match_whole_batch(tmp_path):
  # 4 microbatches of 4 contexts (train.py micro_grads) vs the whole batch of
  # 16 at once: the same mean gradient up to float reordering.
  runs = {
      micro: train.train_and_evaluate(
          smoke(**{"optim.learning_rate": 0.02, "train.microbatch_size": micro}),
          str(tmp_path / str(micro)))["gd"]["members"][0]
      for micro in (4, None)
  }
  for key, value in runs[None].items():
    np.testing.assert_allclose(runs[4][key], value, rtol=REORDER_RTOL, err_msg=key)


def test_members_in_chunks_equal_all_members_vmapped():
  # 3 seeds in chunks of 2 (the last chunk short) vs all 3 vmapped together.
  def trained(members_per_step):
    cfg = config_lib.from_configdict(smoke(
        num_seeds=3, **{"optim.learning_rate": 0.02,
                        "train.members_per_step": members_per_step}))
    trainer = train.make_trainer(cfg, "gd", tasks.get("synthetic").make_datasets(cfg.data))
    (_, params, _, loss), = trainer.epoch_chunks(3, 3)
    return params, loss
  (chunked, chunked_loss), (together, together_loss) = trained(2), trained(None)
  np.testing.assert_allclose(chunked_loss, together_loss, rtol=REORDER_RTOL)
  for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(together)):
    np.testing.assert_allclose(a, b, rtol=REORDER_RTOL, atol=1e-7)
  # The members really differ from each other.
  assert not np.allclose(together["lrs"][0], together["lrs"][1])


def test_epoch_chunks_equal_one_run_epochs_call():
  cfg = config_lib.from_configdict(smoke(**{"optim.learning_rate": 0.02}))
  trainer = train.make_trainer(cfg, "gd", tasks.get("synthetic").make_datasets(cfg.data))
  chunks = list(trainer.epoch_chunks(5, 2))
  assert [done for done, *_ in chunks] == [2, 4, 5]
  whole = trainer.program.run_epochs(
      trainer.params, trainer.opt_state, trainer.keys, trainer.lr_S,
      trainer.datasets.train, np.arange(5))
  np.testing.assert_allclose(
      np.concatenate([loss for *_, loss in chunks]), whole[2], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(chunks[-1][1]), jax.tree.leaves(whole[0])):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_eight_simulated_devices_match_one(tmp_path):
  """train.cpu_devices=8 (set by experiments.main before JAX starts: the
  run fails if it is not) trains on 8 CPU devices to the same numbers."""
  flags = ["--config.models=gd,trained_tf", "--config.optim.learning_rate=0.02"]
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  _run_main(one, *flags, env={"XLA_FLAGS": ""})
  _run_main(eight, *flags, "--config.train.cpu_devices=8",
            env={"XLA_FLAGS": ""})
  for model in ("gd", "trained_tf"):
    a, b = _test_metrics(one, model), _test_metrics(eight, model)
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=REORDER_RTOL, err_msg=key)


def test_cpu_devices_other_than_jaxs_fail_before_anything_is_written(tmp_path):
  cfg = smoke(**{"train.cpu_devices": jax.device_count() + 1})
  with pytest.raises(ValueError, match=r"config.train.cpu_devices: expected"
                     r" \d+ CPU devices, JAX has \d+; call jax.config.update"):
    train.train(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_nonfinite_loss_stops_with_a_clear_error(tmp_path):
  cfg = smoke(**{"optim.learning_rate": 1e30, "optim.clip_norm": None,
                 "model.init_scale": 1.0, "train.eval_every": 1})
  with pytest.raises(FloatingPointError, match=r"non-finite .* epoch \d+"):
    train.train_and_evaluate(cfg, str(tmp_path))


@pytest.mark.parametrize("key,value,match", [
    ("models", ("gd", "mlp"), "config.models"),
    ("model.kernel", "cosine", "config.model.kernel"),
    ("model.num_layers", 0, "config.model.num_layers"),
    ("train.batch_size", 1000, "config.train.batch_size"),
    ("optim.learning_rate", -1.0, "config.optim.learning_rate"),
    ("data.name", "imagenet", "config.data.name"),
    ("train.members_per_step", 0, "config.train.members_per_step"),
    ("train.cpu_devices", 0, "config.train.cpu_devices"),
])
def test_bad_config_fails_before_compute(key, value, match):
  with pytest.raises(ValueError, match=match):
    config_lib.from_configdict(smoke(**{key: value}))


def test_unknown_config_field_is_named():
  c = smoke()
  c.train.unlock()
  c.train.num_epoch = 3
  with pytest.raises(ValueError, match="num_epoch"):
    config_lib.from_configdict(c)
