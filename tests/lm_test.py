"""Language models against the core GD references (float64), caches, chunking.

The price of causal attention (test_causal_differs_from_full_gd; V = 11,
E = 6, random W_e ~ N(0, 1), x ~ N(0, 1/E), s = 0.7, lrs in [0.8, 1.5],
measured over all prefixes of 2..12 tokens): at K = 1 the causal model is
exactly full GD on each prefix (tested to 1e-10); for K >= 2 each context
point's own f sees only the tokens before it, and the last slot's logits
differ from full GD on the same prefix by at most 1.2 / 2.9 / 4.8 (mean
0.55 / 1.2 / 2.0) for the linear kernel at K = 2 / 3 / 4, and by at most
10.6 / 11.3 / 19.1 (mean 3.5 / 4.1 / 8.1) for the softmax kernel. The gap
grows with K; the test asserts it is nonzero and prints it (on 3 prefixes).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gdattn
from gdattn import lm
from gdattn import lm_baselines
from gdattn import lm_ops

# Same float64 operations in a different order (one masked matmul per step
# vs per-prefix dense kernels): agreement to rounding.
F64_TOL = 1e-10
# float32 decode vs full forward: sums in a different order over <= 16 keys.
F32_TOL = 2e-5

VOCAB, SEQ, DIM = 11, 12, 6

# One compiled program per call site instead of op-by-op dispatch (each new
# eager shape compiles on its own, which dominated the run time).
_forward = nnx.jit(lambda m, t: m(t))
_features = nnx.jit(lambda m, t: m.features(t))
_step = nnx.jit(lambda m, c, t: m.decode_step(c, t))
_gd = jax.jit(gdattn.categorical_gd, static_argnames="kernel")
_causal_gd = jax.jit(lm_ops.causal_categorical_gd, static_argnames=("kernel", "trajectory"))


def _gd_model(kernel, num_layers, s, lrs_KxE, key=0):
  cfg = lm.LMConfig(vocab_size=VOCAB, context_length=SEQ, model_dim=DIM,
                    num_heads=1, num_layers=num_layers, kernel=kernel,
                    mlp=False, layernorm=False)
  model = lm.GDLanguageModel(cfg, rngs=nnx.Rngs(key))
  k1, k2 = jax.random.split(jax.random.key(key + 100))
  model.tok.wte[...] = jax.random.normal(k1, (VOCAB, DIM))
  model.wpe[...] = jax.random.normal(k2, (SEQ + 1, DIM)) / np.sqrt(DIM)
  # scores = q^2 <x_j, x_i> / sqrt(E) = s <x_j, x_i>; W_o^k = diag(lr_k).
  model.gd.query_scale[...] = jnp.full((1, DIM), np.sqrt(s * np.sqrt(DIM)))
  model.gd.w_o[...] = jax.vmap(jnp.diag)(lrs_KxE)
  return model


def _setup(num_layers, key=0):
  lrs = 0.8 + 0.7 * jax.random.uniform(jax.random.key(key + 7), (num_layers, DIM))
  tokens = jax.random.randint(jax.random.key(key + 9), (2, SEQ), 0, VOCAB)
  return lrs, tokens


@pytest.mark.parametrize("kernel", ["linear", "softmax"])
def test_k1_equals_categorical_gd_on_every_prefix(x64, kernel):
  s = 0.7
  lrs, tokens = _setup(1)
  model = _gd_model(kernel, 1, s, lrs)
  logits = _forward(model, tokens)
  w_e, x = model.tok.wte[...], model.wpe[...]
  for b, j in [(0, 0), (1, 4), (0, SEQ - 1)]:  # prefixes of 1, 5 and S tokens
    # logits[:, j] predicts token j + 1 from tokens 0..j.
    f = _gd(x[:j + 1], tokens[b, :j + 1], x[j + 1:j + 2],
                              w_e, lrs, kernel=kernel, kernel_scale=s)
    chex.assert_trees_all_close(logits[b, j], (f @ w_e.T)[0], atol=F64_TOL, rtol=0)


@pytest.mark.parametrize("kernel", ["linear", "softmax"])
@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_equals_causal_categorical_gd(x64, kernel, num_layers):
  s = 0.7
  lrs, tokens = _setup(num_layers)
  model = _gd_model(kernel, num_layers, s, lrs)
  feats = _features(model, tokens)
  w_e, x = model.tok.wte[...], model.wpe[...]
  ref = jax.vmap(lambda t: _causal_gd(
      x, t, w_e, lrs, kernel=kernel, kernel_scale=s))(tokens)
  chex.assert_trees_all_close(feats, ref[:, 1:], atol=F64_TOL, rtol=0)


@pytest.mark.parametrize("kernel", ["linear", "softmax"])
def test_causal_differs_from_full_gd(x64, kernel):
  s = 0.7
  for num_layers in (2, 3, 4):
    lrs, tokens = _setup(num_layers)
    w_e = jax.random.normal(jax.random.key(1), (VOCAB, DIM))
    x = jax.random.normal(jax.random.key(2), (SEQ + 1, DIM)) / np.sqrt(DIM)
    causal = _causal_gd(x, tokens[0], w_e, lrs, kernel=kernel,
                                          kernel_scale=s)
    gaps = []
    for j in (1, 5, SEQ - 1):
      full = _gd(x[:j + 1], tokens[0, :j + 1], x[j + 1:j + 2],
                                   w_e, lrs, kernel=kernel, kernel_scale=s)
      gaps.append(float(jnp.max(jnp.abs((causal[j + 1] - full[0]) @ w_e.T))))
    print(f"{kernel} K={num_layers}: max |causal - full| logit gap "
          f"{max(gaps):.3g} (mean over prefixes {np.mean(gaps):.3g})")
    assert max(gaps) > 1e-3


def test_reference_k1_matches_trajectory(x64):
  lrs, tokens = _setup(3)
  w_e = jax.random.normal(jax.random.key(1), (VOCAB, DIM))
  x = jax.random.normal(jax.random.key(2), (SEQ + 1, DIM))
  traj = lm_ops.causal_categorical_gd(x, tokens[0], w_e, lrs, kernel="softmax",
                                      kernel_scale=0.5, trajectory=True)
  assert traj.shape == (4, SEQ + 1, DIM)
  chex.assert_trees_all_close(traj[0], jnp.zeros_like(traj[0]))
  chex.assert_trees_all_close(traj[:, 0], jnp.zeros_like(traj[:, 0]))  # no keys


@pytest.mark.parametrize("chunk", [3, 4, 64])
def test_chunked_expected_embedding_and_nll(x64, chunk):
  f = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, DIM))
  w = jax.random.normal(jax.random.key(1), (VOCAB, DIM))
  targets = jax.random.randint(jax.random.key(2), (2, 5), 0, VOCAB)
  chex.assert_trees_all_close(lm_ops.expected_embedding(f, w, chunk),
                              gdattn.expected_embedding(f.reshape(-1, DIM), w).reshape(f.shape),
                              atol=F64_TOL, rtol=0)
  plain = -jnp.take_along_axis(jax.nn.log_softmax(f @ w.T), targets[..., None], -1)[..., 0]
  chex.assert_trees_all_close(lm_ops.token_nll(f, w, targets, chunk), plain,
                              atol=F64_TOL, rtol=0)


def test_chunked_expected_embedding_is_stable_for_huge_logits(x64):
  f = 1e4 * jnp.ones((1, DIM))
  w = jax.random.normal(jax.random.key(1), (VOCAB, DIM))
  e = lm_ops.expected_embedding(f, w, chunk_size=4)
  assert bool(jnp.all(jnp.isfinite(e)))
  chex.assert_trees_all_close(e, gdattn.expected_embedding(f, w), atol=F64_TOL)


def _small_cfg(**kw):
  base = dict(vocab_size=VOCAB, context_length=SEQ, model_dim=8, num_heads=2,
              num_layers=2)
  base.update(kw)
  return lm.LMConfig(**base)


@pytest.mark.parametrize("name,kw", [
    ("gd_lm", dict(kernel="softmax", mlp=True)),
    ("gd_lm", dict(kernel="linear", layernorm=False)),
    ("gd_lm", dict(kernel="softmax", tie_embeddings=False, vocab_chunk_size=4)),
    ("gpt", dict()),
    ("gpt", dict(head_dim=8, tie_embeddings=False)),
])
def test_decode_cache_equals_full_forward(x32, name, kw):
  model = lm.make_lm_model(name, _small_cfg(**kw), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(3), (3, SEQ), 0, VOCAB)
  full = _forward(model, tokens)
  cache = model.init_cache(3)
  outs = []
  for j in range(SEQ):
    logits, cache = _step(model, cache, tokens[:, j])
    outs.append(logits)
  chex.assert_trees_all_close(jnp.stack(outs, 1), full, atol=F32_TOL, rtol=0)


def test_model_chunked_vocab_equals_plain(x64):
  tokens = jax.random.randint(jax.random.key(3), (2, SEQ), 0, VOCAB)
  plain = _forward(lm.GDLanguageModel(_small_cfg(), rngs=nnx.Rngs(0)), tokens)
  chunked = _forward(lm.GDLanguageModel(_small_cfg(vocab_chunk_size=3),
                                        rngs=nnx.Rngs(0)), tokens)
  chex.assert_trees_all_close(chunked, plain, atol=F64_TOL, rtol=0)


@pytest.mark.parametrize("name", lm.LM_MODELS)
def test_causal_and_trainable(name):
  model = lm.make_lm_model(name, _small_cfg(mlp=True), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(3), (2, SEQ), 0, VOCAB)
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % VOCAB)
  a, b = _forward(model, tokens), _forward(model, changed)
  chex.assert_trees_all_close(a[:, :7], b[:, :7], atol=1e-6)  # past unchanged
  assert float(jnp.max(jnp.abs(a[:, 7:] - b[:, 7:]))) > 1e-6

  def loss(m):
    return jnp.mean(lm_ops.token_nll(m.features(tokens[:, :-1]),
                                     m.output_embedding(), tokens[:, 1:]))
  grads = nnx.jit(nnx.grad(loss))(model)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def test_param_counts_gd_five_times_fewer_than_full_width_gpt():
  e, h = 8, 8
  cfg = lm.LMConfig(vocab_size=VOCAB, context_length=SEQ, model_dim=e,
                    num_heads=h, num_layers=2, head_dim=e)
  gd = lm.param_counts(lm.GDLanguageModel(cfg, rngs=nnx.Rngs(0)))
  gpt = lm.param_counts(lm_baselines.GPT(cfg, rngs=nnx.Rngs(0)))
  assert gd["per_layer"] == h * e * e
  # W_qkv (3 H E^2) + W_o (H E^2) + MLP (8 E^2) + 2 LayerNorm scales.
  assert gpt["per_layer"] == 4 * h * e * e + 8 * e * e + 2 * e
  assert 4.9 < gpt["per_layer"] / gd["per_layer"] < 5.1
  assert gd["embedding"] == VOCAB * e + (SEQ + 1) * e
  assert gd["total"] == gd["embedding"] + gd["non_embedding"]


@pytest.mark.parametrize("field,value", [
    ("kernel", "rbf"), ("num_layers", 0), ("dropout", 1.0),
    ("vocab_chunk_size", 0), ("model_dim", 10)])
def test_config_validation_names_field(field, value):
  cfg = _small_cfg(num_heads=4, **{field: value})
  with pytest.raises(ValueError, match=f"config.model.{field}"):
    cfg.validate("config.model")


def test_bad_names_and_lengths():
  with pytest.raises(ValueError, match="model name"):
    lm.make_lm_model("rnn", _small_cfg(), nnx.Rngs(0))
  model = lm_baselines.GPT(_small_cfg(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="context_length"):
    model(jnp.zeros((1, SEQ + 1), jnp.int32))


def test_embedding_gap_zero_at_uniform_logits_and_matches_numpy(x64):
  w = jax.random.normal(jax.random.key(3), (VOCAB, DIM)) + 0.5
  mean = np.asarray(w).mean(0)
  at_zero = lm_ops.embedding_gap(jnp.zeros((4, DIM)), w)
  chex.assert_trees_all_close(at_zero["relative"], jnp.zeros(4), atol=F64_TOL)
  chex.assert_trees_all_close(at_zero["cosine"], jnp.ones(4), atol=F64_TOL)
  f = np.asarray(jax.random.normal(jax.random.key(4), (5, DIM)))
  logits = f @ np.asarray(w).T
  p = np.exp(logits - logits.max(1, keepdims=True))
  e = (p / p.sum(1, keepdims=True)) @ np.asarray(w)
  gap = np.linalg.norm(e - mean, axis=1)
  rms = np.sqrt(np.mean(np.sum(np.asarray(w) ** 2, axis=1)))
  want = {"relative": gap / np.linalg.norm(mean), "scaled": gap / rms,
          "cosine": e @ mean / np.linalg.norm(e, axis=1) / np.linalg.norm(mean)}
  got = lm_ops.embedding_gap(f, w, chunk_size=4)
  chex.assert_trees_all_close(got, want, atol=F64_TOL, rtol=0)
  assert np.all(want["relative"] > 1e-3)


def test_mean_embedding_ratio(x64):
  # Embeddings that cancel exactly: 0. Identical embeddings: 1.
  w = np.asarray(jax.random.normal(jax.random.key(5), (VOCAB, DIM)))
  cancel = np.concatenate([w, -w])
  chex.assert_trees_all_close(lm_ops.mean_embedding_ratio(cancel), 0.0,
                              atol=F64_TOL)
  same = np.tile(w[:1], (VOCAB, 1))
  chex.assert_trees_all_close(lm_ops.mean_embedding_ratio(same), 1.0,
                              atol=F64_TOL)
  want = np.linalg.norm(w.mean(0)) / np.linalg.norm(w, axis=1).mean()
  chex.assert_trees_all_close(lm_ops.mean_embedding_ratio(w), want,
                              atol=F64_TOL, rtol=0)
  with pytest.raises(ValueError, match="w_VxE must be"):
    lm_ops.mean_embedding_ratio(w[0])


def test_step_values_equal_reference_trajectory_and_gap(x64):
  s = 0.7
  lrs, tokens = _setup(3)
  model = _gd_model("softmax", 3, s, lrs)
  steps = lm.step_values(model, tokens)
  w_e, x = model.tok.wte[...], model.wpe[...]
  ref = jax.vmap(lambda t: lm_ops.causal_categorical_gd(
      x, t, w_e, lrs, kernel="softmax", kernel_scale=s, trajectory=True),
                 out_axes=1)(tokens)
  chex.assert_trees_all_close(steps, ref, atol=F64_TOL, rtol=0)
  gap = lm.embedding_gap(model, tokens)
  want = lm_ops.embedding_gap(ref[1:, :, :-1], w_e)["relative"].mean((1, 2))
  chex.assert_trees_all_close(gap["relative"], want, atol=F64_TOL, rtol=0)
  assert gap["cosine"].shape == (3,)
  with pytest.raises(TypeError, match="GDLanguageModel"):
    lm.step_values(lm_baselines.GPT(model.cfg, rngs=nnx.Rngs(0)), tokens)
  with pytest.raises(ValueError, match="w_VxE"):
    lm_ops.embedding_gap(jnp.zeros((2, DIM)), jnp.zeros((DIM,)))
