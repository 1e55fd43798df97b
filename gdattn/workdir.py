"""One run per workdir, one config per workdir: nothing lost, nothing mixed.

`open_workdir(path, config)` is called before anything is written:

- it takes an exclusive lock (fcntl.flock on <workdir>/.lock, holding the
  holder's host, pid and command), so a second run on the same workdir fails
  at once naming the first; the kernel drops the lock when its process dies,
  so a killed run leaves no stale lock behind;
- it compares the requested config with the workdir's config.json and
  refuses any difference that changes results (all fields but
  config.EXECUTION_FIELDS), naming each changed field and the way out: a new
  workdir, or `overwrite=True` (--overwrite), which deletes the old results.
"""

import dataclasses
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from typing import Any

from gdattn import config as config_lib

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Written with the first config: workdirs without it predate the task engine
# (their checkpoints hold no best parameters) and are not resumed.
FORMAT_FILE = "gdattn_workdir.json"
FORMAT = 2


class WorkdirError(RuntimeError):
  """A workdir cannot be used as asked (locked, other config, old format)."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples (JSON round trip)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = tuple(value) if isinstance(value, list) else value
  return out


def config_dict(cfg: config_lib.ExperimentConfig) -> dict[str, Any]:
  """The JSON form of a config (as written to config.json)."""
  return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def result_fields(config_json: dict[str, Any]) -> dict[str, Any]:
  """The flattened fields of a config (as config.json) that change results:
  all but config.EXECUTION_FIELDS, and a LATER_FIELDS field counts as
  absent at its default (configs saved before it existed had it)."""
  return {k: v for k, v in flatten(config_json).items()
          if k not in config_lib.EXECUTION_FIELDS
          and not (k in config_lib.LATER_FIELDS
                   and v == config_lib.LATER_FIELDS[k])}


def config_changes(saved: dict[str, Any], requested: dict[str, Any]
                   ) -> list[tuple[str, Any, Any]]:
  """(field, saved value, requested value) for fields that change results."""
  a, b = result_fields(saved), result_fields(requested)
  return [(key, a.get(key, "<absent>"), b.get(key, "<absent>"))
          for key in sorted(set(a) | set(b))
          if a.get(key, "<absent>") != b.get(key, "<absent>")]


class Workdir:
  """An open, locked workdir; `close()` (or the process's end) unlocks it."""

  def __init__(self, path: str, lock_file):
    self.path = path
    self._lock_file = lock_file

  def close(self) -> None:
    if self._lock_file is not None:
      fcntl.flock(self._lock_file, fcntl.LOCK_UN)
      self._lock_file.close()
      self._lock_file = None

  def __enter__(self) -> "Workdir":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _lock(path: str):
  lock_path = os.path.join(path, LOCK_FILE)
  f = open(lock_path, "a+", encoding="utf-8")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise WorkdirError(
        f"workdir {path} is in use by {holder}; wait for it to finish or use"
        " another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}")
  f.flush()
  return f


def is_complete(path: str, cfg: config_lib.ExperimentConfig) -> bool:
  """Whether `path` holds the finished results of exactly this config."""
  try:
    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError):
    return False
  return (not config_changes(saved, config_dict(cfg))
          and os.path.exists(os.path.join(path, "results.json"))
          and os.path.exists(os.path.join(path, FORMAT_FILE)))


def open_workdir(path: str, cfg: config_lib.ExperimentConfig, *,
                 overwrite: bool = False) -> Workdir:
  """Locks `path`, checks (or writes) its config; see the module docstring."""
  os.makedirs(path, exist_ok=True)
  lock = _lock(path)
  try:
    config_path = os.path.join(path, CONFIG_FILE)
    requested = config_dict(cfg)
    if os.path.exists(config_path) and not overwrite:
      if not os.path.exists(os.path.join(path, FORMAT_FILE)):
        raise WorkdirError(
            f"workdir {path} was written by an older gdattn (before the task"
            " engine: its checkpoints hold no best parameters); use a new"
            " --workdir, or --overwrite to delete it and start again")
      with open(config_path, encoding="utf-8") as f:
        saved = json.load(f)
      changes = config_changes(saved, requested)
      if changes:
        listed = "; ".join(f"config.{k}: {old!r} in the workdir, {new!r} now"
                           for k, old, new in changes)
        raise WorkdirError(
            f"workdir {path} holds a run with another config ({listed}); use"
            " a new --workdir, or --overwrite to delete its results and start"
            " again")
    if overwrite:
      for name in os.listdir(path):
        if name != LOCK_FILE:
          target = os.path.join(path, name)
          if os.path.isdir(target):
            shutil.rmtree(target)
          else:
            os.remove(target)
    _write_json(config_path, requested)
    _write_json(os.path.join(path, FORMAT_FILE), {"format": FORMAT})
  except BaseException:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    raise
  return Workdir(path, lock)


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
