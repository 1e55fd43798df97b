"""Models compared in the papers (flax.nnx), built on gdattn's pure functions.

Dimensions: B contexts, N context points, T queries, S = N + T tokens, D input
dim, C classes, E embedding dim, K layers (= GD steps), H heads, M token width.

Every model maps (x_ctx [B,N,D], y_ctx [B,N], x_query [B,T,D]) to logits
[B,T,C] and reads out through its class embeddings: logits = f(x_query) W_e^T.

  GD          the constrained construction: per-step diagonal learning rates,
              one kernel scale, W_e. Calls gdattn.categorical_gd.
  TrainedTF   the same interleaved attention topology with every projection
              free (gdattn.attention.attention_stack). `trained_tf_from_gd`
              embeds a GD model into it exactly.
  GDMLP       the follow-on's sparse model: GD self-attention heads; an MLP on
              [w_y ; f] replaces the cross-attention and writes E.
  Transformer a standard pre-LN softmax Transformer (attention + MLP) on the
              tokens [x ; w_y], the usual baseline.

References: arXiv:2405.17248 (sections 3-5) and its follow-on on MLPs.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from gdattn import attention
from gdattn import checks
from gdattn import construction
from gdattn import gd
from gdattn import kernels
# The config lives beside the models; both names stay importable from here.
from gdattn.model_config import ICLModelConfig
from gdattn.model_config import validate_icl_config  # noqa: F401

MODELS = ("gd", "trained_tf", "gdmlp", "transformer")


def _normal(rngs: nnx.Rngs, shape, scale: float) -> jax.Array:
  return scale * jax.random.normal(rngs.params(), shape)


def _check_sizes(**sizes: int) -> None:
  """Every model size argument is an int >= 1 (named in the error)."""
  for name, value in sizes.items():
    checks.check_int(value, name, 1)


class _ClassEmbeddings(nnx.Module):
  """W_e [C, E]; optionally the last row is pinned to 0 as in the original."""

  def __init__(self, num_classes, embed_dim, init_scale, fix_last_class, rngs):
    self.w_e = nnx.Param(_normal(rngs, (num_classes, embed_dim), init_scale))
    self.fix_last_class = fix_last_class

  def __call__(self) -> jax.Array:
    w_e_CxE = self.w_e[...]
    if self.fix_last_class:
      # Softmax is shift-invariant over classes; pinning one row removes the
      # redundant direction (the original code does this).
      w_e_CxE = w_e_CxE.at[-1].set(0.0)
    return w_e_CxE


class GD(nnx.Module):
  """K steps of categorical functional GD with learned lrs, kernel scale, W_e."""

  def __init__(self, *, num_classes: int, embed_dim: int, num_layers: int,
               kernel: str = "softmax", init_scale: float = 0.002,
               init_kernel_scale: float = 1.0, fix_last_class: bool = True,
               rngs: nnx.Rngs):
    _check_sizes(num_classes=num_classes, embed_dim=embed_dim,
                 num_layers=num_layers)
    kernels.get_kernel(kernel)
    checks.check_kernel_scale(init_kernel_scale)
    self.kernel = kernel
    self.embeddings = _ClassEmbeddings(
        num_classes, embed_dim, init_scale, fix_last_class, rngs)
    self.lrs = nnx.Param(_normal(rngs, (num_layers, embed_dim), init_scale))
    self.kernel_scale = nnx.Param(jnp.asarray(init_kernel_scale, jnp.float32))

  def __call__(self, x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD) -> jax.Array:
    checks.validate_model_inputs(x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD,
                                 num_classes=self.embeddings.w_e.shape[0])
    w_e_CxE = self.embeddings()
    f_BxTxE = jax.vmap(
        lambda x, y, q: gd.categorical_gd(
            x, y, q, w_e_CxE, self.lrs[...], kernel=self.kernel,
            kernel_scale=self.kernel_scale[...])
    )(x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD)
    return f_BxTxE @ w_e_CxE.T


class TrainedTF(nnx.Module):
  """The paper's unconstrained model: free projections, same topology as GD.

  Tokens follow `construction.TokenLayout` with one E slot per block
  ("exact", width D + (K+2)E, so GD embeds exactly) or a single E slot as in
  the original code ("paper", width D + 3E). Both coincide at K = 1, where the
  parameter count is the paper's 6,625 (d=10, C=25, e=5): per block
  2 heads x 4 full M x M matrices + cross-attention (M x M query and output,
  E x M key and value) + W_e.
  """

  def __init__(self, *, input_dim: int, num_classes: int, embed_dim: int,
               num_layers: int, kernel: str = "softmax", num_heads: int = 2,
               init_scale: float | None = None, token_layout: str = "exact",
               fix_last_class: bool = True, rngs: nnx.Rngs):
    _check_sizes(input_dim=input_dim, num_classes=num_classes,
                 embed_dim=embed_dim, num_layers=num_layers, num_heads=num_heads)
    kernels.get_kernel(kernel)
    if token_layout not in ("exact", "paper"):
      raise ValueError(
          f"token_layout must be 'exact' or 'paper', got {token_layout!r}")
    self.kernel = kernel
    num_slots = num_layers if token_layout == "exact" else 1
    self.layout = construction.TokenLayout(input_dim, embed_dim, num_slots)
    m, e, k, h = self.layout.width, embed_dim, num_layers, num_heads
    scale = 0.002 / num_layers if init_scale is None else init_scale
    self.embeddings = _ClassEmbeddings(
        num_classes, embed_dim, scale, fix_last_class, rngs)
    # Stacked along K for attention.attention_stack's lax.scan.
    self.self_wq, self.self_wk, self.self_wv, self.self_wo = (
        nnx.Param(_normal(rngs, (k, h, m, m), scale)) for _ in range(4))
    self.cross_wq = nnx.Param(_normal(rngs, (k, m, m), scale))
    self.cross_wk = nnx.Param(_normal(rngs, (k, e, m), scale))
    self.cross_wv = nnx.Param(_normal(rngs, (k, e, m), scale))
    self.cross_wo = nnx.Param(_normal(rngs, (k, m, m), scale))
    # Not trained: free projections absorb any scale; `trained_tf_from_gd`
    # sets it to the GD model's s so the embedding is exact for every kernel.
    self.kernel_scale = nnx.Variable(jnp.ones((), jnp.float32))

  def attention_params(self) -> dict:
    """The block weights in gdattn.attention's pytree format, stacked on K."""
    return {
        "self": {n: getattr(self, f"self_{n}")[...] for n in ("wq", "wk", "wv", "wo")},
        "cross": {n: getattr(self, f"cross_{n}")[...] for n in ("wq", "wk", "wv", "wo")},
    }

  def __call__(self, x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD) -> jax.Array:
    checks.validate_model_inputs(
        x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD,
        num_classes=self.embeddings.w_e.shape[0], input_dim=self.layout.input_dim)
    w_e_CxE = self.embeddings()
    params = self.attention_params()
    num_ctx = x_ctx_BxNxD.shape[1]

    def one(x_NxD, y_N, q_TxD):
      z_SxM = construction.build_tokens(self.layout, x_NxD, y_N, q_TxD, w_e_CxE)
      z_query_TxM = attention.attention_stack_readout(
          params, z_SxM, w_e_CxE, num_context=num_ctx, kernel=self.kernel,
          kernel_scale=self.kernel_scale[...])
      return z_query_TxM[:, self.layout.f]

    f_BxTxE = jax.vmap(one)(x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD)
    return f_BxTxE @ w_e_CxE.T


def trained_tf_from_gd(gd_model: GD, input_dim: int, num_heads: int = 2) -> TrainedTF:
  """A TrainedTF ("exact" layout) whose logits equal `gd_model`'s.

  Head 0 of each self-attention carries the constructed GD weights, the other
  heads are zero; the constructed [M, E] / [E, E] projections are zero-padded
  to the TrainedTF's M-wide ones.
  """
  lrs_KxE = gd_model.lrs[...]
  num_layers, embed_dim = lrs_KxE.shape
  num_classes = gd_model.embeddings.w_e.shape[0]
  model = TrainedTF(
      input_dim=input_dim, num_classes=num_classes, embed_dim=embed_dim,
      num_layers=num_layers, kernel=gd_model.kernel, num_heads=num_heads,
      token_layout="exact", fix_last_class=gd_model.embeddings.fix_last_class,
      rngs=nnx.Rngs(0))
  built = construction.gd_attention_params(model.layout, lrs_KxE)
  m = model.layout.width

  def pad(x, shape):  # zero-pad trailing dims up to `shape`
    return jnp.pad(x, [(0, t - s) for s, t in zip(x.shape, shape)])

  k, h = num_layers, num_heads
  for name in ("wq", "wk", "wv", "wo"):
    getattr(model, f"self_{name}")[...] = pad(built["self"][name], (k, h, m, m))
    target = getattr(model, f"cross_{name}")
    target[...] = pad(built["cross"][name], target.shape)
  model.embeddings.w_e[...] = gd_model.embeddings.w_e[...]
  # A new variable keeps GD's dtype (an in-place set would cast to float32).
  model.kernel_scale = nnx.Variable(jnp.asarray(gd_model.kernel_scale[...]))
  return model


class _MLP(nnx.Module):
  def __init__(self, in_dim, hidden, out_dim, num_layers, init_scale, rngs):
    self.w1 = nnx.Param(_normal(rngs, (num_layers, in_dim, hidden), init_scale))
    self.b1 = nnx.Param(jnp.zeros((num_layers, hidden)))
    self.w2 = nnx.Param(_normal(rngs, (num_layers, hidden, out_dim), init_scale))
    self.b2 = nnx.Param(jnp.zeros((num_layers, out_dim)))

  def __call__(self, layer, x_xI):
    hidden = jax.nn.gelu(x_xI @ self.w1[layer] + self.b1[layer])
    return hidden @ self.w2[layer] + self.b2[layer]


class GDMLP(nnx.Module):
  """GD self-attention steps with an MLP on [w_y ; f] writing E (follow-on).

  Block k: f += sum_i a(x, x_i) lr_k * (w_{y_i} - E_k(x_i)) (the GD head, the
  kernel computed once); then E_{k+1} = MLP_k([w_y ; f]) replaces the softmax
  cross-attention. E_0 is the mean class embedding, as in GD.
  """

  def __init__(self, *, num_classes: int, embed_dim: int, num_layers: int,
               kernel: str = "softmax", mlp_hidden: int = 16,
               init_scale: float = 0.002, init_kernel_scale: float = 1.0,
               fix_last_class: bool = True, rngs: nnx.Rngs):
    _check_sizes(num_classes=num_classes, embed_dim=embed_dim,
                 num_layers=num_layers, mlp_hidden=mlp_hidden)
    kernels.get_kernel(kernel)
    checks.check_kernel_scale(init_kernel_scale)
    self.kernel = kernel
    self.embeddings = _ClassEmbeddings(
        num_classes, embed_dim, init_scale, fix_last_class, rngs)
    self.lrs = nnx.Param(_normal(rngs, (num_layers, embed_dim), init_scale))
    self.kernel_scale = nnx.Param(jnp.asarray(init_kernel_scale, jnp.float32))
    # The MLP's init is O(1/sqrt(fan_in)) so its output is not vanishing.
    # K - 1 MLPs: E_K would never be read (the readout takes f). None at
    # K = 1: zero-length parameter arrays break chunked maps over members.
    self.mlp = (_MLP(2 * embed_dim, mlp_hidden, embed_dim, num_layers - 1,
                     (2 * embed_dim) ** -0.5, rngs) if num_layers > 1 else None)

  def __call__(self, x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD) -> jax.Array:
    checks.validate_model_inputs(x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD,
                                 num_classes=self.embeddings.w_e.shape[0])
    w_e_CxE = self.embeddings()
    lrs_KxE, s = self.lrs[...], self.kernel_scale[...]
    checks.check_kernel_scale(s)  # the unchecked operators below do not

    def one(x_NxD, y_N, q_TxD):
      target_NxE = w_e_CxE[y_N]
      apply_query, apply_ctx = gd.kernel_operators(x_NxD, q_TxD, 2, self.kernel, s)
      f_ctx = jnp.zeros_like(target_NxE)
      f_query = jnp.zeros((q_TxD.shape[0], target_NxE.shape[1]), target_NxE.dtype)
      e_ctx = jnp.broadcast_to(jnp.mean(w_e_CxE, 0), target_NxE.shape)
      for k in range(lrs_KxE.shape[0]):  # K is small and static
        update_NxE = lrs_KxE[k] * (target_NxE - e_ctx)
        f_query = f_query + apply_query(update_NxE)
        if k + 1 < lrs_KxE.shape[0]:
          f_ctx = f_ctx + apply_ctx(update_NxE)
          e_ctx = self.mlp(k, jnp.concatenate([target_NxE, f_ctx], -1))
      return f_query

    f_BxTxE = jax.vmap(one)(x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD)
    return f_BxTxE @ w_e_CxE.T


class Transformer(nnx.Module):
  """Pre-LN softmax Transformer on tokens [x ; w_y] (query: w_y = 0).

  Attention keys are the context tokens only, as in the GD models; f is a
  linear readout of the final normalised query token.
  """

  def __init__(self, *, input_dim: int, num_classes: int, embed_dim: int,
               num_layers: int, model_dim: int = 64, num_heads: int = 4,
               mlp_hidden: int = 128, fix_last_class: bool = True,
               rngs: nnx.Rngs):
    _check_sizes(input_dim=input_dim, num_classes=num_classes,
                 embed_dim=embed_dim, num_layers=num_layers, model_dim=model_dim,
                 num_heads=num_heads, mlp_hidden=mlp_hidden)
    if model_dim % num_heads:
      raise ValueError(f"model_dim must be a multiple of num_heads = {num_heads},"
                       f" got {model_dim}")
    self.input_dim = input_dim
    self.embeddings = _ClassEmbeddings(
        num_classes, embed_dim, embed_dim ** -0.5, fix_last_class, rngs)
    self.embed = nnx.Linear(input_dim + embed_dim, model_dim, rngs=rngs)
    self.blocks = nnx.List([
        _TransformerBlock(model_dim, num_heads, mlp_hidden, rngs)
        for _ in range(num_layers)
    ])
    self.norm = nnx.LayerNorm(model_dim, rngs=rngs)
    self.readout = nnx.Linear(model_dim, embed_dim, rngs=rngs)

  def __call__(self, x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD) -> jax.Array:
    checks.validate_model_inputs(
        x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD,
        num_classes=self.embeddings.w_e.shape[0], input_dim=self.input_dim)
    w_e_CxE = self.embeddings()
    b, n, _ = x_ctx_BxNxD.shape
    t = x_query_BxTxD.shape[1]
    w_ctx = w_e_CxE[y_ctx_BxN]
    z = jnp.concatenate([
        jnp.concatenate([x_ctx_BxNxD, w_ctx], -1),
        jnp.concatenate([x_query_BxTxD, jnp.zeros((b, t, w_ctx.shape[-1]), w_ctx.dtype)], -1),
    ], axis=1)
    h = self.embed(z)
    mask = jnp.broadcast_to(jnp.arange(n + t)[None, :] < n, (n + t, n + t))[None, None]
    for blk in self.blocks:
      h = blk(h, mask)
    f_BxTxE = self.readout(self.norm(h[:, n:]))
    return f_BxTxE @ w_e_CxE.T


class _TransformerBlock(nnx.Module):
  def __init__(self, model_dim, num_heads, mlp_hidden, rngs):
    self.norm1 = nnx.LayerNorm(model_dim, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
        num_heads=num_heads, in_features=model_dim, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(model_dim, rngs=rngs)
    self.mlp_in = nnx.Linear(model_dim, mlp_hidden, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_hidden, model_dim, rngs=rngs)

  def __call__(self, h, mask):
    h = h + self.attn(self.norm1(h), mask=mask)
    return h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(h))))


def count_params(model: nnx.Module) -> int:
  """Number of trainable scalars (nnx.Param leaves)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------
# The factory (the configs are in gdattn.model_config).


def make_icl_model(name: str, cfg: ICLModelConfig, *, input_dim: int,
                   num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
  """Builds in-context classifier `name` (one of MODELS) from its config."""
  common = dict(num_classes=num_classes, embed_dim=cfg.embed_dim,
                num_layers=cfg.num_layers, fix_last_class=cfg.fix_last_class,
                rngs=rngs)
  init = {} if cfg.init_scale is None else {"init_scale": cfg.init_scale}
  if name == "gd":
    return GD(kernel=cfg.kernel, init_kernel_scale=cfg.init_kernel_scale,
              **init, **common)
  if name == "gdmlp":
    return GDMLP(kernel=cfg.kernel, init_kernel_scale=cfg.init_kernel_scale,
                 mlp_hidden=cfg.gdmlp.mlp_hidden, **init, **common)
  if name == "trained_tf":
    return TrainedTF(input_dim=input_dim, kernel=cfg.kernel,
                     num_heads=cfg.trained_tf.num_heads,
                     token_layout=cfg.trained_tf.token_layout, **init, **common)
  if name == "transformer":
    t = cfg.transformer
    return Transformer(input_dim=input_dim, model_dim=t.model_dim,
                       num_heads=t.num_heads, mlp_hidden=t.mlp_hidden, **common)
  raise ValueError(f"model name must be one of {MODELS}, got {name!r}")
