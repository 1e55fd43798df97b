"""The language-model baselines: a pre-LN GPT and the Hybrid (flax.nnx).

  GPT     pre-LN decoder: causal softmax attention + MLP, learned positions,
          tied embeddings; incremental decoding with a per-layer cache.
  Hybrid  one GPT block, then the GD blocks of gdattn.lm whose covariates are
          its outputs: slot i's covariate is h_{i-1} (what the block knows
          before token i; slot 0: a learned start vector).

Shared pieces (config, LayerNorm, MLP, readout, GD blocks) are gdattn.lm's.
References: arXiv:2405.17248, section 5.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gdattn.lm import _check_max_len
from gdattn.lm import _check_tokens
from gdattn.lm import _drop
from gdattn.lm import _dropout
from gdattn.lm import _GDBlocks
from gdattn.lm import _MLP
from gdattn.lm import _norm
from gdattn.lm import _normal
from gdattn.lm import _TokenReadout
from gdattn.lm import LMConfig


class _Attention(nnx.Module):
  def __init__(self, cfg: LMConfig, rngs, out_std):
    e, h, a = cfg.model_dim, cfg.num_heads, cfg.attn_head_dim
    self.num_heads, self.head_dim = h, a
    self.w_qkv = _normal(rngs, (e, 3, h, a), 0.02)
    self.w_o = _normal(rngs, (h, a, e), out_std)

  def qkv(self, x_xE):
    return jnp.moveaxis(jnp.einsum("...e,etha->t...ha", x_xE, self.w_qkv[...]), -2, -3)

  def attend(self, q_xHxTxA, k_xHxNxA, v_xHxNxA, mask_TxN):
    logits = jnp.einsum("...ta,...na->...tn", q_xHxTxA, k_xHxNxA) / math.sqrt(self.head_dim)
    att = jax.nn.softmax(jnp.where(mask_TxN, logits, -jnp.inf), axis=-1)
    out = jnp.einsum("...tn,...na->...ta", att, v_xHxNxA)
    return jnp.einsum("...hta,hae->...te", out, self.w_o[...])


class _GPTBlock(nnx.Module):
  def __init__(self, cfg: LMConfig, num_blocks, rngs):
    out_std = 0.02 / math.sqrt(2 * num_blocks)
    self.ln1 = _norm(cfg.model_dim, rngs)
    self.attn = _Attention(cfg, rngs, out_std)
    self.mlp = _MLP(cfg.model_dim, cfg.mlp_ratio, True, cfg.dropout, out_std, rngs)
    self.drop = _dropout(cfg.dropout, rngs)

  def __call__(self, h_BxSxE):
    s = h_BxSxE.shape[1]
    q, k, v = self.attn.qkv(self.ln1(h_BxSxE))
    mask = jnp.tril(jnp.ones((s, s), bool))
    h_BxSxE = h_BxSxE + _drop(self.drop, self.attn.attend(q, k, v, mask))
    return h_BxSxE + self.mlp(h_BxSxE)

  def decode(self, h_BxE, k_cache, v_cache, j):
    """One position: caches [B, H, M, A] updated at j."""
    q, k, v = self.attn.qkv(self.ln1(h_BxE)[:, None])  # [B, H, 1, A]
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, j, axis=2)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, j, axis=2)
    mask = (jnp.arange(k_cache.shape[2]) <= j)[None]
    h_BxE = h_BxE + self.attn.attend(q, k_cache, v_cache, mask)[:, 0]
    return h_BxE + self.mlp(h_BxE), k_cache, v_cache


class GPT(nnx.Module):
  """Pre-LN decoder with learned positions and tied embeddings."""

  def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.wte = _normal(rngs, (cfg.vocab_size, cfg.model_dim), cfg.init_std)
    self.wpe = _normal(rngs, (cfg.context_length, cfg.model_dim), cfg.init_std)
    self.blocks = nnx.List([_GPTBlock(cfg, cfg.num_layers, rngs)
                            for _ in range(cfg.num_layers)])
    self.ln_out = _norm(cfg.model_dim, rngs)
    self.w_out = None if cfg.tie_embeddings else _normal(
        rngs, (cfg.vocab_size, cfg.model_dim), cfg.init_std)
    self.drop = _dropout(cfg.dropout, rngs)

  def output_embedding(self):
    return (self.wte if self.w_out is None else self.w_out)[...]

  def features(self, tokens_BxS):
    s = _check_tokens(tokens_BxS, self.cfg)
    h = _drop(self.drop, self.wte[...][tokens_BxS] + self.wpe[:s])
    for block in self.blocks:
      h = block(h)
    return self.ln_out(h)

  def __call__(self, tokens_BxS):
    return self.features(tokens_BxS) @ self.output_embedding().T

  def init_cache(self, batch_size: int, max_len: int | None = None):
    cfg = self.cfg
    max_len = max_len or cfg.context_length
    _check_max_len(max_len, cfg)
    shape = (cfg.num_layers, batch_size, cfg.num_heads, max_len, cfg.attn_head_dim)
    dtype = self.wte[...].dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "pos": jnp.zeros((), jnp.int32)}

  def decode_step(self, cache, token_B):
    j = cache["pos"]
    h = self.wte[...][token_B] + jax.lax.dynamic_index_in_dim(self.wpe[...], j, keepdims=False)
    ks, vs = [], []
    for layer, block in enumerate(self.blocks):
      h, k, v = block.decode(h, cache["k"][layer], cache["v"][layer], j)
      ks.append(k)
      vs.append(v)
    logits = self.ln_out(h) @ self.output_embedding().T
    return logits, {"k": jnp.stack(ks), "v": jnp.stack(vs), "pos": j + 1}


class Hybrid(nnx.Module):
  """One GPT block, then K GD steps on its outputs (module docstring)."""

  def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.tok = _TokenReadout(cfg, rngs)
    self.wpe = _normal(rngs, (cfg.context_length, cfg.model_dim), cfg.init_std)
    self.ln_in = _norm(cfg.model_dim, rngs)
    self.block = _GPTBlock(cfg, 1, rngs)
    self.start = _normal(rngs, (cfg.model_dim,), cfg.init_std)
    self.ln_cov = _norm(cfg.model_dim, rngs) if cfg.layernorm else None
    self.gd = _GDBlocks(cfg, rngs)

  def output_embedding(self):
    return self.tok.output_embedding()

  def features(self, tokens_BxS):
    b, s = tokens_BxS.shape[0], _check_tokens(tokens_BxS, self.cfg)
    w_VxE = self.tok.token_embedding()
    h_BxSxE = self.block(self.ln_in(self.tok.wte[...][tokens_BxS] + self.wpe[:s]))
    start = jnp.broadcast_to(self.start[...], (b, 1, self.cfg.model_dim))
    x_BxPxE = jnp.concatenate([start, h_BxSxE], axis=1)
    if self.ln_cov is not None:
      x_BxPxE = self.ln_cov(x_BxPxE)
    f_BxPxE = self.gd(self.gd.weights(x_BxPxE), w_VxE[tokens_BxS], w_VxE)
    return self.tok.features(f_BxPxE[:, 1:])

  def __call__(self, tokens_BxS):
    return self.features(tokens_BxS) @ self.output_embedding().T
