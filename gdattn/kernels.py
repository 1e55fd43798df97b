"""Attention kernels a(x, x_i) between queries and context points.

Dimensions: T query rows, N context points (keys), D input dim.

Every kernel of SPEC section 2 is a pure function of (queries, keys, scale):
the unnormalised kernels carry the 1/N factor of the functional gradient; the
softmax kernel is normalised over the N context points. References:
arXiv:2405.17248 (section 3), arXiv:2212.07677 (linear case).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

KERNELS = ("linear", "exp", "rbf", "laplacian", "softmax")


def _sq_dist(q_TxD: jax.Array, k_NxD: jax.Array) -> jax.Array:
  # The expansion avoids a [T, N, D] intermediate; clamp the tiny negatives it
  # can produce by cancellation so that exp(-s d) never exceeds 1 spuriously.
  sq = (
      jnp.sum(q_TxD * q_TxD, axis=-1)[:, None]
      + jnp.sum(k_NxD * k_NxD, axis=-1)[None, :]
      - 2.0 * q_TxD @ k_NxD.T
  )
  return jnp.maximum(sq, 0.0)


def _l1_dist(q_TxD: jax.Array, k_NxD: jax.Array) -> jax.Array:
  return jnp.sum(jnp.abs(q_TxD[:, None, :] - k_NxD[None, :, :]), axis=-1)


def kernel_logits(
    q_TxD: ArrayLike, k_NxD: ArrayLike, *, kernel: str, kernel_scale: ArrayLike
) -> jax.Array:
  """Log of the unnormalised kernel, log k(x, x_i), for the exponential kernels.

  Defined for "exp", "softmax" (s <x, x_i>), "rbf" (-s ||x - x_i||^2) and
  "laplacian" (-s ||x - x_i||_1). The chunked long-context path works in this
  log domain so that it can normalise online.

  Args:
    q_TxD: query inputs.
    k_NxD: context (key) inputs.
    kernel: one of "exp", "softmax", "rbf", "laplacian".
    kernel_scale: s > 0.

  Returns:
    [T, N] log-kernel values.
  """
  q_TxD, k_NxD = jnp.asarray(q_TxD), jnp.asarray(k_NxD)
  if kernel in ("exp", "softmax"):
    return kernel_scale * (q_TxD @ k_NxD.T)
  if kernel == "rbf":
    return -kernel_scale * _sq_dist(q_TxD, k_NxD)
  if kernel == "laplacian":
    return -kernel_scale * _l1_dist(q_TxD, k_NxD)
  raise ValueError(
      f"kernel_logits: kernel must be one of ('exp', 'softmax', 'rbf',"
      f" 'laplacian'), got {kernel!r}"
  )


def attention_weights(
    q_TxD: ArrayLike, k_NxD: ArrayLike, *, kernel: str, kernel_scale: ArrayLike
) -> jax.Array:
  """Attention weights a(x, x_i) of SPEC section 2.

  | kernel    | a(x, x_i)                               |
  |-----------|-----------------------------------------|
  | linear    | s <x, x_i> / N                          |
  | exp       | exp(s <x, x_i>) / N                     |
  | rbf       | exp(-s ||x - x_i||^2) / N               |
  | laplacian | exp(-s ||x - x_i||_1) / N               |
  | softmax   | exp(s <x, x_i>) / sum_j exp(s <x, x_j>) |

  Args:
    q_TxD: query inputs (the points whose function value is updated).
    k_NxD: context inputs (keys); N is their number.
    kernel: one of KERNELS.
    kernel_scale: s > 0 (scalar).

  Returns:
    [T, N] attention weights.

  References: arXiv:2405.17248, section 3.
  """
  q_TxD, k_NxD = jnp.asarray(q_TxD), jnp.asarray(k_NxD)
  num_keys = k_NxD.shape[0]
  if kernel == "linear":
    return kernel_scale * (q_TxD @ k_NxD.T) / num_keys
  if kernel == "softmax":
    return jax.nn.softmax(
        kernel_logits(q_TxD, k_NxD, kernel=kernel, kernel_scale=kernel_scale),
        axis=-1,
    )
  if kernel in ("exp", "rbf", "laplacian"):
    logits = kernel_logits(q_TxD, k_NxD, kernel=kernel, kernel_scale=kernel_scale)
    return jnp.exp(logits) / num_keys
  raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")

