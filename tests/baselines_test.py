"""Tests for gdattn.baselines: per-context few-shot baselines."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdattn import baselines
from gdattn import metrics
from gdattn.data import fewshot
from gdattn.data import images

WAYS = 5
# float64: the closed-form gradient and autodiff differ by rounding only.
F64_TOL = 1e-9
# float32: 500 AdamW steps amplify rounding (Adam divides by sqrt(v), so tiny
# gradient differences early on are not damped); logits of scale ~10.
F32_TOL = 2e-3


@pytest.fixture(scope="module")
def digit_contexts():
  d = images.digits()
  x = d.flat() - d.flat().mean(0)
  table = fewshot.class_table(d.labels, np.arange(10))
  return fewshot.fixed_contexts(jax.random.key(0), x, table, num_contexts=64,
                                ways=WAYS, shots=5, num_queries=2)


@pytest.mark.parametrize("name,kwargs", [
    ("logistic_regression", dict(steps=100)),
    ("nearest_class_mean", {}),
    ("knn", dict(k=3)),
    ("gd_one_step", dict(learning_rate=5.0)),
])
def test_baselines_beat_chance_on_digits(digit_contexts, name, kwargs):
  c = digit_contexts
  scores = jax.jit(baselines.batched(name, ways=WAYS, **kwargs))(
      c.x_ctx, c.y_ctx, c.x_query)
  assert scores.shape == (64, 2, WAYS)
  m = baselines.scores_metrics(scores, c.y_query)
  assert float(m["accuracy"]) > 0.7  # chance is 0.2
  assert float(m["top2"]) >= float(m["accuracy"])
  assert np.isfinite(float(m["nll"]))


def test_logistic_regression_fits_its_context():
  # 9 points in 8 dims: any labelling is separable by a bias-free map
  x = jax.random.normal(jax.random.key(1), (9, 8))
  y = jnp.arange(9) % 3
  logits = baselines.logistic_regression(x, y, x, ways=3)
  assert logits.shape == (9, 3)
  np.testing.assert_array_equal(logits[:, -1], 0.0)  # the pinned class
  assert float(jnp.mean(jnp.argmax(logits, -1) == y)) == 1.0  # separable


def test_logistic_regression_zero_steps_is_uniform():
  x = jnp.ones((4, 2))
  logits = baselines.logistic_regression(x, jnp.arange(4) % 2, x, ways=2,
                                         steps=0)
  np.testing.assert_array_equal(logits, 0.0)


def test_nearest_class_mean_exact():
  x = jnp.array([[0.0], [2.0], [10.0], [12.0]])
  y = jnp.array([0, 0, 1, 1])
  s = baselines.nearest_class_mean(x, y, jnp.array([[1.0], [9.0]]), ways=3)
  np.testing.assert_allclose(s[:, :2], [[0.0, -100.0], [-64.0, -4.0]])
  assert bool(jnp.all(jnp.isneginf(s[:, 2])))  # class 2 absent


def test_knn_votes():
  x = jnp.array([[0.0], [0.1], [0.2], [5.0]])
  y = jnp.array([1, 1, 0, 0])
  s = baselines.knn(x, y, jnp.array([[0.05]]), ways=2, k=3)
  assert int(jnp.argmax(s[0])) == 1
  with pytest.raises(ValueError, match="k: expected"):
    baselines.knn(x, y, x, ways=2, k=5)


def test_batched_unknown_name():
  with pytest.raises(ValueError, match="name: expected one of"):
    baselines.batched("svm", ways=2)


def _reference_logistic_regression(x_NxD, y_N, q_TxD, ways, steps):
  """The baseline as the paper states it: autodiff of the mean NLL of
  [x W, 0] under full-batch AdamW from W = 0 (no layout tricks)."""
  opt = optax.adamw(baselines.LOGREG_LEARNING_RATE,
                    weight_decay=baselines.LOGREG_WEIGHT_DECAY)
  logits = lambda w, x: jnp.concatenate(
      [x @ w, jnp.zeros((x.shape[0], 1), x.dtype)], -1)
  loss = lambda w: metrics.nll(logits(w, x_NxD), y_N)

  def step(_, state):
    w, o = state
    u, o = opt.update(jax.grad(loss)(w), o, w)
    return optax.apply_updates(w, u), o

  w0 = jnp.zeros((x_NxD.shape[1], ways - 1), x_NxD.dtype)
  w, _ = jax.lax.fori_loop(0, steps, step, (w0, opt.init(w0)))
  return logits(w, q_TxD)


def _random_contexts(dtype, num=5, n=20, d=6, t=3, ways=4):
  k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(k1, (num, n, d), dtype)
  y = jax.random.randint(k2, (num, n), 0, ways)
  q = jax.random.normal(k3, (num, t, d), dtype)
  return x, y, q, ways


@pytest.mark.parametrize("dtype,tol", [("float64", F64_TOL),
                                       ("float32", F32_TOL)])
def test_logistic_regression_matches_autodiff_adamw(request, dtype, tol):
  if dtype == "float64":
    request.getfixturevalue("x64")
  x, y, q, ways = _random_contexts(jnp.dtype(dtype))
  ref = jax.jit(jax.vmap(lambda a, b, c: _reference_logistic_regression(
      a, b, c, ways, 60)))(x, y, q)
  got = jax.jit(baselines.batched("logistic_regression", ways=ways,
                                  steps=60))(x, y, q)
  assert got.dtype == x.dtype
  chex.assert_trees_all_close(got, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("chunk", [2, 64])  # 2: a remainder chunk
def test_batched_chunks_do_not_change_scores(x64, chunk):
  x, y, q, ways = _random_contexts(jnp.float64)
  whole = jax.jit(baselines.batched("logistic_regression", ways=ways,
                                    steps=20, contexts_per_chunk=5))(x, y, q)
  got = jax.jit(baselines.batched("logistic_regression", ways=ways,
                                  steps=20, contexts_per_chunk=chunk))(x, y, q)
  chex.assert_trees_all_close(got, whole, atol=F64_TOL, rtol=F64_TOL)
  ncm = baselines.batched("nearest_class_mean", ways=ways,
                          contexts_per_chunk=chunk)(x, y, q)
  chex.assert_trees_all_close(ncm, baselines.batched(
      "nearest_class_mean", ways=ways)(x, y, q), atol=F64_TOL, rtol=F64_TOL)


@pytest.mark.parametrize("chunk", [0, 2.0, True])
def test_batched_rejects_bad_chunk(chunk):
  with pytest.raises(ValueError, match="contexts_per_chunk: expected"):
    baselines.batched("knn", ways=2, contexts_per_chunk=chunk)
