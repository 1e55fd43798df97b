"""Functional gradient descent references (lax.scan), categorical and real.

Dimensions: N context points, T queries, D input dim, C classes, E embedding
dim, K steps, M real output dim.

Categorical case (SPEC section 2), from f_0 = 0:

    E_k(x)     = sum_c softmax_c(W_e f_k(x)) w_c
    f_{k+1}(x) = f_k(x) + sum_i a(x, x_i) (lr_k * (w_{y_i} - E_k(x_i)))

f is updated at every context point and every query; the sum runs over the
context points only. The real-valued case replaces the residual by
y_i - f_k(x_i). These are the references the attention stack must equal.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gdattn import checks
from gdattn import kernels


def expected_embedding(f_NxE: ArrayLike, w_e_CxE: ArrayLike) -> jax.Array:
  """E(x) = sum_c softmax_c(W_e f(x)) w_c, row-wise."""
  w_e_CxE = jnp.asarray(w_e_CxE)
  return jax.nn.softmax(jnp.asarray(f_NxE) @ w_e_CxE.T, axis=-1) @ w_e_CxE


def functional_gd_trajectory(
    a_query_TxN: jax.Array,
    a_ctx_NxN: jax.Array | None,
    residual_fn: Callable[[jax.Array], jax.Array],
    lrs_KxE: jax.Array,
) -> jax.Array:
  """Runs K functional-GD steps given precomputed attention weights.

  The engine shared by the categorical and real-valued references and by the
  models: the kernel matrices are computed once and reused by every step.

  Args:
    a_query_TxN: a(x_query, x_i).
    a_ctx_NxN: a(x_j, x_i) between context points; may be None when K = 1
      (one step needs only the residual at f_0 = 0).
    residual_fn: f at the context points [N, E] -> residual [N, E].
    lrs_KxE: per-step diagonal learning rates.

  Returns:
    [K + 1, T, E]: f at the queries after 0..K steps.
  """
  num_steps, out_dim = lrs_KxE.shape
  if a_ctx_NxN is None and num_steps > 1:
    raise ValueError("a_ctx_NxN is needed for K > 1 steps")
  dtype = jnp.result_type(a_query_TxN, lrs_KxE)
  f_ctx_NxE = jnp.zeros((a_query_TxN.shape[1], out_dim), dtype)

  # f at the context points is only needed to form the residuals of steps
  # 1..K-1, so the context recursion runs K-1 times; the query trajectory is
  # then a cumulative sum of one batched product (queries are never keys).
  def step(f_ctx_NxE, lr_E):
    update_NxE = lr_E * residual_fn(f_ctx_NxE)
    return f_ctx_NxE + a_ctx_NxN @ update_NxE, update_NxE

  updates = []
  if num_steps > 1:
    f_ctx_NxE, updates_KxNxE = jax.lax.scan(step, f_ctx_NxE, lrs_KxE[:-1])
    updates.append(updates_KxNxE)
  updates.append((lrs_KxE[-1] * residual_fn(f_ctx_NxE))[None])
  updates_KxNxE = jnp.concatenate(updates, axis=0)
  f_KxTxE = jnp.cumsum(jnp.einsum("tn,kne->kte", a_query_TxN, updates_KxNxE), axis=0)
  return jnp.concatenate([jnp.zeros_like(f_KxTxE[:1]), f_KxTxE], axis=0)


def _kernel_matrices(x_ctx_NxD, x_query_TxD, num_steps, kernel, kernel_scale):
  a_query_TxN = kernels.attention_weights(
      x_query_TxD, x_ctx_NxD, kernel=kernel, kernel_scale=kernel_scale
  )
  a_ctx_NxN = None
  if num_steps > 1:
    a_ctx_NxN = kernels.attention_weights(
        x_ctx_NxD, x_ctx_NxD, kernel=kernel, kernel_scale=kernel_scale
    )
  return a_query_TxN, a_ctx_NxN


def categorical_setup(x_ctx, y_ctx, x_query, w_e, lrs):
  """Validated inputs -> (x_ctx, x_query, lrs, residual_fn) in one float dtype.

  residual_fn maps f at the context points [N, E] to w_{y_i} - E(x_i); shared
  by the dense reference and the chunked long-context path.
  """
  # One float dtype for everything, so the scan carry has a single type.
  dtype = jnp.result_type(x_ctx, x_query, w_e, lrs)
  w_e_CxE = jnp.asarray(w_e, dtype)
  # A one-hot product rather than a gather: exact, and its gradient w.r.t. w_e
  # is a matmul rather than a serial scatter-add.
  target_NxE = jax.nn.one_hot(jnp.asarray(y_ctx), w_e_CxE.shape[0], dtype=dtype) @ w_e_CxE

  def residual_fn(f_NxE):
    return target_NxE - expected_embedding(f_NxE, w_e_CxE)

  return (jnp.asarray(x_ctx, dtype), jnp.asarray(x_query, dtype),
          jnp.asarray(lrs, dtype), residual_fn)


def categorical_gd_trajectory(
    x_ctx: ArrayLike,
    y_ctx: ArrayLike,
    x_query: ArrayLike,
    w_e: ArrayLike,
    lrs: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """f at the queries after 0, 1, ..., K categorical functional-GD steps.

  Args: as `categorical_gd`.

  Returns:
    [K + 1, T, E]; entry k is f_k(x_query) (entry 0 is f_0 = 0).

  References: arXiv:2405.17248, section 3.
  """
  *_, num_steps = checks.validate_gd_inputs(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=kernel, kernel_scale=kernel_scale
  )
  x_ctx_NxD, x_query_TxD, lrs_KxE, residual_fn = categorical_setup(
      x_ctx, y_ctx, x_query, w_e, lrs)
  a_query_TxN, a_ctx_NxN = _kernel_matrices(
      x_ctx_NxD, x_query_TxD, num_steps, kernel, kernel_scale)
  f_KxTxE = functional_gd_trajectory(a_query_TxN, a_ctx_NxN, residual_fn, lrs_KxE)
  return checks.check_output_finite(f_KxTxE, "categorical_gd", kernel)


def categorical_gd(
    x_ctx: ArrayLike,
    y_ctx: ArrayLike,
    x_query: ArrayLike,
    w_e: ArrayLike,
    lrs: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """K steps of categorical functional GD in context; f at the queries.

  Args:
    x_ctx: [N, D] context inputs.
    y_ctx: [N] int labels in [0, C).
    x_query: [T, D] query inputs (never used as keys).
    w_e: [C, E] class embeddings, row c = w_c.
    lrs: [K, E]; step k uses diag(lrs[k]).
    kernel: one of gdattn.KERNELS.
    kernel_scale: s > 0.

  Returns:
    [T, E] f_K at the queries; the logits are f @ w_e.T.

  References: arXiv:2405.17248, section 3.
  """
  return categorical_gd_trajectory(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=kernel, kernel_scale=kernel_scale
  )[-1]


def class_probabilities(f_TxE: ArrayLike, w_e: ArrayLike) -> jax.Array:
  """p(y = c | x) = softmax_c(W_e f(x)); works on trajectories [..., T, E]."""
  return jax.nn.softmax(jnp.asarray(f_TxE) @ jnp.asarray(w_e).T, axis=-1)


def regression_gd_trajectory(
    x_ctx: ArrayLike,
    y_ctx: ArrayLike,
    x_query: ArrayLike,
    lrs: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """f at the queries after 0..K real-valued functional-GD steps, [K+1, T, M]."""
  *_, out_dim, num_steps = checks.validate_regression_inputs(
      x_ctx, y_ctx, x_query, lrs, kernel=kernel, kernel_scale=kernel_scale
  )
  dtype = jnp.result_type(x_ctx, y_ctx, x_query, lrs)
  y_NxM = jnp.asarray(y_ctx, dtype)
  lrs = jnp.asarray(lrs, dtype)
  lrs_KxM = jnp.broadcast_to(lrs[:, None] if lrs.ndim == 1 else lrs, (num_steps, out_dim))
  a_query_TxN, a_ctx_NxN = _kernel_matrices(
      jnp.asarray(x_ctx, dtype), jnp.asarray(x_query, dtype), num_steps, kernel,
      kernel_scale)
  f_KxTxM = functional_gd_trajectory(
      a_query_TxN, a_ctx_NxN, lambda f_NxM: y_NxM - f_NxM, lrs_KxM
  )
  return checks.check_output_finite(f_KxTxM, "regression_gd", kernel)


def regression_gd(
    x_ctx: ArrayLike,
    y_ctx: ArrayLike,
    x_query: ArrayLike,
    lrs: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """K steps of real-valued functional GD in context; f at the queries.

  With the linear kernel and f_0 = 0 this is GD on least squares,
  f_k(x) = W_k x (von Oswald et al. 2023; Cheng, Chen & Sra 2024).

  Args:
    x_ctx: [N, D] context inputs.
    y_ctx: [N, M] real targets.
    x_query: [T, D] query inputs.
    lrs: [K] or [K, M] step sizes.
    kernel: one of gdattn.KERNELS.
    kernel_scale: s > 0.

  Returns:
    [T, M] f_K at the queries.

  References: arXiv:2212.07677, arXiv:2312.06528.
  """
  return regression_gd_trajectory(
      x_ctx, y_ctx, x_query, lrs, kernel=kernel, kernel_scale=kernel_scale
  )[-1]
