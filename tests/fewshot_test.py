"""Tests for gdattn.data.fewshot: the n-way k-shot context sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdattn.data import fewshot

NUM_CLASSES, PER_CLASS, D = 12, 15, 3


def _data():
  labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
  # feature 0 = example index, so contexts reveal which images they hold
  x = np.stack([np.arange(labels.size), labels, np.zeros(labels.size)], 1)
  return x.astype(np.float32), labels


@pytest.mark.parametrize("ways,shots,queries", [(5, 10, 1), (3, 4, 3)])
def test_sampler_invariants(ways, shots, queries):
  x, labels = _data()
  table = fewshot.class_table(labels, np.arange(2, NUM_CLASSES))
  c = fewshot.fixed_contexts(jax.random.key(0), x, table, num_contexts=200,
                             ways=ways, shots=shots, num_queries=queries)
  n = ways * shots
  assert c.x_ctx.shape == (200, n, D) and c.y_ctx.dtype == jnp.int32
  assert c.x_query.shape == (200, queries, D) and c.y_query.dtype == jnp.int32
  classes, y_ctx = np.asarray(c.classes), np.asarray(c.y_ctx)
  idx_ctx, idx_q = np.asarray(c.idx_ctx), np.asarray(c.idx_query)
  np.testing.assert_array_equal(np.asarray(c.x_ctx[..., 0]), idx_ctx)
  for b in range(200):
    assert len(set(classes[b])) == ways and classes[b].min() >= 2
    assert np.bincount(y_ctx[b], minlength=ways).tolist() == [shots] * ways
    # label j is the class at position j; original ids come back via labels
    np.testing.assert_array_equal(classes[b][y_ctx[b]], labels[idx_ctx[b]])
    np.testing.assert_array_equal(classes[b][np.asarray(c.y_query[b])],
                                  labels[idx_q[b]])
    assert len(set(idx_ctx[b])) == n
    assert not set(idx_q[b]) & set(idx_ctx[b])
    assert len(set(idx_q[b])) == queries
  # labels are a fresh random assignment: class 2 gets every label somewhere
  where = classes == 2
  assert len(set(np.nonzero(where)[1])) == ways
  # queries cover all labels
  assert set(np.asarray(c.y_query).ravel()) == set(range(ways))


def test_sampler_uses_all_images_of_a_class():
  x, labels = _data()
  table = fewshot.class_table(labels, np.arange(5))
  c = fewshot.fixed_contexts(jax.random.key(1), x, table, num_contexts=200,
                             ways=5, shots=10)
  used = set(np.asarray(c.idx_ctx).ravel()) | set(np.asarray(c.idx_query).ravel())
  assert used == set(range(5 * PER_CLASS))


def test_sample_contexts_jits_and_depends_on_key():
  x, labels = _data()
  table = fewshot.class_table(labels, np.arange(NUM_CLASSES))
  sample = jax.jit(lambda k: fewshot.sample_contexts(
      k, x, table, num_contexts=4, ways=5, shots=3))
  a, b = sample(jax.random.key(0)), sample(jax.random.key(1))
  assert not np.array_equal(a.idx_ctx, b.idx_ctx)
  np.testing.assert_array_equal(a.idx_ctx, sample(jax.random.key(0)).idx_ctx)


def test_examples_restrict_the_pool():
  x, labels = _data()
  allowed = np.arange(labels.size) % 5 != 0
  table = fewshot.class_table(labels, np.arange(NUM_CLASSES), allowed)
  c = fewshot.fixed_contexts(jax.random.key(2), x, table, num_contexts=200,
                             ways=5, shots=10)
  assert allowed[np.asarray(c.idx_ctx)].all()
  assert allowed[np.asarray(c.idx_query)].all()


def test_check_table_errors():
  x, labels = _data()
  table = fewshot.class_table(labels, np.arange(4))
  with pytest.raises(ValueError, match="ways: expected <= 4"):
    fewshot.fixed_contexts(jax.random.key(0), x, table, num_contexts=2,
                           ways=5, shots=2)
  with pytest.raises(ValueError, match="shots: expected shots"):
    fewshot.fixed_contexts(jax.random.key(0), x, table, num_contexts=2,
                           ways=2, shots=15)


def test_same_classes_pools_are_disjoint():
  labels = np.repeat(np.arange(10), 40)
  pools = fewshot.make_pools(labels, mode="same_classes", eval_fraction=0.5)
  parts = [set(getattr(pools, f"{s}_examples")) for s in ("train", "val",
                                                          "test")]
  assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
  assert sum(map(len, parts)) == labels.size
  assert len(pools.val_examples) == 100  # half of the held-out half
  np.testing.assert_array_equal(pools.train_classes, np.arange(10))


def test_official_split_feeds_val_and_test():
  labels = np.repeat(np.arange(4), 10)
  split = np.array((["train"] * 6 + ["test"] * 4) * 4)
  pools = fewshot.make_pools(labels, split)
  assert (split[pools.train_examples] == "train").all()
  assert (split[np.concatenate([pools.val_examples, pools.test_examples])]
          == "test").all()


def test_held_out_classes_never_in_train():
  labels = np.repeat(np.arange(20), 30)
  pools = fewshot.make_pools(labels, mode="held_out_classes",
                             held_out_fraction=0.25, eval_fraction=0.5, seed=4)
  assert pools.test_classes.size == 5 and pools.train_classes.size == 15
  assert not set(labels[pools.train_examples]) & set(pools.test_classes)
  assert set(labels[pools.test_examples]) == set(pools.test_classes)
  assert set(labels[pools.val_examples]) <= set(pools.val_classes)
  assert not set(pools.val_examples) & set(pools.test_examples)
  x = np.zeros((labels.size, D), np.float32)
  table = fewshot.class_table(labels, pools.train_classes, pools.train_examples)
  c = fewshot.fixed_contexts(jax.random.key(0), x, table, num_contexts=200,
                             ways=5, shots=10)
  assert not set(np.asarray(c.classes).ravel()) & set(pools.test_classes)


def test_fewer_shots_keeps_classes_balanced():
  x, labels = _data()
  table = fewshot.class_table(labels, np.arange(NUM_CLASSES))
  c = fewshot.fixed_contexts(jax.random.key(3), x, table, num_contexts=200,
                             ways=5, shots=10)
  f = fewshot.fewer_shots(c, 3)
  assert f.x_ctx.shape == (200, 15, D)
  for b in range(20):
    assert np.bincount(np.asarray(f.y_ctx[b]), minlength=5).tolist() == [3] * 5
    assert set(np.asarray(f.idx_ctx[b])) <= set(np.asarray(c.idx_ctx[b]))
  np.testing.assert_array_equal(f.x_query, c.x_query)
  with pytest.raises(ValueError, match="shots"):
    fewshot.fewer_shots(c, 11)
