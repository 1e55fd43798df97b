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

`--workdirs=DIR,...` analyses finished Trained TF runs instead of training
(e.g. the layer sweep's runs on the authors' draw, 3 seeds each): every seed
of each, the numbers as mean +- std over the seeds, the heat map of the seed
with the best test accuracy (structure_K<K>_<workdir>.png). Their entries
are added to structure.json beside the trained ones (same K and workdir:
replaced):

    python -m experiments.reproduce_structure --workdirs=runs/layers/<K=1 run>,runs/layers/<K=2 run>

References: arXiv:2405.17248 (section 4, trained-transformer weights).
"""

import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from experiments import toolkit
from gdattn import config as config_lib
from gdattn import structure
from gdattn import train
from gdattn import workdir as workdir_lib

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
_WORKDIRS = flags.DEFINE_list(
    "workdirs", [], "Finished Trained TF workdirs to analyse (every seed)"
    " instead of training; added to structure.json.")

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


def _workdir_config(workdir: str) -> config_lib.ExperimentConfig:
  """A finished one-seed-or-more Trained TF run's config; UsageError if not."""
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    raise app.UsageError(
        f"--workdirs: no {workdir_lib.CONFIG_FILE} in {workdir}")
  cfg = config_lib.from_configdict(toolkit.load_json(path))
  if (cfg.models != ("trained_tf",)
      or not workdir_lib.is_complete(workdir, cfg)):
    raise app.UsageError(
        f"--workdirs: {workdir} must hold a finished Trained TF run, got"
        f" models={list(cfg.models)}")
  return cfg


def _block_order(key: str) -> tuple[int, int]:
  """"self_qk_x/1" -> (1, 0): by layer, then in the construction's order
  (JSON files keep keys sorted, which would put cross before self)."""
  name, layer = key.split("/")
  return int(layer), (structure.SELF_BLOCKS + structure.CROSS_BLOCKS).index(name)


def _mean_std(per_seed: list[dict[str, float]]) -> dict[str, list[float]]:
  keys = per_seed[0].keys()
  return {k: [float(np.mean([p[k] for p in per_seed])),
              float(np.std([p[k] for p in per_seed]))] for k in keys}


def from_workdir(workdir: str) -> dict:
  """Every seed of a finished Trained TF run: per-block numbers, mean +- std
  over the seeds, and the best seed's heat map."""
  start = time.perf_counter()
  run = train.load(workdir)
  trained = run.models["trained_tf"]
  cfg = run.config
  seeds = range(len(trained.members))
  test = toolkit.evaluate_best(trained, run.datasets.evals["test"])
  accuracy = [float(a) for a in np.asarray(test["accuracy"])]
  results = [structure.structure(trained.model(i)) for i in seeds]
  inits = [structure.structure(trained.trainer.model(trained.trainer.params, i))
           for i in seeds]
  best = int(np.argmax(accuracy))
  name = os.path.basename(os.path.normpath(workdir))
  png = os.path.join(_OUT_DIR.value,
                     f"{NAME}_K{cfg.model.num_layers}_{name}.png")
  structure.plot_structure(results[best], path=png)
  numbers = [_numbers(r) for r in results]
  init_numbers = [_numbers(r) for r in inits]
  return {
      "layers": cfg.model.num_layers, "workdir": name,
      "token_layout": cfg.model.trained_tf.token_layout,
      "epochs": cfg.train.num_epochs, "seeds": len(accuracy),
      "best_seed": best, "png": os.path.basename(png),
      "wall_s": round(time.perf_counter() - start, 1),
      "test_accuracy": accuracy,
      "test_nll": [float(a) for a in np.asarray(test["nll"])],
      "trained": {m: _mean_std([n[m] for n in numbers])
                  for m in ("cosine", "pattern_fraction")},
      "init": {m: _mean_std([n[m] for n in init_numbers])
               for m in ("cosine", "pattern_fraction")},
  }


def _table(rows: list[tuple[str, str, str, str, str]]) -> list[str]:
  """One markdown table of per-block numbers (already formatted)."""
  return ["| block | cosine (trained) | cosine (init) | in pattern (trained)"
          " | in pattern (init) |", "|---|---|---|---|---|"] + [
              "| " + " | ".join(row) + " |" for row in rows]


def _from_workdirs_markdown(r: dict) -> list[str]:
  acc = r["test_accuracy"]
  lines = [
      f"## K = {r['layers']}, finished run `{r['workdir']}` ({r['seeds']}"
      f" seeds, token layout {r['token_layout']}; test accuracy"
      f" {np.mean(acc):.3f} ± {np.std(acc):.3f}, per seed"
      f" {', '.join(f'{a:.3f}' for a in acc)})",
      "",
      "Mean ± std over the seeds; heat map of seed"
      f" {r['best_seed']} (best test accuracy): `{r['png']}`.",
      "",
  ]
  t, i = r["trained"], r["init"]
  return lines + _table([
      (key, "{:.3f} ± {:.3f}".format(*t["cosine"][key]),
       f"{i['cosine'][key][0]:.3f}",
       "{:.3f} ± {:.3f}".format(*t["pattern_fraction"][key]),
       f"{i['pattern_fraction'][key][0]:.3f}")
      for key in sorted(t["cosine"], key=_block_order)]) + [""]


def markdown(out: dict) -> list[str]:
  lines = [
      "# Trained TF weights vs the GD construction's pattern",
      "",
      "Per block: cosine between the trained block and its projection onto"
      " GD's family (1 = GD's form; the init column is the same model before"
      " training), and the share of the block's squared norm on GD's nonzero"
      " entries; best parameters by validation NLL.",
      "",
  ]
  if out["runs"]:
    lines += [
        "Sections \"K = k (n epochs ...)\": trained here on the authors' data"
        " draw with the paper optimiser per K, one seed. Command:"
        f" `{out['command']}`. Heat maps: "
        + ", ".join(f"`{r['png']}`" for r in out["runs"]) + ".",
        "",
    ]
  if out.get("from_workdirs"):
    lines += [
        "The \"finished run\" sections analyse Trained TF runs trained"
        " elsewhere (the layer sweep on the authors' draw: lr 5e-3, early"
        " stopping on validation NLL), every seed. Command: "
        + "; ".join(f"`{c}`" for c in out.get("workdirs_commands", [])) + ".",
        "",
    ]
  for r in out.get("from_workdirs", []):
    lines += _from_workdirs_markdown(r)
  for r in out["runs"]:
    lines += [
        f"## K = {r['layers']} ({r['epochs']} epochs, {r['wall_s'] / 60:.0f}"
        f" min; test accuracy {r['test_accuracy']:.3f}, NLL"
        f" {r['test_nll']:.3f})",
        "",
    ]
    t, i = r["trained"], r["init"]
    lines += _table([
        (key, *(f"{v[key]:.3f}" for v in (
            t["cosine"], i["cosine"], t["pattern_fraction"],
            i["pattern_fraction"])))
        for key in sorted(t["cosine"], key=_block_order)]) + [""]
  return lines


def main(argv):
  del argv
  toolkit.quiet_logging()
  json_path = os.path.join(_OUT_DIR.value, f"{NAME}.json")
  if _REPLOT.value:
    out = toolkit.load_json(json_path)
  elif _WORKDIRS.value:
    cfgs = [_workdir_config(w) for w in _WORKDIRS.value]
    devices = {c.train.cpu_devices for c in cfgs}
    if len(devices) > 1:
      raise app.UsageError("--workdirs: runs with different"
                           f" train.cpu_devices {sorted(map(str, devices))};"
                           " analyse them in separate calls")
    if (n := devices.pop()) is not None:  # before JAX's first computation
      jax.config.update("jax_num_cpu_devices", n)
    out = (toolkit.load_json(json_path) if os.path.exists(json_path)
           else {"command": None, "runs": []})
    entries = {(r["layers"], r["workdir"]): r
               for r in out.get("from_workdirs", [])}
    for w in _WORKDIRS.value:
      r = from_workdir(w)
      entries[r["layers"], r["workdir"]] = r
    out["from_workdirs"] = [entries[k] for k in sorted(entries)]
    out.setdefault("workdirs_commands", []).append(toolkit.command_line())
    toolkit.write_json(json_path, out)
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
