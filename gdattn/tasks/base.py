"""The task interface: what differs between experiments, and nothing else.

A task owns its data, its models, its loss and its metrics; the generic loop
(`gdattn.train`) owns members, optimisation, sharding, checkpoints, early
stopping and results, and never knows which task it runs. Tasks are chosen by
name (`config.task`) from `gdattn.tasks.TASKS`.

Data flow of one run:

  config.data --task.make_datasets--> Datasets(train | sample_train, evals)
  config.model --task.make_model--> nnx.Module (one per member, vmapped)
  train step:  task.loss(model, batch) -> scalar (mean over the batch)
  evaluation:  task.predict(model, chunk) on chunks of a split, concatenated
               on the leading axis, then task.metrics(outputs, split_data)
  end of run:  task.summary(datasets) -> references reported beside results
               task.notes(cfg) (optional) -> caveats printed after them

Batches are pytrees whose leaves share a leading example axis (contexts for
in-context learning, sequences for language modelling).
"""

import dataclasses
from typing import Any, Callable, Protocol

import jax
from flax import nnx

Batch = Any  # a pytree of arrays with a shared leading example axis


@dataclasses.dataclass(frozen=True)
class Datasets:
  """What the loop trains and evaluates on.

  Exactly one of `train` and `sample_train` is set:

  Attributes:
    train: a fixed training set (pytree, leading axis L), resident on the
      device; each epoch visits it in a per-member random order (the paper's
      protocol: L fixed contexts, minibatches by permutation).
    sample_train: `(key, batch_size) -> batch`, a jittable sampler of fresh
      training examples (new contexts every step, random windows of a
      corpus). One "epoch" is then `steps_per_epoch` updates.
    steps_per_epoch: updates per epoch for `sample_train` (ignored for a
      fixed `train`, where it is L // batch_size).
    evals: {split name: pytree with a leading example axis}; must contain
      "val" (model selection) and usually "test".
    info: static facts the model factory needs (input_dim, num_classes,
      vocab_size, ...), JSON-serialisable.
  """

  evals: dict[str, Batch]
  train: Batch | None = None
  sample_train: Callable[[jax.Array, int], Batch] | None = None
  steps_per_epoch: int | None = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Task(Protocol):
  """One experiment family. Implementations are plain module-level objects."""

  name: str
  data_config: type          # frozen dataclass of config.data (defaults)
  model_config: type         # frozen dataclass of config.model (defaults)
  model_names: tuple[str, ...]
  select_metric: str         # minimised on "val" for early stopping

  def validate(self, data_cfg: Any, model_cfg: Any) -> None:
    """Raises ValueError naming `config.data.<field>` / `config.model...`."""

  def make_datasets(self, data_cfg: Any) -> Datasets:
    """Builds (or loads) the data; deterministic in data_cfg."""

  def make_model(self, name: str, model_cfg: Any, info: dict[str, Any],
                 rngs: nnx.Rngs) -> nnx.Module:
    """Model `name` (one of model_names) for data described by `info`."""

  def loss(self, model: nnx.Module, batch: Batch) -> jax.Array:
    """Scalar training loss, the mean over the batch's examples."""

  def predict(self, model: nnx.Module, batch: Batch) -> Any:
    """Per-example outputs (pytree, leading axis = examples) for metrics."""

  def metrics(self, outputs: Any, data: Batch) -> dict[str, jax.Array]:
    """Scalar metrics of one whole split from its concatenated outputs."""

  def summary(self, datasets: Datasets) -> dict[str, float]:
    """References reported beside the results (e.g. Bayes); may be {}."""
