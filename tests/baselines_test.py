"""Tests for gdattn.baselines: per-context few-shot baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdattn import baselines
from gdattn.data import fewshot
from gdattn.data import images

WAYS = 5


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
