"""The follow-on's claims: depth, train/test mismatch, MLPs, the linear regime (issue 4, item 5).

Run (from the repository root):

    nice -n 10 .venv/bin/python -m experiments.reproduce_followon

Expected wall time on the shared 2-core CPU: ~15 min with the defaults
(measured 967 s, the first ~8 min of it sharing the CPU with a second copy).
`--quick` (~2 min, measured 123 s) is a smoke run; `--replot` only redraws
the md and png of `--name` from its saved json. Writes experiments/results/followon.{json,md,png}
(`--out_dir`). Each run trains with the library loop (`gdattn.train.train`) in a
checkpointed workdir under --runs_dir (the same command resumes a killed run).

Claims tested (the follow-on to arXiv:2405.17248, SPEC section 4): attention-only
models (GD, Trained TF) degrade with depth and under train/test distribution
mismatch; the GD + MLP model (`models.GDMLP`) fixes that with ~50x fewer
parameters than the Trained TF; attention-only works in the softmax's linear
regime (small logits).

Runs (one seed each, L=2048, N=125, C=25, d=10, e=5, softmax kernel, the
paper's per-K optimisers, test metrics at the best validation NLL):
  * depth: GD and GDMLP at K in --layers (1, 2, 3); Trained TF at --tf_layers (1).
  * mismatch: every model is trained on `high_dim` and tested on both the
    high_dim test set and a shifted test set of the same draw (--shift): by
    default the `mixture` generator (non-uniform, component-specific class
    choice; config data.test_name='mixture'), or high_dim at another lambda
    (`--shift=amplitude=5`) or context size (`--shift=context_points=50`).
  * linear regime: GD and GDMLP at K=--amp_layers (2) for amplitudes lambda in
    --amplitudes (2, 5; lambda=10 is the depth run), plus, for every trained
    model, the scale of its logits: the std over classes of the centred query
    logits and, for GD, of the internal logits W_e f_k(x_i) at the context
    points that feed the softmax of the next step (the cross-attention).
What is cut relative to a full run: GD and GDMLP train with Adam lr 1e-2
(--gd_lr; paper 1e-3 / 5e-4) for --epochs_k1=300 at K=1 and --epochs=150 at
K>=2, the Trained TF with its paper optimiser for --tf_epochs=80 (paper: 5000
epochs for all), one seed instead of 5, K <= 3. The full run is
`--gd_lr=5e-4 --epochs_k1=5000 --epochs=5000 --tf_epochs=5000 --eval_every=100
--layers=1,2,3,4 --tf_layers=1,2` (many hours on this CPU; the paper's
per-K rates: --gd_lr=1e-3 at K=1).
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from experiments import toolkit
from gdattn import gd
from gdattn.data import synthetic
from gdattn.tasks import synthetic as synthetic_task

_OUT = flags.DEFINE_string("out_dir", "experiments/results", "Output folder.")
_RUNS = flags.DEFINE_string("runs_dir", "runs/followon",
                            "Checkpointed workdirs (the same command resumes).")
_LAYERS = flags.DEFINE_list("layers", ["1", "2", "3"], "K for GD and GDMLP.")
_TF_LAYERS = flags.DEFINE_list("tf_layers", ["1"], "K for the Trained TF.")
_EPOCHS_K1 = flags.DEFINE_integer("epochs_k1", 300, "Epochs at K=1 (GD, GDMLP).")
_EPOCHS = flags.DEFINE_integer("epochs", 150, "Epochs at K>=2 (GD, GDMLP).")
_LR = flags.DEFINE_float("gd_lr", 1e-2, "Adam learning rate of GD and GDMLP (paper 1e-3 / 5e-4).")
_TF_EPOCHS = flags.DEFINE_integer("tf_epochs", 80, "Trained TF epochs.")
_TF_LR = flags.DEFINE_float("tf_lr", None, "Trained TF learning rate (None: the paper's per-K optimiser).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 15, "Evaluation interval (epochs).")
_AMPS = flags.DEFINE_list("amplitudes", ["2", "5"], "Extra lambdas (10 is the depth run).")
_AMP_LAYERS = flags.DEFINE_integer("amp_layers", 2, "K of the amplitude sweep.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: a few epochs.")
_MIXTURE_SCALE = flags.DEFINE_float(
    "mixture_scale", 2.0, "Std of the mixture test set's component logits (larger:"
    " each component concentrates on fewer classes, a stronger mismatch).")
_NAME = flags.DEFINE_string("name", "followon", "Output basename under --out_dir.")
_SHIFT = flags.DEFINE_string(
    "shift", "mixture", "The mismatched test set: 'mixture' (the mixture generator at"
    " --mixture_scale), 'amplitude=X' (high_dim at lambda X) or 'context_points=N'"
    " (high_dim with N context points), all from the training draw's W_data.")
_REPLOT = flags.DEFINE_bool(
    "replot", False, "Only redraw <--name>.{md,png} from <--name>.json (no"
    " training).")
SHIFT_FIELDS = {"amplitude": ("amplitude", float), "context_points": ("num_context_points", int)}

SCALE_CONTEXTS = 512  # test contexts for the logit-scale statistics


def make_config(model, layers, epochs, eval_every, amplitude=10.0, lr=None,
                mixture_scale=2.0):
  return toolkit.synthetic_config(
      "paper", layers, models=(model,), num_seeds=1,
      learning_rates=() if lr is None else (lr,),
      data=dict(amplitude=amplitude, mixture_scale=mixture_scale),
      train=dict(num_epochs=epochs, eval_every=eval_every))


def parse_shift(shift: str) -> tuple[str, dict]:
  """--shift -> (the shifted split's name, DataConfig overrides of its test set)."""
  if shift == "mixture":
    return "test_mixture", {"test_name": "mixture"}
  kind, _, value = shift.partition("=")
  if kind not in SHIFT_FIELDS or not value:
    raise app.UsageError(
        f"--shift must be 'mixture', 'amplitude=X' or 'context_points=N', got {shift!r}")
  field, cast = SHIFT_FIELDS[kind]
  return "test_shift", {field: cast(value)}


def shifted_test(cfg, shift):
  """The shifted test set of the training draw (same W_data and keys: only
  the overridden setting differs)."""
  _, overrides = parse_shift(shift)
  return synthetic_task.make_contexts(
      dataclasses.replace(cfg.data, **overrides))["test"]


def logit_scales(cfg, name, model, member, ctx):
  """Std over classes of centred logits: at the queries, and (GD) inside the steps."""
  logits = model(ctx.x_ctx, ctx.y_ctx, ctx.x_query)
  out = {"query_logit_std": float(jnp.mean(jnp.std(logits, -1))),
         "query_logit_absmax": float(jnp.mean(jnp.max(jnp.abs(
             logits - jnp.mean(logits, -1, keepdims=True)), -1)))}
  if name == "gd":
    w_e = model.embeddings()
    # Querying at the context inputs gives f_k(x_i), the inputs of the next
    # step's class softmax (a query is never a key, so this is exact).
    traj = jax.vmap(lambda x, y: gd.categorical_gd_trajectory(
        x, y, x, w_e, member["lrs"], kernel=cfg.model.kernel,
        kernel_scale=member["kernel_scale"]))(ctx.x_ctx, ctx.y_ctx)   # [B, K+1, N, E]
    inner = traj[:, 1:-1] @ w_e.T                                     # steps 1..K-1
    if inner.shape[1]:
      out["internal_logit_std"] = [float(v) for v in jnp.mean(jnp.std(inner, -1), (0, 2))]
  return out


def run_job(cfg, name, shift, shift_split):
  """Trains one model (library loop), then measures its best parameters on
  val, test and the shifted test set; returns the record and the Bayes
  references of the two test sets."""
  t0 = time.time()
  k, amp = cfg.model.num_layers, cfg.data.amplitude
  run, workdir = toolkit.train_in(_RUNS.value, f"{name}_K{k}_lambda{amp:g}", cfg)
  trained = run.models[name]
  data = dict(run.datasets.evals)
  data[shift_split] = shifted_test(cfg, shift)
  metrics = {s: {m: float(v[0]) for m, v in
                 toolkit.evaluate_best(trained, data[s]).items()}
             for s in ("val", "test", shift_split)}
  member = jax.tree.map(lambda a: a[0], trained.best_params)
  scale_ctx = jax.tree.map(lambda a: a[:SCALE_CONTEXTS], data["test"])
  curve = [{"epoch": r["epoch"], "train_loss": r["train_loss"][0],
            **{f"{s}_{m}": r[f"{s}_{m}"][0] for s in ("val", "test")
               for m in ("nll", "accuracy")}}
           for r in toolkit.curve(workdir, trained)]
  record = {"model": name, "layers": k, "amplitude": amp,
            "epochs": cfg.train.num_epochs,
            "num_params": trained.results["num_params"],
            "best_epoch": trained.results["members"][0]["best_epoch"],
            "metrics": metrics,
            "scales": logit_scales(cfg, name, trained.model(0), member, scale_ctx),
            "curve": curve, "wall_s": time.time() - t0}
  bayes = {"test": run.results[name]["bayes"],
           shift_split: {m: float(v) for m, v in
                         synthetic.bayes_reference(data[shift_split]).items()}}
  return record, bayes


def main(argv):
  del argv
  toolkit.quiet_logging()
  if _REPLOT.value:
    base = os.path.join(_OUT.value, _NAME.value)
    out = toolkit.load_json(base + ".json")
    plot(out, base + ".png")
    toolkit.write_markdown(base + ".md", report_lines(out, _NAME.value))
    print(f"redrew {base}.{{md,png}}")
    return
  t_start = time.time()
  quick = _QUICK.value
  e1 = 10 if quick else _EPOCHS_K1.value
  ek = 4 if quick else _EPOCHS.value
  etf = 2 if quick else _TF_EPOCHS.value
  every = 2 if quick else _EVAL_EVERY.value
  layers = [int(k) for k in _LAYERS.value]
  tf_layers = [int(k) for k in _TF_LAYERS.value]
  amps = [float(a) for a in _AMPS.value]
  shift_split, _ = parse_shift(_SHIFT.value)  # a bad --shift fails before any compute
  out = {"command": toolkit.command_line(),
         "settings": dict(layers=layers, tf_layers=tf_layers, epochs_k1=e1, epochs=ek,
                          tf_epochs=etf, tf_lr=_TF_LR.value, eval_every=every, amplitudes=amps, gd_lr=_LR.value,
                          amp_layers=_AMP_LAYERS.value,
                          mixture_scale=_MIXTURE_SCALE.value, shift=_SHIFT.value),
         "shift_split": shift_split, "runs": [], "bayes": {}}
  jobs = [(m, k, 10.0) for k in layers for m in ("gd", "gdmlp")]
  jobs += [("trained_tf", k, 10.0) for k in tf_layers]
  jobs += [(m, _AMP_LAYERS.value, a) for a in amps for m in ("gd", "gdmlp")]
  for name, k, amp in jobs:
    epochs = etf if name == "trained_tf" else (e1 if k == 1 else ek)
    cfg = make_config(name, k, epochs, every, amp,
                      _TF_LR.value if name == "trained_tf" else _LR.value, _MIXTURE_SCALE.value)
    run, out["bayes"][str(amp)] = run_job(cfg, name, _SHIFT.value, shift_split)
    out["runs"].append(run)
    m = run["metrics"]
    print(f"{name:10s} K={k} lambda={amp:g} params={run['num_params']} "
          f"acc={m['test']['accuracy']:.3f} nll={m['test']['nll']:.3f} | {_SHIFT.value} "
          f"acc={m[shift_split]['accuracy']:.3f} nll={m[shift_split]['nll']:.3f} | "
          f"{run['scales']} ({run['wall_s']:.0f} s)", flush=True)
  out["wall_s"] = time.time() - t_start
  name = _NAME.value
  base = toolkit.write_results(_OUT.value, name, out, plot,
                               lambda o: report_lines(o, name))
  print(f"wrote {base}.{{json,md,png}} in {out['wall_s']:.0f} s")


def shift_of(out):
  """(split name, label) of a results dict's mismatched test set (older
  results have only the mixture one)."""
  label = out["settings"].get("shift", "mixture")
  return out.get("shift_split", "test_mixture"), label


def plot(out, path):
  plt = toolkit.pyplot()
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  runs = out["runs"]
  shift, label = shift_of(out)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  styles = {"gd": ("C0", "o"), "gdmlp": ("C2", "s"), "trained_tf": ("C3", "^")}
  for ax, split, title in ((axes[0], "test", "in distribution (high_dim)"),
                           (axes[1], shift, f"mismatch: test on {label}")):
    for name, (color, marker) in styles.items():
      rs = sorted((r for r in runs if r["model"] == name and r["amplitude"] == 10.0),
                  key=lambda r: r["layers"])
      if rs:
        ax.plot([r["layers"] for r in rs], [r["metrics"][split]["accuracy"] for r in rs],
                marker=marker, color=color,
                label=f"{name} ({rs[0]['num_params']} params at K={rs[0]['layers']})")
    ax.axhline(out["bayes"]["10.0"][split]["bayes_max_prob"], color="k", ls=":",
               label="Bayes mean max prob")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("K (layers)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
  ax = axes[2]
  k = out["settings"]["amp_layers"]
  for name in ("gd", "gdmlp"):
    rs = sorted((r for r in runs if r["model"] == name and r["layers"] == k),
                key=lambda r: r["amplitude"])
    color, marker = styles[name]
    ax.plot([r["amplitude"] for r in rs], [r["metrics"]["test"]["accuracy"] /
            out["bayes"][str(r["amplitude"])]["test"]["bayes_max_prob"] for r in rs],
            marker=marker, color=color, label=f"{name} K={k}")
  ax.set_xlabel("data amplitude lambda")
  ax.set_ylabel("test accuracy / Bayes mean max prob")
  ax.set_title("linear regime: small lambda -> small logits")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report_lines(out, name="followon"):
  s = out["settings"]
  shift, label = shift_of(out)
  lines = ["# The follow-on's claims (issue 4, item 5)", "",
           f"Command: `{out['command']}`  ",
           f"Wall time: {out['wall_s']:.0f} s on the shared 2-core CPU  ",
           f"Settings: `{json.dumps(s)}` (one seed, L=2048, N=125; the paper's per-K optimisers with the learning rates above, a null one meaning the paper's)",
           "", f"![{name}]({name}.png)", "",
           f"| model | K | lambda | params | epochs (best) | test acc | test NLL | {label} acc |"
           f" {label} NLL | query logit std | internal logit std (GD) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in out["runs"]:
    m, sc = r["metrics"], r["scales"]
    inner = sc.get("internal_logit_std")
    lines.append(
        f"| {r['model']} | {r['layers']} | {r['amplitude']:g} | {r['num_params']} |"
        f" {r['epochs']} ({r['best_epoch']}) | {m['test']['accuracy']:.3f} |"
        f" {m['test']['nll']:.3f} | {m[shift]['accuracy']:.3f} |"
        f" {m[shift]['nll']:.3f} | {sc['query_logit_std']:.2f} |"
        f" {', '.join(f'{v:.2f}' for v in inner) if inner else '-'} |")
  lines += ["", "Bayes references (mean max prob / NLL): " + "; ".join(
      f"lambda={a}: high_dim {v['test']['bayes_max_prob']:.3f} / {v['test']['bayes_nll']:.3f},"
      f" {label} {v[shift]['bayes_max_prob']:.3f} / {v[shift]['bayes_nll']:.3f}"
      for a, v in out["bayes"].items())]
  return lines


if __name__ == "__main__":
  app.run(main)
