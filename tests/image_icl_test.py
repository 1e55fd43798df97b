"""Tests for gdattn.tasks.image_icl and gdattn.data.features."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from gdattn import config as config_lib
from gdattn import models
from gdattn.configs import images
from gdattn.data import features as features_lib
from gdattn.data import fewshot
from gdattn.tasks import image_icl

TASK = image_icl.TASK
SMOKE = image_icl.DataConfig(dataset="digits", pca_dim=16, num_train=64,
                             num_val=32, num_test=32, shots=4)


@pytest.fixture(scope="module")
def smoke_datasets():
  return TASK.make_datasets(SMOKE)


def test_smoke_datasets_shapes(smoke_datasets):
  ds = smoke_datasets
  assert ds.sample_train is None and ds.train.x_ctx.shape == (64, 20, 16)
  assert ds.evals["val"].x_query.shape == (32, 1, 16)
  assert ds.info["num_classes"] == 5 and ds.info["input_dim"] == 16
  # same_classes: val / test images never appear in the train contexts
  train_idx = set(np.asarray(ds.train.idx_ctx).ravel())
  for split in ("val", "test"):
    c = ds.evals[split]
    assert not train_idx & set(np.asarray(c.idx_ctx).ravel())
    assert not train_idx & set(np.asarray(c.idx_query).ravel())


def test_deterministic_in_config(smoke_datasets):
  again = TASK.make_datasets(SMOKE)
  np.testing.assert_array_equal(again.evals["test"].idx_ctx,
                                smoke_datasets.evals["test"].idx_ctx)


@pytest.mark.parametrize("name", image_icl.models.MODELS)
def test_models_loss_predict_metrics(smoke_datasets, name):
  ds = smoke_datasets
  model = TASK.make_model(name, models.ICLModelConfig(), ds.info, nnx.Rngs(0))
  batch = jax.tree.map(lambda a: a[:8], ds.evals["val"])
  logits = TASK.predict(model, batch)
  assert logits.shape == (8, 1, 5)
  loss = TASK.loss(model, batch)
  assert loss.shape == () and np.isfinite(float(loss))
  m = TASK.metrics(logits, batch)
  assert set(m) == {"accuracy", "nll", "top2"}


def test_make_model_unknown():
  with pytest.raises(ValueError, match="model name must be one of"):
    TASK.make_model("svm", models.ICLModelConfig(), {"num_classes": 5,
                                                     "input_dim": 3},
                    nnx.Rngs(0))


def test_summary_baselines_beat_chance(smoke_datasets):
  s = TASK.summary(smoke_datasets)
  assert s["logreg_accuracy"] > 0.5 and s["ncm_accuracy"] > 0.5
  assert {"logreg_nll", "logreg_top2", "ncm_nll", "ncm_top2"} <= set(s)


def test_fresh_contexts_sampler():
  cfg = dataclasses.replace(SMOKE, fresh_contexts=True, steps_per_epoch=3)
  ds = TASK.make_datasets(cfg)
  assert ds.train is None and ds.steps_per_epoch == 3
  sample = jax.jit(ds.sample_train, static_argnums=1)
  a, b = sample(jax.random.key(0), 8), sample(jax.random.key(1), 8)
  assert a.x_ctx.shape == (8, 20, 16)
  assert not np.array_equal(a.idx_ctx, b.idx_ctx)


@pytest.mark.parametrize("field,value", [
    ("dataset", "imagenet"), ("features", "vgg"), ("ways", 1),
    ("shots", 0), ("split", "random"), ("held_out_fraction", 1.0),
    ("pca_dim", 0), ("features", "store"),
])
def test_validate_names_the_field(field, value):
  cfg = dataclasses.replace(SMOKE, **{field: value})
  with pytest.raises(ValueError, match=f"config.data.{field}"):
    TASK.validate(cfg, models.ICLModelConfig())


def test_validate_model_and_accepts_defaults():
  TASK.validate(image_icl.DataConfig(), models.ICLModelConfig())
  with pytest.raises(ValueError, match="config.model.kernel"):
    TASK.validate(SMOKE, models.ICLModelConfig(kernel="cosine"))


def test_too_many_shots_names_the_field():
  with pytest.raises(ValueError, match="config.data.shots"):
    TASK.make_datasets(dataclasses.replace(SMOKE, shots=40, num_train=2,
                                           num_val=2, num_test=2))


def test_feature_store_held_out_classes(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(20), 12)
  centres = rng.normal(size=(20, 6)) * 3
  path = tmp_path / "store.npz"
  np.savez(path, features=centres[labels] + rng.normal(size=(240, 6)),
           labels=labels)
  cfg = image_icl.DataConfig(
      dataset="feature_store", data_dir=str(path), features="store",
      split="held_out_classes", held_out_fraction=0.5, eval_fraction=0.5,
      shots=4, num_train=16, num_val=16, num_test=16, l2=True)
  TASK.validate(cfg, models.ICLModelConfig())
  ds = TASK.make_datasets(cfg)
  held = set(np.asarray(ds.evals["test"].classes).ravel())
  assert not held & set(np.asarray(ds.train.classes).ravel())
  np.testing.assert_allclose(np.linalg.norm(ds.train.x_ctx, axis=-1), 1.0,
                             rtol=1e-5)


def test_glyphs_held_out_classes(tmp_path):
  cfg = image_icl.DataConfig(
      dataset="glyphs", glyph_classes=20, glyph_images_per_class=12,
      cache_dir=str(tmp_path), split="held_out_classes",
      held_out_fraction=0.5, eval_fraction=0.5, pca_dim=8, shots=4,
      num_train=8, num_val=8, num_test=8)
  ds = TASK.make_datasets(cfg)
  assert ds.info["num_train_classes"] == 10
  assert not (set(np.asarray(ds.evals["test"].classes).ravel())
              & set(np.asarray(ds.train.classes).ravel()))


def test_pca_fit_on_train_only():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(200, 5)) * [5.0, 1, 1, 1, 0.1]
  t = features_lib.fit_transform(train, pca_dim=2)
  np.testing.assert_allclose(t.mean, train.mean(0), rtol=1e-5, atol=1e-6)
  assert abs(t.components[0, 0]) > 0.99  # the high-variance axis
  # held-out data with another mean and axis: transform unchanged by it
  other = rng.normal(size=(50, 5)) * [0.1, 1, 1, 1, 9.0] + 3.0
  z = t(other)
  np.testing.assert_allclose(z, (other - t.mean) @ t.components, rtol=1e-4,
                             atol=1e-4)
  raw = features_lib.fit_transform(train, centre=False)
  np.testing.assert_array_equal(raw(train), train.astype(np.float32))


def test_make_features_uses_train_statistics_only():
  cfg = dataclasses.replace(SMOKE, features="raw")
  data = image_icl.load_dataset(cfg)
  pools = fewshot.make_pools(data.labels, data.split, seed=cfg.seed)
  x = image_icl.make_features(cfg, data, pools.train_examples)
  np.testing.assert_allclose(x[pools.train_examples].mean(0), 0.0, atol=1e-5)
  # changing every held-out image leaves the training features as they were
  held = np.setdiff1d(np.arange(data.num_examples), pools.train_examples)
  images = data.images.copy()
  images[held] = 255 - images[held]
  x2 = image_icl.make_features(cfg, dataclasses.replace(data, images=images),
                               pools.train_examples)
  np.testing.assert_array_equal(x2[pools.train_examples],
                                x[pools.train_examples])


def test_cnn_features_tiny_on_digits(tmp_path):
  cfg = dataclasses.replace(
      SMOKE, features="cnn", cnn_epochs=1, cnn_feature_dim=8,
      split="held_out_classes", held_out_fraction=0.5,
      cache_dir=str(tmp_path))
  ds = TASK.make_datasets(cfg)
  assert ds.info["input_dim"] == 8
  assert len(list(tmp_path.glob("cnn-*.npy"))) == 1
  again = TASK.make_datasets(cfg)  # read back from the cache
  np.testing.assert_array_equal(again.evals["test"].x_ctx,
                                ds.evals["test"].x_ctx)


def test_smoke_config_trains_through_the_engine(tmp_path):
  from gdattn import train  # pylint: disable=g-import-not-at-top
  from gdattn.configs import images  # pylint: disable=g-import-not-at-top
  c = images.get_config("smoke")
  c.models = ("gd",)
  res = train.train(c, str(tmp_path)).results["gd"]
  # 5-way contexts: chance is 0.2 and uniform predictions give NLL ln 5.
  assert res["members"][0]["test_accuracy"] > 0.4
  assert res["members"][0]["test_nll"] < np.log(5) - 0.2
  assert res["logreg_accuracy"] > 0.4


@pytest.fixture(scope="module")
def smoke_source():
  return image_icl.feature_source(SMOKE)


def test_test_contexts_default_is_the_test_split(smoke_source, smoke_datasets):
  got = image_icl.test_contexts(smoke_source)
  want = smoke_datasets.evals["test"]
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ways", [2, 3])
def test_fewer_ways_contexts_and_metrics(smoke_source, smoke_datasets, ways):
  c = image_icl.test_contexts(smoke_source, ways=ways)
  assert c.x_ctx.shape == (32, 4 * ways, 16) and c.classes.shape == (32, ways)
  assert int(c.y_ctx.max()) == ways - 1 and int(c.y_query.max()) < ways
  # A 5-class model on fewer ways is scored on its first `ways` logits: a
  # huge logit on an absent class must not count.
  logits = np.zeros((32, 1, 5), np.float32)
  logits[..., -1] = 100.0
  logits[np.arange(32), 0, np.asarray(c.y_query[:, 0])] = 1.0
  m = TASK.metrics(logits, c)
  assert float(m["accuracy"]) == 1.0
  with pytest.raises(ValueError, match="only 5 classes"):
    TASK.metrics(logits, image_icl.test_contexts(
        dataclasses.replace(smoke_source, cfg=dataclasses.replace(
            SMOKE, ways=6, shots=2))))


@pytest.mark.parametrize("name", ["gaussian_noise", "blur", "contrast"])
def test_corrupted_contexts_pair_with_clean(smoke_source, smoke_datasets, name):
  clean = smoke_datasets.evals["test"]
  c = image_icl.test_contexts(smoke_source, corruption=name, severity=1.0)
  np.testing.assert_array_equal(c.idx_ctx, clean.idx_ctx)
  np.testing.assert_array_equal(c.y_query, clean.y_query)
  assert not np.allclose(c.x_ctx, clean.x_ctx)
  same = image_icl.test_contexts(smoke_source, corruption=name, severity=0.0)
  np.testing.assert_allclose(same.x_ctx, clean.x_ctx, atol=1e-5)


def test_cross_dataset_contexts(tmp_path, smoke_source):
  src = dataclasses.replace(smoke_source, cfg=dataclasses.replace(
      SMOKE, glyph_classes=12, glyph_images_per_class=12,
      cache_dir=str(tmp_path)))
  c = image_icl.test_contexts(src, dataset="glyphs", num_contexts=8)
  assert c.x_ctx.shape == (8, 20, 16)  # glyphs resized to 8x8, digits' PCA
  assert int(c.classes.max()) < 12  # glyph class ids, not digits'
  assert np.isfinite(np.asarray(c.x_ctx)).all()


def test_shift_needs_pixel_features(tmp_path):
  cfg = dataclasses.replace(SMOKE, features="cnn", test_corruption="blur")
  with pytest.raises(ValueError, match="config.data.features"):
    TASK.validate(cfg, models.ICLModelConfig())
  with pytest.raises(ValueError, match="config.data.test_corruption"):
    TASK.validate(dataclasses.replace(SMOKE, test_corruption="fog"),
                  models.ICLModelConfig())


def test_shifted_test_split_in_make_datasets(smoke_datasets):
  ds = TASK.make_datasets(dataclasses.replace(SMOKE, test_corruption="blur"))
  np.testing.assert_array_equal(ds.evals["val"].x_ctx,
                                smoke_datasets.evals["val"].x_ctx)
  assert not np.allclose(ds.evals["test"].x_ctx,
                         smoke_datasets.evals["test"].x_ctx)
  assert ds.info["test_corruption"] == "blur" and ds.info["name"] == "digits"


def test_short_name():
  assert image_icl.short_name("fashion_mnist:/a/b/c") == "fashion_mnist"
  assert image_icl.short_name("sklearn:digits.csv.gz") == "digits"
  assert image_icl.short_name("tfds:cifar100:train+test") == "cifar100"
  assert image_icl.short_name("glyphs:1000x20") == "glyphs"


@pytest.mark.parametrize("variant", ["", "smoke", "smoke_e2e", "e2e", "glyphs",
                                     "paper"])
def test_every_images_variant_is_a_valid_config(variant):
  c = images.get_config(variant)
  if variant == "paper":  # the user's feature store, required
    c.data.data_dir = "imagenet_vgg16_features.npz"
  cfg = config_lib.from_configdict(c)
  assert cfg.task == "image_icl"
  if cfg.data.features == "end_to_end":
    # The CNN is its own optimiser group (its gradients would otherwise
    # fall below Adam's eps under GD's global clip).
    assert "backbone" in cfg.optim.lr_scales
