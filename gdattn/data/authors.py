"""The original authors' exact "high_dim" data draw (train, val, test).

Wang et al. released the code behind their synthetic results; its evaluation
script draws one W_data and three splits of 2048 contexts each from fixed
keys. `authors_high_dim` reproduces that draw value for value, so results here
can be compared with the paper's on the very same contexts rather than on a
draw of the same distribution.

What has to match their code, and why this is not `synthetic.high_dim`:
  * keys: PRNGKey(5) split into (test, val, train, w); W_data from the second
    half of split(w); each split vmaps over split(key, 2048); per context
    split(key, 7) with the first key unused and the next six drawing, in
    order, context x, query x, the classes, the centres, the context labels
    and the query label;
  * W_data is drawn as [E, C] (we return its transpose, rows = classes);
  * classes via jax.random.choice(replace=False), centres N(0, I), bandwidths
    through sqrt and back, as they compute them;
  * legacy uint32 keys, float32 and `jax_threefry_partitionable = False`,
    the default of the JAX they ran; with the newer default every draw
    differs. Both flags are set only while drawing and then restored;
  * their training-set sweep keeps val / test at 2048 and draws L training
    contexts from split(train key, L): `num_contexts`.

Dimensions: B contexts, N context points, D input dim, C classes, E
embedding dim, J active classes. Reference: arXiv:2405.17248.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp

from gdattn.data.contexts import bayes_reference
from gdattn.data.contexts import Contexts

AUTHORS_DATASETS = ("authors_high_dim",)
SPLITS = ("train", "val", "test")

# The authors' high_dim settings (their eval script and config).
NUM_CLASSES = 25
INPUT_DIM = 10
DATA_EMBED_DIM = 5
NUM_CONTEXT_POINTS = 125
NUM_ACTIVE_CLASSES = 5
NUM_CONTEXTS = 2048
BUMP_AT_NEAREST_CENTRE = 0.1
AMPLITUDE = 10.0
INPUT_RANGE = 1.0
ROOT_SEED = 5


@contextlib.contextmanager
def _authors_rng_mode():
  """Their random-number setting: jax_threefry_partitionable=False, and
  float32 (under x64 uniform and normal draw other values). Both flags are
  restored on exit, also on error, so nothing leaks to the caller."""
  previous = jax.config.jax_threefry_partitionable
  jax.config.update("jax_threefry_partitionable", False)
  try:
    with jax.enable_x64(False):
      yield
  finally:
    jax.config.update("jax_threefry_partitionable", previous)


def _split_keys() -> dict[str, jax.Array]:
  """The authors' root split: test, val, train and the W_data key."""
  test, val, train, w = jax.random.split(jax.random.PRNGKey(ROOT_SEED), 4)
  return {"test": test, "val": val, "train": train, "w": w}


def _w_data_ExC(key_w: jax.Array) -> jax.Array:
  """W_data as they draw it: [E, C] from the second half of split(key_w)."""
  _, k = jax.random.split(key_w, 2)
  return jax.random.normal(k, (DATA_EMBED_DIM, NUM_CLASSES))


def _one_context(key: jax.Array, w_data_ExC: jax.Array) -> dict:
  """One context, every operation in the order and form of their code, so
  that float32 rounding (and thus every sampled label) agrees."""
  _, k_x, k_xq, k_cls, k_mu, k_y, k_yq = jax.random.split(key, 7)
  x_NxD = jax.random.uniform(k_x, (NUM_CONTEXT_POINTS, INPUT_DIM),
                             minval=-INPUT_RANGE, maxval=INPUT_RANGE)
  xq_1xD = jax.random.uniform(k_xq, (1, INPUT_DIM), minval=-INPUT_RANGE,
                              maxval=INPUT_RANGE)
  classes_J = jax.random.choice(k_cls, NUM_CLASSES, (NUM_ACTIVE_CLASSES,),
                                replace=False)
  w_c_ExJ = w_data_ExC[:, classes_J]
  mu_JxD = jax.random.normal(k_mu, (NUM_ACTIVE_CLASSES, INPUT_DIM))

  d2_JxJ = jnp.sum((mu_JxD[:, None, :] - mu_JxD[None, :, :]) ** 2, axis=-1)
  # They exclude d2 == 0, meant as the centre itself. Under jit XLA may give
  # the two operands of mu_j - mu_j different float rounding (1e-15, not 0),
  # so the diagonal is excluded explicitly as well.
  self_JxJ = jnp.eye(NUM_ACTIVE_CLASSES, dtype=bool) | (d2_JxJ == 0)
  nearest_J = jnp.argmin(jnp.where(self_JxJ, jnp.inf, d2_JxJ), axis=1)
  closest_J = d2_JxJ[jnp.arange(NUM_ACTIVE_CLASSES), nearest_J]
  # sqrt then square, as they do: sigma**2 need not equal the radicand.
  sigma_J = jnp.sqrt(-1 * closest_J / jnp.log(BUMP_AT_NEAREST_CENTRE))

  def logits(x_PxD):
    d2_PxJ = jnp.sum((x_PxD[:, None, :] - mu_JxD[None, :, :]) ** 2, axis=-1)
    rbf_PxJ = jnp.exp(-1 * d2_PxJ / (sigma_J ** 2))
    f_PxE = AMPLITUDE * (rbf_PxJ @ w_c_ExJ.T)
    return f_PxE @ w_data_ExC

  logits_NxC, logits_q_1xC = logits(x_NxD), logits(xq_1xD)
  return dict(
      x_ctx=x_NxD,
      y_ctx=jax.random.categorical(k_y, logits_NxC, axis=1),
      x_query=xq_1xD,
      y_query=jax.random.categorical(k_yq, logits_q_1xC, axis=1),
      probs_ctx=jax.nn.softmax(logits_NxC, axis=1),
      probs_query=jax.nn.softmax(logits_q_1xC, axis=1),
      active_classes=classes_J)


@functools.partial(jax.jit, static_argnums=2)
def _draw(split_key: jax.Array, w_data_ExC: jax.Array,
          num_contexts: int) -> dict:
  keys = jax.random.split(split_key, num_contexts)
  return jax.vmap(_one_context, in_axes=(0, None))(keys, w_data_ExC)


def authors_w_data() -> jax.Array:
  """The authors' class embeddings W_data, [C, E] (rows = classes).

  Returns:
    w_data_CxE, float32, C = 25, E = 5.

  References: arXiv:2405.17248 (synthetic data, W_data).
  """
  with _authors_rng_mode():
    return _w_data_ExC(_split_keys()["w"]).T


@functools.lru_cache(maxsize=None)
def authors_high_dim(split: str, num_contexts: int = NUM_CONTEXTS
                     ) -> tuple[jax.Array, Contexts]:
  """One split of the authors' high_dim draw, value for value.

  C = 25 classes, D = 10, E = 5, N = 125 context points, one query, J = 5
  active classes, bump 0.1 at the nearest other centre, lambda = 10, inputs
  U(-1, 1). Deterministic, hence cached per (split, num_contexts) (the
  arrays are immutable). Always float32, whatever jax_enable_x64 says, as
  they drew it.

  Args:
    split: 'train', 'val' or 'test'.
    num_contexts: B, the split's number of contexts; their evaluation
      always draws 2048, and their training-set sweep draws its L training
      contexts as split(train key, L), so a different L gives a different
      set of contexts, not a prefix of the 2048.

  Returns:
    (w_data_CxE, contexts): the shared class embeddings [25, 5] (rows =
    classes) and a `Contexts` of B contexts with probabilities and active
    classes filled.

  References: arXiv:2405.17248 (synthetic experiments).
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if (isinstance(num_contexts, bool) or not isinstance(num_contexts, int)
      or num_contexts < 1):
    raise ValueError(
        f"num_contexts must be an int >= 1, got {num_contexts!r}")
  with _authors_rng_mode():
    keys = _split_keys()
    w_data_ExC = _w_data_ExC(keys["w"])
    d = _draw(keys[split], w_data_ExC, num_contexts)
    # Materialise inside the flags' scope (dispatch is asynchronous).
    d, w_data_ExC = jax.block_until_ready((d, w_data_ExC))
  int32 = lambda a: a.astype(jnp.int32)
  contexts = Contexts(
      x_ctx=d["x_ctx"], y_ctx=int32(d["y_ctx"]), x_query=d["x_query"],
      y_query=int32(d["y_query"]), probs_ctx=d["probs_ctx"],
      probs_query=d["probs_query"],
      active_classes=int32(d["active_classes"]))
  return w_data_ExC.T, contexts


def authors_bayes_reference(split: str) -> dict[str, jax.Array]:
  """`bayes_reference` of one full split of the authors' draw.

  Args:
    split: 'train', 'val' or 'test'.

  Returns:
    dict of scalars 'bayes_max_prob', 'bayes_target_prob', 'bayes_nll'
    (test split: 0.8027 and 0.7337 for the first two).

  References: arXiv:2405.17248 (Bayes reference lines).
  """
  return bayes_reference(authors_high_dim(split)[1])
