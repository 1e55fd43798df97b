"""experiments/reproduce_structure.py --workdirs on a finished smoke run."""

import json
import subprocess
import sys

import pytest

# Run in subprocesses: importing the script here would define its absl flags
# in the test process, where other scripts' tests define theirs.


def _main(workdir, *overrides):
  subprocess.run(
      [sys.executable, "-m", "experiments.main",
       "--config=gdattn/configs/synthetic.py:smoke,layers=2",
       f"--workdir={workdir}", *overrides],
      check=True, capture_output=True, text=True)


def _structure(*args):
  return subprocess.run(
      [sys.executable, "-m", "experiments.reproduce_structure", *args],
      capture_output=True, text=True)


@pytest.fixture(name="tf_run", scope="module")
def fixture_tf_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("runs") / "tf_smoke"
  _main(workdir, "--config.models=trained_tf", "--config.num_seeds=2")
  return workdir


def test_workdirs_analyses_every_seed(tf_run, tmp_path):
  # Named twice: its second analysis replaces the first entry.
  out = _structure(f"--workdirs={tf_run},{tf_run}", f"--out_dir={tmp_path}")
  assert out.returncode == 0, out.stderr
  result = json.loads((tmp_path / "structure.json").read_text())
  assert result["runs"] == []  # nothing trained by the script itself
  (entry,) = result["from_workdirs"]
  assert entry["layers"] == 2 and entry["seeds"] == 2
  assert entry["workdir"] == "tf_smoke" and len(entry["test_accuracy"]) == 2
  assert entry["best_seed"] == max(range(2),
                                   key=lambda i: entry["test_accuracy"][i])
  blocks = entry["trained"]["cosine"]
  assert {"self_qk_x/0", "self_vo_f/0", "cross_qk_f/0", "self_qk_x/1",
          "self_vo_f/1", "cross_qk_f/1"} <= set(blocks)
  for mean, std in blocks.values():
    assert -1.0 <= mean <= 1.0 and std >= 0.0
  assert set(entry["init"]["cosine"]) == set(blocks)
  assert (tmp_path / entry["png"]).stat().st_size > 0
  md = (tmp_path / "structure.md").read_text()
  assert "## K = 2, finished run `tf_smoke` (2 seeds" in md
  # Rows in the construction's order, not the JSON's sorted keys.
  assert md.index("| self_qk_x/0 |") < md.index("| cross_qk_f/0 |")


def test_workdirs_refuses_a_run_without_the_trained_tf(tf_run, tmp_path):
  workdir = tmp_path / "gd_smoke"
  workdir.mkdir()
  config = json.loads((tf_run / "config.json").read_text())
  config["models"] = ["gd"]
  (workdir / "config.json").write_text(json.dumps(config))
  out = _structure(f"--workdirs={workdir}", f"--out_dir={tmp_path}")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "--workdirs: " in out.stderr
  assert "must hold a finished Trained TF run, got models=['gd']" in out.stderr
  assert not (tmp_path / "structure.json").exists()
