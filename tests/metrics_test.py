"""Tests for gdattn/metrics.py against hand-computed numpy values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdattn import metrics

# float32 softmax/log on O(1) logits: a few ulps of relative error.
RTOL_F32 = 1e-5

LOGITS_BxC = np.array(
    [[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 2.5], [1.0, 1.0, 4.0, 0.5]],
    np.float32,
)
LABELS_B = np.array([0, 3, 1], np.int32)
TRUE_PROBS_BxC = np.array(
    [[0.7, 0.1, 0.1, 0.1], [0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]],
    np.float32,
)


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_values():
  p = _np_softmax(LOGITS_BxC.astype(np.float64))
  rows = np.arange(len(LABELS_B))
  p_target = p[rows, LABELS_B]
  return {
      "nll": -np.mean(np.log(p_target)),
      "accuracy": 1 / 3,  # argmaxes 0, 1, 2: only the first query is right.
      # Label ranks 0, 1, 2: top_k breaks the 1 = 1 tie toward index 0.
      "top3_accuracy": 1.0,
      "target_prob_mse": np.mean(
          (p_target - TRUE_PROBS_BxC[rows, LABELS_B]) ** 2
      ),
      "bayes_max_prob": np.mean([0.7, 0.5, 0.25]),
      "bayes_target_prob": np.mean([0.7, 0.3, 0.25]),
  }


class MetricsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_compute_metrics_matches_numpy(self):
    fn = self.variant(metrics.compute_metrics)
    got = fn(LOGITS_BxC, LABELS_B, TRUE_PROBS_BxC)
    want = _np_values()
    self.assertEqual(set(got), set(want))
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, rtol=RTOL_F32, err_msg=name)

  @chex.variants(with_jit=True, without_jit=True)
  def test_top1_and_top2(self):
    top_k = self.variant(metrics.top_k_accuracy, static_argnums=2)
    np.testing.assert_allclose(top_k(LOGITS_BxC, LABELS_B, 1), 1 / 3)
    np.testing.assert_allclose(top_k(LOGITS_BxC, LABELS_B, 2), 2 / 3)


def test_without_true_probs_has_only_model_metrics():
  got = metrics.compute_metrics(LOGITS_BxC, LABELS_B, top_k=2)
  assert set(got) == {"nll", "accuracy", "top2_accuracy"}


@pytest.mark.parametrize("num_classes", [2, 5, 25])
def test_uniform_logits_give_log_c(num_classes):
  logits = jnp.full((7, num_classes), 3.7)
  labels = jnp.arange(7) % num_classes
  np.testing.assert_allclose(
      metrics.nll(logits, labels), np.log(num_classes), rtol=RTOL_F32
  )


def test_nll_is_stable_for_huge_logits():
  logits = jnp.array([[1e4, 0.0, -1e4]])
  assert np.isfinite(metrics.nll(logits, jnp.array([2])))
  np.testing.assert_allclose(metrics.nll(logits, jnp.array([2])), 2e4)


def test_leading_dims_are_flattened():
  logits = jnp.asarray(LOGITS_BxC)
  labels = jnp.asarray(LABELS_B)
  flat = metrics.compute_metrics(logits, labels, TRUE_PROBS_BxC)
  stacked = metrics.compute_metrics(
      jnp.stack([logits, logits]),
      jnp.stack([labels, labels]),
      np.stack([TRUE_PROBS_BxC, TRUE_PROBS_BxC]),
  )
  for name in flat:
    np.testing.assert_allclose(stacked[name], flat[name], rtol=RTOL_F32)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_at_least_accuracy(k):
  key_logits, key_labels = jax.random.split(jax.random.key(0))
  # Rounded logits make ties common: the tie-breaking must agree with argmax.
  logits = jnp.round(jax.random.normal(key_logits, (4, 64, 6)))
  labels = jax.random.randint(key_labels, (4, 64), 0, 6)
  for b in range(4):
    assert metrics.top_k_accuracy(logits[b], labels[b], k) >= metrics.accuracy(
        logits[b], labels[b]
    )


def test_shape_errors_name_the_argument():
  shape_msg = r"labels: expected shape \(3,\).*\(4,\)"
  with pytest.raises(ValueError, match=shape_msg):
    metrics.nll(LOGITS_BxC, np.zeros(4, np.int32))
  with pytest.raises(ValueError, match=r"true_probs: expected shape \(3, 4\)"):
    metrics.compute_metrics(LOGITS_BxC, LABELS_B, TRUE_PROBS_BxC[:, :3])
  with pytest.raises(ValueError, match="labels: expected an integer dtype"):
    metrics.accuracy(LOGITS_BxC, LABELS_B.astype(np.float32))
  with pytest.raises(ValueError, match="k: expected"):
    metrics.top_k_accuracy(LOGITS_BxC, LABELS_B, 5)
