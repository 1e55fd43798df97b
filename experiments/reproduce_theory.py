"""The paper's theory, numerically: stationarity, alignment, stability (issue 4, item 4).

Run (from the repository root):

    nice -n 10 .venv/bin/python -m experiments.reproduce_theory --runs_dir=runs/theory

Expected wall time on the shared 2-core CPU: ~26 min with the defaults
(measured 1585 s under load: GD K=1 3 x 1500 epochs and the gradient analyses
~11 min; Trained TF K=1 2 x 100 epochs at L=2048, N=125 ~15 min). A longer
Trained TF budget for (b), (c): `--tf_epochs=2000 --eval_every=100` (~1.5 h).
`--quick` (~8 min, mostly compilation) cuts every budget for a smoke run;
`--replot` only redraws the md and png from the saved json. Writes
experiments/results/theory.{json,md,png} (`--out_dir`); the hand-written
interpretation between the notes markers of theory.md is kept on rewrite.

Paper setting throughout (C=25, d=10, e=5, N=125, softmax kernel, K=1,
L=2048, batch 512, the original optimisers); the GD models are trained by the
library loop (`gdattn.train.train`, checkpointed under --runs_dir, evaluated
once at the end, so the parameters analysed are the last ones); what is cut:
the GD model is trained 1500 epochs instead of 5000 (then polished to an exact stationary point
of its own loss on the gradient sample, see (a)); the Trained TF runs of (b)
and (c) are 100 epochs instead of 5000, one seed.

(a) Stationarity. A trained GD model is embedded in the Trained TF
    (`gdattn.analysis.embed_gd`: the TF's kernel scale is fixed to 1 and the GD
    scale s is absorbed into the query projection). On a sample of
    --grad_contexts fresh contexts the gradient g of the TF's mean NLL w.r.t.
    all 6,625 free parameters is split into the part along the GD
    parameterisation (least-squares projection onto the columns of the Jacobian
    J of the map (lrs, s, W_e) -> TF parameters:
    `analysis.gd_embedding_jacobian`, `analysis.split_gradient`) and the
    orthogonal rest, per parameter block, with a standard error from the spread
    over chunks of 256 contexts (a block whose mean is zero in expectation
    shows |g| ~ SE on a finite sample). The GD point is first polished by
    L-BFGS on the GD loss on the same sample, so that the along part is ~0 and
    what remains is the claim under test. Data sets: high_dim (x ~ U(-1,1)^d),
    its mirror-symmetrised sample (every context also with x -> -x, an exact
    symmetry of that distribution), a shifted copy (x + 1, i.e. x ~ U(0,2)^d
    with centres shifted), and the non-uniform-class `mixture` generator. Then
    random perturbations of the TF parameters (per-entry std eps) show how the
    orthogonal part grows.
(b) Alignment: a Trained TF trained from its usual init; at every checkpoint
    the mean L2 distance between its and the trained GD model's predicted
    probability vectors and the cosine similarity of their input
    sensitivities d logits / d x_query (centred over classes), on test
    contexts (von Oswald et al. 2023, arXiv:2212.07677).
(c) Stability: the Trained TF initialised at the GD point and trained on with
    its own optimiser: loss, test metrics, distance from the GD point and from
    the GD manifold (the affine image of the embedding) over epochs.

References: arXiv:2405.17248 (GD construction, stationarity), arXiv:2212.07677.
"""

import dataclasses
import functools
import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import toolkit
from gdattn import analysis
from gdattn import metrics
from gdattn import tasks
from gdattn import train
from gdattn.tasks import synthetic as synthetic_task

_RUNS = flags.DEFINE_string("runs_dir", "runs/theory",
                            "Checkpointed workdirs of the GD runs of (a).")
_OUT = flags.DEFINE_string("out_dir", "experiments/results", "Where theory.{json,md,png} go.")
_GD_EPOCHS = flags.DEFINE_integer("gd_epochs", 1500, "GD K=1 training epochs (paper 5000).")
_GRAD_CONTEXTS = flags.DEFINE_integer("grad_contexts", 8192, "Contexts of the gradient sample.")
_CHUNK = flags.DEFINE_integer("chunk", 256, "Contexts per gradient chunk (for the SE).")
_POLISH = flags.DEFINE_integer("polish_steps", 100, "L-BFGS steps on the GD loss (0: off).")
_EPS = flags.DEFINE_list("eps", ["1e-4", "1e-3", "1e-2", "1e-1"], "Perturbation sizes.")
_DIRECTIONS = flags.DEFINE_integer("directions", 1, "Random directions per eps.")
_TF_EPOCHS = flags.DEFINE_integer("tf_epochs", 100, "Trained TF epochs in (b) and (c) (paper 5000).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "Checkpoint interval of (b), (c).")
_ALIGN = flags.DEFINE_integer("align_contexts", 512, "Test contexts for the (b) metrics.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny budgets (smoke run).")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw theory.{md,png} from theory.json.")

SHIFT = 1.0  # the shifted data set: x -> x + SHIFT


def shift_contexts(ctx, shift):
  return ctx.replace(x_ctx=ctx.x_ctx + shift, x_query=ctx.x_query + shift)


@dataclasses.dataclass(frozen=True)
class ShiftedDataConfig(synthetic_task.DataConfig):
  x_shift: float = 0.0  # added to every input of every split


class ShiftedSyntheticTask(synthetic_task.SyntheticTask):
  """The synthetic task with every input moved by data.x_shift (the shifted
  case of (a): x ~ U(0, 2)^d around shifted centres for x_shift = 1)."""

  name = "synthetic_shifted"
  data_config = ShiftedDataConfig

  def make_datasets(self, d):
    data = super().make_datasets(d)
    evals = {k: shift_contexts(v, d.x_shift) for k, v in data.evals.items()}
    return dataclasses.replace(data, train=evals["train"], evals=evals)


tasks.register(ShiftedSyntheticTask())


def base_config(name="high_dim", num_test=2048, gd_epochs=1, shift=0.0):
  """The paper's K=1 setting; GD evaluated once, after gd_epochs."""
  cfg = toolkit.synthetic_config(
      "paper", 1, models=("gd", "trained_tf"), num_seeds=1,
      data=dict(name=name, num_val=512, num_test=num_test),
      train=dict(num_epochs=gd_epochs, eval_every=gd_epochs))
  if not shift:
    return cfg
  return dataclasses.replace(
      cfg, task=ShiftedSyntheticTask.name,
      data=ShiftedDataConfig(**dataclasses.asdict(cfg.data), x_shift=shift))


def mirror_contexts(ctx):
  """Each context followed by its mirror image x -> -x (labels unchanged).

  Interleaved, so that every chunk of the gradient sample is itself symmetric.
  """
  flipped = ctx.replace(x_ctx=-ctx.x_ctx, x_query=-ctx.x_query)
  return jax.tree.map(
      lambda a, b: jnp.stack([a, b], 1).reshape((-1,) + a.shape[1:]), ctx, flipped)


def first_member(tree):
  return jax.tree.map(lambda a: a[0], tree)


# ----------------------------------------------------------------------------
# Models as pure functions of their parameter dicts.


class Pure:
  """graphdef + non-trainable state of one model; forward(params, contexts)."""

  def __init__(self, model):
    self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
    self.params = nnx.to_pure_dict(params)
    self.jit_logits = jax.jit(self.logits)

  def model(self, params):
    return nnx.merge(self.graphdef, nnx.State(params), self.rest)

  def logits(self, params, ctx):
    return self.model(params)(ctx.x_ctx, ctx.y_ctx, ctx.x_query)

  def loss(self, params, ctx):
    return metrics.nll(self.logits(params, ctx), ctx.y_query)


def flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def leaf_names(tree):
  return ["/".join(str(getattr(k, "key", k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# ----------------------------------------------------------------------------
# Training helpers.


def trajectory(trainer, epochs, every, callback, params=None):
  """Trains the one member of `trainer` from its init (or `params`) with the
  library's compiled steps; callback(epoch, params, loss) at 0 and every
  `every` epochs (the curves of (b), (c): no model selection)."""
  p = trainer.params
  if params is not None:
    p = jax.tree.map(lambda a: jnp.asarray(a)[None].astype(jnp.float32), params)
  history = [callback(0, first_member(p), None)]
  for done, p, _, loss in trainer.epoch_chunks(epochs, every, params=p):
    history.append(callback(done, first_member(p), float(np.mean(loss[-1]))))
  return history


def polish(pure: Pure, params, sample, steps):
  """L-BFGS on the GD loss of `sample`: a stationary point of it."""
  if steps <= 0:
    return params
  opt = optax.lbfgs()

  @jax.jit
  def step(p, state, sample):
    loss = lambda q: pure.loss(q, sample)
    value, grad = optax.value_and_grad_from_state(loss)(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(p, updates), state

  state = opt.init(params)
  for _ in range(steps):
    params, state = step(params, state, sample)
  return params


# ----------------------------------------------------------------------------
# (a) Stationarity.


@functools.partial(jax.jit, static_argnums=(0, 4))
def chunked_grad(graphdef, params, rest, sample, chunk):
  """Mean gradient over chunks of the sample and its squared standard error."""
  loss_fn = lambda p, c: metrics.nll(
      nnx.merge(graphdef, nnx.State(p), rest)(c.x_ctx, c.y_ctx, c.x_query), c.y_query)
  n = sample.x_ctx.shape[0] // chunk * chunk
  chunks = jax.tree.map(lambda a: a[:n].reshape((-1, chunk) + a.shape[1:]), sample)
  grads = jax.lax.map(lambda c: flat(jax.grad(loss_fn)(params, c)), chunks)  # [Z, P]
  mean = jnp.mean(grads, 0)
  var_of_mean = jnp.var(grads, 0, ddof=1) / grads.shape[0]
  return mean, var_of_mean


def segments(tree):
  """(name, flat slice, shape) of every TF leaf; self-attention leaves per head."""
  out, start = [], 0
  for name, leaf in zip(leaf_names(tree), jax.tree.leaves(tree)):
    if name.startswith("self_"):
      per_head = leaf.size // leaf.shape[1]
      for h in range(leaf.shape[1]):  # [K=1, H, M, M]
        out.append((f"{name}[head {h}]", slice(start + h * per_head, start + (h + 1) * per_head),
                    leaf.shape[2:]))
    else:
      out.append((name, slice(start, start + leaf.size), leaf.shape))
    start += leaf.size
  return out


def block_table(vec, var, segs):
  """Per block: norm of the mean gradient and the norm expected from noise alone."""
  return {name: {"norm": float(jnp.linalg.norm(vec[sl])),
                 "se": float(jnp.sqrt(jnp.sum(var[sl])))} for name, sl, _ in segs}


def slot_blocks(vec, segs, layout):
  """Orthogonal gradient of the K=1 matrices by token slot.

  Token-reading matrices (self wq/wk/wv, cross wq) by the slot of their rows,
  writing matrices (self wo, cross wo) by the slot of their columns.
  """
  slots = {"x": layout.x, "w": layout.w, "E0": layout.expectation(0), "f": layout.f}
  out = {}
  for name, sl, shape in segs:
    short = name.split("/")[0]
    if not any(short.startswith(p) for p in ("self_", "cross_wq", "cross_wo")):
      continue
    m = vec[sl].reshape(shape[-2:])
    writes = short.startswith(("self_wo", "cross_wo"))
    for sname, ss in slots.items():
      block = m[:, ss] if writes else m[ss, :]
      out[f"{short}{name[len(name.split('/')[0]):].replace('/value', '')}"
          f" {'writes' if writes else 'reads'} {sname}"] = float(jnp.linalg.norm(block))
  return out


def stationarity(gd_pure, gd_params, sample, input_dim, eps_list, directions, chunk, key):
  gd_model = gd_pure.model(gd_params)
  tf = analysis.embed_gd(gd_model, input_dim)
  tf_pure = Pure(tf)
  theta0 = tf_pure.params
  segs = segments(theta0)
  jac = analysis.gd_embedding_jacobian(gd_model, input_dim)
  split = jax.jit(analysis.split_gradient)
  grad_fn = lambda p: chunked_grad(tf_pure.graphdef, p, tf_pure.rest, sample, chunk)

  def analyse(theta):
    g, var = grad_fn(theta)
    return (g, var, *split(g, jac))

  g, var, along, orth = analyse(theta0)
  # Chain-rule check: J^T g must equal the GD model's own gradient.
  n = sample.x_ctx.shape[0] // chunk * chunk
  gd_g = jax.jit(lambda p, s: flat(jax.grad(gd_pure.loss)(p, s)))(
      gd_params, jax.tree.map(lambda a: a[:n], sample))
  chain_err = float(jnp.linalg.norm(jac.T @ g - gd_g) / jnp.maximum(jnp.linalg.norm(gd_g), 1e-30))
  result = {
      "grad_norm": float(jnp.linalg.norm(g)),
      "grad_se": float(jnp.sqrt(jnp.sum(var))),
      "along_norm": float(jnp.linalg.norm(along)),
      "orth_norm": float(jnp.linalg.norm(orth)),
      "gd_grad_norm": float(jnp.linalg.norm(gd_g)),
      "chain_rule_rel_err": chain_err,
      "orth_blocks": block_table(orth, var, segs),
      "grad_blocks": block_table(g, var, segs),
      "orth_slot_blocks": slot_blocks(orth, segs, tf.layout),
      "num_tf_params": int(jac.shape[0]), "num_gd_params": int(jac.shape[1]),
      "jacobian_rank": int(jnp.linalg.matrix_rank(jac)),
      "perturbed": [],
  }
  for eps in eps_list:
    for d in range(directions):
      k = jax.random.fold_in(jax.random.fold_in(key, d), int(round(-np.log10(eps) * 1000)))
      leaves, treedef = jax.tree.flatten(theta0)
      ks = jax.random.split(k, len(leaves))
      delta = [eps * jax.random.normal(kk, x.shape, x.dtype) for kk, x in zip(ks, leaves)]
      theta = jax.tree.unflatten(treedef, [x + dx for x, dx in zip(leaves, delta)])
      gp, varp, alongp, orthp = analyse(theta)
      result["perturbed"].append({
          "eps": eps, "direction": d,
          "delta_norm": float(jnp.linalg.norm(flat(delta))),
          "grad_norm": float(jnp.linalg.norm(gp)),
          "grad_se": float(jnp.sqrt(jnp.sum(varp))),
          "along_norm": float(jnp.linalg.norm(alongp)),
          "orth_norm": float(jnp.linalg.norm(orthp)),
          "orth_minus_gdpoint_norm": float(jnp.linalg.norm(orthp - orth)),
      })
  return result, tf_pure, theta0, jac


# ----------------------------------------------------------------------------
# (b) and (c): alignment and distances.


def make_alignment(gd_pure, gd_params, tf_pure, ctx):
  """(b)'s metrics of TF params vs the fixed GD model on contexts `ctx` (first query)."""
  gd_model = gd_pure.model(gd_params)

  @jax.jit
  def fn(tf_params):
    out = analysis.alignment_metrics(gd_model, tf_pure.model(tf_params), ctx.x_ctx,
                                     ctx.y_ctx, ctx.x_query[:, :1])
    return {"pred_l2": out["pred_l2"], "sens_cos": out["sens_cos"],
            "sens_norm_tf": out["sens_norm_b"], "sens_norm_gd": out["sens_norm_a"]}

  return fn


def evaluate(pure, params, ctx):
  logits = pure.jit_logits(params, ctx)
  return {k: float(v) for k, v in
          metrics.compute_metrics(logits, ctx.y_query, ctx.probs_query).items()
          if k in ("nll", "accuracy")}


# ----------------------------------------------------------------------------


def main(argv):
  del argv
  toolkit.quiet_logging()
  if _REPLOT.value:
    with open(os.path.join(_OUT.value, "theory.json")) as fh:
      out = json.load(fh)
    plot(out, os.path.join(_OUT.value, "theory.png"))
    toolkit.write_markdown(os.path.join(_OUT.value, "theory.md"), report_lines(out))
    return
  t_start = time.time()
  quick = _QUICK.value
  gd_epochs = 60 if quick else _GD_EPOCHS.value
  grad_contexts = 1024 if quick else _GRAD_CONTEXTS.value
  tf_epochs = 4 if quick else _TF_EPOCHS.value
  every = 2 if quick else _EVAL_EVERY.value
  polish_steps = 10 if quick else _POLISH.value
  eps_list = [float(e) for e in _EPS.value]
  directions = 1 if quick else _DIRECTIONS.value
  align_n = 64 if quick else _ALIGN.value
  os.makedirs(_OUT.value, exist_ok=True)
  out = {"command": toolkit.command_line(),
         "settings": dict(gd_epochs=gd_epochs, grad_contexts=grad_contexts,
                          tf_epochs=tf_epochs, eval_every=every,
                          polish_steps=polish_steps, eps=eps_list,
                          directions=directions, align_contexts=align_n,
                          chunk=_CHUNK.value, shift=SHIFT),
         "stationarity": {}, "timings_s": {}}

  # (a) Stationarity on three data distributions (+ the mirrored sample).
  gd_models = {}
  cases = [("high_dim", "high_dim", 0.0), ("shifted", "high_dim", SHIFT),
           ("mixture", "mixture", 0.0)]
  for label, gen, shift in cases:
    t0 = time.time()
    cfg = base_config(gen, grad_contexts, gd_epochs, shift)
    run, _ = toolkit.train_in(_RUNS.value, f"gd_{label}",
                              dataclasses.replace(cfg, models=("gd",)))
    data = run.datasets.evals
    gd_pure = Pure(run.models["gd"].model(0))
    gd_params = gd_pure.params
    test_before = evaluate(gd_pure, gd_params, data["test"])
    samples = {label: data["test"]}
    if not shift:
      half = jax.tree.map(lambda a: a[:a.shape[0] // 2], data["test"])
      samples[label + "_mirrored"] = mirror_contexts(half)
    for sname, sample in samples.items():
      polished = polish(gd_pure, gd_params, sample, polish_steps)
      res, tf_pure, theta0, jac = stationarity(
          gd_pure, polished, sample, cfg.data.input_dim, eps_list, directions,
          _CHUNK.value, jax.random.key(1))
      res["gd_test_before_polish"] = test_before
      res["gd_val"] = evaluate(gd_pure, gd_params, data["val"])
      res["kernel_scale"] = float(polished["kernel_scale"])
      res["num_contexts"] = int(sample.x_ctx.shape[0])
      out["stationarity"][sname] = res
      print(f"[a] {sname}: |g|={res['grad_norm']:.3e} along={res['along_norm']:.3e}"
            f" orth={res['orth_norm']:.3e} SE={res['grad_se']:.3e}"
            f" chain={res['chain_rule_rel_err']:.1e} |g_GD|={res['gd_grad_norm']:.2e}", flush=True)
      for p in res["perturbed"]:
        print(f"     eps={p['eps']:.0e} orth={p['orth_norm']:.3e} along={p['along_norm']:.3e}",
              flush=True)
    gd_models[label] = (cfg, data, gd_pure, gd_params)
    out["timings_s"][f"a_{label}"] = time.time() - t0

  # (b) Alignment of a Trained TF trained from scratch with the GD model.
  t0 = time.time()
  cfg, data, gd_pure, gd_params = gd_models["high_dim"]
  tf_cfg = base_config("high_dim", num_test=2048)
  # The same draw and training set as GD's.
  tf_datasets = tasks.get(tf_cfg.task).make_datasets(tf_cfg.data)
  tf_data = tf_datasets.evals
  tf_trainer = train.make_trainer(tf_cfg, "trained_tf", tf_datasets)
  tf_pure = Pure(tf_trainer.model(tf_trainer.params))
  align_ctx = jax.tree.map(lambda a: a[:align_n], tf_data["test"])
  align = make_alignment(gd_pure, gd_params, tf_pure, align_ctx)
  gd_test = evaluate(gd_pure, gd_params, tf_data["test"])

  def record(epoch, p, loss):
    r = {"epoch": epoch, "train_loss": loss, **{k: float(v) for k, v in align(p).items()},
         **{f"test_{k}": v for k, v in evaluate(tf_pure, p, tf_data["test"]).items()}}
    print(f"[b] {r}", flush=True)
    return r

  hist_b = trajectory(tf_trainer, tf_epochs, every, record)
  out["alignment"] = {"gd_test": gd_test, "history": hist_b,
                      "note": "TF trained from its usual init (seed 0); GD = the model of (a)"}
  out["timings_s"]["b"] = time.time() - t0

  # (c) Trained TF initialised at the GD point (trained_tf_from_gd) and trained on.
  t0 = time.time()
  gd_model = gd_pure.model(gd_params)
  theta_gd = Pure(analysis.embed_gd(gd_model, 10)).params
  jac = analysis.gd_embedding_jacobian(gd_model, 10)
  theta_gd_flat = flat(theta_gd)
  align_c = make_alignment(gd_pure, gd_params, tf_pure, align_ctx)

  def record_c(epoch, p, loss):
    diff = flat(p) - theta_gd_flat
    _, off = analysis.split_gradient(diff, jac)
    r = {"epoch": epoch, "train_loss": loss,
         "dist_gd_point": float(jnp.linalg.norm(diff)),
         "dist_gd_manifold": float(jnp.linalg.norm(off)),
         "rel_dist_gd_point": float(jnp.linalg.norm(diff) / jnp.linalg.norm(theta_gd_flat)),
         **{k: float(v) for k, v in align_c(p).items()},
         **{f"test_{k}": v for k, v in evaluate(tf_pure, p, tf_data["test"]).items()}}
    print(f"[c] {r}", flush=True)
    return r

  hist_c = trajectory(tf_trainer, tf_epochs, every, record_c, params=theta_gd)
  out["from_gd"] = {"gd_test": gd_test, "history": hist_c,
                    "theta_gd_norm": float(jnp.linalg.norm(theta_gd_flat))}
  out["timings_s"]["c"] = time.time() - t0
  out["wall_s"] = time.time() - t_start

  base = toolkit.write_results(_OUT.value, "theory", out, plot, report_lines)
  print(f"wrote {base}.{{json,md,png}} in {out['wall_s']:.0f} s")


def plot(out, path):
  plt = toolkit.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  ax = axes[0]
  for (name, res), color in zip(out["stationarity"].items(), "C0 C1 C2 C3 C4".split()):
    eps = sorted({p["eps"] for p in res["perturbed"]})
    mean = lambda key: [np.mean([p[key] for p in res["perturbed"] if p["eps"] == e]) for e in eps]
    ax.loglog(eps, mean("orth_minus_gdpoint_norm"), "o-", color=color,
              label=f"{name}: |orth(eps) - orth(0)|")
    ax.loglog(eps, mean("orth_norm"), "x:", color=color, lw=1)
  ax.loglog(eps, [10 * e for e in eps], "k--", lw=0.8, label="slope 1")
  ax.set_xlabel("perturbation eps (per-entry std)")
  ax.set_ylabel("gradient norm")
  ax.set_title("(a) orthogonal gradient off the GD point\n(x dotted: total, incl. sampling noise)",
               fontsize=10)
  ax.legend(fontsize=7)
  ax = axes[1]
  h = out["alignment"]["history"]
  ep = [r["epoch"] for r in h]
  ax.plot(ep, [r["pred_l2"] for r in h], "o-", label="pred. L2 dist (TF vs GD)")
  ax.plot(ep, [r["sens_cos"] for r in h], "s-", label="cos sim d logits/d x_q")
  ax.plot(ep, [r["test_accuracy"] for r in h], "^-", label="TF test acc")
  ax.axhline(out["alignment"]["gd_test"]["accuracy"], color="k", ls=":", label="GD test acc")
  ax.set_xlabel("Trained TF epoch")
  ax.set_ylabel("distance, cosine or accuracy (legend)")
  ax.set_title("(b) alignment of a Trained TF with GD")
  ax.legend(fontsize=7)
  ax = axes[2]
  h = out["from_gd"]["history"]
  ep = [r["epoch"] for r in h]
  ax.plot(ep, [r["rel_dist_gd_point"] for r in h], "o-", label="|theta - theta_GD| / |theta_GD|")
  ax.plot(ep, [r["pred_l2"] for r in h], "s-", label="pred. L2 dist to GD")
  ax.plot(ep, [r["test_accuracy"] for r in h], "^-", label="test acc")
  ax.axhline(out["from_gd"]["gd_test"]["accuracy"], color="k", ls=":", label="GD test acc")
  ax.set_xlabel("epoch (TF initialised at the GD point)")
  ax.set_ylabel("distance or accuracy (legend)")
  ax.set_title("(c) does it stay at GD?")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report_lines(out):
  """The tables (the interpretation is written by hand below them)."""
  lines = ["# Theory checks (issue 4, item 4)", "",
           f"Command: `{out['command']}`  ", f"Wall time: {out['wall_s']:.0f} s "
           f"({', '.join(f'{k} {v:.0f} s' for k, v in out['timings_s'].items())})  ",
           f"Settings: `{json.dumps(out['settings'])}`", "",
           "![theory](theory.png)", "",
           "## (a) Stationarity of the GD point in the Trained TF's loss", "",
           "| sample | contexts | GD test acc | |g| | SE(g) | along | orth | chain-rule err |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in out["stationarity"].items():
    lines.append(f"| {name} | {r['num_contexts']} | {r['gd_test_before_polish']['accuracy']:.3f} |"
                 f" {r['grad_norm']:.2e} | {r['grad_se']:.2e} | {r['along_norm']:.2e} |"
                 f" {r['orth_norm']:.2e} | {r['chain_rule_rel_err']:.1e} |")
  lines += ["", "Orthogonal gradient per TF parameter block: norm / SE, where SE is the norm"
            " that sampling noise alone gives (from the spread over chunks); norm/SE ~ 1 means"
            " consistent with a zero expectation, >> 1 a real gradient:", ""]
  names = list(out["stationarity"])
  blocks = list(next(iter(out["stationarity"].values()))["orth_blocks"])
  lines.append("| block | " + " | ".join(names) + " |")
  lines.append("|---|" + "---|" * len(names))
  for b in blocks:
    cells = [f"{out['stationarity'][n]['orth_blocks'][b]['norm']:.1e} / "
             f"{out['stationarity'][n]['orth_blocks'][b]['se']:.1e}" for n in names]
    lines.append(f"| {b} | " + " | ".join(cells) + " |")
  lines += ["", "Orthogonal gradient of the head-0 / cross output matrices by token slot "
            "(rows: the slot read; columns: value/key dims or the slot written):", ""]
  slots = list(next(iter(out["stationarity"].values()))["orth_slot_blocks"])
  lines.append("| sub-block | " + " | ".join(names) + " |")
  lines.append("|---|" + "---|" * len(names))
  for s in slots:
    vals = [out["stationarity"][n]["orth_slot_blocks"][s] for n in names]
    if max(vals) == 0.0:
      continue
    lines.append(f"| {s} | " + " | ".join(f"{v:.1e}" for v in vals) + " |")
  lines += ["", "Perturbations (per-entry std eps on all TF parameters; mean over directions):",
            "", "| sample | eps | |delta| | |g| | along | orth | |orth - orth(GD point)| |",
            "|---|---|---|---|---|---|---|"]
  for name, r in out["stationarity"].items():
    for eps in sorted({p["eps"] for p in r["perturbed"]}):
      ps = [p for p in r["perturbed"] if p["eps"] == eps]
      m = lambda k: np.mean([p[k] for p in ps])
      lines.append(f"| {name} | {eps:.0e} | {m('delta_norm'):.2e} | {m('grad_norm'):.2e} |"
                   f" {m('along_norm'):.2e} | {m('orth_norm'):.2e} |"
                   f" {m('orth_minus_gdpoint_norm'):.2e} |")
  for key, title in (("alignment", "(b) Alignment of a Trained TF (from scratch) with GD"),
                     ("from_gd", "(c) Trained TF initialised at the GD point")):
    h = out[key]["history"]
    gd = out[key]["gd_test"]
    lines += ["", f"## {title}", "",
              f"GD model (trained, (a)): test acc {gd['accuracy']:.3f}, NLL {gd['nll']:.3f}", ""]
    cols = [c for c in h[-1] if c != "epoch"]
    lines.append("| epoch | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for r in h:
      lines.append(f"| {r['epoch']} | " + " | ".join(
          "-" if r.get(c) is None else f"{r[c]:.4g}" for c in cols) + " |")
  return lines


if __name__ == "__main__":
  app.run(main)
