"""The paper's visual check of the theory: trained Trained TF weights vs GD's.

Run (from the repository root):

    nice -n 10 .venv/bin/python -m experiments.reproduce_structure --runs_dir=runs/structure

The Trained TF is trained on the authors' own data draw (synthetic task,
`data.name=authors_high_dim`: C=25, d=10, e=5, N=125, L=2048, softmax kernel)
with the paper's optimiser for each K (AdamW, `gdattn/configs/synthetic.py`
`paper`), one seed, --epochs[K] epochs (the paper: 5000), checkpointed under
--runs_dir so that a killed run resumes and a longer budget continues the same
workdir only through a new one (the epochs are part of the config). Its best
parameters (validation NLL) are compared block by block with the GD
construction's pattern (`gdattn.structure`): the product of the query and key
projections on the x block (GD: s I), the product of value and output
projections that writes f (GD: diag(lr_k) on w, -diag(lr_k) on the E slot),
and the cross-attention's query-key block on f (GD: I) and, for k < K - 1, its
value-output block that writes E_{k+1} (GD: I). Each block's number is the
cosine between the trained block and its projection onto GD's family (1
exactly for GD's form, ~0 for a random block), with the share of its squared
norm on GD's nonzero entries. The same numbers of the model at its random
initialisation are printed beside them as the no-structure reference.

Writes experiments/results/structure.{json,md} and structure_K<K>.png (heat
maps, trained left, GD reference right). `--replot` redraws the md from the
json; `--quick` trains 3 epochs per K (a smoke run).

References: arXiv:2405.17248 (section 4, trained-transformer weights).
"""

import os
import time

from absl import app
from absl import flags
import numpy as np

from experiments import toolkit
from gdattn import structure

_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/structure",
                                "Workdirs of the Trained TF runs.")
_OUT_DIR = flags.DEFINE_string("out_dir", "experiments/results",
                               "Where structure.{json,md,png} go.")
_LAYERS = flags.DEFINE_list("layers", ["1", "2"], "Depths K.")
_EPOCHS = flags.DEFINE_list(
    "epochs", ["1000", "300"],
    "Training epochs per K, in --layers order (the paper: 5000).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "Epochs per evaluation.")
_QUICK = flags.DEFINE_bool("quick", False, "3 epochs per K (smoke run).")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw the md from the json.")

NAME = "structure"


def _numbers(result: structure.Structure) -> dict[str, dict[str, float]]:
  return {"cosine": result.cosines(),
          "pattern_fraction": result.pattern_fractions()}


def run_depth(num_layers: int, epochs: int, eval_every: int) -> dict:
  cfg = toolkit.synthetic_config(
      "paper", num_layers, models=("trained_tf",), num_seeds=1,
      data=dict(name="authors_high_dim"),
      train=dict(num_epochs=epochs, eval_every=min(eval_every, epochs)))
  start = time.perf_counter()
  run, workdir = toolkit.train_in(_RUNS_DIR.value, f"tf_K{num_layers}", cfg)
  trained = run.models["trained_tf"]
  seconds = time.perf_counter() - start
  model = trained.model(0)
  init = trained.trainer.model(trained.trainer.params, 0)
  result = structure.structure(model)
  png = os.path.join(_OUT_DIR.value, f"{NAME}_K{num_layers}.png")
  structure.plot_structure(result, path=png)
  test = toolkit.evaluate_best(trained, run.datasets.evals["test"])
  return {
      "layers": num_layers, "epochs": epochs, "workdir": workdir,
      "wall_s": round(seconds, 1), "png": os.path.basename(png),
      "test_accuracy": float(np.asarray(test["accuracy"])[0]),
      "test_nll": float(np.asarray(test["nll"])[0]),
      "trained": _numbers(result),
      "init": _numbers(structure.structure(init)),
  }


def markdown(out: dict) -> list[str]:
  lines = [
      "# Trained TF weights vs the GD construction's pattern",
      "",
      f"Command: `{out['command']}`",
      "",
      "Authors' data draw, paper optimiser per K, one seed; best parameters by"
      " validation NLL. Per block: cosine between the trained block and its"
      " projection onto GD's family (1 = GD's form; the init column is the"
      " same model before training), and the share of the block's squared"
      " norm on GD's nonzero entries. Heat maps: "
      + ", ".join(f"`{r['png']}`" for r in out["runs"]) + ".",
      "",
  ]
  for r in out["runs"]:
    lines += [
        f"## K = {r['layers']} ({r['epochs']} epochs, {r['wall_s'] / 60:.0f}"
        f" min; test accuracy {r['test_accuracy']:.3f}, NLL"
        f" {r['test_nll']:.3f})",
        "",
        "| block | cosine (trained) | cosine (init) | in pattern (trained)"
        " | in pattern (init) |",
        "|---|---|---|---|---|",
    ]
    for key, cos in r["trained"]["cosine"].items():
      lines.append(
          f"| {key} | {cos:.3f} | {r['init']['cosine'][key]:.3f}"
          f" | {r['trained']['pattern_fraction'][key]:.3f}"
          f" | {r['init']['pattern_fraction'][key]:.3f} |")
    lines.append("")
  return lines


def main(argv):
  del argv
  toolkit.quiet_logging()
  json_path = os.path.join(_OUT_DIR.value, f"{NAME}.json")
  if _REPLOT.value:
    out = toolkit.load_json(json_path)
  else:
    layers = [int(k) for k in _LAYERS.value]
    epochs = [int(e) for e in _EPOCHS.value]
    if len(epochs) != len(layers):
      raise app.UsageError(
          f"--epochs needs one value per --layers entry ({len(layers)}),"
          f" got {len(epochs)}")
    if _QUICK.value:
      epochs = [3] * len(layers)
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    out = {"command": toolkit.command_line(),
           "runs": [run_depth(k, e, _EVAL_EVERY.value)
                    for k, e in zip(layers, epochs)]}
    toolkit.write_json(json_path, out)
  toolkit.write_markdown(os.path.join(_OUT_DIR.value, f"{NAME}.md"),
                         markdown(out))
  print("\n".join(markdown(out)))


if __name__ == "__main__":
  app.run(main)
