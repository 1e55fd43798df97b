"""Typed, validated experiment configuration (the library boundary).

Configs are ml_collections.ConfigDicts (gdattn/configs/*.py build them);
`from_configdict` turns one into the frozen dataclasses below and validates
every field before any compute, so a typo or a bad value fails at once with
one line naming the field, what was expected and what was given.

The layout is generic; what `data` and `model` hold is the task's:

  task                 name of a task in gdattn.tasks.TASKS ("synthetic", ...)
  models               names of the task's models to train, one after another
  seed, num_seeds      init seeds seed .. seed + num_seeds - 1 (members)
  learning_rates       a learning-rate sweep (x seeds); () = optim's
  data                 the task's data config (task.data_config)
  model                the task's model config (task.model_config): shared
                       fields and one nested section per model
  optim                optimiser; optim_overrides.<model> changes it per model
  train                the loop (batch, epochs, evaluation, early stopping)
"""

import dataclasses
import difflib
import inspect
import math
import re
from typing import Any

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("staircase", "cosine")

# Fields that change how a run executes but not what it computes; a workdir
# may be resumed with different values of these (see gdattn.workdir).
EXECUTION_FIELDS = ("train.progress", "train.members_per_step",
                    "train.eval_batch_size", "train.tensorboard",
                    "train.unroll")

# Fields added after workdirs were first written, with their defaults (in
# config.json's flattened form): a saved config without one had the default,
# and a field at its default stays out of experiments' config tags, so
# workdirs written before it was added resume (see gdattn.workdir).
LATER_FIELDS = {"optim.lr_scales": {}, "train.cpu_devices": None}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """config.optim: the optimiser (optim_overrides.<model> changes it per model).

  Attributes:
    optimizer: "adam" or "adamw".
    learning_rate: base learning rate (config.learning_rates may sweep it).
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's denominator epsilon.
    weight_decay: decoupled weight decay (adamw only).
    clip_norm: global-norm gradient clip; None = off.
    schedule: "staircase" (lr *= decay_rate every decay_steps updates) or
      "cosine" (linear warmup, then cosine to 0 at decay_steps).
    decay_rate: staircase factor per decay_steps updates (1 = constant).
    decay_steps: staircase period, or the cosine's length, in updates.
    warmup_steps: linear warmup updates (cosine only).
    lr_scales: learning-rate multipliers of the model's top-level parameter
      groups, by attribute name (e.g. {"backbone": 0.1} for a BackboneGD,
      whose groups are "backbone" and "head"). Each named group is clipped
      (clip_norm) and Adam-normalised on its own, so a large group cannot
      shrink a small one's gradients below eps through the global norm;
      the other parameters form one more group at scale 1. Empty = one group.
  """

  optimizer: str = "adam"
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float | None = 1e-3
  schedule: str = "staircase"
  decay_rate: float = 1.0
  decay_steps: int = 1000
  warmup_steps: int = 0
  lr_scales: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """config.train: the loop (batch, epochs, evaluation, early stopping).

  Attributes:
    batch_size: training examples per update.
    num_epochs: epochs to train (passes over a fixed training set).
    eval_every: epochs between evaluations; also the checkpoint interval.
    patience: evaluations without a better validation metric before
      stopping; None = never stop early.
    microbatch_size: gradient accumulation chunk; None = the whole batch.
    eval_batch_size: examples per evaluation chunk (bounds memory).
    members_per_step: members (seeds x learning rates) whose gradients are
      computed together (vmapped), chunks one after another; None = all.
    progress: show a tqdm progress bar.
    tensorboard: also write TensorBoard event files
      (<workdir>/<model>/tensorboard).
    unroll: one compiled call per epoch with its updates (and the
      evaluation's chunks) unrolled, instead of one loop over eval_every
      epochs. XLA:CPU runs convolutions inside loops about 15x slower than
      outside (the end-to-end CNN's update: 7.8 s in a loop, 0.47 s
      unrolled), so models with a CNN inside want it; longer compiles.
    cpu_devices: on the CPU backend, the number of XLA devices the host is
      split into for data parallelism (jax_num_cpu_devices; None: JAX's
      default, one device for all cores). Small per-context ops run faster
      on one core each than split across cores: 2 devices on 2 idle cores
      train the Trained TF 1.3-1.9x faster, GD at K = 2 slower, and beside
      another job on those cores about as fast as one device
      (experiments/bench_devices.py). Like
      microbatch_size it changes the order of float sums, so it is part of
      the config; it must be set before JAX's first computation
      (experiments.main does it). Ignored on other backends.
  """

  batch_size: int = 512
  num_epochs: int = 5000
  eval_every: int = 100
  patience: int | None = None
  microbatch_size: int | None = 64
  eval_batch_size: int = 512
  members_per_step: int | None = None
  progress: bool = True
  tensorboard: bool = False
  unroll: bool = False
  cpu_devices: int | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """The whole config of a run (see the module docstring for the layout).

  Attributes:
    task: name of a registered task (gdattn.tasks.names()): "synthetic",
      "image_icl", "language", ...
    models: names of the task's models to train, one after another.
    seed: first init seed; members use seed .. seed + num_seeds - 1.
    num_seeds: independent inits per learning rate (members).
    learning_rates: a learning-rate sweep (x seeds); () = optim's.
    data: the task's data config (its task.data_config).
    model: the task's model config (task.model_config): shared fields and
      one nested section per model.
    optim: optimiser settings shared by all models.
    optim_overrides: per model name, optim fields that differ for it.
    train: the training loop.
  """

  task: str = "synthetic"
  models: tuple[str, ...] = ("gd", "trained_tf")
  seed: int = 0
  num_seeds: int = 1
  learning_rates: tuple[float, ...] = ()
  data: Any = None
  model: Any = None
  optim: OptimConfig = OptimConfig()
  optim_overrides: dict[str, dict[str, Any]] = dataclasses.field(
      default_factory=dict)
  train: TrainConfig = TrainConfig()

  def optim_for(self, model_name: str) -> OptimConfig:
    """The optimiser settings of one model (defaults plus its overrides)."""
    return dataclasses.replace(
        self.optim, **self.optim_overrides.get(model_name, {}))

  def optim_path(self, model_name: str) -> str:
    """Where a model's optimiser settings are named in errors."""
    return (f"optim_overrides.{model_name}"
            if model_name in self.optim_overrides else "optim")

  def member_learning_rates(self, model_name: str) -> tuple[float, ...]:
    return self.learning_rates or (self.optim_for(model_name).learning_rate,)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def field_docs(cls: type) -> dict[str, str]:
  """{field: meaning} from the `Attributes:` section of cls's docstring.

  Each entry is `name: text` at one indent, continued on deeper-indented
  lines (Google style); the meanings are what --print_config shows.
  """
  doc = inspect.getdoc(cls) or ""
  docs, current, indent = {}, None, None
  in_section = False
  for line in doc.splitlines():
    stripped = line.strip()
    if not in_section:
      in_section = stripped == "Attributes:"
      continue
    if not stripped:
      continue
    depth = len(line) - len(line.lstrip())
    if depth == 0:  # the next section (or prose) ends Attributes
      break
    if indent is None:
      indent = depth
    match = re.match(r"(\w+)(?: \([^)]*\))?: ?(.*)", stripped)
    if depth == indent and match:
      current = match.group(1)
      docs[current] = match.group(2)
    elif current is not None:
      docs[current] += " " + stripped
  return {name: text.strip() for name, text in docs.items()}


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
  """(dotted field, value, meaning) for every leaf field of a config.

  Nested dataclass sections are expanded; an optim_overrides entry is
  described by the optim field it overrides. A field without a documented
  meaning gets "" (tests require every built-in field to have one).
  """
  rows = []
  docs = field_docs(type(cfg))
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    name = prefix + f.name
    if dataclasses.is_dataclass(value) and dataclasses.fields(value):
      rows.extend(describe(value, name + "."))
    elif f.name == "optim_overrides" and value:
      optim = field_docs(OptimConfig)
      for model, fields in value.items():
        for key, v in fields.items():
          rows.append((f"{name}.{model}.{key}", v,
                       f"{model}'s own optim.{key}: {optim.get(key, '')}"))
    else:
      rows.append((name, value, docs.get(f.name, "")))
  return rows


def require(ok: bool, field: str, expected: str, got: Any) -> None:
  """Raises ValueError('config.<field> must be <expected>, got <got>')."""
  if not ok:
    raise ValueError(f"config.{field} must be {expected}, got {got!r}")


def build(cls: type, values: Any, where: str) -> Any:
  """Dataclass `cls` from a (nested) dict; unknown fields are rejected.

  A field whose default is itself a dataclass is built recursively from the
  nested dict of the same name, so every section of every model is checked.
  """
  values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    hints = []
    for name in unknown:
      close = difflib.get_close_matches(name, fields, n=1)
      hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close
                                  else ""))
    raise ValueError(
        f"config{'.' + where if where else ''}: unknown field(s) "
        f"{', '.join(hints)}; valid: {sorted(fields)}")
  for name, value in values.items():
    default = fields[name].default
    if dataclasses.is_dataclass(default) and not isinstance(value, type(default)):
      sub = f"{where}.{name}" if where else name
      if not hasattr(value, "keys"):
        raise ValueError(
            f"config.{sub} must be a section (dict) of fields, got {value!r}")
      values[name] = build(type(default), value, sub)
  try:
    return cls(**values)
  except TypeError as e:
    raise ValueError(f"config{'.' + where if where else ''}: {e}") from None


def _as_tuple(key: str, value: Any) -> tuple:
  # "--config.models=gd,trained_tf" arrives as a string (or a 1-tuple of one).
  items = [value] if isinstance(value, (str, float, int)) else list(value)
  parts = [part for item in items
           for part in (item.split(",") if isinstance(item, str) else [item])]
  if key == "models":
    return tuple(str(p).strip() for p in parts)
  try:
    return tuple(float(p) for p in parts)
  except ValueError:
    raise ValueError(
        f"config.{key} must be numbers, got {value!r}") from None


def from_configdict(config: Any) -> ExperimentConfig:
  """ConfigDict (or nested dict) -> validated ExperimentConfig."""
  from gdattn import tasks  # pylint: disable=g-import-not-at-top

  if isinstance(config, ExperimentConfig):
    validate(config)
    return config
  raw = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  task_name = raw.get("task", ExperimentConfig.task)
  task = tasks.get(task_name)
  sub = {
      "task": task_name,
      "data": build(task.data_config, raw.pop("data", {}), "data"),
      "model": build(task.model_config, raw.pop("model", {}), "model"),
      "optim": build(OptimConfig, raw.pop("optim", {}), "optim"),
      "train": build(TrainConfig, raw.pop("train", {}), "train"),
  }
  for key in ("models", "learning_rates"):
    if key in raw:
      raw[key] = _as_tuple(key, raw[key])
  overrides = raw.get("optim_overrides") or {}
  if not hasattr(overrides, "items"):
    raise ValueError(f"config.optim_overrides must be a section keyed by model"
                     f" name, got {overrides!r}")
  raw["optim_overrides"] = {k: dict(v) for k, v in dict(overrides).items()}
  cfg = build(ExperimentConfig, {**raw, **sub}, "")
  validate(cfg)
  return cfg


def _finite_positive(x: Any) -> bool:
  return isinstance(x, (int, float)) and 0 < x < math.inf


def validate(cfg: ExperimentConfig) -> None:
  """Checks every field; raises ValueError naming the first bad one."""
  from gdattn import tasks  # pylint: disable=g-import-not-at-top

  task = tasks.get(cfg.task)
  names = task.model_names
  require(len(cfg.models) >= 1 and all(m in names for m in cfg.models),
          "models", f"a non-empty subset of {names} (task {cfg.task!r})",
          cfg.models)
  require(len(set(cfg.models)) == len(cfg.models), "models", "free of repeats",
          cfg.models)
  require(isinstance(cfg.num_seeds, int) and cfg.num_seeds >= 1, "num_seeds",
          "an integer >= 1", cfg.num_seeds)
  require(all(_finite_positive(lr) for lr in cfg.learning_rates),
          "learning_rates", "finite positive numbers", cfg.learning_rates)
  task.validate(cfg.data, cfg.model)
  unknown = sorted(set(cfg.optim_overrides) - set(names))
  if unknown:
    close = difflib.get_close_matches(unknown[0], names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    require(False, f"optim_overrides.{unknown[0]}",
            f"keyed by one of the task's models {names}{hint}", unknown)
  for name in cfg.models:
    where = cfg.optim_path(name)
    fields = {f.name for f in dataclasses.fields(OptimConfig)}
    bad = sorted(set(cfg.optim_overrides.get(name, {})) - fields)
    require(not bad, where, f"fields of optim {sorted(fields)}", bad)
    o = cfg.optim_for(name)
    require(o.optimizer in OPTIMIZERS, f"{where}.optimizer",
            f"one of {OPTIMIZERS}", o.optimizer)
    require(_finite_positive(o.learning_rate), f"{where}.learning_rate",
            "a finite number > 0", o.learning_rate)
    require(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"{where}.b1/b2", "in [0, 1)",
            (o.b1, o.b2))
    require(_finite_positive(o.eps), f"{where}.eps", "a finite number > 0",
            o.eps)
    require(0 <= o.weight_decay < math.inf, f"{where}.weight_decay",
            "a finite number >= 0", o.weight_decay)
    require(o.clip_norm is None or _finite_positive(o.clip_norm),
            f"{where}.clip_norm", "None or a finite number > 0", o.clip_norm)
    require(o.schedule in SCHEDULES, f"{where}.schedule",
            f"one of {SCHEDULES}", o.schedule)
    require(0 < o.decay_rate <= 1, f"{where}.decay_rate", "in (0, 1]",
            o.decay_rate)
    require(o.decay_steps >= 1, f"{where}.decay_steps", ">= 1", o.decay_steps)
    require(0 <= o.warmup_steps, f"{where}.warmup_steps", ">= 0",
            o.warmup_steps)
    require(hasattr(o.lr_scales, "items") and all(
        isinstance(k, str) and k and _finite_positive(v)
        for k, v in dict(o.lr_scales).items()), f"{where}.lr_scales",
            "a mapping of parameter group names to finite numbers > 0",
            o.lr_scales)
    require(o.schedule != "cosine" or o.warmup_steps < o.decay_steps,
            f"{where}.warmup_steps", f"< decay_steps={o.decay_steps} (cosine)",
            o.warmup_steps)
  t = cfg.train
  require(t.batch_size >= 1, "train.batch_size", ">= 1", t.batch_size)
  require(t.num_epochs >= 1, "train.num_epochs", ">= 1", t.num_epochs)
  require(t.eval_every >= 1, "train.eval_every", ">= 1", t.eval_every)
  for name in ("progress", "tensorboard", "unroll"):
    require(isinstance(getattr(t, name), bool), f"train.{name}", "a bool",
            getattr(t, name))
  require(t.patience is None or t.patience >= 1, "train.patience",
          "None or >= 1", t.patience)
  require(t.eval_batch_size >= 1, "train.eval_batch_size", ">= 1",
          t.eval_batch_size)
  require(t.members_per_step is None or t.members_per_step >= 1,
          "train.members_per_step", "None or >= 1", t.members_per_step)
  require(t.cpu_devices is None or (
      isinstance(t.cpu_devices, int) and t.cpu_devices >= 1),
          "train.cpu_devices", "None or an int >= 1", t.cpu_devices)
  require(t.microbatch_size is None or (
      t.microbatch_size >= 1 and t.batch_size % t.microbatch_size == 0),
          "train.microbatch_size",
          f"None or a divisor of batch_size={t.batch_size}", t.microbatch_size)
  num_train = getattr(cfg.data, "num_train", None)
  if num_train is not None and not getattr(cfg.data, "fresh_contexts", False):
    require(t.batch_size <= num_train, "train.batch_size",
            f"<= data.num_train (L = {num_train})", t.batch_size)


def check_devices(cfg: ExperimentConfig, num_devices: int,
                  backend: str = "cpu") -> None:
  """The devices must be the config's, and the data-parallel split must
  divide the microbatch (checked up front)."""
  t = cfg.train
  if backend == "cpu" and t.cpu_devices is not None and (
      num_devices != t.cpu_devices):
    raise ValueError(
        f"config.train.cpu_devices: expected {t.cpu_devices} CPU devices, JAX"
        f" has {num_devices}; call jax.config.update('jax_num_cpu_devices',"
        f" {t.cpu_devices}) right after importing jax, before any JAX"
        " computation (experiments.main does this), or set it to None")
  micro = t.microbatch_size or t.batch_size
  require(micro % num_devices == 0, "train.microbatch_size",
          f"(or batch_size when it is None) divisible by the {num_devices}"
          " devices (data parallel)", micro)
