"""Token layout and the exact attention weights that perform categorical GD.

Dimensions: N context points, T queries, S = N + T tokens, D input dim, C
classes, E embedding dim, K blocks, M token width.

Token of a point (one E slot per block, which is what makes it exact):

    [ x (D) | w_y (E) | E_0 (E) | E_1 (E) | ... | E_{K-1} (E) | f (E) ]

A query token has w_y = 0. Slot E_0 holds the mean class embedding (the
expectation at f_0 = 0); the other E slots and f start at 0. Block k:
  * self-attention, 1 head: query = key = the x slot (kernel scale s), value =
    lr_k * (w_y - E_k) read from the w and E_k slots, output added to f. Keys
    and values are the N context tokens only, so the output at every token is
    sum_i a(x, x_i) lr_k (w_{y_i} - E_k(x_i)): exactly one GD step on f.
  * cross-attention to the C class embeddings: query = f, key = value = w_c,
    output written into the empty slot E_{k+1}; it equals
    sum_c softmax_c(<f_{k+1}, w_c>) w_c = E_{k+1}. The last block's
    cross-attention has a zero output projection: E_K is never read, since the
    readout is W_e f(x_query).
No slot is ever overwritten, so nothing has to be erased: every projection is
a 0/1 (or +-lr_k) selection matrix and the stack equals the lax.scan
reference up to floating-point rounding, at any depth, for any kernel. (The
original code instead cancels the old E with a second self-attention head of
scale 1e5, which is only approximately zero and overflows with the exp
kernel.) The price is a token width of D + (K + 2) E instead of D + 3E; at
K = 1 the two coincide.

References: arXiv:2405.17248, section 3.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gdattn import attention
from gdattn import checks


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Where each quantity lives in a token of the exact GD construction."""

  input_dim: int
  embed_dim: int
  num_steps: int

  @property
  def x(self) -> slice:
    return slice(0, self.input_dim)

  @property
  def w(self) -> slice:
    return slice(self.input_dim, self.input_dim + self.embed_dim)

  def expectation(self, k: int) -> slice:
    """Slot of E_k, k = 0..K-1."""
    if not 0 <= k < self.num_steps:
      raise ValueError(f"k must be in [0, {self.num_steps}), got {k}")
    start = self.input_dim + (1 + k) * self.embed_dim
    return slice(start, start + self.embed_dim)

  @property
  def f(self) -> slice:
    start = self.input_dim + (self.num_steps + 1) * self.embed_dim
    return slice(start, start + self.embed_dim)

  @property
  def width(self) -> int:
    return self.f.stop


def build_tokens(
    layout: TokenLayout,
    x_ctx_NxD: ArrayLike,
    y_ctx_N: ArrayLike,
    x_query_TxD: ArrayLike,
    w_e_CxE: ArrayLike,
) -> jax.Array:
  """The [S, M] input token matrix: N context tokens, then T query tokens."""
  x_ctx_NxD, x_query_TxD = jnp.asarray(x_ctx_NxD), jnp.asarray(x_query_TxD)
  w_e_CxE = jnp.asarray(w_e_CxE)
  num_ctx, num_query = x_ctx_NxD.shape[0], x_query_TxD.shape[0]
  dtype = jnp.result_type(x_ctx_NxD, x_query_TxD, w_e_CxE)
  z_SxM = jnp.zeros((num_ctx + num_query, layout.width), dtype)
  z_SxM = z_SxM.at[:, layout.x].set(jnp.concatenate([x_ctx_NxD, x_query_TxD]))
  z_SxM = z_SxM.at[:num_ctx, layout.w].set(w_e_CxE[jnp.asarray(y_ctx_N)])
  return z_SxM.at[:, layout.expectation(0)].set(jnp.mean(w_e_CxE, axis=0))


def gd_attention_params(layout: TokenLayout, lrs_KxE: ArrayLike) -> dict:
  """The constructed block parameters, stacked along a leading K axis.

  Returns a pytree {'self': {wq, wk, wv, wo}, 'cross': {wq, wk, wv, wo}} in
  the format of `gdattn.attention` (self-attention with one head), each leaf
  with a leading axis of length K.
  """
  lrs_KxE = jnp.asarray(lrs_KxE)
  d, e, m = layout.input_dim, layout.embed_dim, layout.width
  dtype = lrs_KxE.dtype
  eye_d, eye_e = jnp.eye(d, dtype=dtype), jnp.eye(e, dtype=dtype)
  read_x_MxD = jnp.zeros((m, d), dtype).at[layout.x].set(eye_d)
  read_f_MxE = jnp.zeros((m, e), dtype).at[layout.f].set(eye_e)
  write_f_ExM = read_f_MxE.T

  def one_block(k, lr_E):
    diag_lr = jnp.diag(lr_E)
    # Value = lr_k * (w_y - E_k): +diag(lr) on the w slot, -diag(lr) on E_k.
    wv_MxE = jnp.zeros((m, e), dtype).at[layout.w].set(diag_lr)
    wv_MxE = jax.lax.dynamic_update_slice(
        wv_MxE, -diag_lr, (layout.expectation(0).start + k * e, 0)
    )
    # Cross-attention writes E_{k+1} into its own, still empty, slot; the
    # last block's E_K would never be read, so its output projection is 0.
    has_next = (k + 1 < layout.num_steps).astype(dtype)
    next_slot = jnp.minimum(k + 1, layout.num_steps - 1)
    wo_ExM = jax.lax.dynamic_update_slice(
        jnp.zeros((e, m), dtype), has_next * eye_e,
        (0, layout.expectation(0).start + next_slot * e),
    )
    return {
        "self": {
            "wq": read_x_MxD[None], "wk": read_x_MxD[None],
            "wv": wv_MxE[None], "wo": write_f_ExM[None],
        },
        "cross": {"wq": read_f_MxE, "wk": eye_e, "wv": eye_e, "wo": wo_ExM},
    }

  return jax.vmap(one_block)(jnp.arange(layout.num_steps), lrs_KxE)


def gd_transformer_tokens(
    x_ctx, y_ctx, x_query, w_e, lrs, *, kernel: str, kernel_scale
) -> jax.Array:
  """Builds tokens and weights and runs the stack: tokens [K + 1, S, M]."""
  _, _, d, _, e, k = checks.validate_gd_inputs(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=kernel, kernel_scale=kernel_scale
  )
  layout = TokenLayout(input_dim=d, embed_dim=e, num_steps=k)
  z_SxM = build_tokens(layout, x_ctx, y_ctx, x_query, w_e)
  params = gd_attention_params(layout, jnp.asarray(lrs, z_SxM.dtype))
  return attention.attention_stack(
      params, z_SxM, jnp.asarray(w_e), num_context=jnp.shape(x_ctx)[0],
      kernel=kernel, kernel_scale=kernel_scale,
  )


def gd_transformer_trajectory(
    x_ctx, y_ctx, x_query, w_e, lrs, *, kernel: str, kernel_scale
) -> jax.Array:
  """f read from the query tokens before and after each block, [K + 1, T, E]."""
  z_KxSxM = gd_transformer_tokens(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=kernel, kernel_scale=kernel_scale
  )
  layout = TokenLayout(jnp.shape(x_ctx)[1], jnp.shape(w_e)[1], jnp.shape(lrs)[0])
  return z_KxSxM[:, jnp.shape(x_ctx)[0]:, layout.f]


def gd_transformer_logits(
    x_ctx: ArrayLike,
    y_ctx: ArrayLike,
    x_query: ArrayLike,
    w_e: ArrayLike,
    lrs: ArrayLike,
    *,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """Logits at the queries from the stacked attention forward pass.

  Builds the tokens, constructs the attention weights that perform GD, runs
  the K self-/cross-attention blocks and reads out W_e f(x_query). Equals
  `categorical_gd(...) @ w_e.T` up to rounding.

  Args: as `gdattn.categorical_gd`.

  Returns:
    [T, C] logits.

  References: arXiv:2405.17248, section 3.
  """
  f_TxE = gd_transformer_trajectory(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=kernel, kernel_scale=kernel_scale
  )[-1]
  logits_TxC = f_TxE @ jnp.asarray(w_e).T
  return checks.check_output_finite(logits_TxC, "gd_transformer_logits", kernel)
