"""Tests for experiments/reproduce_images.py on the smoke config (digits)."""

import json
import subprocess
import sys

import pytest

# The script is run in a subprocess: importing it here would define its absl
# flags in the test process, where other scripts' tests define theirs.


@pytest.mark.parametrize("flag, message", [
    ("--shift=blurry", "--shift: shift must be one of"),
    ("--context_index=-1", "--context_index: expected an index in [0, "),
])
def test_bad_flag_fails_before_training(tmp_path, flag, message):
  cmd = [sys.executable, "-m", "experiments.reproduce_images",
         "--variant=smoke", flag, f"--runs_dir={tmp_path}/runs",
         f"--out_dir={tmp_path}"]
  out = subprocess.run(cmd, capture_output=True, text=True)
  assert out.returncode != 0
  assert message in out.stderr
  assert not (tmp_path / "runs").exists()


def test_smoke_ways_and_shift_tables(tmp_path):
  cmd = [sys.executable, "-m", "experiments.reproduce_images",
         "--variant=smoke", "--kernels=linear", "--notrained_tf", "--epochs=1",
         "--eval_every=1", "--shots=1", "--ways=2,5", "--shift=contrast",
         f"--runs_dir={tmp_path}/runs", f"--out_dir={tmp_path}",
         "--name=smoke"]
  subprocess.run(cmd, check=True, capture_output=True, text=True)
  out = json.loads((tmp_path / "smoke.json").read_text())
  assert out["dataset"] == "digits"  # the name, not a folder
  assert set(out["ways"]) == {"2", "5"}
  assert set(out["shift"]) == {"clean", "contrast"}
  labels = {"GD K=1 (linear)", "linear probing", "nearest class mean"}
  assert set(out["ways"]["2"]) == labels == set(out["shift"]["contrast"])
  # 5 ways is the trained shape: it repeats the main table's test accuracy.
  assert (out["ways"]["5"]["GD K=1 (linear)"]["accuracy"]["mean"]
          == out["rows"]["GD K=1 (linear)"]["accuracy"]["mean"]
          == out["shift"]["clean"]["GD K=1 (linear)"]["accuracy"]["mean"])
  for row in out["ways"]["2"].values():
    assert 0.0 <= row["accuracy"]["mean"] <= 1.0
  md = (tmp_path / "smoke.md").read_text()
  assert md.startswith("# In-context image classification: digits\n")
  assert "| model | 2 ways | 5 ways |" in md
  assert "| model | clean | contrast |" in md
  # One test context drawn with every model's probabilities.
  context = out["context"]
  assert context["index"] == 0 and context["figure"] == "smoke_context.png"
  assert (tmp_path / "smoke_context.png").stat().st_size > 0
  assert len(context["classes"]) == 5 and 0 <= context["y_query"] < 5
  assert set(context["probs"]) == labels
  for p in context["probs"].values():
    assert len(p) == 5 and abs(sum(p) - 1.0) < 1e-3
  assert "![test context 0](smoke_context.png)" in md
