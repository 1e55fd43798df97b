"""Tests for gdattn.backbone_gd and the image task's "end_to_end" features."""

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gdattn import backbone_gd
from gdattn import io
from gdattn import models
from gdattn.data import features as features_lib
from gdattn.tasks import image_icl

# float32: the composed model and GD on precomputed features run the same
# ops in a different grouping (one backbone call vs two), so they agree to
# rounding only.
F32_RTOL = 1e-5
F32_ATOL = 1e-6

TASK = image_icl.TASK
E2E = image_icl.DataConfig(
    dataset="digits", features="end_to_end", backbone_init="random",
    cnn_feature_dim=8, num_train=16, num_val=8, num_test=8, shots=4,
    l2=False)


def _model(centre=False, l2=False, train_backbone=True, seed=0):
  cfg = models.ICLModelConfig(init_scale=0.5)  # logits well away from 0
  return backbone_gd.make_backbone_gd(
      "gd", cfg, in_channels=1, num_classes=3, feature_dim=6,
      backbone_classes=4, width=4, centre=centre, l2=l2,
      train_backbone=train_backbone, rngs=nnx.Rngs(seed))


def _images(seed=0, b=2, n=6, t=2):
  rng = np.random.default_rng(seed)
  x_ctx = rng.integers(0, 256, (b, n, 8, 8), dtype=np.uint8)
  x_query = rng.integers(0, 256, (b, t, 8, 8), dtype=np.uint8)
  y_ctx = np.tile(np.arange(n) % 3, (b, 1)).astype(np.int32)
  return x_ctx, y_ctx, x_query


def _backbone_features(model, images):
  x = jnp.asarray(images, jnp.float32)[..., None] / 255.0
  f = model.backbone.features(x.reshape((-1,) + x.shape[2:]))
  return f.reshape(images.shape[:2] + (-1,))


@pytest.mark.parametrize("centre", [False, True])
def test_equals_gd_on_the_backbone_features(centre):
  model = _model(centre=centre)
  x_ctx, y_ctx, x_query = _images()
  f_ctx = _backbone_features(model, x_ctx)
  f_query = _backbone_features(model, x_query)
  if centre:
    mean = f_ctx.mean(1, keepdims=True)
    f_ctx, f_query = f_ctx - mean, f_query - mean
  want = model.head(f_ctx, y_ctx, f_query)
  got = model(x_ctx, y_ctx, x_query)
  assert got.shape == (2, 2, 3)
  chex.assert_trees_all_close(got, want, rtol=F32_RTOL, atol=F32_ATOL)
  # uint8 images equal the same images as floats in [0, 1]
  as_float = model(x_ctx / 255.0, y_ctx, x_query / 255.0)
  chex.assert_trees_all_close(as_float, got, rtol=F32_RTOL, atol=F32_ATOL)


def test_l2_rows_have_unit_norm():
  f_ctx, f_query = _model(centre=True, l2=True).features(*_images()[::2])
  np.testing.assert_allclose(np.linalg.norm(f_ctx, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(f_query, axis=-1), 1.0,
                             rtol=1e-5)


def _grads(model):
  x_ctx, y_ctx, x_query = _images()
  y_query = jnp.asarray([[0, 1], [2, 0]])

  def loss(m):
    logits = m(x_ctx, y_ctx, x_query)
    return -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(logits), y_query[..., None], -1))

  return nnx.to_pure_dict(nnx.grad(loss)(model))


@pytest.mark.parametrize("centre,l2", [(False, False), (True, True)])
def test_gradients_reach_the_backbone(centre, l2):
  grads = _grads(_model(centre=centre, l2=l2))["backbone"]
  for layer in ("conv1", "conv2", "embed"):
    assert float(jnp.abs(grads[layer]["kernel"]).max()) > 0, layer
    assert np.all(np.isfinite(grads[layer]["kernel"]))


def test_frozen_backbone_gets_no_gradient():
  grads = _grads(_model(train_backbone=False))
  for leaf in jax.tree.leaves(grads["backbone"]):
    assert float(jnp.abs(leaf).max()) == 0.0
  assert float(jnp.abs(grads["head"]["lrs"]).max()) > 0


def test_bad_inputs_name_the_argument():
  model = _model()
  x_ctx, y_ctx, x_query = _images()
  with pytest.raises(ValueError, match="x_ctx"):
    model(x_ctx[0], y_ctx, x_query)
  with pytest.raises(ValueError, match="x_query"):
    model(x_ctx, y_ctx, x_query[:, :, :4])
  with pytest.raises(TypeError, match="centre"):
    backbone_gd.BackboneGD(model.backbone, model.head, centre=1)


def test_backbone_params_are_loaded_and_checked():
  donor = features_lib.CNN(in_channels=1, num_classes=4, feature_dim=6,
                           width=4, rngs=nnx.Rngs(7))
  params = jax.tree.map(np.asarray,
                        nnx.to_pure_dict(nnx.state(donor, nnx.Param)))
  cfg = models.ICLModelConfig()
  kw = dict(in_channels=1, num_classes=3, feature_dim=6, backbone_classes=4,
            width=4, rngs=nnx.Rngs(0))
  model = backbone_gd.make_backbone_gd("gd", cfg, backbone_params=params, **kw)
  got = nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param))
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, got), params)
  with pytest.raises(ValueError, match="backbone_params"):
    backbone_gd.make_backbone_gd("gd", cfg, backbone_params=params,
                                 **{**kw, "feature_dim": 5})


# ---------------------------------------------------------------------------
# The image task with features="end_to_end".


@pytest.fixture(scope="module")
def e2e_datasets():
  return TASK.make_datasets(E2E)


def test_task_contexts_carry_images(e2e_datasets):
  ds = e2e_datasets
  assert ds.train.x_ctx.shape == (16, 20, 8, 8)
  assert ds.train.x_ctx.dtype == np.uint8
  assert ds.info["input_dim"] == 8 and ds.info["backbone"]["feature_dim"] == 8
  # The same test contexts (images and labels) as the frozen-feature twin.
  frozen = TASK.make_datasets(dataclasses.replace(
      E2E, features="raw", backbone_init="pretrained"))
  for field in ("idx_ctx", "idx_query", "y_ctx", "y_query"):
    np.testing.assert_array_equal(getattr(ds.evals["test"], field),
                                  getattr(frozen.evals["test"], field))
  model = TASK.make_model("gd", models.ICLModelConfig(), ds.info,
                          nnx.Rngs(0))
  batch = jax.tree.map(lambda a: a[:4], ds.evals["val"])
  assert TASK.predict(model, batch).shape == (4, 1, 5)
  assert np.isfinite(float(TASK.loss(model, batch)))
  summary = TASK.summary(ds)
  assert summary["pixel_logreg_accuracy"] > 0.4


def test_task_pretrained_backbone_starts_from_the_cnn(tmp_path):
  # cnn_epochs=0: the "pretrained" CNN is its seeded init (no training time).
  cfg = dataclasses.replace(E2E, backbone_init="pretrained", cnn_epochs=0,
                            cache_dir=str(tmp_path))
  ds = TASK.make_datasets(cfg)
  want = ds.info["backbone"]["backbone_params"]
  model = TASK.make_model("gd", models.ICLModelConfig(), ds.info,
                          nnx.Rngs(3))
  got = nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param))
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, got), want)


@pytest.mark.parametrize("changes,field", [
    (dict(dataset="feature_store", data_dir="x.npz"), "data.features"),
    (dict(backbone_init="imagenet"), "data.backbone_init"),
    (dict(train_backbone="no"), "data.train_backbone"),
    (dict(features="pca", backbone_init="random"), "data.backbone_init"),
    (dict(features="cnn", backbone_init="pretrained", train_backbone=False),
     "data.train_backbone"),
    (dict(test_corruption="gaussian_noise"), "data.features"),
])
def test_validate_bad_combinations(changes, field):
  cfg = dataclasses.replace(E2E, **changes)
  with pytest.raises(ValueError, match=f"config.{field}"):
    TASK.validate(cfg, models.ICLModelConfig())


def test_smoke_e2e_config_trains_the_backbone(tmp_path):
  from gdattn import train  # pylint: disable=g-import-not-at-top
  from gdattn.configs import images  # pylint: disable=g-import-not-at-top
  c = images.get_config("smoke_e2e")
  c.data.num_train = 32
  c.data.num_val = 16
  c.data.num_test = 16
  c.train.eval_batch_size = 16
  run = train.train(c, str(tmp_path))
  trained = run.models["gd"]
  res = trained.results["members"][0]
  assert np.isfinite(res["test_nll"]) and np.isfinite(res["test_accuracy"])
  losses = [r["nll"] for r in io.read_metrics(os.path.join(str(tmp_path),
                                                           "gd"))
            if r["split"] == train.TRAIN_LOSS]
  assert losses and np.all(np.isfinite(losses))
  # The backbone moved: end-to-end training reached it (the engine's initial
  # parameters are kept on the trainer).
  final = trained.trainer.model(trained.trainer.params).backbone
  init = nnx.to_pure_dict(nnx.state(final, nnx.Param))
  after = nnx.to_pure_dict(nnx.state(trained.model().backbone, nnx.Param))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), init, after)
  assert moved["conv1"]["kernel"] > 0 and moved["embed"]["kernel"] > 0
