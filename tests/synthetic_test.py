"""Tests for gdattn/data/synthetic.py (high_dim, random_grid, mixture)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdattn.data import synthetic

C, E, D = 25, 5, 10
N, T, B, J = 20, 3, 8, 5
# float32 generator vs float64 numpy recomputation of softmax(W f): f reaches
# ~amplitude * J * |w| ~ 1e2, so logits carry ~1e-5 relative rounding error.
F32_PROB_ATOL = 1e-4
# The bump at the nearest centre is exp(-d2 / (d2 / ln 10)); float32 rounding.
F32_BUMP_RTOL = 1e-5


@functools.cache
def _w_data(seed=0):
  return synthetic.class_embeddings(jax.random.key(seed), C, E)


def _logits(scale, seed=7):
  return synthetic.mixture_components(jax.random.key(seed), C, scale=scale)


# One jit per static configuration, with amplitude and mixture logits traced:
# XLA:CPU compiles a generator in ~1.5 s and eager dispatch is slower still,
# so the tests share two sizes, SMALL (the defaults) and BIG.
@functools.partial(
    jax.jit, static_argnames=("name", "num_contexts", "num_context_points",
                              "num_queries"))
def _generate(key, w, amplitude=10.0, logits=None, *, name,
              num_contexts=B, num_context_points=N, num_queries=T):
  kw = dict(num_contexts=num_contexts, num_context_points=num_context_points,
            num_queries=num_queries, amplitude=amplitude)
  if name == "mixture":
    kw["mixture_logits_MxC"] = logits
  return synthetic.make_contexts(key, name, w, **kw)


def _small(name, key, w=None, amplitude=10.0, logits=None):
  w = _w_data() if w is None else w
  logits = _logits(2.0) if logits is None else logits
  return _generate(key, w, amplitude, logits, name=name)


def _big(name, key, logits=None):
  logits = _logits(2.0) if logits is None else logits
  return _generate(key, _w_data(), 10.0, logits, name=name, num_contexts=1024,
                   num_context_points=8, num_queries=2)


NAMES = ("high_dim", "random_grid", "mixture")


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_ranges(name):
  c = _small(name, jax.random.key(1))
  d = 2 if name == "random_grid" else D
  j = 4 if name == "random_grid" else J
  chex.assert_shape(c.x_ctx, (B, N, d))
  chex.assert_shape(c.x_query, (B, T, d))
  chex.assert_shape(c.y_ctx, (B, N))
  chex.assert_shape(c.y_query, (B, T))
  chex.assert_shape(c.probs_ctx, (B, N, C))
  chex.assert_shape(c.probs_query, (B, T, C))
  chex.assert_shape(c.active_classes, (B, j))
  chex.assert_type([c.x_ctx, c.x_query, c.probs_ctx, c.probs_query],
                   jnp.float32)
  chex.assert_type([c.y_ctx, c.y_query, c.active_classes], jnp.int32)
  assert c.num_contexts == B and c.num_classes == C
  for y in (c.y_ctx, c.y_query, c.active_classes):
    assert int(y.min()) >= 0 and int(y.max()) < C
  for x in (c.x_ctx, c.x_query):
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
  for p in (c.probs_ctx, c.probs_query):
    assert float(p.min()) >= 0.0
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  # Active classes are distinct within each context.
  assert all(len(set(row)) == j for row in np.asarray(c.active_classes))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_key(name):
  c1 = _small(name, jax.random.key(3))
  c2 = _small(name, jax.random.key(3))
  c3 = _small(name, jax.random.key(4))
  chex.assert_trees_all_equal(c1, c2)
  assert not np.array_equal(c1.x_ctx, c3.x_ctx)
  assert not np.array_equal(c1.y_ctx, c3.y_ctx)


def test_eager_matches_jit_and_raw_keys_work():
  eager = synthetic.high_dim(jax.random.key(0), _w_data(), num_contexts=B,
                             num_context_points=N, num_queries=T)
  jitted = _small("high_dim", jax.random.key(0))
  np.testing.assert_array_equal(jitted.active_classes, eager.active_classes)
  np.testing.assert_array_equal(jitted.y_ctx, eager.y_ctx)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(jax.jit(synthetic.bayes_reference)(jitted),
                              synthetic.bayes_reference(eager), rtol=1e-5)
  # Legacy uint32 keys hold the same bits as jax.random.key(0).
  raw = synthetic.high_dim(jax.random.PRNGKey(0), _w_data(), num_contexts=B,
                           num_context_points=N, num_queries=T)
  chex.assert_trees_all_equal(raw, eager)
  # make_contexts dispatches by name to the same function.
  via_name = synthetic.make_contexts(
      jax.random.key(0), "high_dim", _w_data(), num_contexts=B,
      num_context_points=N, num_queries=T)
  chex.assert_trees_all_equal(via_name, eager)


def test_float64_dtype():
  with jax.enable_x64(True):
    gen = jax.jit(functools.partial(
        synthetic.high_dim, num_contexts=2, num_context_points=N,
        dtype=jnp.float64))
    c = gen(jax.random.key(0), _w_data())
    chex.assert_type([c.x_ctx, c.probs_query], jnp.float64)


def _numpy_bump_probs(x_PxD, mu_JxD, classes_J, w_CxE, amplitude):
  """float64 reimplementation of SPEC section 5 from the same draws."""
  x, mu, w = (np.asarray(a, np.float64) for a in (x_PxD, mu_JxD, w_CxE))
  d2_mu = ((mu[:, None] - mu[None]) ** 2).sum(-1)
  np.fill_diagonal(d2_mu, np.inf)
  sigma2 = -d2_mu.min(-1) / np.log(0.1)
  bumps = np.exp(-((x[:, None] - mu[None]) ** 2).sum(-1) / sigma2)
  # Only the J chosen classes' embeddings enter f.
  f = amplitude * bumps @ w[np.asarray(classes_J)]
  logits = f @ w.T
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  return p / p.sum(-1, keepdims=True)


@jax.jit
def _per_context_draws(keys_B, w, amplitude):
  one = lambda k: synthetic._bump_context(
      k, w, jnp.zeros((C,)), num_points=N + T, input_dim=D,
      num_active_classes=J, amplitude=amplitude, dtype=jnp.float32)
  return jax.vmap(one)(keys_B)


@pytest.mark.parametrize("amplitude", [10.0, 3.0])
def test_high_dim_matches_numpy_recomputation(amplitude):
  w, key = _w_data(), jax.random.key(5)
  c = _small("high_dim", key, amplitude=amplitude)
  draws = _per_context_draws(jax.random.split(key, B), w, amplitude)
  # high_dim is exactly the vmapped per-context function, split at N.
  np.testing.assert_array_equal(c.active_classes, draws["classes_J"])
  np.testing.assert_array_equal(c.x_ctx, draws["x_PxD"][:, :N])
  np.testing.assert_array_equal(c.x_query, draws["x_PxD"][:, N:])
  np.testing.assert_array_equal(c.y_query, draws["y_P"][:, N:])
  for b in range(B):
    p = _numpy_bump_probs(draws["x_PxD"][b], draws["mu_JxD"][b],
                          draws["classes_J"][b], w, amplitude)
    np.testing.assert_allclose(c.probs_ctx[b], p[:N], atol=F32_PROB_ATOL)
    np.testing.assert_allclose(c.probs_query[b], p[N:], atol=F32_PROB_ATOL)


def test_bandwidth_rule_bump_is_point_one_at_nearest_centre():
  mu_JxD = jax.random.normal(jax.random.key(0), (J, D))
  sigma2_J = synthetic._bandwidths(mu_JxD)
  # bumps[i, j]: bump of centre j evaluated at centre i.
  bumps_JxJ = np.asarray(synthetic._bumps(mu_JxD, mu_JxD, sigma2_J))
  off = bumps_JxJ + np.diag(np.full(J, -np.inf))
  np.testing.assert_allclose(off.max(axis=0), 0.1, rtol=F32_BUMP_RTOL)
  np.testing.assert_allclose(np.diag(bumps_JxJ), 1.0)
  # The nearest other centre is the one where the bump is largest.
  d2 = ((np.asarray(mu_JxD)[:, None] - np.asarray(mu_JxD)[None]) ** 2).sum(-1)
  np.fill_diagonal(d2, np.inf)
  np.testing.assert_array_equal(off.argmax(axis=0), d2.argmin(axis=0))


def test_zero_amplitude_gives_uniform_probs():
  c = _small("high_dim", jax.random.key(0), amplitude=0.0)
  np.testing.assert_allclose(c.probs_ctx, 1.0 / C, rtol=1e-6)


def test_label_frequencies_match_probs():
  # Pooled over 10240 points: class counts O_c vs E_c = sum_i p_ic. O_c has
  # variance sum_i p_ic (1 - p_ic) <= E_c, so the Pearson statistic has mean
  # <= C - 1; the bound below is ~5 standard deviations above that.
  c = _big("high_dim", jax.random.key(11))
  y = np.concatenate([np.ravel(c.y_ctx), np.ravel(c.y_query)])
  p = np.concatenate([np.reshape(c.probs_ctx, (-1, C)),
                      np.reshape(c.probs_query, (-1, C))]).astype(np.float64)
  observed = np.bincount(y, minlength=C)
  expected = p.sum(0)
  keep = expected > 5
  stat = ((observed - expected)[keep] ** 2 / expected[keep]).sum()
  assert stat < C + 5 * math.sqrt(2 * C), (stat, observed, expected)
  # Labels follow the per-point probabilities, not just their average: the
  # mean probability of the sampled label matches E[sum_c p_c^2].
  target = p[np.arange(len(y)), y].mean()
  np.testing.assert_allclose(target, (p ** 2).sum(-1).mean(), atol=0.01)


def test_bayes_reference():
  c = _big("high_dim", jax.random.key(2))
  ref = synthetic.bayes_reference(c)
  assert set(ref) == {"bayes_max_prob", "bayes_target_prob", "bayes_nll"}
  for k in ("bayes_max_prob", "bayes_target_prob"):
    assert 0.0 <= float(ref[k]) <= 1.0
  assert float(ref["bayes_max_prob"]) >= float(ref["bayes_target_prob"])
  assert 0.0 <= float(ref["bayes_nll"]) < math.log(C)
  # Hand computation.
  p, y = np.asarray(c.probs_query), np.asarray(c.y_query)
  pt = np.take_along_axis(p, y[..., None], -1)[..., 0]
  np.testing.assert_allclose(ref["bayes_max_prob"], p.max(-1).mean(), 1e-6)
  np.testing.assert_allclose(ref["bayes_target_prob"], pt.mean(), 1e-6)
  np.testing.assert_allclose(ref["bayes_nll"], -np.log(pt).mean(), 1e-5)


def test_random_grid_quadrants():
  w = _w_data()
  c = _small("random_grid", jax.random.key(0))
  probs_fn = jax.jit(jax.vmap(synthetic.random_grid_probs,
                              in_axes=(0, None, 0)))
  x_BxPxD = jnp.concatenate([c.x_ctx, c.x_query], axis=1)
  p_BxPxC = np.concatenate([c.probs_ctx, c.probs_query], axis=1)
  # The decision-map helper reproduces the generator at the sampled points.
  np.testing.assert_allclose(probs_fn(c.active_classes, w, x_BxPxD), p_BxPxC,
                             rtol=1e-5, atol=1e-7)
  quadrants = np.asarray(jax.vmap(synthetic.random_grid_quadrant)(x_BxPxD))
  for q, p in zip(quadrants, p_BxPxC):
    present = np.unique(q)
    for quadrant in present:
      rows = p[q == quadrant]
      np.testing.assert_array_equal(rows, np.broadcast_to(rows[0], rows.shape))
    # Distinct quadrants get distinct classes, hence distinct probabilities.
    assert len({tuple(p[q == k][0]) for k in present}) == len(present)


def test_random_grid_quadrant_order():
  x = jnp.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
  np.testing.assert_array_equal(synthetic.random_grid_quadrant(x),
                                [0, 1, 2, 3])
  w = _w_data()
  classes = jnp.array([3, 1, 4, 6])
  p = synthetic.random_grid_probs(classes, w, x, 10.0)
  expected = jax.nn.softmax(10.0 * w[classes] @ w.T, -1)
  np.testing.assert_allclose(p, expected, rtol=1e-6)


def _class_tv_from_uniform(c):
  counts = np.bincount(np.asarray(c.active_classes).ravel(), minlength=C)
  return 0.5 * np.abs(counts / counts.sum() - 1.0 / C).sum()


def test_mixture_class_usage_is_non_uniform():
  key = jax.random.key(9)
  # 5120 uniform draws over 25 classes: expected TV ~ 0.028, sd ~ 0.005.
  uniform_tv = 0.05
  assert _class_tv_from_uniform(_big("high_dim", key)) < uniform_tv
  assert _class_tv_from_uniform(_big("mixture", key, _logits(5.0))) > 0.2
  # Scale 0 is uniform class choice, i.e. high_dim's law.
  assert _class_tv_from_uniform(_big("mixture", key, _logits(0.0))) < uniform_tv


def test_mixture_single_component_follows_its_softmax():
  # Every component equally sharp on class 7 (M = 10 keeps the jitted
  # shapes): class 7 is among every context's J classes.
  logits = jnp.zeros((10, C)).at[:, 7].set(20.0)
  c = _small("mixture", jax.random.key(0), logits=logits)
  assert np.all(np.any(np.asarray(c.active_classes) == 7, axis=1))


def test_vmap_over_keys_and_contexts_pytree():
  w = _w_data()
  gen = lambda k: synthetic.high_dim(k, w, num_contexts=2,
                                     num_context_points=N)
  c = jax.jit(jax.vmap(gen))(jax.random.split(jax.random.key(0), 3))
  chex.assert_shape(c.x_ctx, (3, 2, N, D))
  # A Contexts batch is a pytree: vmap a function that takes one.
  max_prob = jax.jit(jax.vmap(
      lambda cc: synthetic.bayes_reference(cc)["bayes_max_prob"]))(c)
  chex.assert_shape(max_prob, (3,))


def test_make_contexts_unknown_name():
  assert set(synthetic.GENERATORS) == set(NAMES)
  with pytest.raises(ValueError, match="high_dim.*mixture.*random_grid"):
    synthetic.make_contexts(jax.random.key(0), "gaussian", _w_data(),
                            num_contexts=2)


_OK = dict(num_contexts=2, num_context_points=N)


@pytest.mark.parametrize(
    "kwargs, w_shape, match",
    [
        (dict(num_active_classes=26), (C, E), "num_active_classes.*26"),
        (dict(num_active_classes=1), (C, E), "num_active_classes"),
        (dict(num_context_points=0), (C, E), "num_context_points.*0"),
        (dict(num_queries=0), (C, E), "num_queries"),
        (dict(num_contexts=2.5), (C, E), "num_contexts"),
        (dict(num_contexts=True), (C, E), "num_contexts"),
        (dict(input_dim=0), (C, E), "input_dim"),
        (dict(amplitude=float("nan")), (C, E), "amplitude.*nan"),
        (dict(amplitude=float("inf")), (C, E), "amplitude"),
        (dict(dtype=jnp.int32), (C, E), "dtype"),
        (dict(), (C,), r"w_data_CxE.*\(25,\)"),
        (dict(), (C, E, 1), "w_data_CxE"),
    ],
)
def test_high_dim_bad_arguments(kwargs, w_shape, match):
  with pytest.raises(ValueError, match=match):
    synthetic.high_dim(jax.random.key(0), np.zeros(w_shape),
                       **{**_OK, **kwargs})


def test_other_bad_arguments():
  key, w = jax.random.key(0), np.zeros((C, E))
  with pytest.raises(ValueError, match=r"mixture_logits_MxC.*25.*\(10, 24\)"):
    synthetic.mixture(key, w, np.zeros((10, C - 1)), **_OK)
  with pytest.raises(ValueError, match="mixture_logits_MxC"):
    synthetic.mixture(key, w, np.zeros((C,)), **_OK)
  with pytest.raises(ValueError, match="w_data_CxE.*C >= 4"):
    synthetic.random_grid(key, np.zeros((3, E)), **_OK)
  with pytest.raises(ValueError, match="amplitude"):
    synthetic.random_grid(key, w, amplitude=float("nan"), **_OK)
  with pytest.raises(ValueError, match="scale"):
    synthetic.mixture_components(key, C, scale=-1.0)
  with pytest.raises(ValueError, match="num_components"):
    synthetic.mixture_components(key, C, num_components=0)
  with pytest.raises(ValueError, match="num_classes"):
    synthetic.class_embeddings(key, 1, E)
  with pytest.raises(ValueError, match="embed_dim"):
    synthetic.class_embeddings(key, C, 0)
