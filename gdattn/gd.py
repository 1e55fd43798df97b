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

import functools
from typing import Callable, NamedTuple

import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp
from jax.typing import ArrayLike

from gdattn import checks
from gdattn import kernels


def expected_embedding(f_NxE: ArrayLike, w_e_CxE: ArrayLike) -> jax.Array:
  """E(x) = sum_c softmax_c(W_e f(x)) w_c, row-wise (any leading dims).

  Its derivative is a rule of its own (`_expected_embedding_jvp`), exact and
  itself differentiable; the value is the plain formula.
  """
  return _expected_embedding(jnp.asarray(f_NxE), jnp.asarray(w_e_CxE))


@jax.custom_jvp
def _expected_embedding(f_NxE, w_e_CxE):
  return class_probabilities(f_NxE, w_e_CxE) @ w_e_CxE


@functools.partial(_expected_embedding.defjvp, symbolic_zeros=True)
def _expected_embedding_jvp(primals, tangents):
  """With p = softmax(f W^T) and E = p W, the tangent of E is

      dE = (p o dl) W - m E + p dW,   dl = df W^T + f dW^T  [N, C],
      m  = sum_c p_c dl_c = <df, E> + <f, p dW>            [N, 1],

  the softmax's row term m taken from [N, E] products instead of a reduction
  over the C classes. Reverse mode transposes it into one [N, C] pass,
  p o (g W^T), and [N, E] terms -<g, E> E; autodiff through the softmax makes
  two more [N, C] passes. GD's training loop at the paper's setting
  (C = 25, E = 5, N = 125, microbatches of 64 contexts) takes 0.89-0.92x
  the time per epoch at K = 2 and 0.87-0.88x at K = 4 with this rule
  (paired rounds in one process, 2-core CPU), the trained parameters equal
  to 1e-8; the class softmax's forward and backward were 35-40% of the
  K = 2 epoch.
  """
  f_NxE, w_e_CxE = primals
  d_f, d_w = tangents
  p_NxC = class_probabilities(f_NxE, w_e_CxE)
  e_NxE = p_NxC @ w_e_CxE
  d_logits, m_Nx1, d_e = [], [], []
  if not isinstance(d_f, SymbolicZero):
    d_logits.append(d_f @ w_e_CxE.T)
    m_Nx1.append(jnp.sum(d_f * e_NxE, axis=-1, keepdims=True))
  if not isinstance(d_w, SymbolicZero):
    p_dw_NxE = p_NxC @ d_w
    d_logits.append(f_NxE @ d_w.T)
    m_Nx1.append(jnp.sum(f_NxE * p_dw_NxE, axis=-1, keepdims=True))
    d_e.append(p_dw_NxE)
  # JAX calls the rule only when some tangent is nonzero: d_logits is not empty.
  d_logits_NxC = sum(d_logits[1:], d_logits[0])
  d_e.append((p_NxC * d_logits_NxC) @ w_e_CxE - sum(m_Nx1[1:], m_Nx1[0]) * e_NxE)
  return e_NxE, sum(d_e[1:], d_e[0])


def functional_gd_trajectory(
    apply_query: Callable[[jax.Array], jax.Array],
    apply_ctx: Callable[[jax.Array], jax.Array] | None,
    residual_fn: Callable[[jax.Array], jax.Array],
    residual_0_NxE: jax.Array,
    lrs_KxE: jax.Array,
    *,
    trajectory: bool = True,
) -> jax.Array:
  """Runs K functional-GD steps given the attention as linear operators.

  The engine shared by the categorical and real-valued references, the
  models and the long-context path: the kernel is set up once (by whoever
  builds the operators) and applied by every step.

  Args:
    apply_query: u [N, F] -> sum_i a(x_query, x_i) u_i, [T, F], any F.
    apply_ctx: u [N, E] -> sum_i a(x_j, x_i) u_i, [N, E]; may be None when
      K = 1 (one step needs only the residual at f_0 = 0).
    residual_fn: f at the context points [N, E] -> residual [N, E].
    residual_0_NxE: the residual at f_0 = 0 (for categorical GD, w_{y_i}
      minus the mean class embedding: no class softmax needed).
    lrs_KxE: per-step diagonal learning rates.
    trajectory: return f at the queries after every step, or only f_K.

  Returns:
    [K + 1, T, E]: f at the queries after 0..K steps; [T, E] f_K if not
    `trajectory`.
  """
  num_steps, out_dim = lrs_KxE.shape
  if apply_ctx is None and num_steps > 1:
    raise ValueError("apply_ctx is needed for K > 1 steps")
  num_ctx = residual_0_NxE.shape[0]

  # f at the context points is only needed to form the residuals of steps
  # 1..K-1, so the context recursion runs K-1 times; the queries are never
  # keys, so their trajectory is one product with the stacked updates.
  def step(f_ctx_NxE, lr_E):
    update_NxE = lr_E * residual_fn(f_ctx_NxE)
    return f_ctx_NxE + apply_ctx(update_NxE), update_NxE

  updates = [(lrs_KxE[0] * residual_0_NxE)[None]]
  if num_steps > 1:
    f_ctx_NxE = apply_ctx(updates[0][0])
    if num_steps > 2:
      # Unrolled (up to 8 steps per loop iteration): K is small and static,
      # and XLA then fuses across steps (~20% per epoch at K = 4 on CPU).
      f_ctx_NxE, updates_KxNxE = jax.lax.scan(
          step, f_ctx_NxE, lrs_KxE[1:-1], unroll=min(num_steps - 2, 8))
      updates.append(updates_KxNxE)
    updates.append((lrs_KxE[-1] * residual_fn(f_ctx_NxE))[None])
  updates_KxNxE = jnp.concatenate(updates, axis=0)
  if not trajectory:  # the update is linear in u: one product with the sum
    return apply_query(jnp.sum(updates_KxNxE, axis=0))
  stacked_NxKE = jnp.moveaxis(updates_KxNxE, 0, 1).reshape(num_ctx, num_steps * out_dim)
  f_TxKxE = apply_query(stacked_NxKE).reshape(-1, num_steps, out_dim)
  f_KxTxE = jnp.cumsum(jnp.moveaxis(f_TxKxE, 1, 0), axis=0)
  return jnp.concatenate([jnp.zeros_like(f_KxTxE[:1]), f_KxTxE], axis=0)


def kernel_operators(x_ctx_NxD, x_query_TxD, num_steps, kernel, kernel_scale):
  """(apply_query, apply_ctx) for `functional_gd_trajectory`, dense kernels
  computed once (apply_ctx is None at K = 1)."""
  # The entry points validated the inputs: the unchecked registry operator.
  spec = kernels.get_kernel(kernel)
  apply_query = spec.operator(x_query_TxD, x_ctx_NxD, kernel_scale)
  apply_ctx = None
  if num_steps > 1:
    apply_ctx = spec.operator(x_ctx_NxD, x_ctx_NxD, kernel_scale)
  return apply_query, apply_ctx


class CategoricalProblem(NamedTuple):
  """Validated categorical inputs in one float dtype (see categorical_setup)."""

  x_ctx_NxD: jax.Array
  x_query_TxD: jax.Array
  lrs_KxE: jax.Array
  residual_fn: Callable[[jax.Array], jax.Array]
  residual_0_NxE: jax.Array


def categorical_setup(x_ctx, y_ctx, x_query, w_e, lrs) -> CategoricalProblem:
  """Inputs -> CategoricalProblem, shared by the dense and chunked paths.

  residual_fn maps f at the context points [N, E] to w_{y_i} - E(x_i);
  residual_0 is its value at f_0 = 0, where the class softmax is uniform and
  E is the mean class embedding.
  """
  # One float dtype for everything, so the scan carry has a single type.
  dtype = jnp.result_type(x_ctx, x_query, w_e, lrs)
  w_e_CxE = jnp.asarray(w_e, dtype)
  # A gather (its gradient a scatter-add): 4.6x faster than the one-hot
  # product at a training step's 512 x 125 labels on CPU, 10x with vmapped
  # members, which would each materialise their own [B, N, C] one-hot.
  target_NxE = w_e_CxE[jnp.asarray(y_ctx)]

  def residual_fn(f_NxE):
    return target_NxE - expected_embedding(f_NxE, w_e_CxE)

  return CategoricalProblem(
      jnp.asarray(x_ctx, dtype), jnp.asarray(x_query, dtype),
      jnp.asarray(lrs, dtype), residual_fn,
      target_NxE - jnp.mean(w_e_CxE, axis=0))


def _categorical(x_ctx, y_ctx, x_query, w_e, lrs, kernel, kernel_scale, trajectory):
  *_, num_steps = checks.validate_gd_inputs(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=kernel, kernel_scale=kernel_scale
  )
  p = categorical_setup(x_ctx, y_ctx, x_query, w_e, lrs)
  apply_query, apply_ctx = kernel_operators(
      p.x_ctx_NxD, p.x_query_TxD, num_steps, kernel, kernel_scale)
  f = functional_gd_trajectory(
      apply_query, apply_ctx, p.residual_fn, p.residual_0_NxE, p.lrs_KxE,
      trajectory=trajectory)
  return checks.check_output_finite(f, "categorical_gd", kernel)


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
  return _categorical(x_ctx, y_ctx, x_query, w_e, lrs, kernel, kernel_scale, True)


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
    [T, E] f_K at the queries (the last entry of the trajectory, computed
    with one product with the summed updates); the logits are f @ w_e.T.

  References: arXiv:2405.17248, section 3.
  """
  return _categorical(x_ctx, y_ctx, x_query, w_e, lrs, kernel, kernel_scale, False)


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
  apply_query, apply_ctx = kernel_operators(
      jnp.asarray(x_ctx, dtype), jnp.asarray(x_query, dtype), num_steps, kernel,
      kernel_scale)
  f_KxTxM = functional_gd_trajectory(
      apply_query, apply_ctx, lambda f_NxM: y_NxM - f_NxM, y_NxM, lrs_KxM)
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
