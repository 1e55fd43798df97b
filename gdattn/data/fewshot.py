"""n-way k-shot contexts drawn from a labelled image / feature set.

Dimensions: B contexts, M examples, D feature dim, P classes in a pool,
W ways (classes per context), S shots (images per class), N = W * S context
points, T queries.

Each context takes W distinct classes from a class pool in random order; the
class at position j gets label j, so labels 0..W-1 are a fresh random
assignment per context. It holds S images of each class (shuffled) and T
queries, each of a class drawn uniformly from the context's W classes and an
image of that class that is not among the context's images. This is the
ImageNet protocol of arXiv:2405.17248 (section 6: W = 5, S = 10, T = 1).

Splits (`make_pools`): every example falls in one part, train / val / test.
With "same_classes" all classes appear in every part: train contexts use the
train images, val and test contexts the held-out images of the same classes.
With "held_out_classes" a fraction of the classes never appears in training:
train contexts use train-part images of the train classes, val and test
contexts the held-out classes (val: their train-part images, test: the rest),
so no image and no held-out class is seen in training.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

SPLIT_MODES = ("same_classes", "held_out_classes")


@flax.struct.dataclass
class ImageContexts:
  """A batch of B few-shot contexts (a pytree; passes through jit / vmap).

  Attributes:
    x_ctx: [B, N, D] context features.
    y_ctx: [B, N] int32 context labels in [0, W).
    x_query: [B, T, D] query features.
    y_query: [B, T] int32 query labels in [0, W).
    classes: [B, W] int32 original class id of each label.
    idx_ctx: [B, N] int32 example index of each context point.
    idx_query: [B, T] int32 example index of each query.
  """

  x_ctx: jax.Array
  y_ctx: jax.Array
  x_query: jax.Array
  y_query: jax.Array
  classes: jax.Array
  idx_ctx: jax.Array
  idx_query: jax.Array

  @property
  def num_contexts(self) -> int:
    return self.x_ctx.shape[0]


@flax.struct.dataclass
class ClassTable:
  """The examples of each pool class, laid out for O(1) jittable sampling.

  Attributes:
    classes: [P] int32 original class ids of the pool.
    order: [M'] int32 example indices grouped by pool class.
    start: [P] int32 offset of each class's block in `order`.
    count: [P] int32 number of examples of each class.
  """

  classes: jax.Array
  order: jax.Array
  start: jax.Array
  count: jax.Array

  @property
  def num_classes(self) -> int:
    return self.classes.shape[0]


def class_table(labels_M: ArrayLike, class_pool: ArrayLike,
                examples: ArrayLike | None = None) -> ClassTable:
  """Groups the allowed examples of each pool class (numpy, outside jit).

  Args:
    labels_M: [M] integer class ids of all examples.
    class_pool: [P] class ids that contexts may use.
    examples: integer indices (or a boolean [M] mask) of the examples that
      contexts may use; default all.

  Returns:
    A ClassTable; `min(count)` bounds shots + num_queries.
  """
  labels_M = np.asarray(labels_M)
  pool = np.asarray(class_pool, np.int32).reshape(-1)
  if pool.size == 0 or np.unique(pool).size != pool.size:
    raise ValueError(f"class_pool: expected distinct class ids, got {pool}.")
  allowed = np.arange(labels_M.shape[0])
  if examples is not None:
    examples = np.asarray(examples)
    allowed = (np.nonzero(examples)[0] if examples.dtype == bool
               else examples.astype(np.int64))
  blocks = [allowed[labels_M[allowed] == c] for c in pool]
  count = np.array([b.size for b in blocks], np.int32)
  start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int32)
  return ClassTable(classes=jnp.asarray(pool), order=jnp.asarray(
      np.concatenate(blocks).astype(np.int32)), start=jnp.asarray(start),
                    count=jnp.asarray(count))


def _distinct(u_2K: jax.Array, n: jax.Array, k: int) -> jax.Array:
  """k distinct uniform draws from [0, n) in uniformly random order.

  Robert Floyd's algorithm: O(k^2) work whatever n is, and n may be traced.
  `u_2K` holds 2k uniforms in [0, 1): one random draw per context feeds every
  choice, which keeps the compiled sampler small (one threefry call).
  """
  chosen_K = jnp.full((k,), -1, jnp.int32)
  for i in range(k):  # k = shots + queries is small and static
    j = n - k + i
    t = jnp.minimum((u_2K[i] * (j + 1)).astype(jnp.int32), j)
    chosen_K = chosen_K.at[i].set(jnp.where(jnp.any(chosen_K == t), j, t))
  # Floyd's set is uniform but its order is not (collisions append j).
  return chosen_K[jnp.argsort(u_2K[k:])]


def _one_context(key, features_MxD, table, ways, shots, num_queries):
  per_class, n = shots + num_queries, ways * shots
  sizes = (table.num_classes, ways * 2 * per_class, n, num_queries)
  u = jax.random.uniform(key, (sum(sizes),))
  u_P, u_img, u_N, u_T = jnp.split(u, np.cumsum(sizes)[:-1])
  # The first W of a uniformly random order of the pool: W distinct classes
  # in random order; position j is label j.
  pos_W = jnp.argsort(u_P)[:ways]
  offsets_WxK = jax.vmap(lambda uu, p: _distinct(uu, table.count[p], per_class))(
      u_img.reshape(ways, 2 * per_class), pos_W)
  idx_WxK = table.order[table.start[pos_W][:, None] + offsets_WxK]
  perm_N = jnp.argsort(u_N)
  idx_N = idx_WxK[:, :shots].reshape(-1)[perm_N]
  y_N = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), shots)[perm_N]
  # Query t takes the reserved slot shots + t of its class: distinct from the
  # context images and from the other queries.
  y_T = jnp.minimum((u_T * ways).astype(jnp.int32), ways - 1)
  idx_T = idx_WxK[y_T, shots + jnp.arange(num_queries)]
  return ImageContexts(
      x_ctx=features_MxD[idx_N], y_ctx=y_N, x_query=features_MxD[idx_T],
      y_query=y_T, classes=table.classes[pos_W], idx_ctx=idx_N, idx_query=idx_T)


def check_table(table: ClassTable, *, ways: int, shots: int, num_queries: int,
                where: str = "class_table") -> None:
  """Raises ValueError when the table cannot supply such contexts."""
  for name, value in (("ways", ways), ("shots", shots),
                      ("num_queries", num_queries)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}: expected an int >= 1, got {value!r}.")
  if ways > table.num_classes:
    raise ValueError(f"ways: expected <= {table.num_classes} (the classes of "
                     f"{where}), got {ways}.")
  least = int(jnp.min(table.count))
  if least < shots + num_queries:
    raise ValueError(
        f"shots: expected shots + num_queries <= {least} (the fewest images of "
        f"a class in {where}), got {shots} + {num_queries}.")


def sample_contexts(key: jax.Array, features_MxD: ArrayLike, table: ClassTable,
                    *, num_contexts: int, ways: int = 5, shots: int = 10,
                    num_queries: int = 1) -> ImageContexts:
  """Draws B = num_contexts W-way S-shot contexts; jittable, O(B W S^2).

  Every class of the table must have >= shots + num_queries examples (checked
  by `check_table`; not checkable under jit, where a class with fewer repeats
  images). Static: num_contexts, ways, shots, num_queries.

  Args:
    key: PRNG key.
    features_MxD: [M, D] features of all examples (indices in `table`).
    table: the pool classes and their allowed examples (`class_table`).
    num_contexts: B.
    ways: W distinct classes per context.
    shots: S images per class.
    num_queries: T queries per context.

  Returns:
    ImageContexts with N = W * S.

  References: arXiv:2405.17248 (section 6, ImageNet experiment).
  """
  features_MxD = jnp.asarray(features_MxD)
  return jax.vmap(lambda k: _one_context(k, features_MxD, table, ways, shots,
                                         num_queries))(
      jax.random.split(key, num_contexts))


def fixed_contexts(key: jax.Array, features_MxD: ArrayLike, table: ClassTable,
                   *, num_contexts: int, ways: int = 5, shots: int = 10,
                   num_queries: int = 1) -> ImageContexts:
  """A fixed set of contexts (the paper's L train / 2048 val / 2048 test)."""
  check_table(table, ways=ways, shots=shots, num_queries=num_queries)
  sample = jax.jit(sample_contexts, static_argnames=(
      "num_contexts", "ways", "shots", "num_queries"))
  return sample(key, features_MxD, table, num_contexts=num_contexts,
                ways=ways, shots=shots, num_queries=num_queries)


def fewer_shots(contexts: ImageContexts, shots: int) -> ImageContexts:
  """The same contexts keeping the first `shots` points of every class.

  The test-time shots sweep (train at S, test at fewer). gdattn's
  unnormalised kernels divide by the context's own N, so they already carry
  the N_train / N_test rescaling the paper applies to them when N changes;
  the softmax kernel is normalised and needs none.
  """
  ways = contexts.classes.shape[1]
  per_class = contexts.y_ctx.shape[1] // ways
  if not isinstance(shots, int) or not 1 <= shots <= per_class:
    raise ValueError(f"shots: expected an int in [1, {per_class}], got "
                     f"{shots!r}.")

  def one(y_N):
    onehot_NxW = jax.nn.one_hot(y_N, ways, dtype=jnp.int32)
    rank_N = jnp.sum((jnp.cumsum(onehot_NxW, 0) - 1) * onehot_NxW, -1)
    return jnp.nonzero(rank_N < shots, size=ways * shots)[0]

  keep_BxN = jax.vmap(one)(contexts.y_ctx)
  take = lambda a: jnp.take_along_axis(
      a, keep_BxN.reshape(keep_BxN.shape + (1,) * (a.ndim - 2)), axis=1)
  return contexts.replace(x_ctx=take(contexts.x_ctx),
                          y_ctx=take(contexts.y_ctx),
                          idx_ctx=take(contexts.idx_ctx))


@dataclasses.dataclass(frozen=True)
class Pools:
  """Which examples and classes feed the train / val / test contexts.

  Attributes (numpy): {split}_examples int64 indices; {split}_classes int32.
  """

  train_examples: np.ndarray
  val_examples: np.ndarray
  test_examples: np.ndarray
  train_classes: np.ndarray
  val_classes: np.ndarray
  test_classes: np.ndarray


def example_parts(labels_M: ArrayLike, split_M: ArrayLike | None = None, *,
                  eval_fraction: float = 0.3, seed: int = 0) -> np.ndarray:
  """Assigns each example to part 0 (train), 1 (val) or 2 (test).

  Per class, the held-out images (the official "test" split where given,
  else a random `eval_fraction`) are halved at random into val and test.
  """
  labels_M = np.asarray(labels_M)
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f"eval_fraction: expected a float in (0, 1), got "
                     f"{eval_fraction}.")
  rng = np.random.default_rng(seed)
  parts = np.zeros(labels_M.shape, np.int8)
  for c in np.unique(labels_M):
    idx = rng.permutation(np.nonzero(labels_M == c)[0])
    if split_M is not None:
      held = idx[np.asarray(split_M)[idx] != "train"]
    else:
      held = idx[:int(round(eval_fraction * idx.size))]
    parts[held[: held.size // 2]] = 1
    parts[held[held.size // 2:]] = 2
  return parts


def make_pools(labels_M: ArrayLike, split_M: ArrayLike | None = None, *,
               mode: str = "same_classes", held_out_fraction: float = 0.1,
               eval_fraction: float = 0.3, seed: int = 0) -> Pools:
  """The example and class pools of the train / val / test contexts.

  Args:
    labels_M: [M] class ids.
    split_M: [M] official split ("train" / "test") or None.
    mode: one of SPLIT_MODES (see the module docstring).
    held_out_fraction: fraction of classes held out ("held_out_classes").
    eval_fraction: fraction of each class's images held out when there is no
      official split ("same_classes").
    seed: the random class and image splits.
  """
  if mode not in SPLIT_MODES:
    raise ValueError(f"mode: expected one of {SPLIT_MODES}, got {mode!r}.")
  labels_M = np.asarray(labels_M)
  classes = np.unique(labels_M).astype(np.int32)
  parts = example_parts(labels_M, split_M, eval_fraction=eval_fraction,
                        seed=seed)
  if mode == "same_classes":
    ex = [np.nonzero(parts == p)[0] for p in range(3)]
    return Pools(*ex, classes, classes, classes)
  if not 0.0 < held_out_fraction < 1.0:
    raise ValueError(f"held_out_fraction: expected a float in (0, 1), got "
                     f"{held_out_fraction}.")
  rng = np.random.default_rng([seed, 1])
  num_held = max(1, int(round(held_out_fraction * classes.size)))
  held = np.sort(rng.choice(classes, num_held, replace=False))
  train_cls = np.setdiff1d(classes, held).astype(np.int32)
  in_held = np.isin(labels_M, held)
  return Pools(
      train_examples=np.nonzero(~in_held & (parts == 0))[0],
      val_examples=np.nonzero(in_held & (parts == 0))[0],
      test_examples=np.nonzero(in_held & (parts != 0))[0],
      train_classes=train_cls, val_classes=held, test_classes=held)
