"""Categorical functional GD for long contexts, in memory linear in N.

Dimensions: N context points, T queries, R rows (points whose f is updated),
D input dim, C classes, E embedding dim, K steps, Q row-chunk size, P key-chunk
size, I row chunks, J key chunks.

`categorical_gd_chunked` computes the same f_K(x_query) as
`gdattn.categorical_gd` without ever forming the [N, N] or [T, N] kernel:
each product sum_i a(x, x_i) u_i is evaluated tile by tile, a lax.map over
chunks of Q rows wrapping a lax.scan over chunks of P keys (flash-attention
style). The exponential kernels (exp, rbf, laplacian, softmax) accumulate in
the log domain with a running max m and running sums

    l = sum_i exp(logit_i - m),   acc = sum_i exp(logit_i - m) u_i,

rescaled by exp(m_old - m_new) whenever the max grows; the softmax kernel
returns acc / l (the online softmax), the others exp(m) acc / N. The linear
kernel is a plain tiled matmul. N and T are padded up to a multiple of the
chunk size; padded keys are masked (zero value, -inf logit), padded rows are
dropped, so every shape is static and the function jits and vmaps.

Two exact savings keep the work at K - 1 context passes plus one query pass:
the queries are never keys and the update is linear in u, so

    f_K(x_query) = sum_i a(x_query, x_i) (sum_k u_k(x_i)),

one pass over the queries with the summed updates; and the context points need
f only at steps 0..K-2. At K = 1 only the T query rows are computed (the
residual at f_0 = 0 needs no kernel at all). Both are properties of
`gd.functional_gd_trajectory`, which this path runs with tiled operators.

Memory: O((N + T)(D + E) + N C + Q P) for the forward pass (N C for the class
softmax of the residual; Q P D for the laplacian kernel, whose L1 distance
has a [Q, P, D] intermediate). Reverse-mode differentiation through it stores
every tile's residuals, O(N^2) again: this path is for inference and
evaluation on long contexts (differentiating it in O(N) would need per-tile
rematerialisation, which it does not do).

References: arXiv:2405.17248 (section 3), arXiv:2205.14135 (tiling and online
softmax), arXiv:2112.05682 (memory-efficient attention).
"""

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gdattn import checks
from gdattn import gd
from gdattn import kernels


def _pad_rows(a: jax.Array, rows: int) -> jax.Array:
  return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))


def _tile_keys(x_NxD, u_NxE, chunk):
  """Pads the keys to J * P rows and splits them into J chunks, with a mask."""
  num_keys = x_NxD.shape[0]
  padded = math.ceil(num_keys / chunk) * chunk
  mask_N = jnp.arange(padded) < num_keys
  num_chunks = padded // chunk
  return (
      _pad_rows(x_NxD, padded).reshape(num_chunks, chunk, -1),
      _pad_rows(u_NxE, padded).reshape(num_chunks, chunk, -1),
      mask_N.reshape(num_chunks, chunk),
  )


def _row_tile_linear(q_QxD, keys, kernel_scale, num_keys):
  x_JxPxD, u_JxPxE, _ = keys  # padded keys have u = 0: no mask needed.

  def body(acc_QxE, key_chunk):
    k_PxD, u_PxE = key_chunk
    return acc_QxE + (q_QxD @ k_PxD.T) @ u_PxE, None

  acc_QxE = jnp.zeros((q_QxD.shape[0], u_JxPxE.shape[-1]), u_JxPxE.dtype)
  acc_QxE, _ = jax.lax.scan(body, acc_QxE, (x_JxPxD, u_JxPxE))
  return kernel_scale * acc_QxE / num_keys


def _row_tile_exponential(q_QxD, keys, spec, kernel_scale, num_keys):
  x_JxPxD, u_JxPxE, mask_JxP = keys
  dtype = u_JxPxE.dtype

  def body(carry, key_chunk):
    m_Q, l_Q, acc_QxE = carry
    k_PxD, u_PxE, mask_P = key_chunk
    logits_QxP = spec.logits(q_QxD, k_PxD, kernel_scale).astype(dtype)
    logits_QxP = jnp.where(mask_P[None, :], logits_QxP, -jnp.inf)
    m_new_Q = jnp.maximum(m_Q, jnp.max(logits_QxP, axis=-1))
    # Chunk 0 always holds a real key (padding only fills the last chunk), so
    # m_new is finite and exp(-inf - m_new) = 0 handles both the initial
    # state and the masked keys without NaN.
    rescale_Q = jnp.exp(m_Q - m_new_Q)
    p_QxP = jnp.exp(logits_QxP - m_new_Q[:, None])
    l_Q = rescale_Q * l_Q + jnp.sum(p_QxP, axis=-1)
    acc_QxE = rescale_Q[:, None] * acc_QxE + p_QxP @ u_PxE
    return (m_new_Q, l_Q, acc_QxE), None

  num_rows = q_QxD.shape[0]
  init = (
      jnp.full((num_rows,), -jnp.inf, dtype),
      jnp.zeros((num_rows,), dtype),
      jnp.zeros((num_rows, u_JxPxE.shape[-1]), dtype),
  )
  (m_Q, l_Q, acc_QxE), _ = jax.lax.scan(body, init, (x_JxPxD, u_JxPxE, mask_JxP))
  if spec.normalised:
    return acc_QxE / l_Q[:, None]
  return jnp.exp(m_Q)[:, None] * acc_QxE / num_keys


def kernel_apply_chunked(
    x_rows_RxD: ArrayLike,
    x_keys_NxD: ArrayLike,
    u_NxE: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
    chunk_size: int = 1024,
) -> jax.Array:
  """sum_i a(x_r, x_i) u_i for every row r, tiled: [R, E], memory O(chunk^2).

  Equals `kernels.attention_weights(x_rows, x_keys, ...) @ u` (the softmax
  kernel normalised over the N keys) without forming the [R, N] matrix.

  Args:
    x_rows_RxD: the rows (R >= 0; R = 0 gives an empty [0, E] result, as the
      dense product does).
    x_keys_NxD: the keys, N >= 1.
    u_NxE: one value row per key.
    kernel: one of gdattn.KERNELS.
    kernel_scale: s > 0.
    chunk_size: tile edge (static int >= 1), clamped to R and to N.

  Returns:
    [R, E].

  Raises:
    ValueError, TypeError: bad kernel, kernel_scale, chunk_size, ranks, dims,
      dtypes, or (on concrete inputs) NaN/inf entries.
  """
  spec = kernels.get_kernel(kernel)
  chunk_size = checks.check_int(chunk_size, "chunk_size", 1)
  num_keys, _, _ = checks.check_points(x_keys_NxD, x_rows_RxD, "x_keys_NxD",
                                       "x_rows_RxD")
  checks.check_kernel_scale(kernel_scale)
  n_u, _ = checks.check_rank(u_NxE, "u_NxE", 2, "[N, E]")
  if n_u != num_keys:
    raise ValueError(
        f"u_NxE must have one row per key, shape [{num_keys}, E] (N from"
        f" x_keys_NxD), got shape {jnp.shape(u_NxE)}")
  checks.check_floating(u_NxE, "u_NxE")
  checks.check_finite(u_NxE, "u_NxE")
  return _apply_chunked(spec, jnp.asarray(x_rows_RxD), jnp.asarray(x_keys_NxD),
                        jnp.asarray(u_NxE), kernel_scale, chunk_size)


def _apply_chunked(spec, x_rows_RxD, x_keys_NxD, u_NxE, kernel_scale, chunk_size):
  """`kernel_apply_chunked` on validated inputs."""
  num_rows, num_keys = x_rows_RxD.shape[0], x_keys_NxD.shape[0]
  if num_rows == 0:  # no tiles to map over (and no row chunk to divide by)
    dtype = jnp.result_type(x_rows_RxD, x_keys_NxD, u_NxE)
    return jnp.zeros((0, u_NxE.shape[-1]), dtype)
  # Never pad a short axis up to a long chunk: clamp each chunk to its axis.
  row_chunk, key_chunk = min(chunk_size, num_rows), min(chunk_size, num_keys)
  keys = _tile_keys(x_keys_NxD, u_NxE, key_chunk)
  padded_rows = math.ceil(num_rows / row_chunk) * row_chunk
  x_IxQxD = _pad_rows(x_rows_RxD, padded_rows).reshape(
      padded_rows // row_chunk, row_chunk, -1
  )
  if spec.scale_in_exponent:
    tile = lambda q: _row_tile_exponential(q, keys, spec, kernel_scale, num_keys)
  else:
    tile = lambda q: _row_tile_linear(q, keys, kernel_scale, num_keys)
  out_IxQxE = jax.lax.map(tile, x_IxQxD)
  return out_IxQxE.reshape(padded_rows, -1)[:num_rows]


def categorical_gd_chunked(
    x_ctx: ArrayLike,
    y_ctx: ArrayLike,
    x_query: ArrayLike,
    w_e: ArrayLike,
    lrs: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
    chunk_size: int = 1024,
) -> jax.Array:
  """`gdattn.categorical_gd` in memory linear in N (no [N, N] or [T, N] kernel).

  Args:
    x_ctx: [N, D] context inputs.
    y_ctx: [N] int labels in [0, C).
    x_query: [T, D] query inputs (never used as keys).
    w_e: [C, E] class embeddings, row c = w_c.
    lrs: [K, E]; step k uses diag(lrs[k]).
    kernel: one of gdattn.KERNELS.
    kernel_scale: s > 0.
    chunk_size: tile edge (static int >= 1) for rows and keys; clamped to
      N (keys) and to the row count. Peak memory grows as chunk_size^2.

  Returns:
    [T, E] f_K at the queries; the logits are f @ w_e.T. Equal to
    `categorical_gd` up to floating-point summation order. T = 0 queries
    give an empty [0, E] result, as `categorical_gd` does.

  Raises:
    ValueError: bad chunk_size, or any input `categorical_gd` rejects.

  References: arXiv:2405.17248 (section 3), arXiv:2205.14135.
  """
  *_, num_steps = checks.validate_gd_inputs(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=kernel, kernel_scale=kernel_scale
  )
  chunk_size = checks.check_int(chunk_size, "chunk_size", 1)
  spec = kernels.get_kernel(kernel)
  p = gd.categorical_setup(x_ctx, y_ctx, x_query, w_e, lrs)
  apply = lambda rows: lambda u: _apply_chunked(
      spec, rows, p.x_ctx_NxD, u, kernel_scale, chunk_size)
  # The dense reference's engine with tiled operators: K - 1 passes over the
  # context rows, one over the queries with the summed updates.
  f_query_TxE = gd.functional_gd_trajectory(
      apply(p.x_query_TxD), apply(p.x_ctx_NxD) if num_steps > 1 else None,
      p.residual_fn, p.residual_0_NxE, p.lrs_KxE, trajectory=False)
  return checks.check_output_finite(f_query_TxE, "categorical_gd_chunked", kernel)
