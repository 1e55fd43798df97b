"""Tests for experiments/reproduce_images.py on the smoke config (digits)."""

import json
import subprocess
import sys

from experiments import reproduce_images


def test_parse_shift():
  assert reproduce_images.parse_shift("blur") == {"corruption": "blur",
                                                  "severity": 1.0}
  assert reproduce_images.parse_shift("gaussian_noise:0.2") == {
      "corruption": "gaussian_noise", "severity": 0.2}
  assert reproduce_images.parse_shift("dataset:digits") == {"dataset": "digits"}


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
