"""Layer sweep (SPEC section 5 table): GD vs the Trained TF, K = 1..6, L = 2048.

Full paper protocol (5000 epochs, evaluation every 100, the paper's per-K
optimisers from experiments/configs/synthetic.py `paper_optim`):

    python -m experiments.reproduce_layers --epochs=5000 --eval_every=100

Expected wall time of that on 2 CPU cores: GD K=1 with 5 vmapped seeds took
558 s here; GD costs ~0.15-0.4 s/epoch at K=2 (load-dependent) growing ~linearly
in K, i.e. ~0.5-2 h per K>=2 run, and the Trained TF ~1.2-4 s/epoch at K=1,
i.e. 2-6 h per run: days in all. Run it on a GPU. Expected result (paper, one
draw, 5 seeds): GD 0.702 0.718 0.729 0.731 0.728 0.727, TF 0.575 0.524 0.474
0.480 0.481 0.483 (K = 1..6); over fresh draws expect GD lower on average by
~0.05 (the paper's draw is an easy one; see experiments/results/layers.md).

The cut-down actually run (2026-11-30, ~75 min on 2 shared cores; results and
what was cut in experiments/results/layers.md):

    python -m experiments.reproduce_layers --models=gd --layers=1,2,3,4 \
        --modes=draws --epochs=150 --eval_every=15 --gd_lr=1e-2        # 43 min
    python -m experiments.reproduce_layers --models=gd --layers=1 \
        --modes=seeds --epochs=150 --eval_every=15 --gd_lr=1e-2        # 47 s
    python -m experiments.reproduce_layers --models=gd --layers=1 \
        --modes=seeds --epochs=5000 --eval_every=100                   # 9.3 min
    python -m experiments.reproduce_layers --models=trained_tf --layers=1,2 \
        --modes=draws --draws=0,1,2 --epochs=60 --eval_every=10 --tf_lr=5e-3  # 15 min
    python -m experiments.reproduce_layers --models=gd --layers=5,6 \
        --modes=draws --draws=0,1 --epochs=150 --eval_every=15 --gd_lr=1e-2  # 7 min

Two modes, reported separately:
  draws  one init seed (config seed 0) on each of --draws independent draws of
         W_data + the train/val/test contexts (config data.seed = 0..4): the
         spread the task's difficulty has over draws; accuracy is also reported
         relative to the Bayes mean max probability of that draw's test set.
  seeds  one fixed draw (data.seed = --fixed_draw, 5), --num_seeds init seeds
         trained together under vmap (config num_seeds): what the paper reports.

Each finished run is merged into experiments/results/layers.json at once (raw
per-member numbers, Bayes references, epochs run, wall time, the command), so a
killed sweep keeps what it finished; runs train in checkpointed workdirs under
runs/layers/ and resume when the same command is re-run. After every run the
script rewrites layers.md (our numbers next to the paper's) and layers.png
(test accuracy vs K with mean +- std error bars, the paper's numbers as markers)
from everything in layers.json.
"""

import json
import os
import shlex
import sys
import time
import types

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments import report

# The paper's numbers (SPEC section 5), test accuracy / NLL, mean over 5 seeds.
PAPER_LAYERS = {
    "gd": {"accuracy": [0.702, 0.718, 0.729, 0.731, 0.728, 0.727],
           "nll": [1.058, 0.971, 0.943, 0.924, 0.916, 0.921]},
    "trained_tf": {"accuracy": [0.575, 0.524, 0.474, 0.480, 0.481, 0.483],
                   "nll": [1.520, 1.743, 1.848, 1.847, 1.845, 1.838]},
}
PAPER_DATA_SIZE = {
    "L": [2048, 4096, 8192, 12288, 16384, 20480, 24576, 32768],
    "gd": [0.718, 0.723, 0.718, 0.723, 0.722, 0.724, 0.719, 0.727],
    "trained_tf": [0.524, 0.609, 0.670, 0.687, 0.700, 0.704, 0.712, 0.720],
}
MODEL_LABEL = {"gd": "GD", "trained_tf": "Trained TF"}



def define_common_flags(xs_name, xs_default, xs_help):
  """The flags both sweeps share, plus the list of x values; returns holders."""
  f = types.SimpleNamespace()
  f.xs = flags.DEFINE_list(xs_name, xs_default, xs_help)
  f.models = flags.DEFINE_list("models", ["gd", "trained_tf"], "Models to train.")
  f.modes = flags.DEFINE_list("modes", ["draws", "seeds"], "'draws' and/or 'seeds'.")
  f.draws = flags.DEFINE_list("draws", ["0", "1", "2", "3", "4"],
                              "data.seed values of the draws mode.")
  f.fixed_draw = flags.DEFINE_integer("fixed_draw", 5, "data.seed of the seeds mode.")
  f.num_seeds = flags.DEFINE_integer("num_seeds", 5, "Init seeds of the seeds mode.")
  f.epochs = flags.DEFINE_integer("epochs", 5000, "Training epochs (paper: 5000).")
  f.eval_every = flags.DEFINE_integer("eval_every", 100, "Epochs between evaluations.")
  f.patience = flags.DEFINE_integer(
      "patience", None, "Early stop after this many evaluations without a"
      " validation-NLL gain (None: off, as in the paper).")
  f.gd_lr = flags.DEFINE_float("gd_lr", None, "GD base learning rate (None: the"
                               " paper's per-K rate and schedule).")
  f.tf_lr = flags.DEFINE_float("tf_lr", None, "Trained TF learning rate (None: paper's).")
  f.members_per_step = flags.DEFINE_integer(
      "members_per_step", None, "Seeds whose gradients are vmapped together (None:"
      " all). On CPU at K >= 2, 1 is 1.4-1.7x faster for 5 seeds (bench_train).")
  f.runs_dir = flags.DEFINE_string("runs_dir", "runs", "Root of checkpointed workdirs.")
  f.results_dir = flags.DEFINE_string("results_dir", "experiments/results",
                                      "Where <name>.json/.md/.png go.")
  f.report_only = flags.DEFINE_bool("report_only", False,
                                    "Only rewrite .md/.png from the .json.")
  return f


# ----------------------------------------------------------------------------
# One run.


def protocol_tag(epochs, eval_every, gd_lr, tf_lr, patience, model):
  """A short name of the training protocol (also part of the workdir)."""
  lr = gd_lr if model == "gd" else tf_lr
  paper = epochs == 5000 and eval_every == 100 and lr is None and patience is None
  if paper:
    return "paper"
  tag = f"e{epochs}_ev{eval_every}_lr{'paper' if lr is None else f'{lr:g}'}"
  return tag + (f"_pat{patience}" if patience is not None else "")


def run_one(*, name, mode, model, num_layers, num_train, data_seed, num_seeds,
            epochs, eval_every, gd_lr, tf_lr, patience, runs_dir, results_dir,
            command, members_per_step=None):
  """Trains one (model, K, L, draw) with 1 or num_seeds members; merges the result."""
  from experiments.configs import synthetic  # pylint: disable=g-import-not-at-top
  from gdattn import train  # pylint: disable=g-import-not-at-top

  tag = protocol_tag(epochs, eval_every, gd_lr, tf_lr, patience, model)
  key = f"{mode}/{model}/K{num_layers}/L{num_train}/draw{data_seed}/{tag}"
  c = synthetic.get_config(f"paper,layers={num_layers}")
  c.models = (model,)
  c.seed = 0
  c.num_seeds = num_seeds
  c.data.seed = data_seed
  c.data.num_train = num_train
  c.train.num_epochs = epochs
  c.train.eval_every = eval_every
  c.train.patience = patience
  c.train.members_per_step = members_per_step  # speed only: same maths
  c.train.progress = False
  lr = gd_lr if model == "gd" else tf_lr
  if lr is not None:
    c.learning_rates = (lr,)  # base rate; the paper's decay schedule stays
  workdir = os.path.join(runs_dir, name, key.replace("/", "_"))
  resumed = os.path.isdir(os.path.join(workdir, model, "checkpoints"))
  print(f"[{time.strftime('%H:%M:%S')}] {key} -> {workdir}"
        f"{' (resuming)' if resumed else ''}", flush=True)
  t0 = time.time()
  try:
    res = train.train_and_evaluate(c, workdir)[model]
  except FloatingPointError as e:  # diverged: keep the record, go on with the sweep
    print(f"    FAILED: {e}", flush=True)
    merge_record(os.path.join(results_dir, f"{name}.json"), key, {
        "mode": mode, "model": model, "K": num_layers, "L": num_train,
        "data_seed": data_seed, "protocol": tag, "error": str(e),
        "wall_s": round(time.time() - t0, 1), "command": command})
    return None
  wall = time.time() - t0
  used_lr = lr if lr is not None else c.optim.learning_rate if model == "gd" else (
      c.optim_overrides.trained_tf.learning_rate)
  record = {
      "mode": mode, "model": model, "K": num_layers, "L": num_train,
      "data_seed": data_seed, "init_seeds": [m["seed"] for m in res["members"]],
      "protocol": tag, "epochs": epochs, "eval_every": eval_every,
      "patience": patience, "learning_rate": used_lr,
      "lr_is_paper": lr is None, "epochs_run": res["epochs_run"],
      "stopped_early": res["stopped_early"], "num_params": res["num_params"],
      "members": res["members"], "bayes": res["bayes"],
      "wall_s": round(wall, 1), "resumed": resumed, "workdir": workdir,
      "command": command, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  accs = [m["test_accuracy"] for m in res["members"]]
  print(f"    test acc {np.mean(accs):.3f} (members {np.round(accs, 3).tolist()}),"
        f" Bayes max prob {res['bayes']['bayes_max_prob']:.3f}, {wall:.0f} s",
        flush=True)
  merge_record(os.path.join(results_dir, f"{name}.json"), key, record)
  return record


def merge_record(path, key, record):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = load_results(path)
  data[key] = record
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def load_results(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------
# Aggregation and reports.


def aggregate(records, xkey):
  """Groups runs by (protocol, mode, model, x) -> mean/std of the test metrics.

  draws mode: statistics over draws (each draw: the mean over its members);
  seeds mode: statistics over the members of the one fixed draw.
  """
  groups = {}
  for r in records.values():
    if "error" in r:
      continue
    groups.setdefault((r["protocol"], r["mode"], r["model"], r["K"], r["L"]),
                      []).append(r)
  rows = []
  for (protocol, mode, model, k, l), rs in sorted(groups.items()):
    x = k if xkey == "K" else l
    if mode == "draws":
      units = [(np.mean([m["test_accuracy"] for m in r["members"]]),
                np.mean([m["test_nll"] for m in r["members"]]),
                r["bayes"]["bayes_max_prob"]) for r in rs]
    else:
      units = [(m["test_accuracy"], m["test_nll"], r["bayes"]["bayes_max_prob"])
               for r in rs for m in r["members"]]
    acc, nll, bayes = (np.asarray(u) for u in zip(*units))
    rows.append({
        "protocol": protocol, "mode": mode, "model": model, "x": x, "K": k, "L": l,
        "n": len(units), "acc_units": acc.tolist(), "acc_mean": acc.mean(), "acc_std": acc.std(),
        "nll_mean": nll.mean(), "nll_std": nll.std(),
        "rel_mean": (acc / bayes).mean(), "rel_std": (acc / bayes).std(),
        "bayes_mean": bayes.mean(), "bayes_std": bayes.std(),
        "draws": sorted({r["data_seed"] for r in rs}),
        "epochs": rs[0]["epochs"], "lr": sorted({r["learning_rate"] for r in rs}),
        "best_epochs": sorted({m["best_epoch"] for r in rs for m in r["members"]}),
        "wall_s": sum(r["wall_s"] for r in rs),
    })
  return rows


def paper_value(model, xkey, x, metric="accuracy", k=None, l=None):
  """The paper's number at this point (None where it reports none)."""
  if (xkey == "K" and l != 2048) or (xkey == "L" and k != 2):
    return None
  if xkey == "K":
    vals = PAPER_LAYERS[model][metric]
    return vals[x - 1] if 1 <= x <= len(vals) else None
  if metric != "accuracy" or x not in PAPER_DATA_SIZE["L"]:
    return None
  return PAPER_DATA_SIZE[model][PAPER_DATA_SIZE["L"].index(x)]


def table(rows, xkey):
  lines = [f"| model | mode | protocol | K | L | n | test acc | paper acc | diff |"
           " test NLL | paper NLL | acc / Bayes | Bayes max prob | best epochs |"
           " wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    p_acc = paper_value(r["model"], xkey, r["x"], k=r["K"], l=r["L"])
    p_nll = paper_value(r["model"], xkey, r["x"], "nll", k=r["K"], l=r["L"])
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    diff = "—" if p_acc is None else f"{r['acc_mean'] - p_acc:+.3f}"
    n = f"{r['n']} {'draws' if r['mode'] == 'draws' else 'seeds'}"
    be = r["best_epochs"]
    be = f"{min(be)}-{max(be)}" if len(be) > 1 else str(be[0])
    lines.append(
        f"| {MODEL_LABEL[r['model']]} | {r['mode']} | {r['protocol']} | {r['K']} |"
        f" {r['L']} | {n} |"
        f" {r['acc_mean']:.3f} ± {r['acc_std']:.3f} | {fmt(p_acc)} | {diff} |"
        f" {r['nll_mean']:.3f} ± {r['nll_std']:.3f} | {fmt(p_nll)} |"
        f" {r['rel_mean']:.3f} ± {r['rel_std']:.3f} |"
        f" {r['bayes_mean']:.3f} ± {r['bayes_std']:.3f} | {be} | {r['wall_s']:.0f} |")
  return "\n".join(lines)


def per_run_table(records, xkey):
  lines = [f"| key | {xkey} | lr | epochs run | test acc (members) | test NLL |"
           " Bayes max prob | wall s |", "|---|---|---|---|---|---|---|---|"]
  for key, r in sorted(records.items()):
    if "error" in r:
      lines.append(f"| `{key}` | {r[xkey]} | — | diverged | {r['error'][:80]} |"
                   f" — | — | {r['wall_s']:.0f} |")
      continue
    accs = [m["test_accuracy"] for m in r["members"]]
    nlls = [m["test_nll"] for m in r["members"]]
    lines.append(
        f"| `{key}` | {r[xkey]} | {r['learning_rate']:g} | {r['epochs_run']} |"
        f" {', '.join(f'{a:.3f}' for a in accs)} | {np.mean(nlls):.3f} |"
        f" {r['bayes']['bayes_max_prob']:.3f} | {r['wall_s']:.0f} |")
  return "\n".join(lines)


def plot(rows, xkey, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = {"gd": "tab:blue", "trained_tf": "tab:red"}
  styles = ["-", "--", "-.", ":"]  # one per curve; the marker gives the mode
  groups = {}
  for r in rows:
    fixed = f"L={r['L']}" if xkey == "K" else f"K={r['K']}"
    groups.setdefault((r["model"], r["mode"], r["protocol"], fixed), []).append(r)
  for i, ((model, mode, protocol, fixed), rs) in enumerate(sorted(groups.items())):
    rs = sorted(rs, key=lambda r: r["x"])
    xs = np.asarray([r["x"] for r in rs], float)
    if xkey == "L":
      xs = xs * (1 + 0.02 * (i - len(groups) / 2))  # log axis: small dodge
    else:
      xs = xs + 0.04 * (i - len(groups) / 2)
    ns = sorted({r["n"] for r in rs})
    ns = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    marker = "D" if protocol == "paper" else "o" if mode == "draws" else "s"
    if mode == "draws" and rs[0]["n"] > 1:  # each draw, faint
      for x, r in zip(xs, rs):
        xd = x * 0.97 if xkey == "L" else x - 0.1  # beside the error bar
        ax.plot([xd] * r["n"], r["acc_units"], ls="none", marker=".", ms=3,
                color=colors[model], alpha=0.35)
    ax.errorbar(xs, [r["acc_mean"] for r in rs], yerr=[r["acc_std"] for r in rs],
                color=colors[model], ls=styles[i % len(styles)], marker=marker, ms=5,
                capsize=3,
                label=f"{MODEL_LABEL[model]} {fixed}, {mode} (n={ns}), {protocol}")
  for model in colors:
    if not any(r["model"] == model for r in rows):
      continue
    if xkey == "K":
      px, py = np.arange(1, 7), PAPER_LAYERS[model]["accuracy"]
    else:
      px, py = PAPER_DATA_SIZE["L"], PAPER_DATA_SIZE[model]
    ax.plot(px, py, ls="none", marker="*", ms=11, color=colors[model],
            markeredgecolor="k",
            label=f"{MODEL_LABEL[model]}, paper ({'L=2048' if xkey == 'K' else 'K=2'})")
  if xkey == "L":
    ax.set_xscale("log", base=2)
  ax.set_xlabel("K (layers = GD steps)" if xkey == "K" else "L (training contexts)")
  ax.set_ylabel("test accuracy (best val NLL)")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_reports(results_dir, name, xkey, title, header_md):
  """Rewrites <name>.md and <name>.png from <name>.json (notes block kept)."""
  records = load_results(os.path.join(results_dir, f"{name}.json"))
  if not records:
    return
  rows = aggregate(records, xkey)
  plot(rows, xkey, os.path.join(results_dir, f"{name}.png"), title)
  md_path = os.path.join(results_dir, f"{name}.md")
  after = [
        "## Summary (mean ± std; draws mode: over draws, seeds mode: over init seeds)",
        "", table(rows, xkey), "",
        "`diff` = ours - paper (test accuracy). `acc / Bayes` = test accuracy /"
        " the test set's Bayes mean max probability (per draw, then averaged).",
        "`best epochs` = epochs of the best validation NLL (early stopping).", "",
        f"![{name}]({name}.png)", "",
        f"## Every run (raw numbers in `{name}.json`)", "",
        per_run_table(records, xkey), "",
        "Commands that produced these runs:", ""]
  after += [f"    {cmd}" for cmd in sorted({r["command"] for r in records.values()})]
  report.write_markdown(md_path, [f"# {title}", "", header_md.strip()], after)


def command_line():
  return "python -m experiments." + os.path.splitext(
      os.path.basename(sys.argv[0]))[0] + " " + " ".join(
          shlex.quote(a) for a in sys.argv[1:])


def sweep(f, name, xkey, fixed_layers, fixed_train, title, header_md):
  """Runs every (model, x, mode, draw) of the flags in `f`, one after another."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  command = command_line()
  xs = [int(x) for x in f.xs.value]
  report = lambda: write_reports(f.results_dir.value, name, xkey, title, header_md)
  for mode in f.modes.value:
    if mode not in ("draws", "seeds"):
      raise app.UsageError(f"--modes: 'draws' or 'seeds', got {mode!r}")
  if not f.report_only.value:
    for model in f.models.value:
      for x in xs:
        for mode in f.modes.value:
          draws = ([int(d) for d in f.draws.value] if mode == "draws"
                   else [f.fixed_draw.value])
          for draw in draws:
            run_one(name=name, mode=mode, model=model,
                    num_layers=x if xkey == "K" else fixed_layers,
                    num_train=x if xkey == "L" else fixed_train,
                    data_seed=draw,
                    num_seeds=1 if mode == "draws" else f.num_seeds.value,
                    epochs=f.epochs.value, eval_every=f.eval_every.value,
                    gd_lr=f.gd_lr.value, tf_lr=f.tf_lr.value,
                    patience=f.patience.value, runs_dir=f.runs_dir.value,
                    results_dir=f.results_dir.value, command=command,
                    members_per_step=f.members_per_step.value)
            report()
  report()


HEADER = """
GD = the exact construction (`gdattn.models.GD`); Trained TF = the same
interleaved topology with every projection free. C=25, d=10, e=5, N=125,
lambda=10, L=2048, batch 512, evaluation on 2048 val / 2048 test contexts, test
metrics at the best validation NLL. Paper numbers: SPEC section 5 (authors' one
draw, mean over 5 seeds, 5000 epochs). Full protocol:
`python -m experiments.reproduce_layers --epochs=5000 --eval_every=100`.
"""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sweep(_FLAGS, "layers", "K", None, 2048,
        "Layer sweep: GD vs Trained TF, L = 2048, softmax kernel", HEADER)


if __name__ == "__main__":
  _FLAGS = define_common_flags("layers", ["1", "2", "3", "4", "5", "6"],
                               "K values (layers = GD steps).")
  app.run(main)
