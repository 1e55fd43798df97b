"""Language models (flax.nnx): GD blocks (here), GPT and Hybrid (lm_baselines).

Dimensions: B sequences, S tokens, P = S + 1 slots, V vocabulary, E model dim,
H heads, A attention head dim (GPT), K layers. logits[:, j] predicts token j+1.

  GDLanguageModel  slot i's covariate is the (LayerNormed) position embedding
                   x_i = LN(p_i); category = token i. K causal functional-GD
                   steps (gdattn.lm_ops): the prediction of token j + 1 is
                   f_K(x_{j+1}) after GD over tokens 0..j, E over the whole
                   vocabulary. Per head a diagonal scale q_h shared by query
                   and key, so the scores s_h(j, i) = <q_h x_j, q_h x_i> /
                   sqrt(E) depend on positions only and are computed once for
                   all layers and the whole batch. Step k merges the heads
                   with W_o^k [H E, E] (one head, W_o = diag(lr_k): exactly
                   GD); optional pre-LN MLP after each step; logits = LN(f)
                   LN(W)^T with W the token embedding, the same normalised
                   W as in E and in the values w_{t_i} - E(f(x_i)).
  GPT              pre-LN decoder: causal softmax attention + MLP, learned
                   positions, tied embeddings.
  Hybrid           one GPT block, then GD blocks whose covariates are its
                   outputs: slot i's covariate is h_{i-1} (what the block
                   knows before token i; slot 0: a learned start vector), so
                   the query h_j is compared with the states that preceded
                   earlier tokens, and their tokens are the values.

References: arXiv:2405.17248, section 5.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gdattn import lm_ops

LM_MODELS = ("gd_lm", "gpt", "hybrid")


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Sizes and switches of the language models.

  Attributes:
    vocab_size: V (set from the data by the task).
    context_length: S, the longest sequence the model takes.
    model_dim: E.
    num_heads: H.
    num_layers: K (GD steps; GPT blocks; the Hybrid's GD steps after its one
      GPT block).
    kernel: GD attention kernel, "linear" or "softmax".
    mlp: pre-LN MLP after each GD step (GPT blocks always have one).
    mlp_ratio: MLP hidden width / E.
    dropout: rate on the layer outputs (0 = off).
    tie_embeddings: logits through the token embedding (else a separate
      output embedding; GD's E always uses the token embedding).
    layernorm: LayerNorm on the embeddings and before the readout (GD).
    head_dim: GPT attention head width; 0 = E // H (the authors' GPT uses
      full-width heads, head_dim = E).
    vocab_chunk_size: compute E over the vocabulary in chunks of this many
      rows (None: at once); for large vocabularies.
    init_std: embedding / projection init scale.
    init_query_scale: initial q_h entries (GD).
    gd_init_lr: W_o^k starts at gd_init_lr / H times stacked identities
      (plus noise): every head a GD step of this learning rate.
  """

  vocab_size: int = 65
  context_length: int = 128
  model_dim: int = 128
  num_heads: int = 4
  num_layers: int = 2
  kernel: str = "softmax"
  mlp: bool = False
  mlp_ratio: int = 4
  dropout: float = 0.0
  tie_embeddings: bool = True
  layernorm: bool = True
  head_dim: int = 0
  vocab_chunk_size: int | None = None
  init_std: float = 0.02
  init_query_scale: float = 1.0
  gd_init_lr: float = 0.0

  def validate(self, prefix: str = "config") -> None:
    """Raises ValueError naming `<prefix>.<field>` for a bad value."""
    for name in ("vocab_size", "context_length", "model_dim", "num_heads",
                 "num_layers", "mlp_ratio"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{prefix}.{name} must be a positive int, got {value!r}")
    if self.kernel not in lm_ops.LM_KERNELS:
      raise ValueError(
          f"{prefix}.kernel must be one of {lm_ops.LM_KERNELS}, got {self.kernel!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"{prefix}.dropout must be in [0, 1), got {self.dropout!r}")
    if self.head_dim < 0:
      raise ValueError(f"{prefix}.head_dim must be >= 0, got {self.head_dim!r}")
    if self.head_dim == 0 and self.model_dim % self.num_heads:
      raise ValueError(
          f"{prefix}.model_dim ({self.model_dim}) must be divisible by"
          f" {prefix}.num_heads ({self.num_heads}) when head_dim is 0")
    chunk = self.vocab_chunk_size
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
      raise ValueError(f"{prefix}.vocab_chunk_size must be None or >= 1, got {chunk!r}")

  @property
  def attn_head_dim(self) -> int:
    return self.head_dim or self.model_dim // self.num_heads


def _normal(rngs, shape, std):
  # A flat draw: threefry compiles in ~0.1 s for rank 1 but takes seconds
  # for rank-3/4 shapes on CPU, which dominated model construction.
  size = math.prod(shape)
  return nnx.Param(std * jax.random.normal(rngs.params(), (size,)).reshape(shape))


def _norm(dim, rngs):
  # Bias-free, as in the authors' models: LN(0) = 0 keeps slot 0's f at 0.
  return nnx.LayerNorm(dim, use_bias=False, rngs=rngs)


def _dropout(rate, rngs):
  return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def _drop(layer, x):
  return x if layer is None else layer(x)


class _MLP(nnx.Module):
  """x -> W2 GELU(W1 LN(x)), bias-free (LN skipped when `norm` is False)."""

  def __init__(self, dim, ratio, norm, dropout, out_std, rngs):
    self.norm = _norm(dim, rngs) if norm else None
    self.w_in = _normal(rngs, (dim, ratio * dim), 0.02)
    self.w_out = _normal(rngs, (ratio * dim, dim), out_std)
    self.drop = _dropout(dropout, rngs)

  def __call__(self, x):
    h = x if self.norm is None else self.norm(x)
    return _drop(self.drop, jax.nn.gelu(h @ self.w_in[...]) @ self.w_out[...])


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(tree, nnx.Param)))


# ----------------------------------------------------------------------------
# GD blocks (shared by GDLanguageModel and Hybrid)


class _GDBlocks(nnx.Module):
  """K causal GD steps with H heads merged by W_o^k, optional MLPs."""

  def __init__(self, cfg: LMConfig, rngs):
    e, h, k = cfg.model_dim, cfg.num_heads, cfg.num_layers
    self.cfg = cfg
    self.query_scale = nnx.Param(cfg.init_query_scale * jnp.ones((h, e)))
    noise = _normal(rngs, (k, h * e, e), cfg.init_std / math.sqrt(2 * k))[...]
    eye = jnp.tile(jnp.eye(e), (h, 1)) * (cfg.gd_init_lr / h)
    self.w_o = nnx.Param(noise + eye[None])
    self.mlps = nnx.List([
        _MLP(e, cfg.mlp_ratio, cfg.layernorm, cfg.dropout,
             0.02 / math.sqrt(2 * k), rngs) for _ in range(k)
    ]) if cfg.mlp else None
    self.drop = _dropout(cfg.dropout, rngs)

  def scores(self, xq_xPxE, xk_xPxE):
    """s_h(j, i) = <q_h x_j, q_h x_i> / sqrt(E); leading dims kept, H added
    before the last two."""
    q2_HxE = self.query_scale[...] ** 2 / math.sqrt(self.cfg.model_dim)
    return jnp.einsum("...je,he,...ie->...hji", xq_xPxE, q2_HxE, xk_xPxE)

  def weights(self, x_xPxE):
    """Causal weights [..., H, S, S]: query slot j+1 against keys 0..j."""
    return lm_ops.causal_weights(
        self.scores(x_xPxE[..., 1:, :], x_xPxE[..., :-1, :]), self.cfg.kernel)

  def merge(self, k, upd_xHxE):
    """Heads [..., H, E] -> [..., E] through W_o^k."""
    return upd_xHxE.reshape(upd_xHxE.shape[:-2] + (-1,)) @ self.w_o[k]

  def after_step(self, k, f):
    return f if self.mlps is None else f + self.mlps[k](f)

  def __call__(self, att, emb_BxSxE, w_VxE, *, all_steps: bool = False):
    """f at all P slots after K steps. att: [H, S, S] or [B, H, S, S].

    With all_steps, f before the first step and after each: [K + 1, B, P, E].
    """
    b, s, e = emb_BxSxE.shape
    chunk = self.cfg.vocab_chunk_size
    f_BxPxE = jnp.zeros((b, s + 1, e), emb_BxSxE.dtype)
    steps = [f_BxPxE]
    for k in range(self.cfg.num_layers):  # K is small and static
      value_BxSxE = emb_BxSxE - lm_ops.expected_embedding(f_BxPxE[:, :s], w_VxE, chunk)
      upd_BxSxE = _drop(self.drop, self.merge(k, _apply_heads(att, value_BxSxE)))
      f_BxPxE = self.after_step(k, f_BxPxE + jnp.pad(upd_BxSxE, ((0, 0), (1, 0), (0, 0))))
      steps.append(f_BxPxE)
    return jnp.stack(steps) if all_steps else f_BxPxE


def _apply_heads(att, value_BxSxE):
  """sum_i a_h(j, i) v_i -> [B, S, H, E]; att [H, S, S] or [B, H, S, S]."""
  if att.ndim == 4:
    return jnp.einsum("bhji,bie->bjhe", att, value_BxSxE)
  # Shared over the batch: one [H S, S] x [S, B E] product (2.5x faster on
  # CPU than the einsum, which XLA lowers with a batch-major layout).
  b, s, e = value_BxSxE.shape
  h = att.shape[0]
  out = att.reshape(h * s, s) @ jnp.moveaxis(value_BxSxE, 0, 1).reshape(s, b * e)
  return jnp.transpose(out.reshape(h, s, b, e), (2, 1, 0, 3))


class _TokenReadout(nnx.Module):
  """Token embedding W (normalised when cfg.layernorm), readout LN(f) W_out^T."""

  def __init__(self, cfg: LMConfig, rngs):
    self.cfg = cfg
    self.wte = _normal(rngs, (cfg.vocab_size, cfg.model_dim), cfg.init_std)
    self.ln_tok = _norm(cfg.model_dim, rngs) if cfg.layernorm else None
    self.ln_out = _norm(cfg.model_dim, rngs) if cfg.layernorm else None
    if self.ln_out is not None:
      # LN(f) . LN(w) of two unit-scale normalised vectors has std sqrt(E):
      # an initial loss far above log V. A learnable scale starting at 1/E
      # gives logits of std E^-1/2, close to uniform, like GPT's init.
      # (Scaling the ones keeps a strong dtype; a weak-typed value would make
      # every optimiser step recompile.)
      self.ln_out.scale[...] = self.ln_out.scale[...] / cfg.model_dim
    self.w_out = None if cfg.tie_embeddings else _normal(
        rngs, (cfg.vocab_size, cfg.model_dim), cfg.init_std)

  def token_embedding(self):
    w = self.wte[...]
    return w if self.ln_tok is None else self.ln_tok(w)

  def output_embedding(self, w_VxE=None):
    if self.w_out is not None:
      return self.w_out[...]
    return self.token_embedding() if w_VxE is None else w_VxE

  def features(self, f):
    return f if self.ln_out is None else self.ln_out(f)


class GDLanguageModel(nnx.Module):
  """K causal functional-GD steps over position covariates (module docstring)."""

  def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.tok = _TokenReadout(cfg, rngs)
    self.wpe = _normal(rngs, (cfg.context_length + 1, cfg.model_dim), cfg.init_std)
    self.ln_pos = _norm(cfg.model_dim, rngs) if cfg.layernorm else None
    self.gd = _GDBlocks(cfg, rngs)

  def covariates(self, num_slots):
    p = self.wpe[:num_slots]
    return p if self.ln_pos is None else self.ln_pos(p)

  def features(self, tokens_BxS):
    """Readout features [B, S, E] (logits = features @ output_embedding^T)."""
    s = _check_tokens(tokens_BxS, self.cfg)
    w_VxE = self.tok.token_embedding()
    att_HxSxS = self.gd.weights(self.covariates(s + 1))
    f_BxPxE = self.gd(att_HxSxS, w_VxE[tokens_BxS], w_VxE)
    return self.tok.features(f_BxPxE[:, 1:])

  def output_embedding(self):
    return self.tok.output_embedding()

  def __call__(self, tokens_BxS):
    return self.features(tokens_BxS) @ self.output_embedding().T

  def init_cache(self, batch_size: int, max_len: int | None = None):
    """Decoding state: per step k the values at every slot, and f before
    step k at the next slot."""
    cfg = self.cfg
    max_len = max_len or cfg.context_length
    _check_max_len(max_len, cfg)
    dtype = self.wpe[...].dtype
    f = jnp.zeros((batch_size, cfg.model_dim), dtype)
    f_in = []
    for k in range(cfg.num_layers):  # slot 0 sees no key: only the MLPs act
      f_in.append(f)
      f = self.gd.after_step(k, f)
    # The weights depend on positions only: every decode step reads one row.
    att_HxMxM = self.gd.weights(self.covariates(max_len + 1))
    return {"values": jnp.zeros((cfg.num_layers, batch_size, max_len, cfg.model_dim), dtype),
            "f_in": jnp.stack(f_in), "att": att_HxMxM, "pos": jnp.zeros((), jnp.int32)}

  def decode_step(self, cache, token_B):
    """Feeds the token at position cache["pos"]; logits [B, V] of the next."""
    cfg, gd = self.cfg, self.gd
    j = cache["pos"]
    w_VxE = self.tok.token_embedding()
    emb_BxE = w_VxE[token_B]
    new_v = emb_BxE[None] - lm_ops.expected_embedding(
        cache["f_in"], w_VxE, cfg.vocab_chunk_size)
    values = jax.lax.dynamic_update_slice_in_dim(
        cache["values"], new_v[:, :, None], j, axis=2)
    a_HxM = jax.lax.dynamic_index_in_dim(cache["att"], j, axis=1, keepdims=False)
    f = jnp.zeros_like(emb_BxE)
    f_in = []
    for k in range(cfg.num_layers):
      f_in.append(f)
      f = gd.after_step(k, f + gd.merge(k, jnp.einsum("hm,bme->bhe", a_HxM, values[k])))
    logits = self.tok.features(f) @ self.tok.output_embedding(w_VxE).T
    return logits, {"values": values, "f_in": jnp.stack(f_in), "att": cache["att"],
                    "pos": j + 1}


# ----------------------------------------------------------------------------
# GPT and Hybrid


def _check_tokens(tokens_BxS, cfg: LMConfig) -> int:
  if tokens_BxS.ndim != 2:
    raise ValueError(f"tokens must be [batch, seq], got shape {tokens_BxS.shape}")
  s = tokens_BxS.shape[1]
  if not 1 <= s <= cfg.context_length:
    raise ValueError(
        f"sequence length must be in [1, context_length={cfg.context_length}], got {s}")
  return s


def _check_max_len(max_len, cfg: LMConfig):
  if not 1 <= max_len <= cfg.context_length:
    raise ValueError(
        f"max_len must be in [1, context_length={cfg.context_length}], got {max_len}")


def make_lm_model(name: str, cfg: LMConfig, rngs: nnx.Rngs) -> nnx.Module:
  """One of LM_MODELS built from cfg."""
  from gdattn.lm_baselines import GPT, Hybrid  # pylint: disable=g-import-not-at-top
  classes = {"gd_lm": GDLanguageModel, "gpt": GPT, "hybrid": Hybrid}
  if name not in classes:
    raise ValueError(f"model name must be one of {LM_MODELS}, got {name!r}")
  return classes[name](cfg, rngs=rngs)


def param_counts(model: nnx.Module) -> dict[str, Any]:
  """Trainable parameters: total, embedding, non_embedding and per_layer.

  Embeddings are the token, position and output tables (and the Hybrid's
  start vector). per_layer is one GD step (W_o^k and its MLP) or one GPT
  block; `shared` is the rest of the non-embedding parameters (the GD query
  scales, LayerNorms, the Hybrid's GPT block).
  """
  from gdattn.lm_baselines import GPT, Hybrid  # pylint: disable=g-import-not-at-top
  total = _count(model)
  if isinstance(model, GPT):
    tables = [model.wte, model.wpe] + ([model.w_out] if model.w_out is not None else [])
    per_layer = _count(model.blocks[0])
  else:
    tables = [model.tok.wte, model.wpe]
    tables += [model.tok.w_out] if model.tok.w_out is not None else []
    tables += [model.start] if isinstance(model, Hybrid) else []
    gd = model.gd
    per_layer = gd.w_o[...][0].size + (_count(gd.mlps[0]) if gd.mlps is not None else 0)
  embedding = sum(t[...].size for t in tables)
  non_embedding = total - embedding
  num_layers = model.cfg.num_layers
  return {"total": total, "embedding": embedding, "non_embedding": non_embedding,
          "per_layer": per_layer, "shared": non_embedding - num_layers * per_layer}


def step_values(model: GDLanguageModel, tokens_BxS) -> jax.Array:
  """f_k at every slot before the first step and after each: [K + 1, B, P, E].

  Row j of step k is f_k(x_j), the function E is applied to in step k + 1.
  """
  if not isinstance(model, GDLanguageModel):
    raise TypeError(
        f"model must be a GDLanguageModel, got {type(model).__name__}")
  s = _check_tokens(tokens_BxS, model.cfg)
  w_VxE = model.tok.token_embedding()
  att_HxSxS = model.gd.weights(model.covariates(s + 1))
  return model.gd(att_HxSxS, w_VxE[tokens_BxS], w_VxE, all_steps=True)


def embedding_gap(model: GDLanguageModel, tokens_BxS) -> dict[str, jax.Array]:
  """How far E(f_k) is from the mean token embedding, per GD step.

  The mean over the context slots 0..S-1 of `lm_ops.embedding_gap` at
  f_1..f_K (f_0 = 0 gives the mean embedding exactly; E(f_k) for k < K
  enters step k + 1, E(f_K) is what one more step would use).

  Args:
    model: a GDLanguageModel.
    tokens_BxS: int tokens, S <= context_length.

  Returns:
    "relative", "scaled" and "cosine" (see lm_ops.embedding_gap), each [K].
  """
  f_KxBxPxE = step_values(model, tokens_BxS)[1:, :, :-1]
  gap = lm_ops.embedding_gap(f_KxBxPxE, model.tok.token_embedding(),
                             model.cfg.vocab_chunk_size)
  return {k: jnp.mean(v, axis=(1, 2)) for k, v in gap.items()}
