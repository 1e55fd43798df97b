"""What the experiment scripts share: configs, runs, results files, sweeps.

Scripts never import each other; everything two of them need lives here:

  synthetic_config   one builder for every synthetic run (on top of the
                     packaged gdattn.configs.synthetic variants);
  task_config        the same for any packaged task ("language:smoke");
  train_in           the library loop `gdattn.train.train` in a workdir under
                     --runs_dir named by the config (same command: resumes;
                     another config: another workdir);
  evaluate_best      a trained model's best parameters on any split;
  curve              per-evaluation records of a model's metrics.jsonl;
  write_json, write_markdown, write_results
                     atomic JSON, Markdown with kept hand-written notes, PNG;
  sweep machinery    the layer / training-set sweeps (one record per run,
                     merged into <name>.json as soon as it finishes).
"""

import hashlib
import importlib
import json
import os
import shlex
import sys
import time
import types
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_dict
import numpy as np

from gdattn import config as config_lib
from gdattn import io
from gdattn import plots
from gdattn import train
from gdattn import workdir as workdir_lib
from gdattn.configs import synthetic as synthetic_configs

NOTES_START = "<!-- notes: hand-written, kept when the tables are regenerated -->"
NOTES_END = "<!-- /notes -->"


# ----------------------------------------------------------------------------
# Configs and runs.


def _override(section: Any, values: dict[str, Any], where: str) -> None:
  for key, value in values.items():
    if where == ".optim_overrides" and key not in section:
      section[key] = value  # keyed by model name: any model may be added
      continue
    if key not in section:
      raise ValueError(f"config{where}: unknown field {key!r}; valid:"
                       f" {sorted(section.keys())}")
    is_section = isinstance(section[key], config_dict.ConfigDict)
    if isinstance(value, dict) and is_section:
      _override(section[key], value, f"{where}.{key}")
    elif is_section and not isinstance(value, config_dict.ConfigDict):
      raise TypeError(f"config{where}.{key} is a section: override it with a"
                      f" dict of its fields, got {value!r}")
    elif isinstance(value, dict):
      raise TypeError(f"config{where}.{key} is a field, not a section: expected"
                      f" a {type(section[key]).__name__} value, got {value!r}")
    else:
      try:
        section[key] = value
      except TypeError as e:  # ConfigDict's own type check, given the path
        raise TypeError(f"config{where}.{key}: {e}") from None


def synthetic_config(variant: str = "paper", layers: int = 1,
                     **overrides: Any) -> config_lib.ExperimentConfig:
  """A validated synthetic-task config: a packaged variant plus overrides.

  Args:
    variant: "paper", "demo" or "smoke" (gdattn.configs.synthetic).
    layers: K, which also picks the paper's per-K optimisers.
    **overrides: top-level fields (models=("gd",), num_seeds=3) and sections
      as dicts (data=dict(name="random_grid"), train=dict(num_epochs=20));
      an unknown field raises ValueError. Progress bars are off unless
      train=dict(progress=True).

  Returns:
    The ExperimentConfig (every field checked before any compute).
  """
  c = synthetic_configs.get_config(f"{variant},layers={layers}")
  c.train.progress = False
  _override(c, overrides, "")
  return config_lib.from_configdict(c)


def task_config(config: str, **overrides: Any) -> config_lib.ExperimentConfig:
  """A validated config of any packaged task: a variant plus overrides.

  Args:
    config: "<module>[:<variant>]" of gdattn.configs, e.g. "language" (its
      default variant) or "language:smoke".
    **overrides: as in synthetic_config (top-level fields, sections as
      dicts; an unknown field raises ValueError). Progress bars are off
      unless train=dict(progress=True).

  Returns:
    The ExperimentConfig.
  """
  module, _, variant = config.partition(":")
  where = f"gdattn.configs.{module}"
  try:
    configs = importlib.import_module(where) if module.isidentifier() else None
  except ModuleNotFoundError as e:
    if e.name not in (where, "gdattn.configs"):
      raise  # the module exists but one of its imports is missing
    configs = None
  if configs is None or not hasattr(configs, "get_config"):
    raise ValueError(f"config must be '<module>[:<variant>]' with a module of"
                     f" gdattn.configs, got {config!r}")
  try:
    c = configs.get_config(variant)
  except ValueError as e:
    raise ValueError(f"config {config!r}: bad variant {variant!r}: {e}"
                     ) from None
  c.train.progress = False
  _override(c, overrides, "")
  return config_lib.from_configdict(c)


def config_tag(cfg: config_lib.ExperimentConfig) -> str:
  """8 hex digits naming the result-changing fields of a config (a later
  field at its default is left out, so tags made before it stay valid)."""
  kept = workdir_lib.result_fields(workdir_lib.config_dict(cfg))
  text = json.dumps(kept, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def train_in(runs_dir: str, name: str, cfg: config_lib.ExperimentConfig
             ) -> tuple[train.Run, str]:
  """train.train(cfg) in <runs_dir>/<name>-<config tag> (resumes if killed);
  returns the run and its workdir."""
  workdir = os.path.join(runs_dir, f"{name}-{config_tag(cfg)}")
  return train.train(cfg, workdir), workdir


def evaluate_best(trained: train.TrainedModel, data: Any
                  ) -> dict[str, np.ndarray]:
  """Metrics [S] of each member's best parameters on `data` (any split)."""
  out = trained.trainer.program.evaluate(trained.best_params, data)
  return jax.tree.map(np.asarray, out)


def curve(workdir: str, trained: train.TrainedModel) -> list[dict[str, Any]]:
  """Per evaluation of a run's model: the training loss (mean over the
  evaluation interval) and each split's metrics, as lists in member order."""
  records = io.read_metrics(os.path.join(workdir, trained.name))
  index = {(seed, lr): i for i, (seed, lr) in enumerate(trained.members)}
  num = len(index)
  by_step = {}
  for r in records:
    row = by_step.setdefault(r["step"], {})
    i = index[r["seed"], r["lr"]]
    for k, v in r.items():
      if k in ("step", "split", "model", "seed", "lr"):
        continue
      key = ("train_loss" if r["split"] == train.TRAIN_LOSS
             else f"{r['split']}_{k}")
      row.setdefault(key, [None] * num)[i] = v
  return [{"epoch": step, **row} for step, row in sorted(by_step.items())]


def quiet_logging() -> None:
  """orbax logs every checkpoint at INFO: keep the console for results."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def command_line() -> str:
  """The command that is running, for the results files."""
  module = os.path.splitext(os.path.basename(sys.argv[0]))[0]
  return f"python -m experiments.{module} " + " ".join(
      shlex.quote(a) for a in sys.argv[1:])


# ----------------------------------------------------------------------------
# Results files.


def write_json(path: str, obj: Any, indent: int | None = 1) -> None:
  """Writes JSON atomically (write, then rename): never half a file."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=indent, sort_keys=True)
  os.replace(tmp, path)


def load_json(path: str) -> Any:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def old_notes(path: str) -> str:
  """The hand-written notes of an existing report, or a placeholder."""
  if not os.path.exists(path):
    return "(no interpretation yet)"
  with open(path, encoding="utf-8") as fh:
    text = fh.read()
  if NOTES_START not in text or NOTES_END not in text:
    return "(no interpretation yet)"
  return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0].strip()


def write_markdown(path: str, lines: list[str], after: list[str] = ()) -> None:
  """Writes `lines`, the report's preserved hand-written notes, then `after`."""
  lines = lines + ["", NOTES_START, old_notes(path), NOTES_END] + (
      [""] + list(after) if after else [])
  with open(path, "w", encoding="utf-8") as fh:
    fh.write("\n".join(lines) + "\n")


def write_results(out_dir: str, name: str, out: dict[str, Any],
                  plot: Callable[[dict, str], None] | None = None,
                  markdown: Callable[[dict], list[str]] | None = None) -> str:
  """<out_dir>/<name>.json (atomic), .png (plot(out, path)) and .md
  (markdown(out) -> lines, hand-written notes kept); returns the base path."""
  base = os.path.join(out_dir, name)
  write_json(base + ".json", out)
  if plot is not None:
    plot(out, base + ".png")
  if markdown is not None:
    write_markdown(base + ".md", markdown(out))
  return base


def pyplot():
  """matplotlib.pyplot on the file-only backend."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


# ----------------------------------------------------------------------------
# Sweeps over K (reproduce_layers) and L (reproduce_data_size).

PAPER_LAYERS = plots.PAPER_LAYERS
PAPER_DATA_SIZE = plots.PAPER_DATA_SIZE
MODEL_LABEL = plots.MODEL_LABEL


def define_sweep_flags(xs_name, xs_default, xs_help):
  """The flags both sweeps share, plus the list of x values; returns holders."""
  f = types.SimpleNamespace()
  f.xs = flags.DEFINE_list(xs_name, xs_default, xs_help)
  f.models = flags.DEFINE_list("models", ["gd", "trained_tf"], "Models to train.")
  f.modes = flags.DEFINE_list(
      "modes", ["draws", "seeds"], "Any of 'draws' (one seed per data.seed"
      " of --draws), 'seeds' (--num_seeds init seeds on --fixed_draw) and"
      " 'authors' (--num_seeds init seeds on the authors' own draw).")
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
  f.tf_microbatch = flags.DEFINE_integer(
      "tf_microbatch", None, "Trained TF contexts per gradient microbatch (None:"
      " the config's 64). Same gradient up to the order of float sums; on 2"
      " CPU cores 8 is 1.3-1.5x faster at K >= 2 (bench_train section 5).")
  f.tf_token_layout = flags.DEFINE_enum(
      "tf_token_layout", None, ["exact", "paper"], "Trained TF token layout"
      " (None: the config's 'exact', one E slot per block, width D + (K+2)E;"
      " 'paper': the authors' model, one E slot, width D + 3E at every K).")
  f.cpu_devices = flags.DEFINE_integer(
      "cpu_devices", None, "config.train.cpu_devices: CPU devices the host is"
      " split into, data parallel (None: JAX's one). On 2 cores 2 trains the"
      " Trained TF 1.3-1.9x faster (experiments/bench_devices.py).")
  f.members_per_step = flags.DEFINE_integer(
      "members_per_step", None, "Seeds whose gradients are vmapped together (None:"
      " all). On CPU at K >= 2, 1 is 1.4-1.7x faster for 5 seeds (bench_train).")
  f.runs_dir = flags.DEFINE_string("runs_dir", "runs", "Root of checkpointed workdirs.")
  f.results_dir = flags.DEFINE_string("results_dir", "experiments/results",
                                      "Where <name>.json/.md/.png go.")
  f.report_only = flags.DEFINE_bool("report_only", False,
                                    "Only rewrite .md/.png from the .json.")
  f.add_workdirs = flags.DEFINE_list(
      "add_workdirs", [], "Finished one-model workdirs of experiments.main to"
      " merge into the sweep's records (e.g. long runs on the authors' draw).")
  return f


def protocol_tag(epochs, eval_every, gd_lr, tf_lr, patience, model,
                 microbatch=None, token_layout=None, cpu_devices=None):
  """A short name of the training protocol (also part of the workdir).

  `microbatch` is the run's microbatch size, `token_layout` the Trained
  TF's and `cpu_devices` config.train.cpu_devices; None or the paper
  config's value leaves the tag as it was before the field could be set.
  """
  lr = gd_lr if model == "gd" else tf_lr
  paper = synthetic_configs.get_config("paper")
  if microbatch == _paper_microbatch():
    microbatch = None
  if model != "trained_tf" or token_layout == paper.model.trained_tf.token_layout:
    token_layout = None
  if (epochs == 5000 and eval_every == 100 and lr is None and patience is None
      and microbatch is None and token_layout is None and cpu_devices is None):
    return "paper"
  tag = f"e{epochs}_ev{eval_every}_lr{'paper' if lr is None else f'{lr:g}'}"
  tag += f"_pat{patience}" if patience is not None else ""
  tag += f"_mb{microbatch}" if microbatch is not None else ""
  tag += f"_layout{token_layout}" if token_layout is not None else ""
  return tag + (f"_dev{cpu_devices}" if cpu_devices is not None else "")


def _paper_microbatch() -> int:
  return synthetic_configs.get_config("paper").train.microbatch_size


def _sweep_key(mode, model, num_layers, num_train, draw, tag):
  return f"{mode}/{model}/K{num_layers}/L{num_train}/draw{draw}/{tag}"


def _run_record(cfg, res, *, mode, draw, tag, lr, wall_s, resumed, workdir,
                command):
  """A sweep record of one finished one-model run (its config and results)."""
  model, t = cfg.models[0], cfg.train
  return {
      "mode": mode, "model": model, "K": cfg.model.num_layers,
      "L": cfg.data.num_train, "data_seed": draw, "protocol": tag,
      "init_seeds": [m["seed"] for m in res["members"]],
      "epochs": t.num_epochs, "eval_every": t.eval_every,
      "patience": t.patience, "microbatch_size": t.microbatch_size,
      "cpu_devices": t.cpu_devices,
      **({"token_layout": cfg.model.trained_tf.token_layout}
         if model == "trained_tf" else {}),
      "learning_rate": cfg.member_learning_rates(model)[0],
      "lr_is_paper": lr is None, "epochs_run": res["epochs_run"],
      "stopped_early": res["stopped_early"], "num_params": res["num_params"],
      "members": res["members"], "bayes": res["bayes"], "wall_s": wall_s,
      "train_s": train.training_seconds(os.path.join(workdir, model)),
      "resumed": resumed, "workdir": workdir, "command": command,
  }


def run_one(*, name, mode, model, num_layers, num_train, data_seed, num_seeds,
            epochs, eval_every, gd_lr, tf_lr, patience, runs_dir, results_dir,
            command, members_per_step=None, microbatch=None,
            token_layout=None, cpu_devices=None):
  """Trains one (model, K, L, draw) with 1 or num_seeds members; merges the result."""
  tag = protocol_tag(epochs, eval_every, gd_lr, tf_lr, patience, model,
                     microbatch, token_layout, cpu_devices)
  key = _sweep_key(mode, model, num_layers, num_train, data_seed, tag)
  lr = gd_lr if model == "gd" else tf_lr
  # The authors' draw is fixed by their keys; data.seed does not enter it.
  data = (dict(name="authors_high_dim", num_train=num_train)
          if mode == "authors" else dict(seed=data_seed, num_train=num_train))
  cfg = synthetic_config(
      "paper", num_layers, models=(model,), seed=0, num_seeds=num_seeds,
      # A given rate replaces the base rate; the paper's decay schedule stays.
      learning_rates=() if lr is None else (lr,),
      data=data,
      **({} if token_layout is None else
         {"model": dict(trained_tf=dict(token_layout=token_layout))}),
      train=dict(num_epochs=epochs, eval_every=eval_every, patience=patience,
                 members_per_step=members_per_step,  # speed only: same maths
                 cpu_devices=cpu_devices,
                 **({} if microbatch is None else
                    {"microbatch_size": microbatch})))
  workdir = os.path.join(runs_dir, name, key.replace("/", "_"))
  resumed = os.path.isdir(os.path.join(workdir, model, "checkpoints"))
  path = os.path.join(results_dir, f"{name}.json")
  # A run that had already finished only reloads its results: its record
  # keeps the wall time, finish time and command of the training that made
  # them (unknown if that record is gone), not those of the reload.
  finished_before = os.path.exists(os.path.join(workdir, "results.json"))
  previous = load_json(path).get(key) if finished_before else None
  if previous is None or "error" in previous:
    previous = {}
  print(f"[{time.strftime('%H:%M:%S')}] {key} -> {workdir}"
        f"{' (resuming)' if resumed else ''}", flush=True)
  t0 = time.time()
  base = {"mode": mode, "model": model, "K": num_layers, "L": num_train,
          "data_seed": data_seed, "protocol": tag}
  try:
    res = train.train(cfg, workdir).results[model]
  except FloatingPointError as e:  # diverged: keep the record, go on with the sweep
    print(f"    FAILED: {e}", flush=True)
    merge_record(path, key, {**base, "error": str(e),
                             "wall_s": round(time.time() - t0, 1),
                             "command": command})
    return None
  wall = time.time() - t0
  record = _run_record(cfg, res, mode=mode, draw=data_seed, tag=tag, lr=lr,
                       wall_s=round(wall, 1), resumed=resumed, workdir=workdir,
                       command=command)
  record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
  if finished_before:
    record.update(wall_s=previous.get("wall_s"),
                  resumed=previous.get("resumed", True),
                  finished=previous.get("finished"),
                  command=previous.get("command", command))
  accs = [m["test_accuracy"] for m in res["members"]]
  print(f"    test acc {np.mean(accs):.3f} (members {np.round(accs, 3).tolist()}),"
        f" Bayes max prob {res['bayes']['bayes_max_prob']:.3f},"
        f" {_seconds(*plots.run_seconds(record))} s in training"
        f"{' (already finished)' if finished_before else ''}", flush=True)
  merge_record(path, key, record)
  return record


def record_from_workdir(workdir, command):
  """The sweep key and record of a finished run made elsewhere (main.py).

  Only one-model runs on the paper's task qualify; the mode follows from the
  data: the authors' draw gives 'authors', another draw 'seeds'.
  """
  cfg = config_lib.from_configdict(
      load_json(os.path.join(workdir, "config.json")))
  results_path = os.path.join(workdir, "results.json")
  if len(cfg.models) != 1 or not os.path.exists(results_path):
    raise app.UsageError(
        f"--add_workdirs: {workdir} must hold a finished run of one model,"
        f" got models={cfg.models} and results.json"
        f" {'present' if os.path.exists(results_path) else 'missing'}")
  model = cfg.models[0]
  res = load_json(results_path)[model]
  t, d = cfg.train, cfg.data
  lr = cfg.learning_rates[0] if cfg.learning_rates else None
  tag = protocol_tag(t.num_epochs, t.eval_every, lr if model == "gd" else None,
                     None if model == "gd" else lr, t.patience, model,
                     t.microbatch_size, cfg.model.trained_tf.token_layout,
                     t.cpu_devices)
  mode = "authors" if d.name == "authors_high_dim" else "seeds"
  draw = "authors" if mode == "authors" else d.seed
  key = _sweep_key(mode, model, cfg.model.num_layers, d.num_train, draw, tag)
  record = _run_record(cfg, res, mode=mode, draw=draw, tag=tag, lr=lr,
                       wall_s=None, resumed=True, workdir=workdir,
                       command=command)
  return key, record


def merge_record(path, key, record):
  data = load_json(path)
  data[key] = record
  write_json(path, data)


aggregate = plots.aggregate
paper_value = plots.paper_value


def _seconds(wall_s, lower_bound=False):
  if wall_s is None:
    return "—"
  return f"≥ {wall_s:.0f}" if lower_bound else f"{wall_s:.0f}"


def summary_table(rows, xkey):
  lines = ["| model | mode | protocol | K | L | n | test acc | paper acc | diff |"
           " test NLL | paper NLL | acc / Bayes | Bayes max prob | best epochs |"
           " wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda v: "—" if v is None else f"{v:.3f}"
  for r in rows:
    p_acc = paper_value(r["model"], xkey, r["x"], k=r["K"], l=r["L"])
    p_nll = paper_value(r["model"], xkey, r["x"], "nll", k=r["K"], l=r["L"])
    diff = "—" if p_acc is None else f"{r['acc_mean'] - p_acc:+.3f}"
    n = f"{r['n']} {'draws' if r['mode'] == 'draws' else 'seeds'}"
    n += " (authors' draw)" if r["mode"] == "authors" else ""
    be = r["best_epochs"]
    be = f"{min(be)}-{max(be)}" if len(be) > 1 else str(be[0])
    lines.append(
        f"| {MODEL_LABEL[r['model']]} | {r['mode']} | {r['protocol']} | {r['K']} |"
        f" {r['L']} | {n} |"
        f" {r['acc_mean']:.3f} ± {r['acc_std']:.3f} | {fmt(p_acc)} | {diff} |"
        f" {r['nll_mean']:.3f} ± {r['nll_std']:.3f} | {fmt(p_nll)} |"
        f" {r['rel_mean']:.3f} ± {r['rel_std']:.3f} |"
        f" {r['bayes_mean']:.3f} ± {r['bayes_std']:.3f} | {be} |"
        f" {_seconds(r['wall_s'], r['wall_is_lower_bound'])} |")
  return "\n".join(lines)


def per_run_table(records, xkey):
  lines = [f"| key | {xkey} | lr | epochs run | test acc (members) | test NLL |"
           " Bayes max prob | wall s |", "|---|---|---|---|---|---|---|---|"]
  for key, r in sorted(records.items()):
    if "error" in r:
      lines.append(f"| `{key}` | {r[xkey]} | — | diverged | {r['error'][:80]} |"
                   f" — | — | {_seconds(r['wall_s'])} |")
      continue
    accs = [m["test_accuracy"] for m in r["members"]]
    nlls = [m["test_nll"] for m in r["members"]]
    lines.append(
        f"| `{key}` | {r[xkey]} | {r['learning_rate']:g} | {r['epochs_run']} |"
        f" {', '.join(f'{a:.3f}' for a in accs)} | {np.mean(nlls):.3f} |"
        f" {r['bayes']['bayes_max_prob']:.3f} |"
        f" {_seconds(*plots.run_seconds(r))} |")
  return "\n".join(lines)


def authors_draw_series(records):
  """Per model, the rows (one per K) of the layer table on the authors' draw.

  GD at the paper's protocol; the Trained TF at the sweep's budget (up to
  500 epochs, early stopping) in the authors' token layout, where K = 1 in
  our layout counts too (the two layouts are one model there). Runs that
  differ only in how they were computed (e.g. CPU devices) join one series;
  at a K with several such runs, the one with the most seeds.
  """
  def wanted(r):
    if r.get("mode") != "authors" or "error" in r:
      return False
    if r["model"] == "gd":
      return r["protocol"] == "paper"
    return (r["model"] == "trained_tf" and r["epochs"] == 500
            and (r.get("token_layout") == "paper" or r["K"] == 1))

  series = {}
  for row in aggregate({k: r for k, r in records.items() if wanted(r)}, "K"):
    at_k = series.setdefault(row["model"], {})
    if row["K"] not in at_k or row["n"] > at_k[row["K"]]["n"]:
      at_k[row["K"]] = row
  return {model: [at_k[k] for k in sorted(at_k)]
          for model, at_k in sorted(series.items())}


def write_authors_draw_figure(results_dir, name="layers"):
  """authors_draw.png: accuracy and NLL against K on the authors' draw, ours
  beside the paper's table (nothing is written without such runs)."""
  series = authors_draw_series(
      load_json(os.path.join(results_dir, f"{name}.json")))
  if not series:
    return None
  labels = {
      "gd": "GD, ours: the paper's protocol (5000 epochs),"
            " mean ± std over {} seeds",
      "trained_tf": "Trained TF, ours: up to 500 epochs (early stopping),"
                    " lr 5e-3, the authors' token layout, mean ± std over {}"
                    " seeds"}
  path = os.path.join(results_dir, "authors_draw.png")
  plots.plot_against_paper(
      series, {m: labels[m].format(plots.span([r["n"] for r in rs]))
               for m, rs in series.items()},
      path, "The paper's layer table on the authors' own data draw")
  return path


def write_sweep_reports(results_dir, name, xkey, title, header_md):
  """Rewrites <name>.md and <name>.png from <name>.json (notes block kept)."""
  records = load_json(os.path.join(results_dir, f"{name}.json"))
  if not records:
    return
  rows = aggregate(records, xkey)
  plots.plot_sweep(rows, xkey, os.path.join(results_dir, f"{name}.png"),
                   title)
  after = [
      "## Summary (mean ± std; draws mode: over draws, seeds mode: over init seeds)",
      "", summary_table(rows, xkey), "",
      "`diff` = ours - paper (test accuracy). `acc / Bayes` = test accuracy /"
      " the test set's Bayes mean max probability (per draw, then averaged).",
      "`best epochs` = epochs of the best validation NLL (early stopping).",
      "`wall s` = the run's training time: the training loop's own total"
      " over the parts of a resumed run where it logged one, else the sweep"
      " call's wall time; `≥` marks a run resumed before that log, whose"
      " record holds the time of its last part only.", "",
      f"![{name}]({name}.png)", "",
      f"## Every run (raw numbers in `{name}.json`)", "",
      per_run_table(records, xkey), "",
      "Commands that produced these runs:", ""]
  after += [f"    {cmd}" for cmd in sorted({r["command"] for r in records.values()})]
  write_markdown(os.path.join(results_dir, f"{name}.md"),
                 [f"# {title}", "", header_md.strip()], after)


def sweep(f, name, xkey, fixed_layers, fixed_train, title, header_md):
  """Runs every (model, x, mode, draw) of the flags in `f`, one after another."""
  quiet_logging()
  command = command_line()
  xs = [int(x) for x in f.xs.value]
  for mode in f.modes.value:
    if mode not in plots.SWEEP_MODES:
      raise app.UsageError(
          f"--modes: each one of {plots.SWEEP_MODES}, got {mode!r}")
  report = lambda: write_sweep_reports(f.results_dir.value, name, xkey, title,
                                       header_md)
  devices = f.cpu_devices.value
  if devices is not None and not f.report_only.value:
    micro = {m: (f.tf_microbatch.value if m == "trained_tf" else None)
             or _paper_microbatch() for m in f.models.value}
    if devices < 1 or any(b % devices for b in micro.values()):
      raise app.UsageError(
          f"--cpu_devices: expected an int >= 1 that divides the microbatches"
          f" {micro}, got {devices}")
    # Before JAX's first computation (config.train.cpu_devices).
    jax.config.update("jax_num_cpu_devices", devices)
  if f.tf_microbatch.value is not None:
    try:  # before any training: it must divide the batch
      synthetic_config("paper", 1,
                       train=dict(microbatch_size=f.tf_microbatch.value))
    except ValueError as e:
      raise app.UsageError(f"--tf_microbatch: {e}") from None
  for workdir in f.add_workdirs.value:
    key, record = record_from_workdir(
        workdir, f"python -m experiments.main ... --workdir={workdir} (the"
        " settings are its config.json)")
    merge_record(os.path.join(f.results_dir.value, f"{name}.json"), key, record)
    print(f"added {key} from {workdir}", flush=True)
  if not f.report_only.value:
    for model in f.models.value:
      for x in xs:
        for mode in f.modes.value:
          draws = {"draws": [int(d) for d in f.draws.value],
                   "seeds": [f.fixed_draw.value],
                   "authors": ["authors"]}[mode]
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
                    members_per_step=f.members_per_step.value,
                    microbatch=(f.tf_microbatch.value if model == "trained_tf"
                                else None),
                    token_layout=(f.tf_token_layout.value
                                  if model == "trained_tf" else None),
                    cpu_devices=f.cpu_devices.value)
            report()
  report()
