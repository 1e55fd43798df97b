"""Static checks of the notebooks (pytest --nbmake executes them)."""

import json
import os
import re

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "notebooks")


def _code(name):
  with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
    nb = json.load(f)
  return nb, "\n".join("".join(c["source"]) for c in nb["cells"]
                       if c["cell_type"] == "code")


def test_paper_figures_use_the_package_only_and_keep_their_figure():
  nb, code = _code("03_paper_figures.ipynb")
  # Nothing from the checkout: no experiments package, no results files.
  assert not re.search(r"^\s*(from|import)\s+experiments\b", code, re.M)
  assert "open(" not in code and "experiments/results" not in code
  # The scripts' own plotting code draws it, with the paper's reference.
  assert "plots.plot_sweep(" in code and "plots.aggregate(" in code
  assert "paper_value(" in code
  # The paper's visual check: trained weights against GD's pattern.
  assert "structure.structure(" in code and "structure.plot_structure(" in code
  # Executed and saved: a reader sees the figures without running it.
  outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
  assert not any(o.get("output_type") == "error" for o in outputs)


def test_image_notebook_draws_its_context_with_the_scripts_function():
  nb, code = _code("04_image_icl.ipynb")
  assert "plots.plot_image_context(" in code
  outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
  assert not any(o.get("output_type") == "error" for o in outputs)
