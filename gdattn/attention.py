"""Kernelized self-attention and cross-attention on token matrices (pure).

Dimensions: S tokens (N context tokens first, then T query tokens), M token
width, H heads, P query/key width, V value width, C memory tokens (classes),
E class-embedding dim, K blocks.

A block is the interleaved topology of arXiv:2405.17248: multi-head kernelized
self-attention whose keys and values are the N context tokens only (a query
token never serves as a key), then single-head softmax cross-attention from
every token to the C class embeddings; both outputs are added to the
residual stream. No LayerNorm, no MLP.

Parameter pytrees (plain dicts, so they can be inspected, perturbed and
stacked along a leading K axis for `attention_stack`):
  self:  wq [H, M, P], wk [H, M, P], wv [H, M, V], wo [H, V, M]
  cross: wq [M, P], wk [E, P], wv [E, V], wo [V, M]
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gdattn import kernels

Params = dict[str, jax.Array]


def self_attention(
    params: Params,
    z_SxM: ArrayLike,
    *,
    num_context: int,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """Multi-head kernelized self-attention over the context tokens.

  Args:
    params: wq, wk [H, M, P]; wv [H, M, V]; wo [H, V, M].
    z_SxM: tokens; the first `num_context` rows are the context (keys).
    num_context: N, static.
    kernel: one of gdattn.KERNELS, applied to (z wq_h, z_ctx wk_h).
    kernel_scale: scalar, or [H] for one scale per head.

  Returns:
    [S, M] the attention output (to add to the residual stream).

  References: arXiv:2405.17248, section 3.
  """
  z_SxM = jnp.asarray(z_SxM)
  return _self_attention_rows(params, z_SxM, z_SxM[:num_context],
                              kernel=kernel, kernel_scale=kernel_scale)


def _self_attention_rows(params, z_RxM, z_ctx_NxM, *, kernel, kernel_scale):
  """Self-attention output [R, M] of the rows z_RxM, keys/values z_ctx_NxM.

  Written for speed on the [R, N] weights of each head, the largest arrays
  of a block: a dot-form kernel's scale goes into the [R, P] queries
  (s <q, k> = <s q, k>), and each head's values are taken straight to the
  residual stream, (z_ctx wv_h) wo_h [N, M], so the weights meet one product
  per head and no [R, N]-sized scale, broadcast or transpose pass.

  The heads are a loop (H is static and small), not a batch axis of the
  products: batched over heads, the products' results and cotangents come
  out head-major ([H, R, P]) while the projections and their gradients
  read them row-major ([R, H P]), and XLA:CPU copied each one into both
  layouts. One head at a time there is no such copy: the Trained TF's
  training loop takes 0.75x the time per epoch at K = 2, 0.87x at K = 4 and
  0.94x at K = 1 (64-context microbatches; 0.95x at 16) on a 2-core CPU,
  the trained parameters equal to 6e-9 (paired rounds in one process).
  """
  spec = kernels.get_kernel(kernel)
  num_heads = params["wq"].shape[0]
  scale_H = jnp.broadcast_to(jnp.asarray(kernel_scale), (num_heads,))
  out_RxM = None
  for h in range(num_heads):
    q_RxP = z_RxM @ params["wq"][h]
    k_NxP = z_ctx_NxM @ params["wk"][h]
    vo_NxM = jnp.einsum("nm,mv,vo->no", z_ctx_NxM, params["wv"][h], params["wo"][h])
    scale = scale_H[h]
    if spec.scale_in_query:
      q_RxP = q_RxP * scale.astype(q_RxP.dtype)
      scale = jnp.ones_like(scale)
    # The boundaries keep each [R, N]-sized product apart from the softmax
    # and the head sum on CPU (kernels.fusion_boundary: 0.82-0.88x the
    # Trained TF's time per epoch at K = 1, 2).
    base_RxN = kernels.fusion_boundary(spec.base(q_RxP, k_NxP))
    att_RxN = spec.weights_from_base(base_RxN, scale)
    head_RxM = kernels.fusion_boundary(att_RxN @ vo_NxM)
    out_RxM = head_RxM if out_RxM is None else out_RxM + head_RxM
  return out_RxM


def cross_attention(params: Params, z_SxM: ArrayLike, memory_CxE: ArrayLike) -> jax.Array:
  """Single-head softmax cross-attention from every token to C memory tokens.

  With queries reading f and keys = values = the class embeddings this
  computes E(x) = sum_c softmax_c(<f(x), w_c>) w_c: the softmax is always over
  the classes, whatever the self-attention kernel.

  Args:
    params: wq [M, P], wk [E, P], wv [E, V], wo [V, M].
    z_SxM: tokens.
    memory_CxE: the class embeddings W_e.

  Returns:
    [S, M] the attention output (to add to the residual stream).
  """
  q_SxP = jnp.asarray(z_SxM) @ params["wq"]
  k_CxP = jnp.asarray(memory_CxE) @ params["wk"]
  v_CxV = jnp.asarray(memory_CxE) @ params["wv"]
  att_SxC = jax.nn.softmax(q_SxP @ k_CxP.T, axis=-1)
  return att_SxC @ v_CxV @ params["wo"]


def block(
    params: dict[str, Params],
    z_SxM: jax.Array,
    memory_CxE: jax.Array,
    *,
    num_context: int,
    kernel: str,
    kernel_scale: ArrayLike,
    queries_only: bool = False,
) -> jax.Array:
  """One block: z += self_attention(z); z += cross_attention(z, memory).

  Returns [S, M]; with `queries_only`, only the T = S - num_context query
  rows, [T, M], computed without the context rows' work (what a read-out
  needs from the last block).
  """
  z_RxM = z_SxM[num_context:] if queries_only else z_SxM
  z_RxM = z_RxM + _self_attention_rows(
      params["self"], z_RxM, z_SxM[:num_context], kernel=kernel,
      kernel_scale=kernel_scale)
  return z_RxM + cross_attention(params["cross"], z_RxM, memory_CxE)


def attention_stack(
    params: dict[str, Params],
    z_SxM: ArrayLike,
    memory_CxE: ArrayLike,
    *,
    num_context: int,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """K blocks applied in turn (lax.scan over parameters stacked along axis 0).

  Returns:
    [K + 1, S, M]: the token matrix before the first block and after each.
  """
  z_SxM = jnp.asarray(z_SxM)
  memory_CxE = jnp.asarray(memory_CxE)

  def step(z, block_params):
    z = block(block_params, z, memory_CxE, num_context=num_context,
              kernel=kernel, kernel_scale=kernel_scale)
    return z, z

  _, z_KxSxM = jax.lax.scan(step, z_SxM, params)
  return jnp.concatenate([z_SxM[None], z_KxSxM], axis=0)


def attention_stack_readout(
    params: dict[str, Params],
    z_SxM: ArrayLike,
    memory_CxE: ArrayLike,
    *,
    num_context: int,
    kernel: str,
    kernel_scale: ArrayLike,
) -> jax.Array:
  """The query tokens after K blocks: `attention_stack(...)[-1][num_context:]`.

  What a model reads out. Nothing reads the context tokens after the last
  block, so it computes only the T query rows: its self-attention is [T, N]
  instead of [S, N] and its cross-attention [T, C] instead of [S, C]. At
  K = 1 no [N, N] attention is formed at all. The same function as the full
  stack, up to the order of floating-point sums.

  Returns:
    [T, M]: the query tokens after the last block.
  """
  z_SxM = jnp.asarray(z_SxM)
  memory_CxE = jnp.asarray(memory_CxE)
  first = jax.tree.map(lambda p: p[:-1], params)
  last = jax.tree.map(lambda p: p[-1], params)

  def step(z, block_params):
    return block(block_params, z, memory_CxE, num_context=num_context,
                 kernel=kernel, kernel_scale=kernel_scale), None

  z_SxM, _ = jax.lax.scan(step, z_SxM, first)
  return block(last, z_SxM, memory_CxE, num_context=num_context,
               kernel=kernel, kernel_scale=kernel_scale, queries_only=True)
