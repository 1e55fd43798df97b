"""Meta-training over contexts and in-context evaluation: the paper's protocol.

Dimensions: S members (seeds x learning rates, trained together under vmap),
L training contexts, B minibatch, N context points, T queries, C classes.

`train_and_evaluate(config, workdir)` draws one fixed data set (W_data and the
train/val/test contexts, as the paper does), then for each model trains S
members in one compiled step, evaluates every `eval_every` epochs, keeps the
test metrics at the best validation NLL (early stopping), and checkpoints so
that a killed run resumes and ends with the same metrics as an uninterrupted
one. The batch is sharded over all devices (data parallel).
"""

import dataclasses
import itertools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gdattn import config as config_lib
from gdattn import io
from gdattn import metrics
from gdattn import models
from gdattn.data import synthetic

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------
# Data and models.


def make_datasets(cfg: config_lib.DataConfig) -> dict[str, synthetic.Contexts]:
  """The fixed train/val/test contexts of one draw (key = cfg.seed)."""
  # One compiled program: eager vmapped generators would compile per primitive.
  return jax.jit(_make_datasets, static_argnums=0)(cfg, jax.random.key(cfg.seed))


def _make_datasets(cfg, key):
  k_w, k_mix, *k_split = jax.random.split(key, 5)
  w_data = synthetic.class_embeddings(k_w, cfg.num_classes, cfg.data_embed_dim)
  mixture_logits = synthetic.mixture_components(
      k_mix, cfg.num_classes, cfg.num_mixture_components, cfg.mixture_scale)

  def generate(name, key, num):
    kwargs = dict(num_contexts=num, num_context_points=cfg.num_context_points,
                  num_queries=cfg.num_queries, amplitude=cfg.amplitude)
    if name != "random_grid":
      kwargs.update(input_dim=cfg.input_dim, num_active_classes=cfg.num_active_classes)
    if name == "mixture":
      kwargs.update(mixture_logits_MxC=mixture_logits)
    return synthetic.make_contexts(key, name, w_data, **kwargs)

  test_name = cfg.test_name or cfg.name
  return {
      "train": generate(cfg.name, k_split[0], cfg.num_train),
      "val": generate(cfg.name, k_split[1], cfg.num_val),
      "test": generate(test_name, k_split[2], cfg.num_test),
  }


def make_model(cfg: config_lib.ExperimentConfig, name: str, input_dim: int,
               rngs: nnx.Rngs) -> nnx.Module:
  """Builds model `name` (one of models.MODELS) from the config."""
  m, c = cfg.model, cfg.data.num_classes
  common = dict(num_classes=c, embed_dim=m.embed_dim, num_layers=m.num_layers,
                fix_last_class=m.fix_last_class, rngs=rngs)
  init = {} if m.init_scale is None else {"init_scale": m.init_scale}
  if name == "gd":
    return models.GD(kernel=m.kernel, init_kernel_scale=m.init_kernel_scale,
                     **init, **common)
  if name == "gdmlp":
    return models.GDMLP(kernel=m.kernel, init_kernel_scale=m.init_kernel_scale,
                        mlp_hidden=m.mlp_hidden, **init, **common)
  if name == "trained_tf":
    return models.TrainedTF(input_dim=input_dim, kernel=m.kernel,
                            num_heads=m.num_heads, token_layout=m.token_layout,
                            **init, **common)
  if name == "transformer":
    return models.Transformer(input_dim=input_dim, model_dim=m.transformer_dim,
                              num_heads=m.transformer_heads,
                              mlp_hidden=m.transformer_mlp, **common)
  raise ValueError(f"model name must be one of {models.MODELS}, got {name!r}")


def make_optimizer(o: config_lib.OptimConfig) -> optax.GradientTransformation:
  """Adam/AdamW with global-norm clipping and staircase exponential decay.

  The base learning rate is NOT inside: each member multiplies its update by
  its own rate, so members with different rates share one compiled step.
  chain(scale_by_adam, add_decayed_weights, scale(-lr)) is optax.adamw.
  """
  schedule = optax.exponential_decay(1.0, o.decay_steps, o.decay_rate, staircase=True)
  parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm else []
  parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
  if o.optimizer == "adamw" and o.weight_decay:
    parts.append(optax.add_decayed_weights(o.weight_decay))
  parts.append(optax.scale_by_schedule(lambda count: -schedule(count)))
  return optax.chain(*parts)


# ----------------------------------------------------------------------------
# The compiled steps (pure; members on the leading axis).


@dataclasses.dataclass(frozen=True)
class _Program:
  """The jitted functions of one model, closed over its static structure."""

  run_epochs: Any
  evaluate: Any


def _build_program(graphdef, rest, tx, mesh, batch_size, eval_batch_size,
                   microbatch_size, members_per_step=None):
  shard_batch = NamedSharding(mesh, P(None, "data"))  # [S, B, ...]: B split
  num_micro = batch_size // microbatch_size

  def forward(params, batch):
    model = nnx.merge(graphdef, nnx.State(params), rest)
    return model(batch.x_ctx, batch.y_ctx, batch.x_query)

  def loss_fn(params, batch):
    return metrics.nll(forward(params, batch), batch.y_query)

  def micro_grads(params, idx_SxB, data):
    # Mean loss and gradient over the batch, accumulated over microbatches
    # so that the [N, N] intermediates of a few contexts stay in cache (2-3x
    # faster on CPU; equal to the one-shot gradient up to summation order).
    # Context b = i * num_micro + j goes to microbatch j: each microbatch is
    # spread over the devices the same way as the whole batch.
    idx_JxSxI = jnp.moveaxis(
        idx_SxB.reshape(idx_SxB.shape[0], microbatch_size, num_micro), 2, 0)
    # Members in chunks of members_per_step: vmapped within a chunk, chunks one
    # after another (lax.map), so a chunk's kernel work can stay in cache.
    grad_fn = lambda params, batch: jax.lax.map(
        lambda args: jax.value_and_grad(loss_fn)(*args), (params, batch),
        batch_size=members_per_step or idx_SxB.shape[0])

    def accumulate(total, idx_SxI):
      batch = jax.tree.map(lambda a: a[idx_SxI], data)
      batch = jax.lax.with_sharding_constraint(batch, shard_batch)
      return jax.tree.map(jnp.add, total, grad_fn(params, batch)), None

    zeros = (jnp.zeros(idx_SxB.shape[0]), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(accumulate, zeros, idx_JxSxI)
    return jax.tree.map(lambda t: t / num_micro, total)

  def train_step(carry, idx_SxB, data, lr_S):
    params, opt_state = carry
    loss_S, grads = micro_grads(params, idx_SxB, data)
    updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)
    updates = jax.tree.map(
        lambda u: u * lr_S.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype), updates)
    return (optax.apply_updates(params, updates), opt_state), loss_S

  def run_epochs(params, opt_state, shuffle_keys_S, lr_S, data, epochs_E):
    num_train = data.x_ctx.shape[0]
    steps = num_train // batch_size

    def epoch(carry, e):
      perm_SxL = jax.vmap(
          lambda k: jax.random.permutation(jax.random.fold_in(k, e), num_train)
      )(shuffle_keys_S)
      idx_ZxSxB = perm_SxL[:, :steps * batch_size].reshape(-1, steps, batch_size)
      idx_ZxSxB = idx_ZxSxB.transpose(1, 0, 2)
      return jax.lax.scan(lambda c, i: train_step(c, i, data, lr_S), carry, idx_ZxSxB)

    (params, opt_state), loss_ExZxS = jax.lax.scan(epoch, (params, opt_state), epochs_E)
    return params, opt_state, loss_ExZxS

  def evaluate(params, data):
    # Chunks over contexts bound the memory of the attention matrices.
    n = data.x_ctx.shape[0]
    num_devices = mesh.devices.size
    size = -(-min(eval_batch_size, n) // num_devices) * num_devices
    num_chunks = -(-n // size)
    # Wrap-around padding to whole chunks; the extra rows are cut off below.
    idx = jnp.arange(num_chunks * size) % n
    chunks = jax.tree.map(
        lambda a: a[idx].reshape((num_chunks, size) + a.shape[1:]), data)

    def one_chunk(chunk):
      chunk = jax.lax.with_sharding_constraint(chunk, NamedSharding(mesh, P("data")))
      logits = jax.vmap(forward, in_axes=(0, None))(params, chunk)
      return logits

    logits = jax.lax.map(one_chunk, chunks)                 # [Z, S, size, T, C]
    logits = jnp.moveaxis(logits, 1, 0).reshape((logits.shape[1], -1) + logits.shape[3:])[:, :n]
    return jax.vmap(
        lambda lg: metrics.compute_metrics(lg, data.y_query, data.probs_query)
    )(logits)

  return _Program(run_epochs=jax.jit(run_epochs), evaluate=jax.jit(evaluate))


# ----------------------------------------------------------------------------
# The loop.


def _members(cfg, model_name):
  lrs = cfg.member_learning_rates(model_name)
  seeds = range(cfg.seed, cfg.seed + cfg.num_seeds)
  return [(s, lr) for lr, s in itertools.product(lrs, seeds)]


def _first_nonfinite(loss_ExZxS, first_epoch, steps_per_epoch):
  bad = np.argwhere(~np.isfinite(loss_ExZxS))
  e, z, s = bad[0]
  return first_epoch + int(e), int(e) * steps_per_epoch + int(z), int(s)


@dataclasses.dataclass
class Trainer:
  """Everything one model's training needs, set up but not yet run.

  `program.run_epochs(params, opt_state, shuffle_keys, lr_S, data['train'],
  epochs)` trains all members for the given epochs in one compiled call;
  `program.evaluate(params, data[split])` gives per-member metrics. The
  benchmarks time these directly.
  """

  members: list[tuple[int, float]]     # (seed, learning rate) per member
  program: _Program
  data: dict[str, synthetic.Contexts]  # replicated over the mesh
  shuffle_keys: jax.Array              # [S] per-member data-order keys
  lr_S: jax.Array                      # [S] per-member learning rates
  params: Any                          # [S, ...] pure dicts
  opt_state: Any
  num_params: int

  def epoch_chunks(self, num_epochs: int, every: int, params=None, opt_state=None):
    """Trains for num_epochs in calls of `every` epochs (the last may be shorter),
    from `params` / `opt_state` (default: the initial ones).

    Yields (epochs done, params, opt_state, loss [epochs, updates, S]) after
    each call: the loop of scripts that evaluate or record between chunks.
    """
    params = self.params if params is None else params
    opt_state = self.opt_state if opt_state is None else opt_state
    done = 0
    while done < num_epochs:
      count = min(every, num_epochs - done)
      params, opt_state, loss = self.program.run_epochs(
          params, opt_state, self.shuffle_keys, self.lr_S, self.data["train"],
          jnp.arange(done, done + count))
      done += count
      yield done, params, opt_state, loss


def make_trainer(cfg: config_lib.ExperimentConfig, model_name: str,
                 datasets: dict[str, synthetic.Contexts]) -> Trainer:
  """Initialises the members of one model and compiles-on-demand its steps."""
  members = _members(cfg, model_name)
  t = cfg.train
  devices = jax.devices()
  micro = t.microbatch_size or t.batch_size
  if micro % len(devices):
    raise ValueError(
        f"config.train.microbatch_size (or batch_size when it is None) must be"
        f" divisible by the {len(devices)} devices (data parallel), got {micro}")
  mesh = jax.make_mesh((len(devices),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  input_dim = datasets["train"].x_ctx.shape[-1]

  template = make_model(cfg, model_name, input_dim, nnx.Rngs(0))
  graphdef, _, rest = nnx.split(template, nnx.Param, ...)
  tx = make_optimizer(cfg.optim_for(model_name))

  def init_member(key):
    model = make_model(cfg, model_name, input_dim, nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return params, tx.init(params)

  # Member keys depend on the seed alone, so member i of a sweep equals a
  # separate run with that seed.
  keys = [jax.random.split(jax.random.key(seed)) for seed, _ in members]
  params, opt_state = jax.jit(jax.vmap(init_member))(jnp.stack([k[0] for k in keys]))
  # Replicated from the start, as run_epochs returns them: else it compiles twice.
  replicated = NamedSharding(mesh, P())
  params, opt_state = jax.device_put((params, opt_state), replicated)
  return Trainer(
      members=members,
      program=_build_program(graphdef, rest, tx, mesh, t.batch_size,
                             t.eval_batch_size, t.microbatch_size or t.batch_size,
                             t.members_per_step),
      data=jax.device_put(datasets, replicated),
      shuffle_keys=jnp.stack([k[1] for k in keys]),
      lr_S=jnp.asarray([lr for _, lr in members], jnp.float32),
      params=params, opt_state=opt_state,
      num_params=models.count_params(template))


def train_model(cfg: config_lib.ExperimentConfig, model_name: str,
                datasets: dict[str, synthetic.Contexts], workdir: str) -> dict:
  """Trains the members of one model; returns its results (also results.json)."""
  os.makedirs(workdir, exist_ok=True)
  t = cfg.train
  trainer = make_trainer(cfg, model_name, datasets)
  members, program, data = trainer.members, trainer.program, trainer.data
  shuffle_keys, lr_S = trainer.shuffle_keys, trainer.lr_S
  num_members = len(members)
  state = {
      "params": trainer.params, "opt_state": trainer.opt_state,
      "epoch": np.asarray(0, np.int64),
      "best_val_nll": np.full(num_members, np.inf),
      "best_epoch": np.zeros(num_members, np.int64),
      "evals_since_best": np.zeros(num_members, np.int64),
      "best_test": {k: np.zeros(num_members)
                    for k in _metric_names(data, program, trainer.params)},
  }
  ckpt = io.Checkpointer(os.path.join(workdir, "checkpoints"))
  writer = io.MetricsWriter(workdir)
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(start, state)
  writer.truncate_after(start)  # drop records logged after the checkpoint

  steps_per_epoch = cfg.data.num_train // t.batch_size
  progress = _progress(t, model_name, int(state["epoch"]))
  stopped_early = False
  while int(state["epoch"]) < t.num_epochs:
    first = int(state["epoch"])
    count = min(t.eval_every, t.num_epochs - first)
    epochs = jnp.arange(first, first + count)
    new_params, new_opt, loss_ExZxS = program.run_epochs(
        state["params"], state["opt_state"], shuffle_keys, lr_S, data["train"], epochs)
    loss_ExZxS = np.asarray(loss_ExZxS)
    if not np.all(np.isfinite(loss_ExZxS)) or not _all_finite(new_params):
      epoch, step, member = (_first_nonfinite(loss_ExZxS, first, steps_per_epoch)
                             if not np.all(np.isfinite(loss_ExZxS)) else (first, -1, -1))
      raise FloatingPointError(
          f"{model_name}: non-finite loss or parameters at epoch {epoch}"
          f" (update {first * steps_per_epoch + step}, member {member} ="
          f" (seed, lr) {members[member] if member >= 0 else '?'}); the last good"
          f" checkpoint (epoch {ckpt.latest_step()}) is kept in {workdir}/checkpoints."
          " Lower the learning rate or clip harder.")
    state.update(params=new_params, opt_state=new_opt, epoch=np.asarray(first + count, np.int64))
    epoch_now = int(state["epoch"])
    evals = {split: jax.tree.map(np.asarray, program.evaluate(new_params, data[split]))
             for split in SPLITS}
    _update_best(state, evals, epoch_now)
    for i, (seed, lr) in enumerate(members):
      for split in SPLITS:
        writer.write(epoch_now, {"split": split, "model": model_name, "seed": seed,
                                 "lr": lr, **{k: v[i] for k, v in evals[split].items()}})
      writer.write(epoch_now, {"split": "train_loss", "model": model_name,
                               "seed": seed, "lr": lr,
                               "nll": float(loss_ExZxS[:, :, i].mean())})
    ckpt.save(epoch_now, state)
    progress.update(count)
    progress.set_postfix(loss=f"{loss_ExZxS[-1].mean():.4f}",
                         val_nll=f"{evals['val']['nll'].mean():.4f}")
    if t.patience is not None and np.all(state["evals_since_best"] >= t.patience):
      stopped_early = True
      break
  progress.close()
  writer.close()
  ckpt.close()
  return _summarise(cfg, model_name, members, state, trainer.num_params,
                    stopped_early, datasets)


def _metric_names(data, program, params):
  shapes = jax.eval_shape(program.evaluate, params, data["val"])
  return sorted(shapes)


def _all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _update_best(state, evals, epoch):
  val_nll = evals["val"]["nll"]
  improved = val_nll < state["best_val_nll"]
  state["best_val_nll"] = np.where(improved, val_nll, state["best_val_nll"])
  state["best_epoch"] = np.where(improved, epoch, state["best_epoch"])
  state["evals_since_best"] = np.where(improved, 0, state["evals_since_best"] + 1)
  for k, v in evals["test"].items():
    state["best_test"][k] = np.where(improved, v, state["best_test"][k])


def _progress(t, model_name, initial):
  if not t.progress:
    return _NoProgress()
  from tqdm.auto import tqdm  # only an interactive loop needs it
  return tqdm(total=t.num_epochs, initial=initial, desc=model_name, unit="epoch",
              dynamic_ncols=True)


class _NoProgress:
  def update(self, *_): pass
  def set_postfix(self, **_): pass
  def close(self): pass


def _summarise(cfg, model_name, members, state, num_params, stopped_early, datasets):
  per_member = []
  for i, (seed, lr) in enumerate(members):
    per_member.append({
        "seed": seed, "lr": lr, "best_epoch": int(state["best_epoch"][i]),
        "best_val_nll": float(state["best_val_nll"][i]),
        **{f"test_{k}": float(v[i]) for k, v in state["best_test"].items()},
    })
  summary = {"model": model_name, "num_params": num_params,
             "epochs_run": int(state["epoch"]), "stopped_early": stopped_early,
             "members": per_member}
  by_lr = {}
  for record in per_member:
    by_lr.setdefault(record["lr"], []).append(record)
  summary["by_lr"] = {
      str(lr): {k: {"mean": float(np.mean([r[k] for r in rs])),
                    "std": float(np.std([r[k] for r in rs]))}
                for k in rs[0] if k.startswith("test_")}
      for lr, rs in by_lr.items()
  }
  summary["bayes"] = {k: float(v) for k, v in
                      synthetic.bayes_reference(datasets["test"]).items()}
  return summary


def train_and_evaluate(config: Any, workdir: str) -> dict:
  """Runs the experiment described by `config` in `workdir`.

  Writes config.json, metrics.jsonl, results.json and curves.png into
  workdir/<model>/ (and a combined results.json / curves.png in workdir);
  resumes from checkpoints when re-run with the same workdir.

  Args:
    config: an ml_collections.ConfigDict (see experiments/configs) or an
      ExperimentConfig.
    workdir: output directory.

  Returns:
    {model name: results} with the test metrics at the best validation NLL.
  """
  cfg = (config if isinstance(config, config_lib.ExperimentConfig)
         else config_lib.from_configdict(config))
  os.makedirs(workdir, exist_ok=True)
  io.save_config(workdir, dataclasses.asdict(cfg))
  datasets = make_datasets(cfg.data)
  results = {}
  for name in cfg.models:
    model_dir = os.path.join(workdir, name)
    results[name] = train_model(cfg, name, datasets, model_dir)
    io.save_results(model_dir, results[name])
  io.save_results(workdir, results)
  records = []
  for name in cfg.models:
    records += _mean_curves(io.read_metrics(os.path.join(workdir, name)))
  io.plot_curves(records, os.path.join(workdir, "curves.png"), xlabel="epoch")
  return results


def _mean_curves(records):
  """Averages per-member records into one curve per (model, split)."""
  groups = {}
  for r in records:
    if r.get("split") in SPLITS:
      groups.setdefault((r["model"], r["split"], r["step"]), []).append(r)
  return [{"step": step, "model": model, "split": split,
           **{k: float(np.mean([r[k] for r in rs])) for k in ("nll", "accuracy")}}
          for (model, split, step), rs in sorted(groups.items())]
