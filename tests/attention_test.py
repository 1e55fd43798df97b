"""Tests for gdattn/attention.py: kernelized self-/cross-attention primitives.

Dimensions: S tokens (N context, then T query), M token width, H heads, P
query/key width, V value width, C memory tokens, E memory width, K blocks.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gdattn
from gdattn import attention

# float64 einsums over a few dozen O(1) terms: rounding ~1e-15.
F64_ATOL = 1e-12
# States after several random blocks grow to O(10..100): relative rounding.
F64_RTOL = 1e-12
# float32 variants vs a float64 reference, relative to the output scale:
# sums of ~10 products at eps32 ~ 1.2e-7 plus exp(.) rounding.
F32_ATOL = 1e-5

N, T, M, H, P, V, C, E = 7, 3, 6, 2, 4, 5, 4, 3
# Small scales keep exp(s <q, k>) O(1) with the random projections below.
SCALES = {"linear": 0.5, "exp": 0.2, "rbf": 0.3, "laplacian": 0.2, "softmax": 0.6}


def self_params(seed, num_heads=H):
  rng = np.random.default_rng(seed)
  return {
      "wq": rng.normal(size=(num_heads, M, P)) / np.sqrt(M),
      "wk": rng.normal(size=(num_heads, M, P)) / np.sqrt(M),
      "wv": rng.normal(size=(num_heads, M, V)),
      "wo": rng.normal(size=(num_heads, V, M)),
  }


def cross_params(seed):
  rng = np.random.default_rng(seed)
  return {
      "wq": rng.normal(size=(M, P)),
      "wk": rng.normal(size=(E, P)),
      "wv": rng.normal(size=(E, V)),
      "wo": rng.normal(size=(V, M)),
  }


def tokens(seed):
  return np.random.default_rng(seed).normal(size=(N + T, M))


def np_weights(q_SxP, k_NxP, kernel, s):
  """SPEC section 2 kernels in numpy; the softmax normalises over the N keys."""
  dots = q_SxP @ k_NxP.T
  diff = q_SxP[:, None] - k_NxP[None]
  n = k_NxP.shape[0]
  return {
      "linear": lambda: s * dots / n,
      "exp": lambda: np.exp(s * dots) / n,
      "rbf": lambda: np.exp(-s * np.sum(diff**2, -1)) / n,
      "laplacian": lambda: np.exp(-s * np.sum(np.abs(diff), -1)) / n,
      "softmax": lambda: np.exp(s * dots) / np.exp(s * dots).sum(-1, keepdims=True),
  }[kernel]()


def np_cross_attention(params, z_SxM, memory_CxE):
  """Row by row: softmax over the C classes of <q, k_c>, times the values."""
  out_SxM = np.zeros((z_SxM.shape[0], params["wo"].shape[1]))
  for s in range(z_SxM.shape[0]):
    q_P = z_SxM[s] @ params["wq"]
    logits_C = np.array(
        [q_P @ (memory_CxE[c] @ params["wk"]) for c in range(memory_CxE.shape[0])]
    )
    probs_C = np.exp(logits_C - logits_C.max())
    probs_C /= probs_C.sum()
    value_V = sum(p * (m @ params["wv"]) for p, m in zip(probs_C, memory_CxE))
    out_SxM[s] = value_V @ params["wo"]
  return out_SxM


_self_attention = jax.jit(attention.self_attention,
                          static_argnames=("num_context", "kernel"))

_cross_attention = jax.jit(attention.cross_attention)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_self_attention_matches_per_head_formula(x64, kernel):
  params, z_SxM = self_params(0), tokens(1)
  scales_H = np.array([SCALES[kernel], 0.5 * SCALES[kernel]])
  out_SxM = _self_attention(params, z_SxM, num_context=N, kernel=kernel,
                            kernel_scale=scales_H)
  assert out_SxM.dtype == jnp.float64
  chex.assert_shape(out_SxM, (N + T, M))
  expected = np.zeros((N + T, M))
  for h in range(H):
    q = z_SxM @ params["wq"][h]
    k = z_SxM[:N] @ params["wk"][h]  # keys and values: context tokens only.
    v = z_SxM[:N] @ params["wv"][h]
    expected += np_weights(q, k, kernel, scales_H[h]) @ v @ params["wo"][h]
  np.testing.assert_allclose(out_SxM, expected, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_query_tokens_are_not_keys(x64, kernel):
  params, z_SxM = self_params(2), tokens(3)
  run = functools.partial(_self_attention, params, num_context=N, kernel=kernel,
                          kernel_scale=SCALES[kernel])
  out_SxM = run(z_SxM)
  changed = z_SxM.copy()
  changed[N + 1] += 2.0  # one query token's content.
  out_changed = run(changed)
  others = np.arange(N + T) != N + 1
  np.testing.assert_array_equal(out_changed[others], out_SxM[others])
  assert not np.allclose(out_changed[N + 1], out_SxM[N + 1])  # its own moved.
  # Control: changing a context token changes every token's output.
  changed = z_SxM.copy()
  changed[2] += 2.0
  out_changed = run(changed)
  assert np.all(np.max(np.abs(out_changed - out_SxM), axis=1) > 1e-6)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_multi_head_is_sum_of_single_heads(x64, kernel):
  params, z_SxM = self_params(4, num_heads=3), tokens(5)
  scales_H = SCALES[kernel] * np.array([1.0, 0.5, 2.0])
  run = functools.partial(_self_attention, z_SxM=z_SxM, num_context=N, kernel=kernel)
  heads = [
      run({k: v[h:h + 1] for k, v in params.items()}, kernel_scale=scales_H[h])
      for h in range(3)
  ]
  np.testing.assert_allclose(
      run(params, kernel_scale=scales_H), sum(heads), rtol=0, atol=F64_ATOL
  )
  # A scalar scale is shared by every head.
  shared = run(params, kernel_scale=SCALES[kernel])
  np.testing.assert_allclose(
      shared, run(params, kernel_scale=np.full(3, SCALES[kernel])),
      rtol=0, atol=F64_ATOL,
  )
  # Per-head scales are really used.
  assert not np.allclose(shared, run(params, kernel_scale=scales_H))


def test_cross_attention_is_softmax_over_classes(x64):
  params, z_SxM = cross_params(6), tokens(7)
  memory_CxE = np.random.default_rng(8).normal(size=(C, E))
  out_SxM = _cross_attention(params, z_SxM, memory_CxE)
  chex.assert_shape(out_SxM, (N + T, M))
  np.testing.assert_allclose(
      out_SxM, np_cross_attention(params, z_SxM, memory_CxE), rtol=0, atol=F64_ATOL
  )


def test_cross_attention_with_identity_maps_is_expected_embedding(x64):
  # The construction's use: query = f, key = value = w_c gives E(f).
  f_SxE = np.random.default_rng(9).normal(size=(N + T, E))
  w_e = np.random.default_rng(10).normal(size=(C, E))
  eye = np.eye(E)
  out = attention.cross_attention({"wq": eye, "wk": eye, "wv": eye, "wo": eye},
                                  f_SxE, w_e)
  np.testing.assert_allclose(out, gdattn.expected_embedding(f_SxE, w_e),
                             rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("kernel", ["softmax", "rbf"])
def test_attention_stack_returns_k_plus_1_states(x64, kernel):
  num_blocks = 3
  blocks = [{"self": self_params(20 + k), "cross": cross_params(30 + k)}
            for k in range(num_blocks)]
  stacked = jax.tree.map(lambda *x: np.stack(x), *blocks)
  z_SxM = tokens(11)
  memory_CxE = np.random.default_rng(12).normal(size=(C, E))
  kw = dict(num_context=N, kernel=kernel, kernel_scale=SCALES[kernel])
  states = jax.jit(attention.attention_stack,
                   static_argnames=("num_context", "kernel"))(
      stacked, z_SxM, memory_CxE, **kw
  )
  chex.assert_shape(states, (num_blocks + 1, N + T, M))
  np.testing.assert_array_equal(states[0], z_SxM)
  z = z_SxM
  for k, block in enumerate(blocks):
    # Residual: self-attention first, then cross-attention on the result.
    z = z + _self_attention(block["self"], z, **kw)
    z = z + _cross_attention(block["cross"], z, memory_CxE)
    np.testing.assert_allclose(states[k + 1], z, rtol=F64_RTOL, atol=F64_ATOL)
  assert not np.allclose(states[-1], states[-2])  # the last block did work.


@pytest.mark.parametrize("num_blocks", [1, 2, 3])
@pytest.mark.parametrize("kernel", sorted(SCALES))
def test_readout_equals_query_rows_of_the_stack(x64, kernel, num_blocks):
  # The readout computes only the query rows of the last block; the context
  # rows it skips must not change what the queries see.
  blocks = [{"self": self_params(40 + k), "cross": cross_params(50 + k)}
            for k in range(num_blocks)]
  stacked = jax.tree.map(lambda *x: np.stack(x), *blocks)
  z_SxM = tokens(41)
  memory_CxE = np.random.default_rng(42).normal(size=(C, E))
  kw = dict(num_context=N, kernel=kernel, kernel_scale=SCALES[kernel])
  full = attention.attention_stack(stacked, z_SxM, memory_CxE, **kw)
  got = jax.jit(attention.attention_stack_readout,
                static_argnames=("num_context", "kernel"))(
      stacked, z_SxM, memory_CxE, **kw)
  chex.assert_shape(got, (T, M))
  chex.assert_trees_all_close(got, full[-1][N:], rtol=F64_RTOL, atol=F64_ATOL)
  assert not np.allclose(got, full[-2][N:])  # the last block did work.


class AttentionVariantsTest(chex.TestCase):
  """jit and no-jit agree (float32, default precision)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_self_and_cross_attention(self):
    z_SxM = tokens(13).astype(np.float32)
    params = jax.tree.map(lambda x: x.astype(np.float32), self_params(14))
    self_fn = self.variant(functools.partial(
        attention.self_attention, num_context=N, kernel="softmax"))
    out = self_fn(params, z_SxM, kernel_scale=jnp.float32(0.6))
    assert out.dtype == jnp.float32
    expected = np.zeros((N + T, M))
    z64 = z_SxM.astype(np.float64)
    for h in range(H):
      q, k = z64 @ params["wq"][h], z64[:N] @ params["wk"][h]
      v = z64[:N] @ params["wv"][h]
      expected += np_weights(q, k, "softmax", 0.6) @ v @ params["wo"][h]
    np.testing.assert_allclose(out, expected, rtol=0, atol=F32_ATOL * np.abs(expected).max())
    cross = jax.tree.map(lambda x: x.astype(np.float32), cross_params(15))
    memory = np.random.default_rng(16).normal(size=(C, E)).astype(np.float32)
    out = self.variant(attention.cross_attention)(cross, z_SxM, memory)
    assert out.dtype == jnp.float32
    expected = np_cross_attention(
        jax.tree.map(lambda x: x.astype(np.float64), cross), z64,
        memory.astype(np.float64),
    )
    np.testing.assert_allclose(out, expected, rtol=0,
                               atol=F32_ATOL * np.abs(expected).max())
