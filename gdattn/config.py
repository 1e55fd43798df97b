"""Typed, validated experiment configuration (the library boundary).

experiments/configs/*.py build ml_collections.ConfigDicts; `from_configdict`
turns one into the frozen dataclasses below and validates every field before
any compute, so a typo or a bad value fails at once with a clear message.
"""

import dataclasses
from typing import Any

from gdattn import kernels
from gdattn import models
from gdattn.data import synthetic

OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  name: str = "high_dim"            # training (and validation) generator
  test_name: str | None = None      # test generator; None = same as `name`
  num_classes: int = 25             # C
  input_dim: int = 10               # D (random_grid forces 2)
  data_embed_dim: int = 5           # E of W_data (the generative embedding)
  num_context_points: int = 125     # N
  num_queries: int = 1              # T
  num_active_classes: int = 5       # J
  amplitude: float = 10.0           # lambda
  num_train: int = 2048             # L
  num_val: int = 2048
  num_test: int = 2048
  seed: int = 5                     # one draw of W_data and the data sets
  num_mixture_components: int = 10
  mixture_scale: float = 2.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  num_layers: int = 1               # K
  kernel: str = "softmax"
  embed_dim: int = 5                # E of the model's W_e
  init_scale: float | None = None   # None: 0.002 (GD, GDMLP), 0.002/K (TrainedTF)
  init_kernel_scale: float = 1.0
  fix_last_class: bool = True
  num_heads: int = 2                # TrainedTF self-attention heads
  token_layout: str = "exact"       # TrainedTF: "exact" or "paper"
  mlp_hidden: int = 16              # GDMLP
  transformer_dim: int = 64         # Transformer baseline
  transformer_heads: int = 4
  transformer_mlp: int = 128


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float | None = 1e-3    # global-norm clip; None = off
  decay_rate: float = 1.0           # lr *= decay_rate every decay_steps updates
  decay_steps: int = 1000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 512
  num_epochs: int = 5000
  eval_every: int = 100             # epochs; also the checkpoint interval
  patience: int | None = None       # evals without val-NLL gain before stopping
  microbatch_size: int | None = 64  # gradient accumulation chunk; None = whole batch
  eval_batch_size: int = 512        # contexts per eval chunk (memory bound)
  # Members (seeds x lrs) whose gradients are computed together (vmapped);
  # the chunks run one after another. None = all members at once.
  members_per_step: int | None = None
  progress: bool = True


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  models: tuple[str, ...] = ("gd", "trained_tf")
  seed: int = 0                     # members use seeds seed .. seed+num_seeds-1
  num_seeds: int = 1
  learning_rates: tuple[float, ...] = ()  # sweep (x seeds); () = optim's
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  optim_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  train: TrainConfig = TrainConfig()

  def optim_for(self, model_name: str) -> OptimConfig:
    """The optimiser settings of one model (defaults plus its overrides)."""
    return dataclasses.replace(self.optim, **self.optim_overrides.get(model_name, {}))

  def member_learning_rates(self, model_name: str) -> tuple[float, ...]:
    return self.learning_rates or (self.optim_for(model_name).learning_rate,)


def _build(cls, values: dict[str, Any], where: str):
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"config.{where}: unknown field(s) {unknown}; valid: {sorted(fields)}")
  return cls(**values)


def from_configdict(config: Any) -> ExperimentConfig:
  """ConfigDict (or nested dict) -> validated ExperimentConfig."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  raw = dict(raw)
  sub = {
      "data": _build(DataConfig, dict(raw.pop("data", {})), "data"),
      "model": _build(ModelConfig, dict(raw.pop("model", {})), "model"),
      "optim": _build(OptimConfig, dict(raw.pop("optim", {})), "optim"),
      "train": _build(TrainConfig, dict(raw.pop("train", {})), "train"),
  }
  for key in ("models", "learning_rates"):
    if key in raw:
      value = raw[key]
      # "--config.models=gd,trained_tf" arrives as a string (or a 1-tuple of one).
      items = [value] if isinstance(value, (str, float, int)) else list(value)
      raw[key] = tuple(
          part.strip() if key == "models" else float(part)
          for item in items
          for part in (item.split(",") if isinstance(item, str) else [item]))
  raw["optim_overrides"] = {k: dict(v) for k, v in dict(raw.get("optim_overrides", {})).items()}
  cfg = _build(ExperimentConfig, {**raw, **sub}, "")
  validate(cfg)
  return cfg


def _require(ok: bool, field: str, expected: str, got: Any) -> None:
  if not ok:
    raise ValueError(f"config.{field} must be {expected}, got {got!r}")


def validate(cfg: ExperimentConfig) -> None:
  """Checks every field; raises ValueError naming the first bad one."""
  _require(len(cfg.models) >= 1 and all(m in models.MODELS for m in cfg.models),
           "models", f"a non-empty subset of {models.MODELS}", cfg.models)
  _require(len(set(cfg.models)) == len(cfg.models), "models", "free of repeats", cfg.models)
  _require(cfg.num_seeds >= 1, "num_seeds", ">= 1", cfg.num_seeds)
  _require(all(lr > 0 for lr in cfg.learning_rates), "learning_rates",
           "positive numbers", cfg.learning_rates)
  d = cfg.data
  for name in ("name", "test_name"):
    value = getattr(d, name)
    if name == "test_name" and value is None:
      continue
    _require(value in synthetic.GENERATORS, f"data.{name}",
             f"one of {sorted(synthetic.GENERATORS)}", value)
  _require(d.num_classes >= 2, "data.num_classes", ">= 2", d.num_classes)
  _require(2 <= d.num_active_classes <= d.num_classes, "data.num_active_classes",
           f"in [2, num_classes={d.num_classes}]", d.num_active_classes)
  for name in ("input_dim", "data_embed_dim", "num_context_points", "num_queries",
               "num_train", "num_val", "num_test", "num_mixture_components"):
    _require(getattr(d, name) >= 1, f"data.{name}", ">= 1", getattr(d, name))
  _require(d.amplitude > 0, "data.amplitude", "> 0", d.amplitude)
  m = cfg.model
  _require(m.num_layers >= 1, "model.num_layers", ">= 1 (K, the number of GD steps)",
           m.num_layers)
  _require(m.kernel in kernels.KERNELS, "model.kernel", f"one of {kernels.KERNELS}",
           m.kernel)
  _require(m.embed_dim >= 1, "model.embed_dim", ">= 1", m.embed_dim)
  _require(m.init_scale is None or m.init_scale > 0, "model.init_scale",
           "None or > 0", m.init_scale)
  _require(m.init_kernel_scale > 0, "model.init_kernel_scale", "> 0", m.init_kernel_scale)
  _require(m.token_layout in ("exact", "paper"), "model.token_layout",
           "'exact' or 'paper'", m.token_layout)
  for name in ("num_heads", "mlp_hidden", "transformer_dim", "transformer_heads",
               "transformer_mlp"):
    _require(getattr(m, name) >= 1, f"model.{name}", ">= 1", getattr(m, name))
  _require(m.transformer_dim % m.transformer_heads == 0, "model.transformer_dim",
           f"a multiple of transformer_heads={m.transformer_heads}", m.transformer_dim)
  unknown = sorted(set(cfg.optim_overrides) - set(models.MODELS))
  _require(not unknown, "optim_overrides", f"keyed by model names {models.MODELS}", unknown)
  for name in cfg.models:
    where = f"optim_overrides.{name}" if name in cfg.optim_overrides else "optim"
    try:
      o = cfg.optim_for(name)
    except TypeError as e:
      raise ValueError(f"config.{where}: {e}") from None
    _require(o.optimizer in OPTIMIZERS, f"{where}.optimizer", f"one of {OPTIMIZERS}",
             o.optimizer)
    _require(o.learning_rate > 0, f"{where}.learning_rate", "> 0", o.learning_rate)
    _require(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"{where}.b1/b2", "in [0, 1)", (o.b1, o.b2))
    _require(o.eps > 0, f"{where}.eps", "> 0", o.eps)
    _require(o.weight_decay >= 0, f"{where}.weight_decay", ">= 0", o.weight_decay)
    _require(o.clip_norm is None or o.clip_norm > 0, f"{where}.clip_norm",
             "None or > 0", o.clip_norm)
    _require(0 < o.decay_rate <= 1, f"{where}.decay_rate", "in (0, 1]", o.decay_rate)
    _require(o.decay_steps >= 1, f"{where}.decay_steps", ">= 1", o.decay_steps)
  t = cfg.train
  _require(t.batch_size >= 1, "train.batch_size", ">= 1", t.batch_size)
  _require(t.batch_size <= d.num_train, "train.batch_size",
           f"<= data.num_train (L = {d.num_train})", t.batch_size)
  _require(t.num_epochs >= 1, "train.num_epochs", ">= 1", t.num_epochs)
  _require(t.eval_every >= 1, "train.eval_every", ">= 1", t.eval_every)
  _require(t.patience is None or t.patience >= 1, "train.patience", "None or >= 1",
           t.patience)
  _require(t.eval_batch_size >= 1, "train.eval_batch_size", ">= 1", t.eval_batch_size)
  _require(t.members_per_step is None or t.members_per_step >= 1,
           "train.members_per_step", "None or >= 1", t.members_per_step)
  _require(t.microbatch_size is None or (
      t.microbatch_size >= 1 and t.batch_size % t.microbatch_size == 0),
           "train.microbatch_size", f"None or a divisor of batch_size={t.batch_size}",
           t.microbatch_size)
