"""Workdir I/O without TensorFlow: JSON-lines metrics, JSON files, checkpoints.

Layout of a workdir: metrics.jsonl (one record per line), config.json,
results.json, and a checkpoint directory managed by orbax.

Resume protocol for metrics: after restoring checkpoint step s, call
`MetricsWriter.truncate_after(s)` before logging again; it drops the records
logged after that checkpoint (they will be logged again), so the file itself
never holds duplicates and `read_metrics` can return it as is.
"""

from collections.abc import Iterable, Mapping
import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

METRICS_FILE = "metrics.jsonl"


def _atomic_write_text(path: str, text: str) -> None:
  # Write-then-rename: a kill mid-write leaves the old file, never half a file.
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def _to_json_value(name: str, value: Any) -> Any:
  if value is None or isinstance(value, (str, bool, int, float)):
    return value
  arr = np.asarray(value)  # jax/numpy scalars; fetches device values.
  if arr.size != 1:
    raise ValueError(
        f"metric {name!r}: expected a scalar, got shape {arr.shape}."
    )
  return float(arr.reshape(()))


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Records of <workdir>/metrics.jsonl in file order; [] if there is none.

  A line that does not parse (the torn last line of a killed process) is
  skipped with a warning rather than making the whole log unreadable.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("%s:%d: skipping unparsable line.", path, lineno)
  return records


class MetricsWriter:
  """Appends {'step': int, **metrics} as one JSON line per `write` call."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file = self._open_for_append()

  def _open_for_append(self):
    f = open(self.path, "a+", encoding="utf-8")
    # A killed writer can leave a last line without its newline; start on a
    # fresh line so the next record is not glued onto the torn one.
    if f.tell() > 0:
      f.seek(f.tell() - 1)
      if f.read(1) != "\n":
        f.write("\n")
        f.flush()
    return f

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs one record; strings (e.g. 'split', 'model') pass through as is."""
    if "step" in metrics:
      raise ValueError("metrics: 'step' is reserved; pass it as `step`.")
    record = {"step": int(step)}
    record.update({k: _to_json_value(k, v) for k, v in metrics.items()})
    self._file.write(json.dumps(record) + "\n")
    # flush (not fsync): the page cache outlives a killed process, so this is
    # enough for SIGKILL; only a machine crash could lose the tail.
    self._file.flush()

  def truncate_after(self, step: int | None) -> int:
    """Drops records with 'step' > step (all if step is None); returns count.

    Call on resume with the restored checkpoint step (None when starting
    afresh without a checkpoint) so re-logged steps do not appear twice.
    """
    self._file.close()
    records = read_metrics(os.path.dirname(self.path))
    keep = lambda r: step is not None and r.get("step", 0) <= step
    kept = [r for r in records if keep(r)]
    _atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    self._file = self._open_for_append()  # the old handle saw the old inode.
    return len(records) - len(kept)

  def close(self) -> None:
    """Closes the file; further writes raise."""
    self._file.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class TensorBoardWriter:
  """Scalars as TensorBoard event files, without TensorFlow (tensorboardX).

  One run directory per model; tags are "<split>/<metric>" with one curve
  per member ("seed<s>_lr<lr>" under the logdir). Needs the `tensorboard`
  extra (pip install tensorboardX).
  """

  def __init__(self, logdir: str):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
          "config.train.tensorboard=True needs tensorboardX: pip install"
          " tensorboardX (or the gdattn[tensorboard] extra)") from None
    self._make = lambda name: SummaryWriter(os.path.join(logdir, name))
    self._writers = {}

  def write(self, step: int, member: str, split: str,
            metrics: Mapping[str, Any]) -> None:
    if member not in self._writers:
      self._writers[member] = self._make(member)
    w = self._writers[member]
    for name, value in metrics.items():
      w.add_scalar(f"{split}/{name}", float(value), global_step=int(step))
    w.flush()

  def close(self) -> None:
    for w in self._writers.values():
      w.close()


def save_config(workdir: str, config: Any) -> str:
  """Writes config.json from a dict, dataclass or ConfigDict; returns path."""
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict, duck-typed.
    config = config.to_dict()
  elif dataclasses.is_dataclass(config) and not isinstance(config, type):
    config = dataclasses.asdict(config)
  return _write_json(workdir, "config.json", dict(config))


def save_results(workdir: str, results: Mapping[str, Any]) -> str:
  """Writes results.json (scalars become Python floats); returns its path."""
  results = jax.tree.map(lambda v: _to_json_value("results", v), dict(results))
  return _write_json(workdir, "results.json", results)


def load_json(path: str) -> Any:
  """The object in a JSON file written by save_results / save_config."""
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(workdir: str, name: str, obj: Any) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  # default=str keeps odd leaves (dtypes, enums) readable instead of failing.
  text = json.dumps(obj, indent=2, sort_keys=True, default=str)
  _atomic_write_text(path, text)
  return path


def _is_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
  # Orbax cannot serialise typed key arrays; their uint32 key_data it can.
  to_data = lambda x: jax.random.key_data(x) if _is_key(x) else x
  return jax.tree.map(to_data, tree)


class CheckpointError(RuntimeError):
  """No checkpoint of a directory restores (the message names it)."""


class _QuietOrbax(logging.Filter):
  """Drops orbax's own log lines while a Checkpointer reads its steps.

  Orbax logs an ERROR for each unreadable metadata file it meets (once when
  the manager lists the steps, again on restore); restore_latest_good
  reports every failure itself, once, in one message.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return "orbax" not in record.pathname

  def __enter__(self):
    logging.getLogger("absl").addFilter(self)  # orbax logs through absl
    return self

  def __exit__(self, *exc):
    logging.getLogger("absl").removeFilter(self)


class Checkpointer:
  """Thin wrapper of orbax CheckpointManager keeping the last `max_to_keep`.

  Typed PRNG keys (jax.random.key) are saved as jax.random.key_data and
  re-wrapped with the impl of the matching key in the restore target, so the
  target must hold concrete keys there (any key of the same impl will do).
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        # Synchronous saves: save() returns only after orbax has renamed the
        # finished temporary directory into place, so a SIGKILL right after
        # save() cannot lose the checkpoint, and one mid-save leaves no step.
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,  # leftovers of saves killed mid-way.
    )
    self.directory = os.path.abspath(directory)  # orbax wants absolute paths.
    with _QuietOrbax():
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves state at step; returns whether orbax saved.

    Orbax returns False (no error) for a step <= latest_step(), and raises
    StepAlreadyExistsError for an existing step when force=True.
    """
    saved = self._manager.save(
        step, args=ocp.args.StandardSave(_keys_to_data(state)), force=force
    )
    self._manager.wait_until_finished()
    return saved

  def latest_step(self) -> int | None:
    """The newest complete checkpoint step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, ascending."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int | None, target: Any) -> Any:
    """Restores step (latest if None) into target's structure and dtypes."""
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    restored = self._manager.restore(
        step, args=ocp.args.StandardRestore(_keys_to_data(target))
    )
    return jax.tree.map(
        lambda t, r: (
            jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
            if _is_key(t)
            else r
        ),
        target,
        restored,
    )

  def restore_latest_good(self, target: Any) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that restores, or (None, target).

    A checkpoint that fails to restore (truncated or corrupted files) is
    skipped with a warning naming it and the one used instead; if there are
    checkpoints but none restores, closes and raises CheckpointError naming
    the directory.
    """
    steps = self.all_steps()
    failures = []
    for step in reversed(steps):
      try:
        with _QuietOrbax():
          state = self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        failures.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
        continue
      if failures:
        logging.warning(
            "%s: unreadable checkpoint(s) %s; resuming from step %d instead.",
            self.directory, "; ".join(failures), step)
      return step, state
    if steps:
      # Fatal for the caller: release orbax's threads now, so the process
      # ends on this message rather than on their shutdown noise.
      self.close()
      raise CheckpointError(
          f"no usable checkpoint in {self.directory} ({'; '.join(failures)});"
          " delete that directory to start the model again")
    return None, target

  def wait(self) -> None:
    """Blocks until pending saves finish (saves are already synchronous)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending work and releases orbax's resources."""
    self._manager.close()


_SPLIT_STYLES = {"train": ":", "val": "--", "test": "-"}


def plot_curves(
    workdir_or_records: str | Iterable[Mapping[str, Any]],
    path: str,
    metrics: Iterable[str] = ("nll", "accuracy"),
    xlabel: str = "step",
    references: Mapping[str, tuple[str, float]] | None = None,
    best_steps: Mapping[str, int] | None = None,
) -> str:
  """Saves a PNG with one panel per metric, one line per (model, split).

  Colour = model, line style = split (train dotted, val dashed, test solid).

  Args:
    workdir_or_records: a workdir holding metrics.jsonl, or its records.
    path: the PNG to write.
    metrics: one panel per metric.
    xlabel: the x axis label.
    references: {metric: (label, value)} drawn as a grey horizontal line
      (e.g. the Bayes NLL and mean max probability).
    best_steps: {model: step} marked with a dot on its test curve (the
      early-stopping choice).
  """
  # Figure without pyplot: renders with Agg and never touches a display or
  # matplotlib's global backend state; imported lazily to keep import light.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  records = (
      read_metrics(workdir_or_records)
      if isinstance(workdir_or_records, (str, os.PathLike))
      else list(workdir_or_records)
  )
  metrics = tuple(metrics)
  references, best_steps = references or {}, best_steps or {}
  fig = Figure(figsize=(5 * len(metrics), 4), layout="constrained")
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  models = sorted({str(r.get("model", "")) for r in records})
  colours = {m: f"C{i}" for i, m in enumerate(models)}
  for ax, metric in zip(axes, metrics):
    lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in records:
      if r.get(metric) is not None:
        key = (str(r.get("model", "")), str(r.get("split", "")))
        lines.setdefault(key, []).append((r["step"], r[metric]))
    for (model, split), points in sorted(lines.items()):
      steps, values = zip(*sorted(points))
      label = " ".join(p for p in (model, split) if p) or metric
      ax.plot(steps, values, label=label, color=colours[model],
              linestyle=_SPLIT_STYLES.get(split, "-."))
      if split == "test" and model in best_steps:
        at = dict(zip(steps, values)).get(best_steps[model])
        if at is not None:
          ax.plot([best_steps[model]], [at], "o", color=colours[model],
                  label=f"{model} best val (epoch {best_steps[model]})")
    if metric in references:
      label, value = references[metric]
      ax.axhline(value, color="0.5", linewidth=1, label=label)
    ax.set(xlabel=xlabel, ylabel=metric, title=metric)
    if lines:
      ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  return path
