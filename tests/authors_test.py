"""Tests for gdattn/data/authors.py against the authors' own draw.

The fixture was made by running Wang et al.'s data functions with their key
order; it stores W_data, contexts 0..3 of each split and each split's Bayes
references over all 2048 contexts.
"""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdattn.data import authors
from gdattn.data import contexts as contexts_lib
from gdattn.data import synthetic

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures",
                       "authors_high_dim_draw.npz")
# Same float32 operations in the same order: agreement is exact in practice;
# 1e-6 leaves room for a libm that rounds exp/log differently in the last bit.
VALUE_ATOL = 1e-6
BAYES_ATOL = 1e-6
NUM_STORED = 4


@pytest.fixture(scope="module")
def fixture():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def _assert_matches_fixture(w_data_CxE, ctx, fixture, split):
  chex.assert_trees_all_close(np.asarray(w_data_CxE), fixture["W_data"],
                              atol=VALUE_ATOL, rtol=0)
  idx = fixture[f"{split}_idx"]
  np.testing.assert_array_equal(idx, np.arange(NUM_STORED))
  chex.assert_trees_all_close(
      (np.asarray(ctx.x_ctx[idx]), np.asarray(ctx.x_query[idx, 0]),
       np.asarray(ctx.probs_query[idx, 0])),
      (fixture[f"{split}_x"], fixture[f"{split}_x_query"],
       fixture[f"{split}_probs_query"]),
      atol=VALUE_ATOL, rtol=0)
  np.testing.assert_array_equal(np.asarray(ctx.y_ctx[idx]),
                                fixture[f"{split}_y"])
  np.testing.assert_array_equal(np.asarray(ctx.y_query[idx, 0]),
                                fixture[f"{split}_y_query"])


@pytest.mark.parametrize("split", authors.SPLITS)
def test_full_split_matches_authors_draw(fixture, split):
  w_data_CxE, ctx = authors.authors_high_dim(split)
  _assert_matches_fixture(w_data_CxE, ctx, fixture, split)
  bayes = authors.authors_bayes_reference(split)
  chex.assert_trees_all_close(
      (float(bayes["bayes_max_prob"]), float(bayes["bayes_target_prob"])),
      (float(fixture[f"{split}_bayes_max_prob"]),
       float(fixture[f"{split}_bayes_target_prob"])),
      atol=BAYES_ATOL, rtol=0)


def test_test_split_bayes_is_the_papers_reference():
  bayes = contexts_lib.bayes_reference(authors.authors_high_dim("test")[1])
  assert round(float(bayes["bayes_max_prob"]), 4) == 0.8027
  assert round(float(bayes["bayes_target_prob"]), 4) == 0.7337


def test_shapes_dtypes_and_consistency():
  w_data_CxE, ctx = authors.authors_high_dim("val")
  b, n, d, c, j = (authors.NUM_CONTEXTS, authors.NUM_CONTEXT_POINTS,
                   authors.INPUT_DIM, authors.NUM_CLASSES,
                   authors.NUM_ACTIVE_CLASSES)
  chex.assert_shape(w_data_CxE, (c, authors.DATA_EMBED_DIM))
  chex.assert_shape((ctx.x_ctx, ctx.y_ctx, ctx.x_query, ctx.y_query,
                     ctx.probs_ctx, ctx.probs_query, ctx.active_classes),
                    ((b, n, d), (b, n), (b, 1, d), (b, 1), (b, n, c),
                     (b, 1, c), (b, j)))
  chex.assert_type((ctx.x_ctx, ctx.probs_ctx, ctx.y_ctx, ctx.active_classes),
                   (jnp.float32, jnp.float32, jnp.int32, jnp.int32))
  assert float(jnp.min(ctx.x_ctx)) >= -1.0 and float(jnp.max(ctx.x_ctx)) < 1.0
  sums = jnp.sum(ctx.probs_ctx, axis=-1)
  chex.assert_trees_all_close(sums, jnp.ones_like(sums), atol=1e-5)
  sorted_BxJ = jnp.sort(ctx.active_classes, axis=-1)
  assert bool(jnp.all(sorted_BxJ[:, 1:] != sorted_BxJ[:, :-1]))
  # Same W_data in every split; the splits themselves differ.
  w_train, ctx_train = authors.authors_high_dim("train")
  np.testing.assert_array_equal(np.asarray(w_train), np.asarray(w_data_CxE))
  assert not np.array_equal(np.asarray(ctx_train.x_query),
                            np.asarray(ctx.x_query))


def test_cached_per_split():
  assert authors.authors_high_dim("test") is authors.authors_high_dim("test")


def test_x64_does_not_change_the_draw(fixture, x64):
  # The authors drew in float32; __wrapped__ bypasses the cache.
  w_data_CxE, ctx = authors.authors_high_dim.__wrapped__("val")
  assert ctx.x_ctx.dtype == jnp.float32
  _assert_matches_fixture(w_data_CxE, ctx, fixture, "val")
  assert jax.config.jax_enable_x64


@pytest.mark.parametrize("before", [True, False])
def test_threefry_flag_restored(before):
  previous = jax.config.jax_threefry_partitionable
  try:
    jax.config.update("jax_threefry_partitionable", before)
    authors.authors_w_data()
    assert jax.config.jax_threefry_partitionable is before
  finally:
    jax.config.update("jax_threefry_partitionable", previous)


def test_flags_restored_on_error(monkeypatch):
  def boom(*_):
    assert not jax.config.jax_threefry_partitionable
    raise RuntimeError("boom")

  monkeypatch.setattr(authors, "_w_data_ExC", boom)
  previous = jax.config.jax_threefry_partitionable
  try:
    jax.config.update("jax_threefry_partitionable", True)
    with pytest.raises(RuntimeError, match="boom"):
      authors.authors_high_dim.__wrapped__("test")
    assert jax.config.jax_threefry_partitionable
  finally:
    jax.config.update("jax_threefry_partitionable", previous)


def test_the_flag_matters():
  # Guards the reason for the flag: with partitionable threefry the same
  # keys give other values, so a draw that forgot the flag would fail above.
  key = jax.random.split(jax.random.PRNGKey(authors.ROOT_SEED), 4)[3]
  previous = jax.config.jax_threefry_partitionable
  try:
    jax.config.update("jax_threefry_partitionable", True)
    other = np.asarray(jax.random.normal(jax.random.split(key)[1], (5, 25)))
  finally:
    jax.config.update("jax_threefry_partitionable", previous)
  assert not np.allclose(other.T, np.asarray(authors.authors_w_data()))


def test_training_set_size_draws_split_of_l_keys():
  # Their training-set sweep: L contexts from split(train key, L), a set of
  # its own rather than the first L of the 2048 (threefry's split depends on
  # the count). Recomputed here from the key path alone.
  num = 4
  _, ctx = authors.authors_high_dim("train", num)
  assert ctx.x_ctx.shape == (num, authors.NUM_CONTEXT_POINTS, authors.INPUT_DIM)
  previous = jax.config.jax_threefry_partitionable
  try:
    jax.config.update("jax_threefry_partitionable", False)
    train_key = jax.random.split(jax.random.PRNGKey(authors.ROOT_SEED), 4)[2]
    keys = jax.random.split(train_key, num)
    k_x = [jax.random.split(k, 7)[1] for k in keys]
    want = np.stack([np.asarray(jax.random.uniform(
        k, (authors.NUM_CONTEXT_POINTS, authors.INPUT_DIM), minval=-1.0,
        maxval=1.0)) for k in k_x])
  finally:
    jax.config.update("jax_threefry_partitionable", previous)
  chex.assert_trees_all_close(np.asarray(ctx.x_ctx), want, atol=VALUE_ATOL,
                              rtol=0)
  full = np.asarray(authors.authors_high_dim("train")[1].x_ctx[:num])
  assert not np.allclose(np.asarray(ctx.x_ctx), full)


@pytest.mark.parametrize("num", [0, -1, 2.0, True, None])
def test_bad_num_contexts(num):
  with pytest.raises(ValueError, match="num_contexts must be an int >= 1"):
    authors.authors_high_dim("train", num)


@pytest.mark.parametrize("split", ["eval", "TEST", None])
def test_bad_split(split):
  with pytest.raises(ValueError, match="split must be one of"):
    authors.authors_high_dim(split)


def test_exports():
  assert "authors_high_dim" in authors.AUTHORS_DATASETS
  assert synthetic.authors_high_dim is authors.authors_high_dim


def _authors_config(**data):
  from gdattn import config as config_lib  # pylint: disable=g-import-not-at-top
  from gdattn.configs import synthetic as synthetic_configs  # pylint: disable=g-import-not-at-top
  c = synthetic_configs.get_config("paper")
  c.data.name = "authors_high_dim"
  for field, value in data.items():
    setattr(c.data, field, value)
  return config_lib.from_configdict(c)


def test_task_varies_only_the_training_split():
  from gdattn.tasks import synthetic as synthetic_task  # pylint: disable=g-import-not-at-top
  cfg = _authors_config(num_train=512)
  data = synthetic_task.make_contexts(cfg.data)
  assert data["train"].x_ctx.shape[0] == 512
  for split in ("val", "test"):
    assert data[split] is authors.authors_high_dim(split, authors.NUM_CONTEXTS)[1]


@pytest.mark.parametrize("field,value", [("num_val", 100), ("num_test", 4096),
                                         ("num_classes", 10), ("num_train", 0)])
def test_task_refuses_other_settings(field, value):
  with pytest.raises(ValueError, match=f"data.{field}"):
    _authors_config(**{field: value})
