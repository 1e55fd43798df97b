"""Tests for gdattn/analysis.py: the GD embedding's Jacobian, the gradient
split and the alignment metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gdattn import analysis
from gdattn import metrics
from gdattn import models

D, C, E = 4, 5, 3


def _gd(kernel="softmax", num_layers=2, seed=0):
  gd = models.GD(num_classes=C, embed_dim=E, num_layers=num_layers, kernel=kernel,
                 init_scale=0.5, rngs=nnx.Rngs(seed))
  # The model's default dtype (float64 under the x64 fixture): a float32 scale
  # would round its own gradient to float32.
  gd.kernel_scale = nnx.Param(jnp.asarray(0.7))
  return gd


def _batch(key, b=3, n=12, t=2):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return (jax.random.normal(k1, (b, n, D)), jax.random.randint(k2, (b, n), 0, C),
          jax.random.normal(k3, (b, t, D)), jax.random.randint(k4, (b, t), 0, C))


def _loss(model, batch):
  x, y, q, yq = batch
  return metrics.nll(model(x, y, q), yq)


@pytest.mark.parametrize("kernel", ["softmax", "exp", "linear"])
def test_embed_gd_keeps_the_logits_with_unit_kernel_scale(x64, kernel):
  gd = _gd(kernel)
  x, y, q, _ = _batch(jax.random.key(0))
  tf = analysis.embed_gd(gd, D)
  assert float(tf.kernel_scale[...]) == 1.0
  np.testing.assert_allclose(tf(x, y, q), gd(x, y, q), rtol=0, atol=1e-12)


def test_embed_gd_rejects_a_kernel_whose_scale_is_not_in_the_query():
  with pytest.raises(ValueError, match="gd_model.kernel must be one of.*'rbf'"):
    analysis.embed_gd(_gd("rbf"), D)


def test_jacobian_is_the_chain_rule_of_the_embedding(x64):
  # J^T (TF gradient at the embedded point) = the GD model's own gradient:
  # the TF loss composed with the embedding is the GD loss.
  gd = _gd()
  batch = _batch(jax.random.key(1))
  jac = analysis.gd_embedding_jacobian(gd, D)
  tf = analysis.embed_gd(gd, D)
  assert jac.shape == (models.count_params(tf), models.count_params(gd))
  grad_tf = nnx.grad(_loss)(tf, batch)
  grad_gd = nnx.grad(_loss)(gd, batch)
  vec = lambda g: jax.flatten_util.ravel_pytree(nnx.to_pure_dict(g))[0]
  np.testing.assert_allclose(jac.T @ vec(grad_tf), vec(grad_gd), rtol=1e-9, atol=1e-12)


def test_jacobian_columns_are_directions_of_the_embedding(x64):
  # The embedding is linear in (lrs, W_e) for fixed s, so moving the GD
  # parameters along one coordinate moves the TF parameters along J's column.
  gd = _gd()
  jac = analysis.gd_embedding_jacobian(gd, D)
  before = analysis.param_vector(analysis.embed_gd(gd, D))
  gd.lrs[...] = gd.lrs[...].at[1, 2].add(0.25)
  after = analysis.param_vector(analysis.embed_gd(gd, D))
  # ravel_pytree order: embeddings/w_e [C, E], kernel_scale, lrs [K, E].
  assert sorted(nnx.to_pure_dict(nnx.state(gd, nnx.Param))) == [
      "embeddings", "kernel_scale", "lrs"]
  column = C * E + 1 + 1 * E + 2
  np.testing.assert_allclose(after - before, 0.25 * jac[:, column], atol=1e-12)


def test_split_gradient_is_an_orthogonal_decomposition(x64):
  k1, k2 = jax.random.split(jax.random.key(2))
  jac = jax.random.normal(k1, (30, 6)) @ jnp.diag(jnp.array([1, 1, 1, 1, 0, 0.0]))
  grad = jax.random.normal(k2, (30,))
  along, orth = analysis.split_gradient(grad, jac)
  np.testing.assert_allclose(along + orth, grad, atol=1e-12)
  np.testing.assert_allclose(jac.T @ orth, 0.0, atol=1e-11)  # rank-deficient J too
  # `along` is the closest point of span(J): any other combination is farther.
  other = jac @ jax.random.normal(k1, (6,))
  assert jnp.linalg.norm(grad - along) < jnp.linalg.norm(grad - other)
  # A gradient inside span(J) has no orthogonal part.
  _, orth_in = analysis.split_gradient(jac @ jnp.arange(6.0), jac)
  np.testing.assert_allclose(orth_in, 0.0, atol=1e-11)


def test_split_gradient_names_mismatched_shapes():
  with pytest.raises(ValueError, match=r"grad_P \[P\] and jacobian_PxG \[P, G\].*\(5,\).*\(4, 2\)"):
    analysis.split_gradient(jnp.zeros(5), jnp.zeros((4, 2)))


def test_alignment_of_gd_with_its_own_embedding_is_perfect(x64):
  gd = _gd()
  x, y, q, _ = _batch(jax.random.key(3))
  out = analysis.alignment_metrics(gd, analysis.embed_gd(gd, D), x, y, q)
  assert float(out["pred_l2"]) < 1e-12
  np.testing.assert_allclose(out["sens_cos"], 1.0, atol=1e-12)
  np.testing.assert_allclose(out["sens_norm_a"], out["sens_norm_b"], rtol=1e-12)
  assert float(out["sens_norm_a"]) > 1e-3  # sensitivities are not trivially 0


def test_alignment_metrics_match_a_hand_computation_for_two_models(x64):
  a, b = _gd(seed=0), _gd(kernel="exp", seed=1)
  x, y, q, _ = _batch(jax.random.key(4), b=2, t=3)
  out = analysis.alignment_metrics(a, b, x, y, q)
  l2s, coss = [], []
  for i in range(2):
    for t in range(3):
      def centred(m, qd):
        lg = m(x[i:i + 1], y[i:i + 1], qd[None, None])[0, 0]
        return lg - lg.mean()
      pa, pb = (jax.nn.softmax(centred(m, q[i, t])) for m in (a, b))
      ja, jb = (jax.jacfwd(lambda qd, m=m: centred(m, qd))(q[i, t]).ravel() for m in (a, b))
      l2s.append(jnp.linalg.norm(pa - pb))
      coss.append(ja @ jb / (jnp.linalg.norm(ja) * jnp.linalg.norm(jb)))
  np.testing.assert_allclose(out["pred_l2"], np.mean(l2s), rtol=1e-10)
  np.testing.assert_allclose(out["sens_cos"], np.mean(coss), rtol=1e-10)
  assert float(out["sens_cos"]) < 0.999  # different models: the metric can fail


def test_alignment_metrics_jit_through_nnx():
  gd = _gd()
  x, y, q, _ = _batch(jax.random.key(5))
  eager = analysis.alignment_metrics(gd, analysis.embed_gd(gd, D), x, y, q)
  jitted = nnx.jit(analysis.alignment_metrics)(gd, analysis.embed_gd(gd, D), x, y, q)
  for k in eager:
    np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-5, atol=1e-6)


def test_alignment_metrics_names_bad_shapes():
  gd = _gd()
  x, y, q, _ = _batch(jax.random.key(6))
  with pytest.raises(ValueError, match=r"x_query \[B, T, D\].*\(3, 2, 7\)"):
    analysis.alignment_metrics(gd, gd, x, y, jnp.zeros((3, 2, 7)))
