"""Tasks by name: `config.task` picks one (big_vision picks modules alike).

Built-in tasks are imported on first use, so the synthetic path never pulls
in an image or text dependency. `register` adds a task object (anything
with the attributes of `gdattn.tasks.base.Task`), e.g. from a notebook.
"""

import importlib
from typing import Any

from gdattn.tasks.base import Datasets  # pylint: disable=unused-import
from gdattn.tasks.base import Task  # pylint: disable=unused-import

_BUILTIN = {
    "synthetic": "gdattn.tasks.synthetic",
    "image_icl": "gdattn.tasks.image_icl",
    "language": "gdattn.tasks.language",
}
_REGISTERED: dict[str, Any] = {}


def names() -> tuple[str, ...]:
  return tuple(sorted(set(_BUILTIN) | set(_REGISTERED)))


def register(task: Any) -> Any:
  """Makes `task` available as config.task == task.name; returns it."""
  _REGISTERED[task.name] = task
  return task


def get(name: str) -> Any:
  """The task object called `name`."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name not in _BUILTIN:
    raise ValueError(f"config.task must be one of {names()}, got {name!r}")
  return importlib.import_module(_BUILTIN[name]).TASK
