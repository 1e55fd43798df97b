"""The compiled steps of any task (pure; jitted) and the members' set-up.

Dimensions: S members (seeds x learning rates, on the leading axis of every
parameter), L training examples, B batch, Z updates per epoch, J microbatches
per update, I examples per microbatch.

`build_program` closes over one model's static structure (its nnx graphdef)
and the task's loss / predict / metrics, and returns:

  run_epochs(params, opt_state, keys_S, lr_S, train, epochs_E)
      trains every member for the given epochs in one compiled call: each
      epoch visits a fixed training set in a per-member random order, or
      draws `steps_per_epoch` fresh batches from the task's sampler (with
      train.unroll: one compiled call per epoch, updates unrolled);
  evaluate(params, data) -> {metric: [S]}
      the task's metrics of one split, evaluated in chunks of examples.

The batch is split over the mesh axis "data" (data parallel); parameters
are replicated.
"""

import dataclasses
import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gdattn import config as config_lib
from gdattn import tasks
from gdattn.tasks.base import Datasets


def make_optimizer(o: Any) -> optax.GradientTransformation:
  """Adam/AdamW with global-norm clipping and a learning-rate schedule.

  The base learning rate is NOT inside: each member multiplies its update by
  its own rate, so members with different rates share one compiled step.
  chain(scale_by_adam, add_decayed_weights, scale(-lr)) is optax.adamw.
  With o.lr_scales, each named top-level parameter group (and the rest) is
  clipped and Adam-normalised on its own (optax.multi_transform), then
  scaled by its multiplier.
  """
  if o.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, 1.0, o.warmup_steps, o.decay_steps)
  else:
    schedule = optax.exponential_decay(1.0, o.decay_steps, o.decay_rate,
                                       staircase=True)

  def group(scale):
    parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm else []
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if scale != 1.0:
      parts.append(optax.scale(scale))
    return parts

  scales = dict(o.lr_scales)
  if scales:
    def labels(params):
      return {k: jax.tree.map(lambda _, k=k: k if k in scales else _REST, v)
              for k, v in params.items()}
    parts = [optax.multi_transform(
        {**{k: optax.chain(*group(float(v))) for k, v in scales.items()},
         _REST: optax.chain(*group(1.0))}, labels)]
  else:
    # One flat chain: its state has the layout of every checkpoint written
    # before lr_scales existed, so those runs resume.
    parts = group(1.0)
  if o.optimizer == "adamw" and o.weight_decay:
    parts.append(optax.add_decayed_weights(o.weight_decay))
  parts.append(optax.scale_by_schedule(lambda count: -schedule(count)))
  return optax.chain(*parts)


# The label of the parameters outside o.lr_scales' named groups.
_REST = "<rest>"


def check_param_groups(lr_scales: Any, params: Any, where: str) -> None:
  """Every group named in lr_scales is a top-level parameter group."""
  groups = sorted(params)
  unknown = sorted(set(lr_scales) - set(groups))
  if unknown:
    raise ValueError(f"{where}.lr_scales: expected keys among the model's "
                     f"top-level parameter groups {groups}, got {unknown}.")


@dataclasses.dataclass(frozen=True)
class Program:
  """The jitted functions of one model (see the module docstring)."""

  run_epochs: Callable[..., Any]
  evaluate: Callable[..., Any]
  steps_per_epoch: int
  # unroll only: the compiled epoch that run_epochs calls once per epoch,
  # (params, opt_state, keys_S, lr_S, train, e) -> ((params, opt_state), loss).
  run_epoch: Callable[..., Any] | None = None


def build_program(task, graphdef, rest, tx, mesh, *, batch_size: int,
                  eval_batch_size: int, microbatch_size: int,
                  members_per_step: int | None, num_train: int | None,
                  sample_train=None, steps_per_epoch=None,
                  unroll: bool = False) -> Program:
  """Compiles-on-demand the steps of one model; see the module docstring.

  unroll: run_epochs calls one compiled epoch per epoch, with the updates
  and microbatches unrolled, and evaluate unrolls its chunks: no loop is
  left around the model (config.TrainConfig.unroll says why).
  """
  shard_batch = NamedSharding(mesh, P(None, "data"))  # [S, B, ...]: B split
  num_micro = batch_size // microbatch_size
  fixed = sample_train is None
  if fixed:
    steps_per_epoch = num_train // batch_size

  def as_model(params):
    return nnx.merge(graphdef, nnx.State(params), rest)

  def loop(body, carry, xs):
    """lax.scan over the leading axis of xs, or with unroll a Python loop
    (scan(unroll=True) still
    lowers to a one-trip XLA loop, and XLA:CPU then leaves the
    convolutions' gradients in a layout its fast kernels do not take)."""
    if not unroll:
      return jax.lax.scan(body, carry, xs)
    ys = []
    for i in range(jax.tree.leaves(xs)[0].shape[0]):
      carry, y = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
      ys.append(y)
    return carry, (None if ys[0] is None
                   else jax.tree.map(lambda *y: jnp.stack(y), *ys))

  def loss_fn(params, batch):
    return task.loss(as_model(params), batch)

  def grads_of(params, batch_SxI):
    # Members in chunks of members_per_step: vmapped within a chunk, chunks
    # one after another (lax.map), so a chunk's work can stay in cache.
    num_members = jax.tree.leaves(params)[0].shape[0]
    if unroll and (members_per_step or num_members) >= num_members:
      # One chunk: a plain vmap, not a one-trip loop around the model.
      return jax.vmap(jax.value_and_grad(loss_fn))(params, batch_SxI)
    return jax.lax.map(
        lambda args: jax.value_and_grad(loss_fn)(*args), (params, batch_SxI),
        batch_size=members_per_step or num_members)

  def accumulate(params, xs_J, get_batch):
    # Mean loss and gradient over the batch, accumulated over microbatches
    # (xs_J[j] -> get_batch -> microbatch j, built inside the loop) so that
    # the intermediates of a few examples stay in cache (2-3x faster on CPU;
    # equal to the one-shot gradient up to summation order).
    def add(total, x):
      batch_SxI = jax.lax.with_sharding_constraint(get_batch(x), shard_batch)
      return jax.tree.map(jnp.add, total, grads_of(params, batch_SxI)), None

    num_members = jax.tree.leaves(params)[0].shape[0]
    zeros = (jnp.zeros(num_members), jax.tree.map(jnp.zeros_like, params))
    total, _ = loop(add, zeros, xs_J)
    return jax.tree.map(lambda t: t / num_micro, total)

  def update(carry, xs_J, get_batch, lr_S):
    params, opt_state = carry
    loss_S, grads = accumulate(params, xs_J, get_batch)
    updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)
    updates = jax.tree.map(
        lambda u: u * lr_S.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype),
        updates)
    return (optax.apply_updates(params, updates), opt_state), loss_S

  def fixed_update(carry, idx_SxB, train, lr_S):
    # Example b = i * num_micro + j goes to microbatch j: each microbatch is
    # spread over the devices the same way as the whole batch.
    idx_JxSxI = jnp.moveaxis(
        idx_SxB.reshape(idx_SxB.shape[0], microbatch_size, num_micro), 2, 0)
    gather = lambda idx_SxI: jax.tree.map(lambda a: a[idx_SxI], train)
    return update(carry, idx_JxSxI, gather, lr_S)

  def sampled_update(carry, keys_S, lr_S):
    # Microbatch j of member s: sample_train(fold_in(key_s, j), I).
    def sample(j):
      return jax.vmap(lambda k: sample_train(jax.random.fold_in(k, j),
                                             microbatch_size))(keys_S)
    return update(carry, jnp.arange(num_micro), sample, lr_S)

  def epoch_fixed(carry, e, keys_S, lr_S, train):
    perm_SxL = jax.vmap(
        lambda k: jax.random.permutation(jax.random.fold_in(k, e), num_train)
    )(keys_S)
    idx_SxZxB = perm_SxL[:, :steps_per_epoch * batch_size].reshape(
        -1, steps_per_epoch, batch_size)
    return loop(lambda c, idx: fixed_update(c, idx, train, lr_S),
                carry, idx_SxZxB.transpose(1, 0, 2))

  def epoch_sampled(carry, e, keys_S, lr_S, train):
    del train
    def step(c, z):
      keys = jax.vmap(lambda k: jax.random.fold_in(
          jax.random.fold_in(k, e), z))(keys_S)
      return sampled_update(c, keys, lr_S)
    return loop(step, carry, jnp.arange(steps_per_epoch))

  epoch = epoch_fixed if fixed else epoch_sampled

  def run_epochs(params, opt_state, keys_S, lr_S, train, epochs_E):
    (params, opt_state), loss_ExZxS = jax.lax.scan(
        lambda c, e: epoch(c, e, keys_S, lr_S, train), (params, opt_state),
        epochs_E)
    return params, opt_state, loss_ExZxS

  @jax.jit
  def one_epoch(params, opt_state, keys_S, lr_S, train, e):
    return epoch((params, opt_state), e, keys_S, lr_S, train)

  def run_epochs_unrolled(params, opt_state, keys_S, lr_S, train, epochs_E):
    losses = []
    for e in np.asarray(epochs_E):
      (params, opt_state), loss_ZxS = one_epoch(params, opt_state, keys_S,
                                                lr_S, train, e)
      losses.append(loss_ZxS)
    return params, opt_state, jnp.stack(losses)

  def evaluate(params, data):
    # Chunks over examples bound the memory of the activations.
    n = jax.tree.leaves(data)[0].shape[0]
    num_devices = mesh.devices.size
    size = -(-min(eval_batch_size, n) // num_devices) * num_devices
    num_chunks = -(-n // size)
    # Wrap-around padding to whole chunks; the extra rows are cut off below.
    idx = jnp.arange(num_chunks * size) % n
    chunks = jax.tree.map(
        lambda a: a[idx].reshape((num_chunks, size) + a.shape[1:]), data)

    def one_chunk(chunk):
      chunk = jax.lax.with_sharding_constraint(
          chunk, NamedSharding(mesh, P("data")))
      return jax.vmap(lambda p: task.predict(as_model(p), chunk))(params)

    _, out = loop(lambda c, chunk: (c, one_chunk(chunk)), None,
                  chunks)                            # [Z, S, size, ...]
    out = jax.tree.map(
        lambda o: jnp.moveaxis(o, 1, 0).reshape(
            (o.shape[1], -1) + o.shape[3:])[:, :n], out)
    return jax.vmap(lambda o: task.metrics(o, data))(out)

  return Program(
      run_epochs=run_epochs_unrolled if unroll else jax.jit(run_epochs),
      evaluate=jax.jit(evaluate), steps_per_epoch=steps_per_epoch,
      run_epoch=one_epoch if unroll else None)


def members_of(cfg: config_lib.ExperimentConfig, model_name: str
               ) -> list[tuple[int, float]]:
  """(seed, learning rate) of each member: learning rates x seeds."""
  lrs = cfg.member_learning_rates(model_name)
  seeds = range(cfg.seed, cfg.seed + cfg.num_seeds)
  return [(s, lr) for lr, s in itertools.product(lrs, seeds)]


@dataclasses.dataclass
class Trainer:
  """Everything one model's training needs, set up but not yet run.

  `program.run_epochs(params, opt_state, keys, lr_S, datasets.train,
  epochs)` trains all members for the given epochs in one compiled call;
  `program.evaluate(params, datasets.evals[split])` gives per-member
  metrics. The benchmarks time these directly.
  """

  task: Any
  model_name: str
  members: list[tuple[int, float]]   # (seed, learning rate) per member
  program: Program
  datasets: Datasets                 # replicated over the mesh
  keys: jax.Array                    # [S] per-member data-order keys
  lr_S: jax.Array                    # [S] per-member learning rates
  params: Any                        # [S, ...] pure dicts
  opt_state: Any
  num_params: int
  graphdef: Any
  rest: Any

  def model(self, params: Any, member: int = 0) -> nnx.Module:
    """The nnx model of one member of `params` ([S, ...] pure dicts)."""
    one = jax.tree.map(lambda p: p[member], params)
    return nnx.merge(self.graphdef, nnx.State(one), self.rest)

  def epoch_chunks(self, num_epochs: int, every: int, params=None,
                   opt_state=None):
    """Trains for num_epochs in calls of `every` epochs (the last may be
    shorter), from `params` / `opt_state` (default: the initial ones).

    Yields (epochs done, params, opt_state, loss [epochs, updates, S]).
    """
    params = self.params if params is None else params
    opt_state = self.opt_state if opt_state is None else opt_state
    done = 0
    while done < num_epochs:
      count = min(every, num_epochs - done)
      params, opt_state, loss = self.program.run_epochs(
          params, opt_state, self.keys, self.lr_S, self.datasets.train,
          jnp.arange(done, done + count))
      done += count
      yield done, params, opt_state, loss


def make_trainer(cfg: config_lib.ExperimentConfig, model_name: str,
                 datasets: Datasets) -> Trainer:
  """Initialises the members of one model; compiles its steps on demand."""
  task = tasks.get(cfg.task)
  members = members_of(cfg, model_name)
  t = cfg.train
  devices = jax.devices()
  config_lib.check_devices(cfg, len(devices), jax.default_backend())
  mesh = jax.make_mesh((len(devices),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  make = lambda rngs: task.make_model(model_name, cfg.model, datasets.info,
                                      rngs)
  template = make(nnx.Rngs(0))
  graphdef, _, rest = nnx.split(template, nnx.Param, ...)
  optim = cfg.optim_for(model_name)
  check_param_groups(
      optim.lr_scales, nnx.to_pure_dict(nnx.state(template, nnx.Param)),
      cfg.optim_path(model_name))
  tx = make_optimizer(optim)

  def init_member(key):
    params = nnx.to_pure_dict(nnx.state(make(nnx.Rngs(params=key)), nnx.Param))
    return params, tx.init(params)

  # Member keys depend on the seed alone, so member i of a sweep equals a
  # separate run with that seed.
  keys = [jax.random.split(jax.random.key(seed)) for seed, _ in members]
  params, opt_state = jax.jit(jax.vmap(init_member))(
      jnp.stack([k[0] for k in keys]))
  # Replicated from the start, as run_epochs returns them: else it compiles
  # twice.
  replicated = NamedSharding(mesh, P())
  params, opt_state = jax.device_put((params, opt_state), replicated)
  num_train = (None if datasets.train is None
               else jax.tree.leaves(datasets.train)[0].shape[0])
  program = build_program(
      task, graphdef, rest, tx, mesh, batch_size=t.batch_size,
      eval_batch_size=t.eval_batch_size,
      microbatch_size=t.microbatch_size or t.batch_size,
      members_per_step=t.members_per_step, num_train=num_train,
      sample_train=datasets.sample_train,
      steps_per_epoch=datasets.steps_per_epoch, unroll=t.unroll)
  on_device = dataclasses.replace(
      datasets, train=jax.device_put(datasets.train, replicated),
      evals=jax.device_put(datasets.evals, replicated))
  return Trainer(
      task=task, model_name=model_name, members=members, program=program,
      datasets=on_device, keys=jnp.stack([k[1] for k in keys]),
      lr_S=jnp.asarray([lr for _, lr in members], jnp.float32),
      params=params, opt_state=opt_state,
      num_params=sum(x.size for x in jax.tree.leaves(
          nnx.state(template, nnx.Param))),
      graphdef=graphdef, rest=rest)
