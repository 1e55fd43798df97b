"""Tests for gdattn/gd.py: the lax.scan references equal GD written by hand.

Dimensions: B contexts, N context points, T queries, D input dim, C classes,
E embedding dim, K steps, M real output dim.
"""

import functools

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import gdattn

# float64 references of a few hundred flops on O(1) values: rounding ~1e-15.
F64_ATOL = 1e-12
# A permutation only reorders the N-term sums: a few ulps of the O(1) result.
PERMUTATION_ATOL = 1e-12
# Central finite differences in float64 with step GRAD_EPS: truncation
# ~GRAD_EPS^2 * |f'''| ~ 1e-10 plus rounding ~1e-16 / GRAD_EPS ~ 1e-11
# (observed <= 8e-10, the largest for d/ds of the exp kernel).
GRAD_EPS = 1e-5
GRAD_TOL = 1e-8
# softmax of equal logits: 1/C up to one rounding of the division.
UNIFORM_RTOL = 1e-15

# Kernel scales keeping every a(x, x_i) O(0.01..1) on x ~ N(0, I_D).
SCALES = {"linear": 0.7, "exp": 0.3, "rbf": 0.4, "laplacian": 0.25, "softmax": 0.9}

_trajectory = jax.jit(gdattn.categorical_gd_trajectory, static_argnames="kernel")
_regression_trajectory = jax.jit(
    gdattn.regression_gd_trajectory, static_argnames="kernel"
)


def np_kernel(q_TxD, k_NxD, kernel, s):
  """SPEC section 2 attention weights in float64 numpy."""
  n = k_NxD.shape[0]
  dots_TxN = q_TxD @ k_NxD.T
  diff_TxNxD = q_TxD[:, None, :] - k_NxD[None, :, :]
  if kernel == "linear":
    return s * dots_TxN / n
  if kernel == "exp":
    return np.exp(s * dots_TxN) / n
  if kernel == "rbf":
    return np.exp(-s * np.sum(diff_TxNxD**2, axis=-1)) / n
  if kernel == "laplacian":
    return np.exp(-s * np.sum(np.abs(diff_TxNxD), axis=-1)) / n
  if kernel == "softmax":
    e_TxN = np.exp(s * dots_TxN)
    return e_TxN / np.sum(e_TxN, axis=-1, keepdims=True)
  raise ValueError(kernel)


def np_softmax(z, axis=-1):
  z = z - np.max(z, axis=axis, keepdims=True)
  return np.exp(z) / np.sum(np.exp(z), axis=axis, keepdims=True)


def np_categorical_gd_trajectory(x_ctx, y_ctx, x_query, w_e, lrs, kernel, s):
  """GD of SPEC section 2 with explicit Python loops: [K + 1, T, E]."""
  a_query_TxN = np_kernel(x_query, x_ctx, kernel, s)
  a_ctx_NxN = np_kernel(x_ctx, x_ctx, kernel, s)
  f_ctx_NxE = np.zeros((x_ctx.shape[0], w_e.shape[1]))
  f_query_TxE = np.zeros((x_query.shape[0], w_e.shape[1]))
  out = [f_query_TxE]
  for lr_E in lrs:
    e_NxE = np_softmax(f_ctx_NxE @ w_e.T) @ w_e
    update_NxE = lr_E * (w_e[y_ctx] - e_NxE)
    f_query_TxE = f_query_TxE + a_query_TxN @ update_NxE
    f_ctx_NxE = f_ctx_NxE + a_ctx_NxN @ update_NxE
    out.append(f_query_TxE)
  return np.stack(out)


def make_problem(seed, *, n=9, t=3, d=4, c=5, e=3, k=3):
  rng = np.random.default_rng(seed)
  return dict(
      x_ctx=rng.normal(size=(n, d)),
      y_ctx=rng.integers(0, c, size=n),
      x_query=rng.normal(size=(t, d)),
      w_e=rng.normal(size=(c, e)),
      lrs=rng.uniform(0.2, 1.5, size=(k, e)),
  )


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_one_step_is_kernel_weighted_residual_at_mean_embedding(x64, kernel):
  p = make_problem(0, k=1)
  s = SCALES[kernel]
  f_TxE = gdattn.categorical_gd(**p, kernel=kernel, kernel_scale=s)
  assert f_TxE.dtype == jnp.float64
  # f_1(x) = sum_i a(x, x_i) lr_0 * (w_{y_i} - mean_c w_c).
  a_TxN = np_kernel(p["x_query"], p["x_ctx"], kernel, s)
  mean_E = p["w_e"].mean(axis=0)
  expected = np.zeros_like(f_TxE)
  for i in range(p["x_ctx"].shape[0]):
    expected += a_TxN[:, i:i + 1] * (p["lrs"][0] * (p["w_e"][p["y_ctx"][i]] - mean_E))
  chex.assert_trees_all_close(f_TxE, expected, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_two_steps_by_hand(x64, kernel):
  p = make_problem(1)
  s = SCALES[kernel]
  x_ctx, y, x_q, w_e, lrs = (p[k] for k in ("x_ctx", "y_ctx", "x_query", "w_e", "lrs"))
  a_q, a_c = np_kernel(x_q, x_ctx, kernel, s), np_kernel(x_ctx, x_ctx, kernel, s)
  # Step 1 from f_0 = 0, where E_0 is the mean embedding at every point.
  r0_NxE = lrs[0] * (w_e[y] - w_e.mean(axis=0))
  f1_q, f1_c = a_q @ r0_NxE, a_c @ r0_NxE
  # Step 2: the residual now uses E_1 at the context points, from f_1 there.
  p1_NxC = np.exp(f1_c @ w_e.T)
  p1_NxC /= p1_NxC.sum(axis=1, keepdims=True)
  r1_NxE = lrs[1] * (w_e[y] - p1_NxC @ w_e)
  f2_q = f1_q + a_q @ r1_NxE
  traj = _trajectory(**p, kernel=kernel, kernel_scale=s)
  chex.assert_shape(traj, (4, 3, 3))
  np.testing.assert_array_equal(traj[0], 0.0)
  chex.assert_trees_all_close(traj[1], f1_q, rtol=0, atol=F64_ATOL)
  chex.assert_trees_all_close(traj[2], f2_q, rtol=0, atol=F64_ATOL)
  # The second step is not a repeat of the first (the residual changed).
  assert np.max(np.abs(f2_q - f1_q - a_q @ (lrs[1] * r0_NxE / lrs[0]))) > 1e-3


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_k_steps_match_numpy_loop_at_every_step(x64, kernel):
  num_steps = 6
  p = make_problem(2, n=11, t=4, d=5, c=6, e=4, k=num_steps)
  s = SCALES[kernel]
  traj = _trajectory(**p, kernel=kernel, kernel_scale=s)
  assert traj.dtype == jnp.float64
  chex.assert_shape(traj, (num_steps + 1, 4, 4))
  expected = np_categorical_gd_trajectory(**p, kernel=kernel, s=s)
  chex.assert_trees_all_close(traj, expected, rtol=0, atol=F64_ATOL)


def test_trajectory_entry_k_is_gd_with_the_first_k_rates(x64):
  # The scan is causal: K steps with rates lrs[:K] give entry K of a longer
  # run (construction_test relies on this to compute its reference once).
  p = make_problem(6)
  traj = _trajectory(**p, kernel="softmax", kernel_scale=SCALES["softmax"])
  for k in range(1, 4):
    chex.assert_trees_all_close(
        gdattn.categorical_gd(**dict(p, lrs=p["lrs"][:k]), kernel="softmax",
                              kernel_scale=SCALES["softmax"]),
        traj[k], rtol=0, atol=F64_ATOL,
    )


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_zero_learning_rates_give_uniform_probabilities(x64, kernel):
  p = make_problem(3)
  p["lrs"] = np.zeros_like(p["lrs"])
  traj = _trajectory(**p, kernel=kernel, kernel_scale=SCALES[kernel])
  np.testing.assert_array_equal(traj, 0.0)  # f never leaves f_0 = 0.
  probs_KxTxC = gdattn.class_probabilities(traj, p["w_e"])
  np.testing.assert_allclose(probs_KxTxC, 1.0 / 5, rtol=UNIFORM_RTOL)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_permuting_context_points_leaves_output_unchanged(x64, kernel):
  p = make_problem(4)
  perm = np.random.default_rng(0).permutation(9)
  assert not np.array_equal(perm, np.arange(9))
  q = dict(p, x_ctx=p["x_ctx"][perm], y_ctx=p["y_ctx"][perm])
  s = SCALES[kernel]
  chex.assert_trees_all_close(
      _trajectory(**q, kernel=kernel, kernel_scale=s),
      _trajectory(**p, kernel=kernel, kernel_scale=s),
      rtol=0, atol=PERMUTATION_ATOL,
  )
  # Control: permuting the labels alone (a different context) does change f.
  r = dict(p, y_ctx=p["y_ctx"][perm])
  assert not np.allclose(
      _trajectory(**r, kernel=kernel, kernel_scale=s),
      _trajectory(**p, kernel=kernel, kernel_scale=s),
  )


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_queries_never_act_as_keys(x64, kernel):
  # f at query 0 does not depend on the other queries: they are not keys.
  p = make_problem(5)
  s = SCALES[kernel]
  f_TxE = _trajectory(**p, kernel=kernel, kernel_scale=s)[-1]
  moved = p["x_query"].copy()
  moved[1:] = 3.0 * np.random.default_rng(1).normal(size=moved[1:].shape)
  g_TxE = _trajectory(**dict(p, x_query=moved), kernel=kernel, kernel_scale=s)[-1]
  np.testing.assert_array_equal(g_TxE[0], f_TxE[0])
  assert not np.allclose(g_TxE[1:], f_TxE[1:])  # the moved queries did move.


# Two kernels suffice: vmap only batches the context axis, kernel-agnostic.
@pytest.mark.parametrize("kernel", ["laplacian", "softmax"])
def test_vmap_over_contexts_equals_python_loop(x64, kernel):
  num_contexts = 4
  problems = [make_problem(10 + b) for b in range(num_contexts)]
  batch = {k: np.stack([q[k] for q in problems]) for k in ("x_ctx", "y_ctx", "x_query")}
  w_e, lrs = problems[0]["w_e"], problems[0]["lrs"]
  s = SCALES[kernel]
  gd = functools.partial(gdattn.categorical_gd_trajectory, kernel=kernel,
                         kernel_scale=s)
  batched = jax.jit(jax.vmap(gd, in_axes=(0, 0, 0, None, None)))(
      batch["x_ctx"], batch["y_ctx"], batch["x_query"], w_e, lrs
  )
  assert batched.dtype == jnp.float64
  chex.assert_shape(batched, (num_contexts, 4, 3, 3))
  for b in range(num_contexts):
    chex.assert_trees_all_close(
        batched[b],
        _trajectory(batch["x_ctx"][b], batch["y_ctx"][b], batch["x_query"][b], w_e,
                    lrs, kernel=kernel, kernel_scale=s),
        rtol=0, atol=F64_ATOL,
    )
  assert not np.allclose(batched[0], batched[1])  # contexts really differ.


def _least_squares_problem(seed, *, n=12, t=4, d=3, m=2, k=6):
  rng = np.random.default_rng(seed)
  x_ctx = rng.normal(size=(n, d))
  y_ctx = x_ctx @ rng.normal(size=(d, m)) + 0.3 * rng.normal(size=(n, m))
  return x_ctx, y_ctx, rng.normal(size=(t, d)), rng.uniform(0.2, 0.8, size=(k, m))


@pytest.mark.parametrize("per_output_lrs", [False, True])
def test_regression_linear_kernel_is_least_squares_gd(x64, per_output_lrs):
  s = 0.6
  x_ctx, y_ctx, x_query, lrs_KxM = _least_squares_problem(6)
  lrs = lrs_KxM if per_output_lrs else lrs_KxM[:, 0]
  n, d = x_ctx.shape
  traj = _regression_trajectory(
      x_ctx, y_ctx, x_query, lrs, kernel="linear", kernel_scale=s
  )
  assert traj.dtype == jnp.float64
  chex.assert_shape(traj, (7, 4, 2))

  # a(x, x_i) = s <x, x_i> / N, so with f_k(x) = W_k x,
  # f_{k+1}(x) = W_k x + lr_k * sum_i (s / N) <x_i, x> (y_i - W_k x_i), i.e.
  # W_{k+1} = W_k + diag(lr_k) (s / N) sum_i (y_i - W_k x_i) x_i^T.
  def loss(w_MxD):
    return 0.5 * jnp.mean(jnp.sum((y_ctx - x_ctx @ w_MxD.T) ** 2, axis=-1))

  w_MxD = np.zeros((2, d))
  for k in range(lrs_KxM.shape[0]):
    chex.assert_trees_all_close(traj[k], x_query @ w_MxD.T, rtol=0, atol=F64_ATOL)
    lr_M = np.broadcast_to(lrs[k], (2,))
    step_MxD = np.zeros((2, d))
    for i in range(n):
      step_MxD += np.outer(y_ctx[i] - w_MxD @ x_ctx[i], x_ctx[i])
    w_next = w_MxD + lr_M[:, None] * (s / n) * step_MxD
    # The same update is plain GD on the least-squares loss with step s * lr_k.
    chex.assert_trees_all_close(
        w_next, w_MxD - s * lr_M[:, None] * jax.grad(loss)(w_MxD),
        rtol=0, atol=F64_ATOL,
    )
    w_MxD = w_next
  chex.assert_trees_all_close(traj[-1], x_query @ w_MxD.T, rtol=0, atol=F64_ATOL)
  # Non-vacuous: the weights moved and fit the data better than W_0 = 0.
  assert loss(w_MxD) < 0.5 * loss(np.zeros((2, d)))


def test_regression_lrs_shapes(x64):
  x_ctx, y_ctx, x_query, lrs_KxM = _least_squares_problem(7)
  run = jax.jit(functools.partial(gdattn.regression_gd, kernel="rbf",
                                  kernel_scale=0.5))
  # [K] equals [K, M] with the same rate for every output.
  lrs_K = lrs_KxM[:, 0]
  chex.assert_trees_all_close(
      run(x_ctx, y_ctx, x_query, lrs_K),
      run(x_ctx, y_ctx, x_query, np.repeat(lrs_K[:, None], 2, axis=1)),
      rtol=0, atol=F64_ATOL,
  )
  # [K, M]: outputs are decoupled, output m follows its own column of rates.
  both_TxM = run(x_ctx, y_ctx, x_query, lrs_KxM)
  for m in range(2):
    chex.assert_trees_all_close(
        both_TxM[:, m:m + 1],
        run(x_ctx, y_ctx[:, m:m + 1], x_query, lrs_KxM[:, m]),
        rtol=0, atol=F64_ATOL,
    )


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_regression_matches_numpy_loop(x64, kernel):
  x_ctx, y_ctx, x_query, lrs_KxM = _least_squares_problem(8)
  s = SCALES[kernel]
  traj = _regression_trajectory(x_ctx, y_ctx, x_query, lrs_KxM, kernel=kernel,
                                kernel_scale=s)
  a_q, a_c = np_kernel(x_query, x_ctx, kernel, s), np_kernel(x_ctx, x_ctx, kernel, s)
  f_q, f_c = np.zeros((4, 2)), np.zeros((12, 2))
  for k, lr_M in enumerate(lrs_KxM):
    chex.assert_trees_all_close(traj[k], f_q, rtol=0, atol=F64_ATOL)
    update_NxM = lr_M * (y_ctx - f_c)
    f_q, f_c = f_q + a_q @ update_NxM, f_c + a_c @ update_NxM
  chex.assert_trees_all_close(traj[-1], f_q, rtol=0, atol=F64_ATOL)


def _plain_expected_embedding(f, w_e):
  """E by autodiff through the softmax: what the custom rule must equal."""
  return jax.nn.softmax(f @ w_e.T, axis=-1) @ w_e


@pytest.mark.parametrize("wrt", [(0,), (1,), (0, 1)])
def test_expected_embedding_derivatives_equal_autodiff_of_the_formula(x64, wrt):
  # Leading dims [B, N] as GD's vmapped steps give it; logits of O(3) so that
  # the class probabilities are far from uniform. wrt (0,) or (1,) alone
  # takes the rule's branches where the other tangent is a symbolic zero.
  key_f, key_w = jax.random.split(jax.random.PRNGKey(21))
  f_BxNxE = 2.0 * jax.random.normal(key_f, (3, 7, 5), jnp.float64)
  w_e_CxE = jax.random.normal(key_w, (9, 5), jnp.float64)
  args = (f_BxNxE, w_e_CxE)
  chex.assert_trees_all_close(gdattn.expected_embedding(*args),
                              _plain_expected_embedding(*args), atol=F64_ATOL)
  for fn in (jax.jacrev, jax.jacfwd):
    got = fn(lambda *a: jnp.sin(gdattn.expected_embedding(*a)), wrt)(*args)
    want = fn(lambda *a: jnp.sin(_plain_expected_embedding(*a)), wrt)(*args)
    chex.assert_trees_all_close(got, want, atol=F64_ATOL)
  # Second order (the rule is itself differentiated): the Hessian w.r.t. W_e.
  hessian = lambda e_fn: jax.hessian(
      lambda w: jnp.sum(jnp.sin(e_fn(f_BxNxE, w))))(w_e_CxE)
  chex.assert_trees_all_close(hessian(gdattn.expected_embedding),
                              hessian(_plain_expected_embedding), atol=F64_ATOL)


GRAD_ARGS = ("lrs", "w_e", "kernel_scale", "x_ctx", "x_query")


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
def test_gradients_match_finite_differences(x64, kernel):
  p = make_problem(20, n=7, t=3, d=3, c=4, e=3, k=3)
  y_ctx, y_query = p.pop("y_ctx"), np.array([0, 3, 1])
  # exp(s <x, x_i>) grows fast; a smaller s keeps the FD truncation small.
  p["kernel_scale"] = np.float64(SCALES[kernel] * (0.5 if kernel == "exp" else 1.0))
  if kernel == "laplacian":
    # |.| has a kink at 0: every compared coordinate pair must sit far from it
    # (the diagonal x_i - x_i is identically 0 and differentiates to 0).
    gaps_ctx = np.abs(p["x_ctx"][:, None] - p["x_ctx"][None])
    off_diag = gaps_ctx[~np.eye(7, dtype=bool)]
    gaps_query = np.abs(p["x_query"][:, None] - p["x_ctx"][None])
    assert min(off_diag.min(), gaps_query.min()) > 1e3 * GRAD_EPS
  flat_P, unravel = jax.flatten_util.ravel_pytree(p)

  def nll(flat):
    q = unravel(flat)
    f_TxE = gdattn.categorical_gd(
        q["x_ctx"], y_ctx, q["x_query"], q["w_e"], q["lrs"],
        kernel=kernel, kernel_scale=q["kernel_scale"],
    )
    logp_TxC = jax.nn.log_softmax(f_TxE @ q["w_e"].T)
    return -jnp.mean(logp_TxC[jnp.arange(3), y_query])

  # Central differences along every coordinate in one vmapped call, and the
  # reverse-mode gradient, in one compiled function.
  steps_PxP = GRAD_EPS * np.eye(flat_P.size)

  @jax.jit
  def derivatives(flat_P):
    value, grad_P = jax.value_and_grad(nll)(flat_P)
    values_2P = jax.vmap(nll)(
        jnp.concatenate([flat_P + steps_PxP, flat_P - steps_PxP])
    )
    plus_P, minus_P = jnp.split(values_2P, 2)
    return value, grad_P, (plus_P - minus_P) / (2 * GRAD_EPS)

  value, grad_P, fd_P = derivatives(flat_P)
  assert value.dtype == jnp.float64
  grads, fds = unravel(grad_P), unravel(fd_P)
  for name in GRAD_ARGS:
    assert np.max(np.abs(grads[name])) > 1e-4, name  # the loss depends on it.
    chex.assert_trees_all_close(grads[name], fds[name], rtol=0, atol=GRAD_TOL)
