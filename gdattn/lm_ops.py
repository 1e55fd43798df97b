"""Pure functions for in-context language modelling with GD blocks.

Dimensions: B sequences, S tokens, P = S + 1 slots (covariates), V vocabulary,
E embedding (model) dim, D covariate dim, H heads, K GD steps.

Slot i carries the covariate x_i of token i, a feature known before token i
is seen (its position embedding in the GD LM); slot S is the covariate of the
token after the last one. Causal functional GD over the pairs (x_i, t_i):

    f_0(x_j)     = 0
    f_{k+1}(x_j) = f_k(x_j) + sum_{i < j} a_j(x_j, x_i) lr_k (w_{t_i} - E(f_k(x_i)))
    E(f)         = sum_v softmax_v(W f) w_v          (over the whole vocabulary)

a_j is normalised over the j keys that slot j sees (linear: s <x, x_i> / j;
softmax: softmax over i < j of s <x, x_i>). f_k(x_j) is the prediction of token
j made from tokens 0..j-1 only; with K = 1 it equals full functional GD on the
prefix, for K >= 2 the context points' own f is causal too (each sees only the
tokens before it), which is what a causal decoder can compute.

References: arXiv:2405.17248, section 5 (language modelling).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

LM_KERNELS = ("linear", "softmax")


def _check_kernel(kernel: str) -> None:
  if kernel not in LM_KERNELS:
    raise ValueError(f"kernel must be one of {LM_KERNELS}, got {kernel!r}")


def _vocab_chunks(w_VxE: jax.Array, chunk_size: int):
  """W padded to a multiple of chunk_size, as [V/c, c, E], and a valid mask."""
  vocab = w_VxE.shape[0]
  num_chunks = -(-vocab // chunk_size)
  pad = num_chunks * chunk_size - vocab
  w_pad = jnp.pad(w_VxE, ((0, pad), (0, 0)))
  valid = jnp.arange(num_chunks * chunk_size) < vocab
  return (w_pad.reshape(num_chunks, chunk_size, -1),
          valid.reshape(num_chunks, chunk_size))


def _check_chunk(chunk_size, name="chunk_size"):
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f"{name} must be a positive int or None, got {chunk_size!r}")


def expected_embedding(f_NxE: ArrayLike, w_VxE: ArrayLike,
                       chunk_size: int | None = None) -> jax.Array:
  """E(f) = sum_v softmax_v(W f) w_v row-wise, optionally over vocab chunks.

  With `chunk_size` the [N, V] logits are never held at once: a streaming
  log-sum-exp keeps the running max, normaliser and weighted sum per row
  (rescaled whenever the max grows), so memory is O(N (c + E)).

  Args:
    f_NxE: function values (any leading dims).
    w_VxE: embeddings of the vocabulary, row v = w_v.
    chunk_size: vocabulary rows per chunk; None = one plain softmax.

  Returns:
    [..., E] expected embeddings.
  """
  _check_chunk(chunk_size)
  f = jnp.asarray(f_NxE)
  w_VxE = jnp.asarray(w_VxE)
  if chunk_size is None or chunk_size >= w_VxE.shape[0]:
    return jax.nn.softmax(f @ w_VxE.T, axis=-1) @ w_VxE
  w_chunks, valid = _vocab_chunks(w_VxE, chunk_size)
  lead = f.shape[:-1]
  dtype = jnp.result_type(f, w_VxE)

  def step(carry, chunk):
    m, l, acc = carry
    w_cxE, valid_c = chunk
    logits = jnp.where(valid_c, f @ w_cxE.T, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    rescale = jnp.exp(m - m_new)
    p = jnp.exp(logits - m_new[..., None])
    return (m_new, l * rescale + jnp.sum(p, axis=-1),
            acc * rescale[..., None] + p @ w_cxE), None

  init = (jnp.full(lead, -jnp.inf, dtype), jnp.zeros(lead, dtype),
          jnp.zeros(lead + (w_VxE.shape[1],), dtype))
  (_, l, acc), _ = jax.lax.scan(step, init, (w_chunks, valid))
  return acc / l[..., None]


def embedding_gap(f_NxE: ArrayLike, w_VxE: ArrayLike,
                  chunk_size: int | None = None) -> dict[str, jax.Array]:
  """How far E(f) is from the mean embedding, row-wise.

  With uniform logits (f orthogonal to every w_v, e.g. f = 0) E(f) is
  exactly the vocabulary's mean embedding m = mean_v w_v; a trained model
  whose E stays near m could replace E by a constant.

  Args:
    f_NxE: function values (any leading dims).
    w_VxE: embeddings of the vocabulary (those used in E).
    chunk_size: as in `expected_embedding`.

  Returns:
    With the leading dims of f: "relative" ||E(f) - m|| / ||m||, "scaled"
    ||E(f) - m|| / rms_v ||w_v|| (meaningful when m is near 0) and
    "cosine" cos(E(f), m).

  References: arXiv:2405.17248, section 5.
  """
  w_VxE = jnp.asarray(w_VxE)
  if w_VxE.ndim != 2:
    raise ValueError(f"w_VxE must be [V, E], got shape {w_VxE.shape}")
  e_NxE = expected_embedding(f_NxE, w_VxE, chunk_size)
  m_E = jnp.mean(w_VxE, axis=0)
  m_norm = jnp.linalg.norm(m_E)
  gap = jnp.linalg.norm(e_NxE - m_E, axis=-1)
  rms = jnp.sqrt(jnp.mean(jnp.sum(w_VxE ** 2, axis=-1)))
  cosine = (e_NxE @ m_E) / jnp.maximum(
      jnp.linalg.norm(e_NxE, axis=-1) * m_norm, jnp.finfo(e_NxE.dtype).tiny)
  return {"relative": gap / m_norm, "scaled": gap / rms, "cosine": cosine}


def mean_embedding_ratio(w_VxE: ArrayLike) -> jax.Array:
  """||mean_v w_v|| / mean_v ||w_v||: how small the mean embedding is.

  The original authors' check of a trained model's embeddings: a ratio
  near 0 means the vocabulary's embeddings nearly cancel, so E(f) at f = 0
  (their mean) is near 0. `embedding_gap` asks the complementary question,
  whether E(f_k) stays at that mean after the steps.

  Args:
    w_VxE: embeddings of the vocabulary (those used in E).

  Returns:
    a scalar.

  References: arXiv:2405.17248, section 5.
  """
  w_VxE = jnp.asarray(w_VxE)
  if w_VxE.ndim != 2:
    raise ValueError(f"w_VxE must be [V, E], got shape {w_VxE.shape}")
  return (jnp.linalg.norm(jnp.mean(w_VxE, axis=0))
          / jnp.mean(jnp.linalg.norm(w_VxE, axis=-1)))


def token_nll(h_NxE: ArrayLike, w_VxE: ArrayLike, targets_N: ArrayLike,
              chunk_size: int | None = None) -> jax.Array:
  """Per-token cross-entropy -log softmax(W h)[target], optionally chunked.

  Args:
    h_NxE: readout features (any leading dims); logits are h @ w.T.
    w_VxE: output embeddings.
    targets_N: int targets with the leading dims of h.
    chunk_size: vocabulary rows per chunk for the log-sum-exp; None = plain.

  Returns:
    NLL with the leading dims of h.
  """
  _check_chunk(chunk_size)
  h = jnp.asarray(h_NxE)
  w_VxE = jnp.asarray(w_VxE)
  targets = jnp.asarray(targets_N)
  target_logit = jnp.sum(h * w_VxE[targets], axis=-1)
  if chunk_size is None or chunk_size >= w_VxE.shape[0]:
    return jax.nn.logsumexp(h @ w_VxE.T, axis=-1) - target_logit
  w_chunks, valid = _vocab_chunks(w_VxE, chunk_size)

  def step(lse, chunk):
    w_cxE, valid_c = chunk
    logits = jnp.where(valid_c, h @ w_cxE.T, -jnp.inf)
    return jnp.logaddexp(lse, jax.nn.logsumexp(logits, axis=-1)), None

  lse0 = jnp.full(h.shape[:-1], -jnp.inf, jnp.result_type(h, w_VxE))
  lse, _ = jax.lax.scan(step, lse0, (w_chunks, valid))
  return lse - target_logit


def causal_weights(scores_xSxS: ArrayLike, kernel: str) -> jax.Array:
  """Causal attention weights from scores of query slot j+1 against key i.

  Row j of `scores` (query slot j + 1) sees keys 0..j; the weights are
  normalised once over those j + 1 keys (linear: scores / (j + 1); softmax:
  a masked softmax). Leading dims (heads, batch) are kept.

  Args:
    scores_xSxS: s <x_{j+1}, x_i> for all j, i (upper triangle ignored).
    kernel: "linear" or "softmax".

  Returns:
    weights of the same shape, zero above the diagonal.
  """
  _check_kernel(kernel)
  scores = jnp.asarray(scores_xSxS)
  seq = scores.shape[-1]
  mask = jnp.tril(jnp.ones((seq, seq), bool))
  if kernel == "linear":
    counts = jnp.arange(1, seq + 1, dtype=scores.dtype)[:, None]
    return jnp.where(mask, scores, 0.0) / counts
  return jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)


def causal_categorical_gd(
    x_PxD: ArrayLike,
    tokens_S: ArrayLike,
    w_e_VxE: ArrayLike,
    lrs_KxE: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
    trajectory: bool = False,
) -> jax.Array:
  """Reference causal functional GD over the slots of one sequence.

  Written independently of the models (one dense masked kernel per step, a
  lax.scan over the K steps) so that they can be checked against it.

  Args:
    x_PxD: covariates of slots 0..S (slot S: the token after the last).
    tokens_S: the S tokens, the categories of slots 0..S-1.
    w_e_VxE: token embeddings (used in the target and in E).
    lrs_KxE: per-step diagonal learning rates.
    kernel: "linear" or "softmax".
    kernel_scale: s > 0.
    trajectory: return every step's f.

  Returns:
    [P, E] f_K at every slot (row j predicts token j), or [K + 1, P, E].

  References: arXiv:2405.17248, sections 3 and 5.
  """
  _check_kernel(kernel)
  x_PxD = jnp.asarray(x_PxD)
  tokens_S = jnp.asarray(tokens_S)
  if x_PxD.ndim != 2 or tokens_S.ndim != 1 or x_PxD.shape[0] != tokens_S.shape[0] + 1:
    raise ValueError(
        "causal_categorical_gd: x must be [S + 1, D] and tokens [S], got"
        f" {x_PxD.shape} and {tokens_S.shape}")
  dtype = jnp.result_type(x_PxD, w_e_VxE, lrs_KxE)
  x_PxD = x_PxD.astype(dtype)
  w_e_VxE = jnp.asarray(w_e_VxE, dtype)
  lrs_KxE = jnp.asarray(lrs_KxE, dtype)
  num_slots = x_PxD.shape[0]
  # Slot j sees keys i < j (strictly): slot 0 sees none and stays at 0.
  sees_PxP = jnp.arange(num_slots)[None, :] < jnp.arange(num_slots)[:, None]
  logits_PxP = kernel_scale * (x_PxD @ x_PxD.T)
  if kernel == "linear":
    num_keys = jnp.maximum(jnp.sum(sees_PxP, axis=1, keepdims=True), 1)
    a_PxP = jnp.where(sees_PxP, logits_PxP, 0.0) / num_keys
  else:
    masked = jnp.where(sees_PxP, logits_PxP, -jnp.inf)
    row_max = jnp.max(jnp.where(sees_PxP, logits_PxP, -1e300), axis=1,
                      keepdims=True)
    unnorm = jnp.where(sees_PxP, jnp.exp(masked - row_max), 0.0)
    a_PxP = unnorm / jnp.maximum(jnp.sum(unnorm, axis=1, keepdims=True), 1e-300)
  # Keys are slots 0..S-1 (those with a token); slot S is only a query.
  a_PxS = a_PxP[:, :-1]
  target_SxE = w_e_VxE[tokens_S]

  def step(f_PxE, lr_E):
    e_SxE = jax.nn.softmax(f_PxE[:-1] @ w_e_VxE.T, axis=-1) @ w_e_VxE
    f_next = f_PxE + a_PxS @ (lr_E * (target_SxE - e_SxE))
    return f_next, f_next

  f0 = jnp.zeros((num_slots, w_e_VxE.shape[1]), dtype)
  f_K, f_steps = jax.lax.scan(step, f0, lrs_KxE)
  if trajectory:
    return jnp.concatenate([f0[None], f_steps], axis=0)
  return f_K
