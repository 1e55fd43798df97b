"""Tests for gdattn/longcontext.py: the chunked path equals the dense reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gdattn
from gdattn import longcontext

N, T, D, C, E = 300, 37, 10, 25, 5  # N, T: not multiples of CHUNK.
CHUNK = 64
STEPS = (1, 2, 4)

# Both paths sum the same N = 300 terms per row and step in a different order
# (tiles of 64, online rescaling, the K updates summed before the query pass).
# Reordering n terms moves a sum by at most ~n eps |terms|; n eps64 ~ 3e-14,
# and we measure ~1e-15 relative to max |f|. Errors are taken relative to the
# scale max |f| because single entries of f can be ~0.
TOL_F64 = 1e-12
# float32: the same bound n eps32 = 300 * 6e-8 ~ 2e-5 is the worst case; the
# errors random-walk (~sqrt(n) eps per sum, ~1e-6) and we measure <= 1e-6.
TOL_F32 = 2e-5
# Kernel scales keep exp(s <x, x_i>) and the iterates well inside float32
# range for x ~ U(-1, 1)^10 (|<x, x_i>| <= 10).
KERNEL_SCALE = {"linear": 1.0, "exp": 0.4, "rbf": 0.3, "laplacian": 0.3, "softmax": 1.5}


def _problem(dtype, num_ctx=N, num_query=T, seed=0):
  # numpy's seeded Generator: test data without compiling eager JAX ops.
  rng = np.random.default_rng(seed)
  # Scaled rows give the unequal norms on which kernel mistakes would show.
  norms = rng.uniform(0.3, 1.5, (num_ctx, 1))
  arrays = dict(
      x_ctx=norms * rng.uniform(-1, 1, (num_ctx, D)),
      x_query=rng.uniform(-1, 1, (num_query, D)),
      w_e=rng.normal(size=(C, E)),
      # Different rates per step and per embedding dim, large enough that the
      # class softmax is far from uniform after a few steps.
      lrs=np.linspace(0.5, 3.0, max(STEPS) * E).reshape(-1, E),
  )
  problem = {k: jnp.asarray(v, dtype) for k, v in arrays.items()}
  problem["y_ctx"] = jnp.asarray(rng.integers(0, C, num_ctx), jnp.int32)
  return problem


def _assert_close(got, want, tol):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  scale = np.max(np.abs(want))
  assert scale > 1e-3  # a meaningful, non-vanishing reference
  err = np.max(np.abs(got - want)) / scale
  assert err <= tol, f"relative error {err:.3g} > {tol:.3g}"


@functools.partial(jax.jit, static_argnames=("kernel", "chunk_size"))
def _dense_and_chunked(p, kernel_scale, *, kernel, chunk_size):
  # The dense trajectory entry k is categorical_gd with the first k rates (the
  # same scan prefix), so one reference serves every K; one jit per kernel
  # keeps the sweep fast.
  traj = gdattn.categorical_gd_trajectory(
      **p, kernel=kernel, kernel_scale=kernel_scale
  )
  chunked = {
      k: longcontext.categorical_gd_chunked(
          p["x_ctx"], p["y_ctx"], p["x_query"], p["w_e"], p["lrs"][:k],
          kernel=kernel, kernel_scale=kernel_scale, chunk_size=chunk_size,
      )
      for k in STEPS
  }
  return traj, chunked


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
@pytest.mark.parametrize("x64", [True, False], ids=["float64", "float32"])
def test_matches_dense_reference(kernel, x64):
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    p = _problem(dtype)
    traj, chunked = _dense_and_chunked(
        p, KERNEL_SCALE[kernel], kernel=kernel, chunk_size=CHUNK
    )
    for k in STEPS:
      assert chunked[k].dtype == dtype
      _assert_close(chunked[k], traj[k], TOL_F64 if x64 else TOL_F32)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _softmax_pair(p, *, chunk_size):
  kw = dict(kernel="softmax", kernel_scale=1.5)
  return (
      gdattn.categorical_gd(**p, **kw),
      longcontext.categorical_gd_chunked(**p, **kw, chunk_size=chunk_size),
  )


@pytest.mark.parametrize(
    "num_ctx,num_query,chunk_size",
    [(5, 40, 1024), (70, 3, 1)],  # chunk 1: N and T exact multiples
    ids=["chunk_over_N", "chunk_1"],
)
def test_chunk_edge_cases(num_ctx, num_query, chunk_size):
  with jax.enable_x64(True):
    p = _problem(jnp.float64, num_ctx, num_query, seed=1)
    p["lrs"] = p["lrs"][:3]
    want, got = _softmax_pair(p, chunk_size=chunk_size)
    _assert_close(got, want, TOL_F64)


def test_kernel_apply_chunked_matches_weights():
  @jax.jit
  def pairs(p, u_NxE):
    out = {}
    for kernel in gdattn.KERNELS:
      kw = dict(kernel=kernel, kernel_scale=KERNEL_SCALE[kernel])
      a_TxN = gdattn.attention_weights(p["x_query"], p["x_ctx"], **kw)
      out[kernel] = (a_TxN @ u_NxE, longcontext.kernel_apply_chunked(
          p["x_query"], p["x_ctx"], u_NxE, **kw, chunk_size=CHUNK))
    return out

  with jax.enable_x64(True):
    p = _problem(jnp.float64)
    u_NxE = jnp.asarray(np.random.default_rng(2).normal(size=(N, E)))
    for kernel, (want, got) in pairs(p, u_NxE).items():
      _assert_close(got, want, TOL_F64)


def test_vmap_over_contexts_and_traced_scale():
  p = _problem(jnp.float32)
  batch = jax.tree.map(lambda a: jnp.stack([a, a[::-1]]), p)
  lrs = p["lrs"][:2]

  @jax.jit
  def both(x, y, xq, w, s):
    def one(fn, **kw):
      return jax.vmap(
          lambda x, y, xq, w: fn(x, y, xq, w, lrs, kernel="softmax",
                                 kernel_scale=s, **kw)
      )(x, y, xq, w)
    return (one(gdattn.categorical_gd),
            one(longcontext.categorical_gd_chunked, chunk_size=CHUNK))

  want, got = both(batch["x_ctx"], batch["y_ctx"], batch["x_query"],
                   batch["w_e"], 1.5)
  chex.assert_shape(got, (2, T, E))
  _assert_close(got, want, TOL_F32)


def _all_avals(jaxpr):
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield var.aval
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _all_avals(inner)


def test_never_materialises_the_kernel_matrix():
  num_query = 100  # so that T N = 30000 exceeds the [N, C] = 7500 class softmax
  p = _problem(jnp.float32, N, num_query)
  p["lrs"] = p["lrs"][:4]
  jaxpr = jax.make_jaxpr(functools.partial(
      longcontext.categorical_gd_chunked, kernel="softmax", kernel_scale=1.5,
      chunk_size=CHUNK,
  ))(**p).jaxpr
  largest = max(int(np.prod(a.shape)) for a in _all_avals(jaxpr) if hasattr(a, "shape"))
  # The biggest intermediates are the [N, C] class softmax and one [64, 64]
  # tile, never an [N, N] or [T, N] kernel.
  assert largest == max(N * C, CHUNK * CHUNK) < num_query * N


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "64", None])
def test_bad_chunk_size(chunk_size):
  p = _problem(jnp.float32, 8, 2)
  with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
    longcontext.categorical_gd_chunked(
        **p, kernel="softmax", kernel_scale=1.0, chunk_size=chunk_size
    )


def test_validates_like_categorical_gd():
  p = _problem(jnp.float32, 8, 2)
  with pytest.raises(ValueError, match="class labels"):
    longcontext.categorical_gd_chunked(
        **{**p, "y_ctx": p["y_ctx"] + C}, kernel="softmax", kernel_scale=1.0
    )
  with pytest.raises(ValueError, match="kernel must be one of"):
    longcontext.categorical_gd_chunked(**p, kernel="cosine", kernel_scale=1.0)


def test_overflow_is_a_clear_error():
  p = _problem(jnp.float32, 8, 2)
  p["lrs"] = p["lrs"][:1]
  # exp(200 <x, x_i>) overflows float32 even after the online max-shift,
  # since the unnormalised kernel multiplies exp(m) back in.
  with pytest.raises(FloatingPointError, match="overflowed"):
    longcontext.categorical_gd_chunked(**p, kernel="exp", kernel_scale=200.0)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_zero_queries_give_an_empty_result(kernel):
  # Documented choice: T = 0 returns [0, E], as the dense path does.
  p = _problem(jnp.float32, num_ctx=9, num_query=0)
  p["lrs"] = p["lrs"][:2]
  kw = dict(kernel=kernel, kernel_scale=KERNEL_SCALE[kernel], chunk_size=4)
  f_0xE = longcontext.categorical_gd_chunked(**p, **kw)
  chex.assert_shape(f_0xE, (0, E))
  chex.assert_trees_all_equal(f_0xE, gdattn.categorical_gd(
      **p, kernel=kernel, kernel_scale=KERNEL_SCALE[kernel]))
  out_0x3 = longcontext.kernel_apply_chunked(
      p["x_query"], p["x_ctx"], np.ones((9, 3), np.float32), **kw)
  chex.assert_shape(out_0x3, (0, 3))


def test_kernel_apply_chunked_validates():
  x = np.ones((5, 3), np.float32)
  kw = dict(kernel="rbf", kernel_scale=1.0)
  with pytest.raises(ValueError, match=r"u_NxE must have one row per key, shape \[5, E\]"):
    longcontext.kernel_apply_chunked(x, x, np.ones((4, 2), np.float32), **kw)
  with pytest.raises(ValueError, match=r"x_rows_RxD must have the input dim D = 3"):
    longcontext.kernel_apply_chunked(x[:, :2], x, np.ones((5, 2), np.float32), **kw)
  with pytest.raises(ValueError, match=r"kernel_scale must be finite and > 0"):
    longcontext.kernel_apply_chunked(x, x, np.ones((5, 2), np.float32),
                                     kernel="rbf", kernel_scale=-1.0)
