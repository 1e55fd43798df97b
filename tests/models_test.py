"""Tests for gdattn/models.py: parameter counts, exact GD embeddings, shapes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gdattn
from gdattn import models

# Float64 maps between equivalent parameterisations differ by rounding only.
EXACT_ATOL = 1e-10

D, C, E = 10, 25, 5


def _batch(key, b=3, n=20, t=2, d=D, c=C, scale=1.0):
  k1, k2, k3 = jax.random.split(key, 3)
  return (scale * jax.random.normal(k1, (b, n, d)),
          jax.random.randint(k2, (b, n), 0, c),
          scale * jax.random.normal(k3, (b, t, d)))


def test_parameter_counts_match_the_paper_at_k1():
  # SPEC section 4: ~131 (GD) and 6,625 (Trained TF) at d=10, C=25, e=5, K=1.
  gd = models.GD(num_classes=C, embed_dim=E, num_layers=1, rngs=nnx.Rngs(0))
  tf = models.TrainedTF(input_dim=D, num_classes=C, embed_dim=E, num_layers=1,
                        rngs=nnx.Rngs(0))
  assert models.count_params(gd) == 5 + 1 + C * E == 131
  assert models.count_params(tf) == 6625
  ratio = models.count_params(tf) / models.count_params(gd)
  assert 50 < ratio < 52  # "about 51x"


def test_paper_layout_width_is_constant_in_depth():
  for k in (1, 3):
    tf = models.TrainedTF(input_dim=D, num_classes=C, embed_dim=E, num_layers=k,
                          token_layout="paper", rngs=nnx.Rngs(0))
    assert tf.layout.width == D + 3 * E


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_gd_model_matches_reference(x64, kernel, num_layers):
  gd = models.GD(num_classes=C, embed_dim=E, num_layers=num_layers, kernel=kernel,
                 init_scale=0.5, init_kernel_scale=0.3, rngs=nnx.Rngs(1))
  x, y, q = _batch(jax.random.key(0))
  w_e = gd.embeddings()
  ref = jax.vmap(
      lambda xb, yb, qb: gdattn.categorical_gd(
          xb, yb, qb, w_e, gd.lrs[...], kernel=kernel,
          kernel_scale=gd.kernel_scale[...]) @ w_e.T)(x, y, q)
  chex.assert_trees_all_close(gd(x, y, q), ref, atol=EXACT_ATOL, rtol=0)


@pytest.mark.parametrize("kernel", gdattn.KERNELS)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_trained_tf_from_gd_is_exact(x64, kernel, num_layers):
  gd = models.GD(num_classes=C, embed_dim=E, num_layers=num_layers, kernel=kernel,
                 init_scale=0.7, init_kernel_scale=0.4, rngs=nnx.Rngs(2))
  tf = models.trained_tf_from_gd(gd, input_dim=D)
  x, y, q = _batch(jax.random.key(1), scale=2.0)
  chex.assert_trees_all_close(tf(x, y, q), gd(x, y, q), atol=EXACT_ATOL, rtol=0)
  # The embedded model is a full TrainedTF: same parameter count as a fresh one.
  fresh = models.TrainedTF(input_dim=D, num_classes=C, embed_dim=E,
                           num_layers=num_layers, rngs=nnx.Rngs(0))
  assert models.count_params(tf) == models.count_params(fresh)


def test_gdmlp_equals_gd_at_one_layer(x64):
  gd = models.GD(num_classes=C, embed_dim=E, num_layers=1, init_scale=0.5,
                 rngs=nnx.Rngs(3))
  mlp = models.GDMLP(num_classes=C, embed_dim=E, num_layers=1, init_scale=0.5,
                     rngs=nnx.Rngs(3))
  mlp.lrs[...] = gd.lrs[...]
  mlp.embeddings.w_e[...] = gd.embeddings.w_e[...]
  x, y, q = _batch(jax.random.key(2))
  chex.assert_trees_all_close(mlp(x, y, q), gd(x, y, q), atol=EXACT_ATOL, rtol=0)
  # K = 1 needs no MLP: E_1 is never read.
  assert models.count_params(mlp) == models.count_params(gd)


def test_gdmlp_uses_its_mlp_from_two_layers():
  mlp = models.GDMLP(num_classes=C, embed_dim=E, num_layers=2, init_scale=0.5,
                     rngs=nnx.Rngs(4))
  x, y, q = _batch(jax.random.key(3))
  before = mlp(x, y, q)
  mlp.mlp.b2[...] = mlp.mlp.b2[...] + 1.0
  assert not np.allclose(before, mlp(x, y, q))


@pytest.mark.parametrize("name", models.MODELS)
def test_models_are_permutation_invariant_over_context(name):
  common = dict(num_classes=C, embed_dim=E, num_layers=2, rngs=nnx.Rngs(5))
  if name in ("trained_tf", "transformer"):
    common["input_dim"] = D
  model = {"gd": models.GD, "trained_tf": models.TrainedTF, "gdmlp": models.GDMLP,
           "transformer": models.Transformer}[name](**common)
  x, y, q = _batch(jax.random.key(4))
  perm = jax.random.permutation(jax.random.key(5), x.shape[1])
  out = model(x, y, q)
  chex.assert_shape(out, (3, 2, C))
  chex.assert_tree_all_finite(out)
  chex.assert_trees_all_close(out, model(x[:, perm], y[:, perm], q), atol=1e-5, rtol=1e-5)


def test_fixed_last_class_gets_no_gradient():
  gd = models.GD(num_classes=C, embed_dim=E, num_layers=2, init_scale=0.5,
                 rngs=nnx.Rngs(6))
  x, y, q = _batch(jax.random.key(6))

  def loss(model):
    return jnp.sum(model(x, y, q) ** 2)

  grads = nnx.grad(loss)(gd)
  w_grad = grads["embeddings"]["w_e"][...]
  assert np.all(w_grad[-1] == 0) and np.any(w_grad[:-1] != 0)


# --- input and constructor checks --------------------------------------------


def _tiny(name):
  kw = dict(num_classes=4, embed_dim=2, num_layers=2, rngs=nnx.Rngs(0))
  if name in ("trained_tf", "transformer"):
    kw["input_dim"] = 3
  if name == "transformer":
    kw.update(model_dim=8, num_heads=2, mlp_hidden=8)
  cls = {"gd": models.GD, "trained_tf": models.TrainedTF, "gdmlp": models.GDMLP,
         "transformer": models.Transformer}[name]
  return cls(**kw)


def _tiny_batch(labels):
  rng = np.random.default_rng(0)
  return (rng.normal(size=(2, 5, 3)).astype(np.float32), np.asarray(labels),
          rng.normal(size=(2, 2, 3)).astype(np.float32))


@pytest.mark.parametrize("name", models.MODELS)
@pytest.mark.parametrize("bad", [4, -1], ids=["label_C", "negative"])
def test_out_of_range_labels_raise(name, bad):
  # Before: label C gathered row C-1 and -1 wrapped to the last class.
  labels = np.zeros((2, 5), np.int32)
  labels[1, 3] = bad
  with pytest.raises(ValueError, match=r"y_ctx must hold class labels in \[0, 4\)"):
    _tiny(name)(*_tiny_batch(labels))


@pytest.mark.parametrize("name", models.MODELS)
def test_bad_shapes_name_the_argument(name):
  model = _tiny(name)
  x, y, q = _tiny_batch(np.zeros((2, 5), np.int32))
  with pytest.raises(ValueError, match=r"y_ctx must have one label per context point"):
    model(x, y[:, :4], q)
  with pytest.raises(ValueError, match=r"x_query must have shape \[2, T, 3\]"):
    model(x, y, q[:, :, :2])
  with pytest.raises(ValueError, match=r"x_ctx must have rank 3 with shape \[B, N, D\]"):
    model(x[0], y, q)
  with pytest.raises(TypeError, match=r"y_ctx must have an integer dtype"):
    model(x, y.astype(np.float32), q)


@pytest.mark.parametrize("name", ["trained_tf", "transformer"])
def test_wrong_input_dim_names_it(name):
  # Before: a broadcasting error deep in the token construction.
  rng = np.random.default_rng(1)
  x, q = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 2, 4))
  with pytest.raises(ValueError, match=r"x_ctx must have the model's input_dim D = 3"):
    _tiny(name)(x, np.zeros((2, 5), np.int32), q)


@pytest.mark.parametrize("name", models.MODELS)
def test_zero_layers_raise_a_value_error(name):
  # Before: ZeroDivisionError (TrainedTF), an MLIR error (GDMLP).
  kw = dict(num_classes=4, embed_dim=2, num_layers=0, rngs=nnx.Rngs(0))
  if name in ("trained_tf", "transformer"):
    kw["input_dim"] = 3
  cls = {"gd": models.GD, "trained_tf": models.TrainedTF, "gdmlp": models.GDMLP,
         "transformer": models.Transformer}[name]
  with pytest.raises(ValueError, match=r"num_layers must be an integer >= 1, got 0"):
    cls(**kw)


def test_constructor_checks_kernel_and_sizes():
  with pytest.raises(ValueError, match=r"kernel must be one of .*got 'cosine'"):
    models.GD(num_classes=4, embed_dim=2, num_layers=1, kernel="cosine",
              rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"kernel_scale must be finite and > 0"):
    models.GDMLP(num_classes=4, embed_dim=2, num_layers=1, init_kernel_scale=0.0,
                 rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"input_dim must be an integer >= 1, got 0"):
    models.TrainedTF(input_dim=0, num_classes=4, embed_dim=2, num_layers=1,
                     rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"model_dim must be a multiple of num_heads"):
    models.Transformer(input_dim=3, num_classes=4, embed_dim=2, num_layers=1,
                       model_dim=6, num_heads=4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", models.MODELS)
def test_checked_model_call_catches_labels_under_jit(name):
  model = _tiny(name)
  labels = np.zeros((2, 5), np.int32)
  call = jax.jit(gdattn.checked(lambda x, y, q: model(x, y, q)))
  err, logits = call(*_tiny_batch(labels))
  assert err.get() is None
  chex.assert_shape(logits, (2, 2, 4))
  labels[0, 0] = 4
  err, _ = call(*_tiny_batch(labels))
  assert "y_ctx must hold class labels in [0, 4)" in err.get()
