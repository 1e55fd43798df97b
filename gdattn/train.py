"""The generic training loop: any task, any model, members under vmap.

Dimensions: S members (seeds x learning rates, trained together under vmap),
E epochs per call, Z updates per epoch.

`train(config, workdir)` builds the task's data once, then for each model
trains its S members in one compiled step (gdattn.steps), evaluates every
`eval_every` epochs, keeps per member the parameters and the test metrics
at the best validation value of the task's `select_metric` (early stopping),
and checkpoints so that a killed run resumes and ends with the same results
as an uninterrupted one. It returns the results and the best parameters, so
experiments and notebooks never re-implement training.

Workdir layout: config.json, results.json, curves.png, and per model
<model>/{metrics.jsonl, results.json, checkpoints/}. A model whose
results.json exists is finished and is never trained again. Timings live
in metrics.jsonl only (`training_seconds`), so results.json is the same
for a resumed run as for an uninterrupted one.
"""

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from gdattn import config as config_lib
from gdattn import io
from gdattn import tasks
from gdattn import workdir as workdir_lib
# The members' set-up and compiled steps live in gdattn.steps.
from gdattn.steps import make_trainer as make_trainer
from gdattn.steps import members_of as members_of
from gdattn.steps import Trainer as Trainer
from gdattn.tasks.base import Datasets

TRAIN_LOSS = "train_loss"  # the `split` of the training-loss records
# The training-loss records also carry the seconds spent in the training loop
# so far (training, evaluation, checkpoints, compilation), summed over the
# resumed parts of a run; results.json stays free of timings, so that a
# resumed run's results equal an uninterrupted one's.
ELAPSED = "elapsed_s"


def training_seconds(model_dir: str, step: int | None = None) -> float | None:
  """Seconds the training loop has spent on the model in `model_dir` (the
  <workdir>/<model> folder) up to `step` (default: its last record), summed
  over every resumed part; None when unknown (no records, or a part that
  was logged before the loop timed itself)."""
  records = [r for r in io.read_metrics(model_dir)
             if r.get("split") == TRAIN_LOSS
             and (step is None or r["step"] == step)]
  if not records:
    return None
  return max(records, key=lambda r: r["step"]).get(ELAPSED)


@dataclasses.dataclass
class TrainedModel:
  """One model's results and its members' best parameters."""

  name: str
  results: dict[str, Any]            # as in <model>/results.json
  best_params: Any                   # [S, ...] at each member's best eval
  trainer: Trainer
  resumed_from: int | None = None    # epoch of the checkpoint resumed from

  @property
  def members(self) -> list[tuple[int, float]]:
    return self.trainer.members

  def model(self, member: int = 0) -> nnx.Module:
    """The nnx model of one member at its best validation value."""
    return self.trainer.model(self.best_params, member)


def _initial_state(trainer: Trainer, metric_names: list[str],
                   eval_splits: list[str]) -> dict[str, Any]:
  s = len(trainer.members)
  return {
      "params": trainer.params, "opt_state": trainer.opt_state,
      "best_params": trainer.params,
      "epoch": np.asarray(0, np.int64),
      "stopped_early": np.asarray(False),
      "best_val": np.full(s, np.inf),
      "best_epoch": np.zeros(s, np.int64),
      "evals_since_best": np.zeros(s, np.int64),
      "best": {split: {k: np.zeros(s) for k in metric_names}
               for split in eval_splits},
  }


def _check_finite(model_name, members, loss, params, first, steps_per_epoch,
                  ckpt, workdir):
  loss_ok = np.all(np.isfinite(loss))
  if loss_ok and all(bool(jnp.all(jnp.isfinite(x)))
                     for x in jax.tree.leaves(params)):
    return
  where = "at the end of the call"
  if not loss_ok:
    e, z, s = np.argwhere(~np.isfinite(loss))[0]
    where = (f"at epoch {first + int(e)} (update"
             f" {(first + int(e)) * steps_per_epoch + int(z)}, member {int(s)}"
             f" = (seed, lr) {members[int(s)]})")
  last = ckpt.latest_step()
  ckpt.close()  # the run ends here; release orbax before the error unwinds
  kept = (f"the last good checkpoint (epoch {last}) is kept in"
          f" {os.path.join(workdir, 'checkpoints')}" if last is not None
          else "no checkpoint was written yet")
  raise FloatingPointError(
      f"{model_name}: non-finite loss or parameters {where}; {kept}. Lower"
      " the learning rate or clip harder.")


def train_model(cfg: config_lib.ExperimentConfig, model_name: str,
                datasets: Datasets, workdir: str, *,
                load_only: bool = False,
                references: Callable[[], dict[str, Any]] | None = None
                ) -> TrainedModel:
  """Trains (or resumes, or loads when finished) the members of one model.

  With load_only, an unfinished model is not trained: its newest checkpoint's
  best parameters are returned (and results {} when it has none).
  `references()` gives the task's summary (default: computed here); a run
  of several models passes one memoised call, since a task's references
  (e.g. per-context baselines) can cost as much as training.
  """
  os.makedirs(workdir, exist_ok=True)
  t = cfg.train
  trainer = make_trainer(cfg, model_name, datasets)
  task, members, program = trainer.task, trainer.members, trainer.program
  data = trainer.datasets
  splits = sorted(data.evals)
  metric_names = sorted(jax.eval_shape(
      program.evaluate, trainer.params, data.evals["val"]))
  select = task.select_metric
  state = _initial_state(trainer, metric_names, splits)
  ckpt = io.Checkpointer(os.path.join(workdir, "checkpoints"))
  start, state = ckpt.restore_latest_good(state)
  results_path = os.path.join(workdir, "results.json")
  if load_only or (start is not None and os.path.exists(results_path)):
    ckpt.close()  # finished: final, never trained again
    if load_only and start is None:
      raise FileNotFoundError(
          f"{model_name}: no checkpoint in {workdir}; train it first")
    results = (io.load_json(results_path) if os.path.exists(results_path)
               else summarise(trainer, state, references))
    return TrainedModel(model_name, results, state["best_params"], trainer,
                        start)
  writer = io.MetricsWriter(workdir)
  writer.truncate_after(start)  # drop records logged after the checkpoint
  elapsed_before = 0.0 if start is None else training_seconds(workdir, start)
  clock = time.perf_counter()
  board = (io.TensorBoardWriter(os.path.join(workdir, "tensorboard"))
           if t.tensorboard else None)
  if start is not None:
    logging.warning("resumed %s from epoch %d (%s)", model_name, start,
                    workdir)
  progress = tqdm(total=t.num_epochs, initial=int(state["epoch"]),
                  desc=model_name, unit="epoch", dynamic_ncols=True,
                  disable=not t.progress)
  while (int(state["epoch"]) < t.num_epochs
         and not bool(state["stopped_early"])):
    first = int(state["epoch"])
    count = min(t.eval_every, t.num_epochs - first)
    params, opt_state, loss = program.run_epochs(
        state["params"], state["opt_state"], trainer.keys, trainer.lr_S,
        data.train, jnp.arange(first, first + count))
    loss = np.asarray(loss)
    _check_finite(model_name, members, loss, params, first,
                  program.steps_per_epoch, ckpt, workdir)
    epoch = first + count
    evals = {split: jax.tree.map(np.asarray,
                                 program.evaluate(params, data.evals[split]))
             for split in splits}
    improved = evals["val"][select] < state["best_val"]
    state.update(
        params=params, opt_state=opt_state,
        epoch=np.asarray(epoch, np.int64),
        best_params=_select(improved, params, state["best_params"]),
        best_val=np.where(improved, evals["val"][select], state["best_val"]),
        best_epoch=np.where(improved, epoch, state["best_epoch"]),
        evals_since_best=np.where(improved, 0, state["evals_since_best"] + 1),
        best={split: {k: np.where(improved, v, state["best"][split][k])
                      for k, v in evals[split].items()} for split in splits})
    if t.patience is not None and np.all(state["evals_since_best"]
                                         >= t.patience):
      state["stopped_early"] = np.asarray(True)
    elapsed = ({} if elapsed_before is None else
               {ELAPSED: round(elapsed_before + time.perf_counter() - clock, 2)})
    for i, (seed, lr) in enumerate(members):
      for split in splits:
        writer.write(epoch, {"split": split, "model": model_name,
                             "seed": seed, "lr": lr,
                             **{k: v[i] for k, v in evals[split].items()}})
      writer.write(epoch, {"split": TRAIN_LOSS, "model": model_name,
                           "seed": seed, "lr": lr,
                           "nll": float(loss[:, :, i].mean()), **elapsed})
      if board is not None:
        tag = f"seed{seed}_lr{lr:g}"
        for split in splits:
          board.write(epoch, tag, split,
                      {k: v[i] for k, v in evals[split].items()})
        board.write(epoch, tag, TRAIN_LOSS, {"loss": loss[:, :, i].mean()})
    ckpt.save(epoch, state)
    progress.update(count)
    progress.set_postfix(loss=f"{loss[-1].mean():.4f}",
                         **{f"val_{select}":
                            f"{evals['val'][select].mean():.4f}"})
  progress.close()
  writer.close()
  if board is not None:
    board.close()
  ckpt.close()
  results = summarise(trainer, state, references)
  _warn_if_poor(model_name, results)
  io.save_results(workdir, results)
  return TrainedModel(model_name, results, state["best_params"], trainer,
                      start)


@jax.jit
def _select(improved_S, new, old):
  pick = lambda n, o: jnp.where(
      improved_S.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


def summarise(trainer: Trainer, state,
              references: Callable[[], dict[str, Any]] | None = None
              ) -> dict[str, Any]:
  """results.json of one model: per member, per learning rate, references."""
  select = trainer.task.select_metric
  per_member = []
  for i, (seed, lr) in enumerate(trainer.members):
    record = {"seed": seed, "lr": lr,
              "best_epoch": int(state["best_epoch"][i]),
              f"best_val_{select}": float(state["best_val"][i])}
    if "test" in state["best"]:
      record.update({f"test_{k}": float(v[i])
                     for k, v in state["best"]["test"].items()})
    per_member.append(record)
  summary = {"model": trainer.model_name, "num_params": trainer.num_params,
             "epochs_run": int(state["epoch"]),
             "stopped_early": bool(state["stopped_early"]),
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
  summary.update(references() if references is not None
                 else trainer.task.summary(trainer.datasets))
  return summary


def _warn_if_poor(model_name: str, results: dict[str, Any]) -> None:
  # A loss that explodes without reaching inf/NaN would pass silently.
  for m in results["members"]:
    bad = {k: v for k, v in m.items()
           if k.startswith("test_") and not abs(v) < 1e6}
    if bad:
      logging.warning("%s seed %s lr %s: test metrics out of range %s: the"
                      " run diverged; lower the learning rate", model_name,
                      m["seed"], m["lr"], bad)


@dataclasses.dataclass
class Run:
  """What `train` returns: the config, the data and every trained model."""

  config: config_lib.ExperimentConfig
  datasets: Datasets
  models: dict[str, TrainedModel]

  @property
  def results(self) -> dict[str, dict[str, Any]]:
    return {name: m.results for name, m in self.models.items()}


def train(config: Any, workdir: str, *, overwrite: bool = False) -> Run:
  """Runs the experiment `config` in `workdir`; returns results and params.

  Args:
    config: an ml_collections.ConfigDict (see gdattn/configs) or an
      ExperimentConfig.
    workdir: output directory; re-running with the same config resumes (a
      different config is refused, see gdattn.workdir).
    overwrite: delete the workdir's previous results first.

  Returns:
    A `Run`: per model its results (test metrics at the best validation
    value) and the members' best parameters.
  """
  cfg = config_lib.from_configdict(config)
  config_lib.check_devices(cfg, jax.device_count(), jax.default_backend())
  task = tasks.get(cfg.task)
  with workdir_lib.open_workdir(workdir, cfg, overwrite=overwrite):
    datasets = task.make_datasets(cfg.data)
    references = functools.cache(lambda: task.summary(datasets))
    trained = {}
    for name in cfg.models:
      trained[name] = train_model(cfg, name, datasets,
                                  os.path.join(workdir, name),
                                  references=references)
    run = Run(cfg, datasets, trained)
    io.save_results(workdir, run.results)
    records = []
    for name in cfg.models:
      records += mean_curves(io.read_metrics(os.path.join(workdir, name)))
    io.plot_curves(records, os.path.join(workdir, "curves.png"),
                   xlabel="epoch", references=_references(run.results),
                   best_steps={name: m.results["members"][0]["best_epoch"]
                               for name, m in trained.items()})
  return run


def load(workdir: str) -> Run:
  """The run in `workdir` as it stands, without training anything.

  Rebuilds the config from config.json and the task's data, and restores
  each model's best parameters from its newest usable checkpoint (finished
  or not): the way to sample from, probe or plot a trained model.
  """
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {workdir_lib.CONFIG_FILE} in {workdir}: not"
                            " a gdattn workdir")
  cfg = config_lib.from_configdict(io.load_json(path))
  task = tasks.get(cfg.task)
  datasets = task.make_datasets(cfg.data)
  references = functools.cache(lambda: task.summary(datasets))
  trained = {name: train_model(cfg, name, datasets,
                               os.path.join(workdir, name), load_only=True,
                               references=references)
             for name in cfg.models
             if os.path.isdir(os.path.join(workdir, name, "checkpoints"))}
  return Run(cfg, datasets, trained)


def _references(results):
  bayes = next(iter(results.values())).get("bayes")
  if not bayes:
    return {}
  return {"nll": ("Bayes NLL", bayes["bayes_nll"]),
          "accuracy": ("Bayes mean max prob", bayes["bayes_max_prob"])}


def train_and_evaluate(config: Any, workdir: str, *,
                       overwrite: bool = False) -> dict[str, Any]:
  """`train(...)` without the parameters: {model name: results}."""
  return train(config, workdir, overwrite=overwrite).results


def mean_curves(records):
  """Averages per-member records into one curve per (model, split)."""
  groups = {}
  for r in records:
    if r.get("split") not in (None, TRAIN_LOSS):
      groups.setdefault((r["model"], r["split"], r["step"]), []).append(r)
  return [{"step": step, "model": model, "split": split,
           **{k: float(np.mean([r[k] for r in rs]))
              for k in ("nll", "accuracy") if k in rs[0]}}
          for (model, split, step), rs in sorted(groups.items())]
