"""Per-context baselines for few-shot classification, one context at a time.

Dimensions: B contexts, N context points, T queries, D feature dim, W ways
(classes per context), k neighbours.

Each function takes one context (x_ctx [N, D], y_ctx [N], x_query [T, D]) and
returns scores [T, W] usable as logits by gdattn.metrics; `batched` vmaps one
over B contexts, so a caller jits all of them as one compiled call:

  logistic_regression  the paper's "linear probing": a bias-free linear map
                       D -> W-1 plus a fixed zero logit, fitted per context
                       by full-batch AdamW from zero
  nearest_class_mean   -squared distance to each class's context mean
  knn                  smoothed log vote shares of the k nearest points
  gd_one_step          one step of categorical functional GD from f = 0 with
                       W_e = I and a given learning rate (the closed form of
                       a K = 1 GD model with identity embeddings)

References: arXiv:2405.17248 (section 6, ImageNet experiment: linear probing).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gdattn import gd
from gdattn import metrics

# AdamW as in the paper; the rate and the decay are our choice: 1e-2 fits
# 50-point contexts of unit-scale features to near-zero training loss within
# the 500 steps, and optax's default decay (1e-4) barely regularises.
LOGREG_STEPS = 500
LOGREG_LEARNING_RATE = 1e-2
LOGREG_WEIGHT_DECAY = 1e-4


# Contexts per chunk of `batched("logistic_regression")`: the 500 AdamW steps
# of one chunk run while its contexts stay in cache (64 contexts of 50 x 64
# float32 features: ~0.8 MB), which halves the CPU time of vmapping all of
# them at once.
LOGREG_CONTEXTS_PER_CHUNK = 64


def _logits(w_VxD, x_xD):
  """[x W, 0]: the last class's logit is pinned to zero (W - 1 free maps)."""
  z = x_xD @ w_VxD.T
  return jnp.concatenate([z, jnp.zeros(z.shape[:-1] + (1,), z.dtype)], -1)


def logistic_regression(x_ctx_NxD: ArrayLike, y_ctx_N: ArrayLike,
                        x_query_TxD: ArrayLike, *, ways: int,
                        steps: int = LOGREG_STEPS,
                        learning_rate: float = LOGREG_LEARNING_RATE,
                        weight_decay: float = LOGREG_WEIGHT_DECAY) -> jax.Array:
  """Per-context multinomial logistic regression ("linear probing").

  Minimises the mean cross-entropy of softmax([x W, 0]) on the context's N
  points, W [D, ways-1] from zero, by `steps` full-batch AdamW updates.

  Args:
    x_ctx_NxD: context features.
    y_ctx_N: context labels in [0, ways).
    x_query_TxD: query features.
    ways: W, the number of classes (static).
    steps: AdamW updates (static).
    learning_rate: AdamW learning rate.
    weight_decay: AdamW decoupled weight decay.

  Returns:
    Query logits [T, ways].

  References: arXiv:2405.17248 (section 6, "linear probing").
  """
  x_ctx_NxD, x_query_TxD = jnp.asarray(x_ctx_NxD), jnp.asarray(x_query_TxD)
  num_free, n = ways - 1, x_ctx_NxD.shape[0]
  x_DxN = x_ctx_NxD.T
  onehot_VxN = jax.nn.one_hot(jnp.asarray(y_ctx_N), ways,
                              dtype=x_ctx_NxD.dtype).T[:num_free]
  opt = optax.adamw(learning_rate, weight_decay=weight_decay)

  def grad(w_VxD):
    # d/dW of the mean cross-entropy, (softmax - onehot) x / N, written out
    # with the points on the minor axis: XLA's CPU dots of these thin
    # matrices run ~2x faster in this layout than as autodiff of x @ W.
    z_VxN = w_VxD @ x_DxN
    z_WxN = jnp.concatenate([z_VxN, jnp.zeros((1, n), z_VxN.dtype)], 0)
    r_VxN = jax.nn.softmax(z_WxN, axis=0)[:num_free] - onehot_VxN
    return (r_VxN @ x_ctx_NxD) / n

  def step(_, state):
    w, opt_state = state
    updates, opt_state = opt.update(grad(w), opt_state, w)
    return optax.apply_updates(w, updates), opt_state

  w0 = jnp.zeros((num_free, x_ctx_NxD.shape[-1]), x_ctx_NxD.dtype)
  w, _ = jax.lax.fori_loop(0, steps, step, (w0, opt.init(w0)))
  return _logits(w, x_query_TxD)


def _class_means(x_ctx_NxD, y_ctx_N, ways):
  onehot_NxW = jax.nn.one_hot(y_ctx_N, ways, dtype=x_ctx_NxD.dtype)
  counts_W = onehot_NxW.sum(0)
  return (onehot_NxW.T @ x_ctx_NxD) / jnp.maximum(counts_W, 1)[:, None], counts_W


def nearest_class_mean(x_ctx_NxD: ArrayLike, y_ctx_N: ArrayLike,
                       x_query_TxD: ArrayLike, *, ways: int) -> jax.Array:
  """-||x - mean_c||^2 per class [T, ways]; a class absent from the context
  scores -inf."""
  x_ctx_NxD, x_query_TxD = jnp.asarray(x_ctx_NxD), jnp.asarray(x_query_TxD)
  means_WxD, counts_W = _class_means(x_ctx_NxD, jnp.asarray(y_ctx_N), ways)
  sq_TxW = jnp.sum((x_query_TxD[:, None, :] - means_WxD[None]) ** 2, -1)
  return jnp.where(counts_W[None] > 0, -sq_TxW, -jnp.inf)


def knn(x_ctx_NxD: ArrayLike, y_ctx_N: ArrayLike, x_query_TxD: ArrayLike, *,
        ways: int, k: int = 5) -> jax.Array:
  """log((votes_c + 1/2) / (k + W/2)) among the k nearest context points.

  The add-1/2 smoothing keeps the NLL finite; ties in votes go to the class
  of the nearer neighbour through a tiny distance-rank bonus.
  """
  x_ctx_NxD, x_query_TxD = jnp.asarray(x_ctx_NxD), jnp.asarray(x_query_TxD)
  if not 1 <= k <= x_ctx_NxD.shape[0]:
    raise ValueError(f"k: expected 1 <= k <= N={x_ctx_NxD.shape[0]}, got {k}.")
  sq_TxN = jnp.sum((x_query_TxD[:, None, :] - x_ctx_NxD[None]) ** 2, -1)
  _, near_TxK = jax.lax.top_k(-sq_TxN, k)
  onehot_TxKxW = jax.nn.one_hot(jnp.asarray(y_ctx_N)[near_TxK], ways)
  votes_TxW = onehot_TxKxW.sum(1)
  bonus_TxW = jnp.einsum("tkw,k->tw", onehot_TxKxW, 1e-3 / (1.0 + jnp.arange(k)))
  return jnp.log((votes_TxW + 0.5) / (k + 0.5 * ways)) + bonus_TxW


def gd_one_step(x_ctx_NxD: ArrayLike, y_ctx_N: ArrayLike,
                x_query_TxD: ArrayLike, *, ways: int, kernel: str = "linear",
                kernel_scale: float = 1.0, learning_rate: float = 1.0
                ) -> jax.Array:
  """Logits of one functional GD step from f = 0 with W_e = I (E = W).

  f_1(x) = lr * sum_i a(x, x_i) (e_{y_i} - 1/W); with the linear kernel and
  balanced classes the argmax is that of <x, mean_c>.

  References: arXiv:2405.17248 (section 3, the GD step).
  """
  w_e_WxW = jnp.eye(ways, dtype=jnp.asarray(x_ctx_NxD).dtype)
  lrs_1xW = jnp.full((1, ways), learning_rate, w_e_WxW.dtype)
  f_TxW = gd.categorical_gd(x_ctx_NxD, y_ctx_N, x_query_TxD, w_e_WxW, lrs_1xW,
                            kernel=kernel, kernel_scale=kernel_scale)
  return f_TxW @ w_e_WxW.T


BASELINES: dict[str, Callable[..., jax.Array]] = {
    "logistic_regression": logistic_regression,
    "nearest_class_mean": nearest_class_mean,
    "knn": knn,
    "gd_one_step": gd_one_step,
}


def batched(name: str, *, contexts_per_chunk: int | None = None,
            **kwargs) -> Callable[..., jax.Array]:
  """Baseline `name` over a batch: (x [B,N,D], y [B,N], q [B,T,D]) ->
  scores [B, T, W]; kwargs (ways, ...) are fixed. Jit the result once.

  Args:
    name: a key of BASELINES.
    contexts_per_chunk: vmap this many contexts at a time, chunks in
      sequence (lax.map); None: LOGREG_CONTEXTS_PER_CHUNK for
      logistic_regression (cache-sized chunks of its long loop), all B
      otherwise. The scores do not depend on it.
    **kwargs: keyword arguments of the baseline.
  """
  if name not in BASELINES:
    raise ValueError(f"name: expected one of {sorted(BASELINES)}, got {name!r}.")
  if contexts_per_chunk is None and name == "logistic_regression":
    contexts_per_chunk = LOGREG_CONTEXTS_PER_CHUNK
  if contexts_per_chunk is not None and (
      not isinstance(contexts_per_chunk, int)
      or isinstance(contexts_per_chunk, bool) or contexts_per_chunk < 1):
    raise ValueError(f"contexts_per_chunk: expected an int >= 1 or None, got "
                     f"{contexts_per_chunk!r}.")
  one = functools.partial(BASELINES[name], **kwargs)
  if contexts_per_chunk is None:
    return jax.vmap(one)
  return lambda *args: jax.lax.map(lambda a: one(*a), args,
                                   batch_size=contexts_per_chunk)


def scores_metrics(scores_BxTxW: ArrayLike, y_query_BxT: ArrayLike
                   ) -> dict[str, jax.Array]:
  """accuracy, nll and top2 (top-2 accuracy) of scores used as logits."""
  return {
      "accuracy": metrics.accuracy(scores_BxTxW, y_query_BxT),
      "nll": metrics.nll(scores_BxTxW, y_query_BxT),
      "top2": metrics.top_k_accuracy(scores_BxTxW, y_query_BxT, 2),
  }
