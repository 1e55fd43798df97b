"""Tests for gdattn/kernels.py: every kernel equals its SPEC section 2 formula.

Dimensions: T queries, N context points (keys), D input dim.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gdattn
from gdattn import kernels

# float64: a few dozen flops on O(1) values; rounding stays near 1e-16 relative.
F64_RTOL = 1e-12
# float32 at eps32 ~ 1.2e-7: the rbf expansion ||q||^2 + ||k||^2 - 2 <q, k>
# loses ~s * eps32 * (||q||^2 + ||k||^2) ~ 2e-6 relative in exp(.) here.
F32_RTOL = 1e-5
# Absolute floors for entries near 0 (linear kernel, near-orthogonal pairs),
# where relative error is meaningless; the weights themselves are O(0.01..1).
F64_ATOL = 1e-14
F32_ATOL = 1e-6

# Kernel scales chosen so that exp(.) stays O(1..1e3) on x ~ N(0, I_D).
SCALES = {"linear": 0.7, "exp": 0.3, "rbf": 0.4, "laplacian": 0.25, "softmax": 0.9}


# Jitted once per (kernel, shape, dtype): cheaper than eager op-by-op dispatch.
# The without_jit path is covered by the chex variants below.
_attention_weights = jax.jit(kernels.attention_weights, static_argnames="kernel")
_kernel_logits = jax.jit(kernels.kernel_logits, static_argnames="kernel")


def numpy_attention_weights(q_TxD, k_NxD, kernel, s):
  """SPEC section 2 table, written entry by entry in float64 numpy."""
  q_TxD, k_NxD = np.asarray(q_TxD, np.float64), np.asarray(k_NxD, np.float64)
  t, n = q_TxD.shape[0], k_NxD.shape[0]
  a_TxN = np.empty((t, n))
  for r in range(t):
    for i in range(n):
      x, xi = q_TxD[r], k_NxD[i]
      if kernel == "linear":
        a_TxN[r, i] = s * np.dot(x, xi) / n
      elif kernel == "exp":
        a_TxN[r, i] = np.exp(s * np.dot(x, xi)) / n
      elif kernel == "rbf":
        a_TxN[r, i] = np.exp(-s * np.sum((x - xi) ** 2)) / n
      elif kernel == "laplacian":
        a_TxN[r, i] = np.exp(-s * np.sum(np.abs(x - xi))) / n
      elif kernel == "softmax":
        a_TxN[r, i] = np.exp(s * np.dot(x, xi)) / np.sum(
            np.exp(s * (k_NxD @ x))
        )
      else:
        raise ValueError(kernel)
  return a_TxN


def _inputs(seed, t=5, n=7, d=4):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(t, d)), rng.normal(size=(n, d))


def test_kernel_list_matches_spec():
  assert gdattn.KERNELS == ("linear", "exp", "rbf", "laplacian", "softmax")


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
@pytest.mark.parametrize("t,n,d", [(1, 1, 1), (5, 7, 4), (3, 40, 9)])
def test_matches_numpy_formula_float64(x64, kernel, t, n, d):
  q_TxD, k_NxD = _inputs(t * 100 + n + d, t, n, d)
  s = SCALES[kernel]
  a_TxN = _attention_weights(
      jnp.asarray(q_TxD), jnp.asarray(k_NxD), kernel=kernel, kernel_scale=s
  )
  chex.assert_shape(a_TxN, (t, n))
  assert a_TxN.dtype == jnp.float64
  np.testing.assert_allclose(
      a_TxN, numpy_attention_weights(q_TxD, k_NxD, kernel, s),
      rtol=F64_RTOL, atol=F64_ATOL,
  )


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_matches_numpy_formula_float32(x32, kernel):
  q_TxD, k_NxD = _inputs(1, 6, 30, 8)
  s = SCALES[kernel]
  a_TxN = _attention_weights(
      jnp.asarray(q_TxD, jnp.float32), jnp.asarray(k_NxD, jnp.float32),
      kernel=kernel, kernel_scale=s,
  )
  assert a_TxN.dtype == jnp.float32
  # The reference sees the same float32-rounded inputs.
  expected = numpy_attention_weights(
      q_TxD.astype(np.float32), k_NxD.astype(np.float32), kernel, s
  )
  np.testing.assert_allclose(a_TxN, expected, rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("kernel", ["exp", "rbf", "laplacian"])
def test_unnormalised_kernels_carry_one_over_n(x64, kernel):
  # Duplicating every key halves each weight: the 1/N factor, not a softmax.
  q_TxD, k_NxD = _inputs(2)
  s = SCALES[kernel]
  a_TxN = _attention_weights(q_TxD, k_NxD, kernel=kernel, kernel_scale=s)
  a_Tx2N = _attention_weights(
      q_TxD, np.concatenate([k_NxD, k_NxD]), kernel=kernel, kernel_scale=s
  )
  np.testing.assert_allclose(a_Tx2N[:, : k_NxD.shape[0]], a_TxN / 2, rtol=F64_RTOL)
  logits_TxN = _kernel_logits(q_TxD, k_NxD, kernel=kernel, kernel_scale=s)
  np.testing.assert_allclose(
      a_TxN, np.exp(logits_TxN) / k_NxD.shape[0], rtol=F64_RTOL
  )


def test_softmax_rows_sum_to_one_over_context_points(x64):
  q_TxD, k_NxD = _inputs(3, 6, 50, 5)
  # A large scale makes the rows peaked; they must still sum to 1, not N.
  for s in (1e-3, 0.9, 30.0):
    a_TxN = _attention_weights(q_TxD, k_NxD, kernel="softmax", kernel_scale=s)
    np.testing.assert_allclose(np.sum(a_TxN, axis=-1), 1.0, rtol=F64_RTOL)
    assert np.all(a_TxN >= 0)
  # Shifting every key by c adds <x, c> to all logits of a row: unchanged.
  shift_D = np.random.default_rng(0).normal(size=k_NxD.shape[1])
  shifted = _attention_weights(
      q_TxD, k_NxD + shift_D, kernel="softmax", kernel_scale=0.9
  )
  a_TxN = _attention_weights(q_TxD, k_NxD, kernel="softmax", kernel_scale=0.9)
  np.testing.assert_allclose(shifted, a_TxN, rtol=F64_RTOL)


def test_softmax_is_exp_kernel_renormalised(x64):
  q_TxD, k_NxD = _inputs(4)
  s = SCALES["exp"]
  a_exp = _attention_weights(q_TxD, k_NxD, kernel="exp", kernel_scale=s)
  a_soft = _attention_weights(q_TxD, k_NxD, kernel="softmax", kernel_scale=s)
  np.testing.assert_allclose(
      a_soft, a_exp / np.sum(a_exp, axis=-1, keepdims=True), rtol=F64_RTOL
  )


@pytest.mark.parametrize("kernel", ["rbf", "laplacian"])
def test_distance_kernels_peak_at_identical_points(x64, kernel):
  _, k_NxD = _inputs(5, n=9, d=6)
  k_NxD = k_NxD * 10.0  # large norms: the rbf expansion cancels heavily.
  a_NxN = _attention_weights(
      k_NxD, k_NxD, kernel=kernel, kernel_scale=SCALES[kernel]
  )
  n = k_NxD.shape[0]
  # exp(-s * 0) / N: never above 1/N, even with cancellation in the rbf.
  assert np.all(a_NxN <= 1.0 / n)
  np.testing.assert_allclose(np.diag(a_NxN), 1.0 / n, rtol=F64_RTOL)


def test_unknown_kernel_raises():
  with pytest.raises(ValueError, match="kernel must be one of"):
    kernels.attention_weights(np.ones((2, 3)), np.ones((4, 3)), kernel="cosine",
                              kernel_scale=1.0)
  with pytest.raises(ValueError, match="kernel must be one of"):
    kernels.kernel_logits(np.ones((2, 3)), np.ones((4, 3)), kernel="linear",
                          kernel_scale=1.0)


class AttentionWeightsVariantsTest(chex.TestCase):
  """jit and no-jit give the same weights (kernel_scale is traced under jit)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_variants_agree_with_numpy(self):
    q_TxD, k_NxD = _inputs(6, 4, 11, 3)
    q_TxD, k_NxD = q_TxD.astype(np.float32), k_NxD.astype(np.float32)
    for kernel in gdattn.KERNELS:
      fn = self.variant(
          functools.partial(kernels.attention_weights, kernel=kernel)
      )
      a_TxN = fn(q_TxD, k_NxD, kernel_scale=jnp.float32(SCALES[kernel]))
      chex.assert_shape(a_TxN, (4, 11))
      chex.assert_tree_all_finite(a_TxN)
      np.testing.assert_allclose(
          a_TxN, numpy_attention_weights(q_TxD, k_NxD, kernel, SCALES[kernel]),
          rtol=F32_RTOL, atol=F32_ATOL,
      )


# --- attention_operator: the plain product's value and every derivative ------


def _operator_and_plain(kernel):
  """(s, q, k, u) -> sum(w * A u) through the operator and through the plain
  product attention_weights(q, k) @ u (autodiff all the way)."""
  w = np.random.default_rng(7).normal(size=(5, 3))

  def through_operator(s, q_TxD, k_NxD, u_NxF):
    apply = kernels.attention_operator(q_TxD, k_NxD, kernel=kernel, kernel_scale=s)
    return jnp.sum(w * apply(u_NxF))

  def through_plain(s, q_TxD, k_NxD, u_NxF):
    a_TxN = kernels.attention_weights(q_TxD, k_NxD, kernel=kernel, kernel_scale=s)
    return jnp.sum(w * (a_TxN @ u_NxF))

  return through_operator, through_plain


def _operator_args(seed=11):
  q_TxD, k_NxD = _inputs(seed, 5, 7, 4)
  u_NxF = np.random.default_rng(seed + 1).normal(size=(7, 3))
  return q_TxD, k_NxD, u_NxF


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_operator_value_equals_plain_product(x64, kernel):
  q_TxD, k_NxD, u_NxF = _operator_args()
  s = SCALES[kernel]
  apply = jax.jit(lambda q, k, u: kernels.attention_operator(
      q, k, kernel=kernel, kernel_scale=s)(u))
  np.testing.assert_allclose(
      apply(q_TxD, k_NxD, u_NxF),
      numpy_attention_weights(q_TxD, k_NxD, kernel, s) @ u_NxF,
      rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
@pytest.mark.parametrize("argnums", [(0,), (0, 3), (0, 1, 2, 3), (1,), (3,)],
                         ids=["s", "s,u", "all", "q", "u"])
def test_operator_gradients_equal_autodiff_of_plain_product(x64, kernel, argnums):
  # argnums (0,) and (0, 3) are the training case (x is data): the fused
  # rule; (1,) and "all" take the path that forms the [T, N] logit tangent.
  through_operator, through_plain = _operator_and_plain(kernel)
  args = (jnp.float64(SCALES[kernel]),) + _operator_args()
  got = jax.jit(jax.grad(through_operator, argnums))(*args)
  want = jax.jit(jax.grad(through_plain, argnums))(*args)
  chex.assert_trees_all_close(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_operator_forward_mode_and_second_derivatives(x64, kernel):
  through_operator, through_plain = _operator_and_plain(kernel)
  s, *rest = (jnp.float64(SCALES[kernel]),) + _operator_args()
  tangents = jax.tree.map(lambda a: jnp.ones_like(jnp.asarray(a)) * 0.3, (s, *rest))
  for fn_pair in ((through_operator, through_plain),):
    got, want = (jax.jvp(fn, (s, *rest), tangents) for fn in fn_pair)
    chex.assert_trees_all_close(got, want, rtol=1e-11, atol=1e-13)
  # d2/ds2 and the mixed d2/(ds du): the rule is itself differentiated.
  for argnums in (0, (0, 3)):
    got = jax.hessian(through_operator, argnums)(s, *rest)
    want = jax.hessian(through_plain, argnums)(s, *rest)
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


def test_operator_vmaps_over_contexts_and_scales(x64):
  q_TxD, k_NxD, u_NxF = _operator_args()
  qs, ks, us = (np.stack([a, 2 * a]) for a in (q_TxD, k_NxD, u_NxF))
  scales = jnp.array([0.3, 0.6])

  def loss(s, q, k, u):
    return jnp.sum(kernels.attention_operator(
        q, k, kernel="softmax", kernel_scale=s)(u) ** 2)

  got = jax.vmap(jax.grad(loss))(scales, qs, ks, us)
  want = [jax.grad(loss)(scales[i], qs[i], ks[i], us[i]) for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_fusion_boundary_is_the_identity_under_every_transformation(x64):
  x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

  def bounded(a):
    return jnp.sum(jnp.sin(kernels.fusion_boundary(a * a)) ** 2)

  def plain(a):
    return jnp.sum(jnp.sin(a * a) ** 2)

  np.testing.assert_array_equal(kernels.fusion_boundary(x), x)
  for transform in (jax.grad, jax.hessian, lambda f: jax.vmap(jax.grad(f))):
    np.testing.assert_array_equal(transform(bounded)(x), transform(plain)(x))
  np.testing.assert_array_equal(
      jax.jvp(bounded, (x,), (x,)), jax.jvp(plain, (x,), (x,)))


def test_kernel_scale_derivative_product_sits_behind_a_boundary_on_cpu(x64):
  # What bench_train section 7 ablates: on CPU the boundary is in the program
  # of the kernel scale's derivative (and nowhere on other backends).
  q_TxD, k_NxD, u_NxF = _operator_args()
  jaxpr = jax.make_jaxpr(jax.grad(lambda s: jnp.sum(kernels.attention_operator(
      q_TxD, k_NxD, kernel="softmax", kernel_scale=s)(u_NxF))))(0.5)
  assert ("optimization_barrier" in str(jaxpr)) == (jax.default_backend() == "cpu")


# --- the registry: one record per kernel, read by every path -----------------


def test_every_registered_kernel_has_an_independent_reference():
  # A new registry entry must come with its SPEC formula in
  # numpy_attention_weights (which raises for an unknown name) and a scale.
  assert gdattn.KERNELS == tuple(kernels.REGISTRY)
  q_TxD, k_NxD = _inputs(8, 2, 3, 2)
  for name in kernels.REGISTRY:
    assert name in SCALES, name
    numpy_attention_weights(q_TxD, k_NxD, name, SCALES[name])


@pytest.mark.parametrize("name", list(kernels.REGISTRY))
def test_record_fields_describe_the_weights(x64, name):
  # The weights follow from the record alone: base phi, where s enters, and
  # the normalisation; the form says whether phi is a dot product.
  spec = kernels.get_kernel(name)
  assert isinstance(spec, gdattn.Kernel) and spec.name == name
  q_TxD, k_NxD = _inputs(9, 4, 6, 3)
  s = SCALES[name]
  phi_TxN = np.asarray(spec.base(jnp.asarray(q_TxD), jnp.asarray(k_NxD)))
  if spec.form == "dot":
    chex.assert_trees_all_close(phi_TxN, q_TxD @ k_NxD.T, rtol=F64_RTOL)
  else:  # a negated distance: 0 on the diagonal, negative elsewhere
    self_phi = np.asarray(spec.base(jnp.asarray(k_NxD), jnp.asarray(k_NxD)))
    chex.assert_trees_all_close(np.diag(self_phi), np.zeros(6), atol=F64_ATOL)
    assert np.all(phi_TxN < 0)
  k_TxN = np.exp(s * phi_TxN) if spec.scale_in_exponent else s * phi_TxN
  if spec.normalised:
    want = k_TxN / np.sum(k_TxN, axis=-1, keepdims=True)
  else:
    want = k_TxN / k_NxD.shape[0]
  got = _attention_weights(q_TxD, k_NxD, kernel=name, kernel_scale=s)
  chex.assert_trees_all_close(got, want, rtol=F64_RTOL, atol=F64_ATOL)


def test_record_is_frozen_and_rejects_inconsistent_fields():
  spec = kernels.get_kernel("softmax")
  with pytest.raises(AttributeError):
    spec.normalised = False
  with pytest.raises(ValueError, match="form must be 'dot' or 'distance'"):
    gdattn.Kernel("x", kernels._dot, scale_in_exponent=True, normalised=False,
                  form="cosine")
  with pytest.raises(ValueError, match="normalised needs scale_in_exponent"):
    gdattn.Kernel("x", kernels._dot, scale_in_exponent=False, normalised=True,
                  form="dot")


# --- input checks of the public kernel functions ------------------------------


_Q, _K = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)


@pytest.mark.parametrize("fn", [kernels.attention_weights, kernels.attention_operator,
                                kernels.kernel_logits])
@pytest.mark.parametrize("args,exc,regex", [
    ((_Q, _K, -1), ValueError, r"kernel_scale must be finite and > 0, got -1.0"),
    ((_Q, _K, float("nan")), ValueError, r"kernel_scale must be finite and > 0"),
    ((_Q, np.full((4, 3), np.nan, np.float32), 1.0), ValueError,
     r"k_NxD must be finite, got 12 NaN/inf entries"),
    ((_Q, _K[:, :2], 1.0), ValueError,
     r"q_TxD must have the input dim D = 2 of k_NxD \(shape \[T, 2\]\), got shape"
     r" \(2, 3\)"),
    ((_Q[0], _K, 1.0), ValueError,
     r"q_TxD must have rank 2 with shape \[T, D\], got shape \(3,\)"),
    ((_Q, _K[:0], 1.0), ValueError, r"k_NxD must hold at least one context point"),
    ((_Q, _K.astype(np.int32), 1.0), TypeError,
     r"k_NxD must have a floating dtype, got int32"),
], ids=["scale_negative", "scale_nan", "nan_keys", "d_mismatch", "q_rank1",
        "no_keys", "int_keys"])
def test_public_kernel_functions_validate(fn, args, exc, regex):
  q, k, s = args
  with pytest.raises(exc, match=regex):
    fn(q, k, kernel="exp", kernel_scale=s)


def test_zero_queries_give_empty_weights():
  a_0xN = kernels.attention_weights(_Q[:0], _K, kernel="softmax", kernel_scale=1.0)
  chex.assert_shape(a_0xN, (0, 4))
