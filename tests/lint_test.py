"""The linter (ruff, configured in pyproject.toml) finds nothing."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_no_errors():
  ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable),
                                              "ruff")
  proc = subprocess.run(
      [ruff, "check", "--no-cache", "--output-format", "concise", "gdattn",
       "experiments", "tests"], cwd=REPO, capture_output=True, text=True,
      check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
