"""experiments/bench_devices.py: flag checks, and one tiny run end to end."""

import os
import subprocess
import sys

import pytest

from experiments import bench_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_check_settings_parses():
  assert bench_devices.check_settings(
      ["gd", "trained_tf"], ["1", "2"], ["1", "2"], 1, 1, None, 8) == (
          ["gd", "trained_tf"], [1, 2], [1, 2])


@pytest.mark.parametrize("change,match", [
    (dict(models=["tf"]), "--models"),
    (dict(layers=["x"]), "--layers and --counts must be integers"),
    (dict(counts=["2"]), "--counts two or more"),
    (dict(counts=["1", "0"]), "--counts two or more"),
    (dict(epochs=0), "--epochs"),
    (dict(tf_microbatch=7), "--tf_microbatch must divide the batch of 512"),
    (dict(counts=["1", "3"]),
     "--counts must divide gdattn.s gd microbatch of 64, got 3"),
    (dict(gd_microbatch=4, counts=["1", "8"]),
     "--counts must divide gdattn.s gd microbatch of 4, got 8"),
])
def test_check_settings_rejects(change, match):
  args = dict(models=["gd", "trained_tf"], layers=["1"], counts=["1", "2"],
              epochs=1, repeats=1, gd_microbatch=None, tf_microbatch=8)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    bench_devices.check_settings(**args)


def test_tiny_run_times_each_device_count():
  """Each worker runs on the device count it was given (else it stops)."""
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench_devices", "--models=gd",
       "--layers=1", "--counts=1,2", "--epochs=1", "--repeats=1"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "1 device(s): compile s" in out.stdout
  assert "2 device(s): compile s" in out.stdout
  row = next(l for l in out.stdout.splitlines() if l.startswith("gd "))
  assert row.split()[-1].endswith("x")
