"""The command line: one-line errors before any compute, print_config, reruns."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=gdattn/configs/synthetic.py:smoke"


def _main(*args):
  proc = subprocess.run([sys.executable, "-m", "experiments.main", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("flag,match", [
    ("--config.train.num_epoch=3", 'Did you mean "num_epochs"'),
    ("--config.optim.learning_rate=inf", "config.optim.learning_rate must be a"
                                         " finite number > 0, got inf"),
    ("--config.optim_overrides.mlp.learning_rate=1.0", "optim_overrides"),
    ("--config.data.mixture_scale=-1.0", "config.data.mixture_scale"),
    ("--config.model.trained_tf.token_layout=dense",
     "config.model.trained_tf.token_layout"),
])
def test_bad_config_is_one_line_naming_the_field(tmp_path, flag, match):
  workdir = str(tmp_path / "w")
  rc, out, err = _main(SMOKE, flag, f"--workdir={workdir}")
  assert rc == 2, (out, err)
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), err
  assert match in lines[0]
  assert not os.path.exists(workdir)  # nothing written before the check


def test_print_config_lists_every_field_with_defaults():
  rc, out, _ = _main(SMOKE, "--print_config")
  assert rc == 0
  assert "config.model.trained_tf.num_heads = 2" in out
  assert "config.train.patience = None" in out
  # Each field with its meaning, the comments aligned in one column.
  lines = out.splitlines()
  assert all(" = " in l and "   # " in l for l in lines), out
  assert len({l.index("   # ") for l in lines}) == 1
  name = next(l for l in lines if l.startswith("config.data.name = "))
  assert "generator" in name.split("#", 1)[1]


def test_rerun_of_a_finished_workdir_prints_complete_at_once(tmp_path):
  workdir = str(tmp_path / "w")
  rc, out, _ = _main(SMOKE, "--config.models=gd", f"--workdir={workdir}")
  assert rc == 0 and re.search(r"^gd: \d+ s in the training loop$", out, re.M), out
  rc, out, _ = _main(SMOKE, "--config.models=gd", f"--workdir={workdir}")
  assert rc == 0 and "is complete" in out and "test accuracy" in out
  rc, _, err = _main(SMOKE, "--config.models=gd", "--config.data.seed=6",
                     f"--workdir={workdir}")
  assert rc == 2 and "config.data.seed: 5 in the workdir, 6 now" in err


def test_synthetic_task_notes_an_unconverged_trained_tf():
  from gdattn import config as config_lib  # pylint: disable=g-import-not-at-top
  from gdattn import tasks  # pylint: disable=g-import-not-at-top
  from gdattn.configs import synthetic  # pylint: disable=g-import-not-at-top
  task = tasks.get("synthetic")
  demo = config_lib.from_configdict(synthetic.get_config())
  (note,) = task.notes(demo)
  assert "after 100 epochs it is far from converged" in note
  assert "5000 epochs" in note and "0.575" in note
  paper = config_lib.from_configdict(synthetic.get_config("paper"))
  assert task.notes(paper) == ()


def test_notes_after_results_and_unreadable_checkpoints_in_one_line(tmp_path):
  workdir = tmp_path / "w"
  rc, out, _ = _main(SMOKE, "--config.models=trained_tf", f"--workdir={workdir}")
  assert rc == 0
  results, note = out.index("trained_tf   lr="), out.index("Note: The Trained")
  assert results < note and "after 6 epochs" in out[note:]
  # Unfinish the run and truncate every checkpoint: nothing can resume.
  os.remove(workdir / "results.json")
  os.remove(workdir / "trained_tf" / "results.json")
  for root, _, files in os.walk(workdir / "trained_tf" / "checkpoints"):
    for name in files:
      open(os.path.join(root, name), "w").close()
  rc, _, err = _main(SMOKE, "--config.models=trained_tf", f"--workdir={workdir}")
  assert rc == 2, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err  # no traceback, no orbax or asyncio noise
  assert lines[0].startswith("error: no usable checkpoint in ")
  assert "checkpoints" in lines[0] and "Event loop is closed" not in err
