"""In-context image classification on real images (the paper's ImageNet part).

Run (from the repository root; Fashion-MNIST from the Debian package
dataset-fashion-mnist):

    python -m experiments.reproduce_images --epochs=100 --tf_epochs=100

Trains, through the library loop, GD K=1 with the linear and the softmax
kernel and the Trained TF on W-way S-shot contexts whose labels are permuted
in every context (gdattn/configs/images.py), then reports on the same test
contexts: each model's test accuracy / NLL / top-2 at its best validation
NLL (mean ± std over --seeds), per-context linear probing (the authors'
baseline: bias-free logistic regression, 500 AdamW steps) and the nearest
class mean, a test-time shots sweep (trained at S shots, tested at fewer),
a test-time ways sweep (--ways, trained at W ways, tested at fewer; a model
scores its first W' logits) and a domain-shift table (--shift: corruptions
of the test images, or test contexts from another data set; the features
stay those fitted on the clean training images). --gdmlp adds the GD+MLP
model. Writes experiments/results/<name>.{json,md,png}. Runs are
checkpointed under --runs_dir and resume when the command is re-run.

The paper's figure (VGG16 ImageNet features, 900/100 classes) reads about
0.93 / 0.35 for linear probing and 0.70 / 0.78 for GD K=1 (linear kernel):
GD reaches about 0.75 of linear probing's accuracy.

References: arXiv:2405.17248 (in-context image classification).
"""

import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from experiments import toolkit
from gdattn import baselines
from gdattn import config as config_lib
from gdattn import plots
from gdattn.configs import images
from gdattn.data import corruptions
from gdattn.data import fewshot
from gdattn.tasks import image_icl

_VARIANT = flags.DEFINE_string("variant", "demo", "images.py config variant.")
_DATASET = flags.DEFINE_string("dataset", None, "Override config.data.dataset.")
_SPLIT = flags.DEFINE_string("split", None, "same_classes | held_out_classes.")
_KERNELS = flags.DEFINE_list("kernels", ["linear", "softmax"], "GD kernels.")
_TF = flags.DEFINE_bool("trained_tf", True, "Also train the Trained TF.")
_EPOCHS = flags.DEFINE_integer("epochs", 100, "GD epochs (paper 5000).")
_TF_EPOCHS = flags.DEFINE_integer("tf_epochs", 100, "Trained TF epochs.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "Evaluation interval.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Init seeds (vmapped).")
_SHOTS = flags.DEFINE_list("shots", ["1", "2", "3", "5", "10"],
                           "Test-time shots per class.")
_WAYS = flags.DEFINE_list("ways", [], "Test-time ways (<= trained ways).")
_SHIFT = flags.DEFINE_list(
    "shift", [], "Test-time shifts: gaussian_noise, blur, contrast (each "
    "optionally :severity) or dataset:<name>.")
_GDMLP = flags.DEFINE_bool("gdmlp", False, "Also train the GD+MLP model.")
_VAL_TEST = flags.DEFINE_integer("num_contexts", None,
                                 "Override num_val and num_test contexts.")
_RUNS = flags.DEFINE_string("runs_dir", "runs/images", "Checkpointed runs.")
_OUT = flags.DEFINE_string("out_dir", "experiments/results", "Output folder.")
_NAME = flags.DEFINE_string("name", "images", "Output basename.")
_CONTEXT = flags.DEFINE_integer(
    "context_index", 0, "Test context drawn in <name>_context.png (its "
    "images, labels, query and each model's prediction).")


def config_for(model, kernel, epochs, layers=1):
  c = images.get_config(_VARIANT.value)
  c.models = (model,)
  c.model.num_layers = layers
  c.num_seeds = _SEEDS.value
  c.model.kernel = kernel
  c.train.num_epochs = epochs
  c.train.eval_every = _EVAL_EVERY.value
  c.train.progress = False
  if _DATASET.value:
    c.data.dataset = _DATASET.value
  if _SPLIT.value:
    c.data.split = _SPLIT.value
  if _VAL_TEST.value:
    c.data.num_val = c.data.num_test = _VAL_TEST.value
  return config_lib.from_configdict(c)


# The per-context baselines of every table: label -> gdattn.baselines name.
BASELINES = {"linear probing": "logistic_regression",
             "nearest class mean": "nearest_class_mean"}


def evaluate_all(ctx, runs, ways):
  """Accuracy and NLL of every model and baseline on contexts ctx."""
  row = {}
  for label, trained in runs.items():
    m = toolkit.evaluate_best(trained, ctx)
    row[label] = {k: stats(m[k]) for k in ("accuracy", "nll")}
  for label, name in BASELINES.items():
    scores = jax.jit(baselines.batched(name, ways=ways))(
        ctx.x_ctx, ctx.y_ctx, ctx.x_query)
    m = baselines.scores_metrics(scores, ctx.y_query)
    row[label] = {k: stats([m[k]]) for k in ("accuracy", "nll")}
  return row


def ways_sweep(source, runs, ways_list):
  """Models trained at W ways, tested on fresh W'-way test contexts."""
  return {str(w): evaluate_all(image_icl.test_contexts(source, ways=w), runs, w)
          for w in ways_list}


def shift_table(source, runs, shifts):
  """Models and baselines on clean and shifted test contexts (paired)."""
  ways = source.cfg.ways
  out = {"clean": evaluate_all(image_icl.test_contexts(source), runs, ways)}
  for text in shifts:
    out[text] = evaluate_all(
        image_icl.test_contexts(source, **corruptions.parse_shift(text)), runs, ways)
  return out


def context_figure(source, test, runs, index, path):
  """<name>_context.png: test context `index` and every model's answer."""
  if source.data.images is None:
    return None  # a feature store has no images to show
  ctx = jax.tree.map(lambda a: a[index:index + 1], test)
  ways = int(ctx.classes.shape[1])
  probs = {}
  for label, trained in runs.items():
    logits = trained.model(0)(ctx.x_ctx, ctx.y_ctx, ctx.x_query)
    probs[label] = np.asarray(jax.nn.softmax(logits[0, 0, :ways]))
  for label, name in BASELINES.items():
    scores = baselines.batched(name, ways=ways)(ctx.x_ctx, ctx.y_ctx,
                                                ctx.x_query)
    probs[label] = np.asarray(jax.nn.softmax(scores[0, 0]))
  data = source.data
  names = [data.class_names[c] for c in np.asarray(ctx.classes[0])]
  # Glyph classes are named "U+2363 <the character>": the images show the
  # character, and the figure's font may lack it, so titles keep the code.
  titles = [("".join(ch for ch in n if ch.isascii()).strip() or n)
            for n in names]
  query = int(np.asarray(ctx.idx_query)[0, 0])
  plots.plot_image_context(
      data.images[np.asarray(ctx.idx_ctx[0])], np.asarray(ctx.y_ctx[0]),
      data.images[query], int(ctx.y_query[0, 0]), probs, label_names=titles,
      path=path, title=f"{image_icl.short_name(data.source)}: test context "
      f"{index} (labels permuted in every context)")
  return {"index": index, "classes": names, "y_query": int(ctx.y_query[0, 0]),
          "probs": {k: [round(float(v), 4) for v in p]
                    for k, p in probs.items()}}


def stats(values):
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()), "std": float(values.std())}


def shots_sweep(test, runs, shots):
  """Accuracy of every model and baseline at fewer test-time shots."""
  ways = test.classes.shape[1]
  fits = {label: jax.jit(baselines.batched(name, ways=ways))
          for label, name in BASELINES.items()}
  out = {}
  for s in shots:
    ctx = fewshot.fewer_shots(test, s)
    row = {}
    for label, trained in runs.items():
      row[label] = stats(toolkit.evaluate_best(trained, ctx)["accuracy"])
    for label, fn in fits.items():
      scores = fn(ctx.x_ctx, ctx.y_ctx, ctx.x_query)
      row[label] = stats([baselines.scores_metrics(scores, ctx.y_query)
                          ["accuracy"]])
    out[str(s)] = row
  return out


def main(argv):
  del argv
  toolkit.quiet_logging()
  for text in _SHIFT.value:  # a bad --shift fails before any training
    try:
      corruptions.parse_shift(text)
    except ValueError as e:
      raise app.UsageError(f"--shift: {e}") from None
  num_test = config_for("gd", "linear", 1).data.num_test
  if not 0 <= _CONTEXT.value < num_test:
    raise app.UsageError(f"--context_index: expected an index in [0, "
                         f"{num_test}) (the test contexts), got "
                         f"{_CONTEXT.value}.")
  t0 = time.time()
  runs, rows, info = {}, {}, None
  jobs = [(f"GD K=1 ({k})", "gd", k, _EPOCHS.value, 1)
          for k in _KERNELS.value]
  if _GDMLP.value:
    # The MLP acts between GD steps: K = 1 would be GD itself.
    jobs.append(("GD+MLP K=2", "gdmlp", "softmax", _EPOCHS.value, 2))
  if _TF.value:
    jobs.append(("Trained TF K=1", "trained_tf", "softmax", _TF_EPOCHS.value,
                 1))
  for label, model, kernel, epochs, layers in jobs:
    cfg = config_for(model, kernel, epochs, layers)
    print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
    run, workdir = toolkit.train_in(
        _RUNS.value, f"{model}_{kernel}" + (f"_k{layers}" if layers > 1 else ""),
        cfg)
    res = run.results[model]
    runs[label] = run.models[model]
    rows[label] = {k: stats([m[f"test_{k}"] for m in res["members"]])
                   for k in ("accuracy", "nll", "top2")}
    rows[label].update(num_params=res["num_params"],
                       epochs_run=res["epochs_run"],
                       best_epochs=[m["best_epoch"] for m in res["members"]],
                       workdir=workdir)
    info = run.datasets.info
    base = res
  for short, label in (("logreg", "linear probing"),
                       ("ncm", "nearest class mean")):
    rows[label] = {k: {"mean": base[f"{short}_{k}"], "std": 0.0}
                   for k in ("accuracy", "nll", "top2")}
  test = run.datasets.evals["test"]
  shots = [int(s) for s in _SHOTS.value if int(s) <= info["shots"]]
  # Only the data set's name: its source may name a folder of this machine.
  info = dict(info, dataset=image_icl.short_name(info["dataset"]))
  out = {"dataset": info["dataset"], "info": info,
         "rows": rows, "shots": shots_sweep(test, runs, shots),
         "config": {"variant": _VARIANT.value, "epochs": _EPOCHS.value,
                    "tf_epochs": _TF_EPOCHS.value, "seeds": _SEEDS.value,
                    "split": _SPLIT.value or "config default"},
         "wall_s": round(time.time() - t0, 1),
         "command": toolkit.command_line()}
  source = image_icl.feature_source(cfg.data)
  context = context_figure(source, test, runs, _CONTEXT.value, os.path.join(
      _OUT.value, f"{_NAME.value}_context.png"))
  if context is not None:
    out["context"] = dict(context, figure=f"{_NAME.value}_context.png")
  if _WAYS.value or _SHIFT.value:
    ways = [int(w) for w in _WAYS.value]
    bad = [w for w in ways if not 2 <= w <= info["ways"]]
    if bad:
      raise ValueError(f"--ways: expected values in [2, {info['ways']}] (the "
                       f"trained ways), got {bad}.")
    if ways:
      out["ways"] = ways_sweep(source, runs, ways)
    if _SHIFT.value:
      out["shift"] = shift_table(source, runs, _SHIFT.value)
  out["wall_s"] = round(time.time() - t0, 1)
  toolkit.write_results(_OUT.value, _NAME.value, out, plot, markdown)
  for line in markdown(out)[:20]:
    print(line)


def plot(out, path):
  plt = toolkit.pyplot()
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
  labels = list(out["rows"])
  acc = [out["rows"][k]["accuracy"]["mean"] for k in labels]
  err = [out["rows"][k]["accuracy"]["std"] for k in labels]
  ax0.barh(labels, acc, xerr=err, color=[f"C{i}" for i in range(len(labels))])
  ax0.axvline(1 / out["info"]["ways"], color="0.5", linestyle=":",
              label="chance")
  ax0.set(xlabel="test accuracy", xlim=(0, 1),
          title=f"{out['dataset']}: {out['info']['ways']}-way "
                f"{out['info']['shots']}-shot")
  ax0.legend(loc="lower right")
  shots = sorted(int(s) for s in out["shots"])
  for i, label in enumerate(next(iter(out["shots"].values()))):
    ys = [out["shots"][str(s)][label]["mean"] for s in shots]
    ax1.plot(shots, ys, "o-", label=label, color=f"C{labels.index(label)}")
  ax1.set(xlabel="test-time shots per class (trained at "
                 f"{out['info']['shots']})", ylabel="test accuracy",
          xticks=shots, title="shots sweep")
  ax1.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown(out):
  info = out["info"]
  lines = [
      f"# In-context image classification: {out['dataset']}",
      "",
      f"{info['ways']}-way {info['shots']}-shot contexts (labels permuted per"
      f" context), {info['num_examples']} images, {info['input_dim']}-d"
      f" features; {info['num_train_classes']} training and"
      f" {info['num_eval_classes']} test classes. Test metrics at the best"
      " validation NLL, mean ± std over init seeds; the baselines fit each"
      " test context from scratch.",
      "",
      f"Command: `{out['command']}` ({out['wall_s']:.0f} s).",
      "",
      "| model | test accuracy | test NLL | top-2 | parameters |",
      "|---|---|---|---|---|",
  ]
  seeds = out["config"]["seeds"]
  for label, r in out["rows"].items():
    # Trained models carry ± over their seeds; the baselines are fitted per
    # context, once.
    spread = seeds > 1 and "num_params" in r
    fmt = lambda k: (f"{r[k]['mean']:.3f}" + (f" ± {r[k]['std']:.3f}"
                                              if spread else ""))
    lines.append(f"| {label} | {fmt('accuracy')} | {fmt('nll')} |"
                 f" {fmt('top2')} | {r.get('num_params', '-')} |")
  shot_keys = sorted(out["shots"], key=int)  # JSON may reorder the keys
  spread = {label for label, r in out["rows"].items()
            if seeds > 1 and "num_params" in r}
  lines += ["", "Test-time shots sweep (accuracy):", "",
            "| model | " + " | ".join(f"{s} shots" for s in shot_keys)
            + " |", "|---|" + "---|" * len(shot_keys)]
  for label in next(iter(out["shots"].values())):
    lines.append(f"| {label} | " + " | ".join(
        f"{out['shots'][s][label]['mean']:.3f}" for s in shot_keys) + " |")
  if out.get("context"):
    c = out["context"]
    lines += ["", f"Test context {c['index']} (`{c['figure']}`): classes "
              + ", ".join(f"{j} = {n}" for j, n in enumerate(c["classes"]))
              + f"; the query has label {c['y_query']}. Predicted "
              "probability of each label:", "",
              "| model | " + " | ".join(str(j) for j in range(
                  len(c["classes"]))) + " | prediction |",
              "|---|" + "---|" * (len(c["classes"]) + 1)]
    for label, p in c["probs"].items():
      pred = int(np.argmax(p))
      lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in p)
                   + f" | {pred} ({'right' if pred == c['y_query'] else 'wrong'}) |")
    lines += ["", f"![test context {c['index']}]({c['figure']})"]
  if out.get("ways"):
    lines += ["", f"Test-time ways sweep (accuracy; trained at {info['ways']}"
              " ways, fresh test contexts, chance 1/W):", ""]
    lines += _table(out["ways"], lambda w: f"{w} ways", spread=spread)
  if out.get("shift"):
    lines += ["", "Domain shift (accuracy, NLL in brackets; the same test "
              "contexts, images shifted before the training-fitted features):",
              ""]
    lines += _table(out["shift"], str, nll=True, spread=spread)
  return lines


def _table(columns, head, nll=False, spread=()):
  """Markdown rows: one per model, one column per key of `columns`; ± std
  for the labels in `spread`."""
  # JSON may reorder the keys: numbers ascending, "clean" first.
  keys = list(columns)
  keys = (sorted(keys, key=int) if all(k.isdigit() for k in keys)
          else sorted(keys, key=lambda k: k != "clean"))
  lines = ["| model | " + " | ".join(head(k) for k in keys) + " |",
           "|---|" + "---|" * len(keys)]
  for label in columns[keys[0]]:
    cells = []
    for k in keys:
      r = columns[k][label]
      cell = f"{r['accuracy']['mean']:.3f}"
      if label in spread:
        cell += f" ± {r['accuracy']['std']:.3f}"
      if nll:
        cell += f" ({r['nll']['mean']:.2f})"
      cells.append(cell)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


if __name__ == "__main__":
  app.run(main)
