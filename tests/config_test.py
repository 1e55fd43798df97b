"""Every config field has a documented meaning (what --print_config shows)."""

import dataclasses

import pytest

from gdattn import config as config_lib
from gdattn import tasks
from gdattn.configs import synthetic as synthetic_config


def _sections(cls, where):
  """(where, dataclass) for cls and every nested dataclass section of it."""
  yield where, cls
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(f.default):
      yield from _sections(type(f.default), f"{where}.{f.name}")


def _all_sections():
  out = []
  for cls in (config_lib.ExperimentConfig, config_lib.OptimConfig,
              config_lib.TrainConfig):
    out.extend(_sections(cls, cls.__name__))
  for name in tasks.names():
    task = tasks.get(name)
    if not type(task).__module__.startswith("gdattn."):
      continue  # a test's toy task registered in the same process
    out.extend(_sections(task.data_config, f"{name}.data"))
    out.extend(_sections(task.model_config, f"{name}.model"))
  return out


@pytest.mark.parametrize("where,cls", _all_sections(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_has_a_meaning(where, cls):
  docs = config_lib.field_docs(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  undocumented = [n for n in names if not docs.get(n)]
  assert not undocumented, f"{where}: no meaning for {undocumented}"
  stale = sorted(set(docs) - set(names))
  assert not stale, f"{where}: documented but not fields: {stale}"


def test_field_docs_parses_continuations_and_stops_at_the_section_end():
  @dataclasses.dataclass
  class Example:
    """One line.

    Attributes:
      a: first
        continued.
      b (int): second.

    Returns:
      c: not an attribute.
    """
    a: int = 0
    b: int = 1

  assert config_lib.field_docs(Example) == {"a": "first continued.",
                                            "b": "second."}


def test_describe_lists_every_leaf_with_its_meaning():
  cfg = config_lib.from_configdict(synthetic_config.get_config("smoke"))
  rows = {key: (value, meaning)
          for key, value, meaning in config_lib.describe(cfg)}
  assert rows["data.name"][0] == "high_dim"
  assert "generator" in rows["data.name"][1]
  assert rows["model.trained_tf.num_heads"][0] == 2
  assert rows["optim_overrides.trained_tf.optimizer"] == (
      "adamw", "trained_tf's own optim.optimizer: \"adam\" or \"adamw\".")
  assert all(meaning for _, meaning in rows.values())
