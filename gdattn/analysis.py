"""Probes of the paper's theory: the GD point inside the free Trained TF.

Dimensions: P Trained TF parameters, G GD parameters, B contexts, N context
points, T queries, D input dim, C classes.

  embed_gd            a GD model as a TrainedTF with the same logits, the
                      kernel scale s folded into the query projections so that
                      every free parameter is a projection weight.
  gd_embedding_jacobian  J = d(TF parameters) / d(GD parameters) [P, G]: the
                      embedding is linear, so its image is the affine "GD
                      manifold" and J's columns span its tangent space.
  split_gradient      a TF gradient = the part along the GD parameterisation
                      (least-squares projection onto J's columns) + the part
                      orthogonal to it. At a stationary point of the GD loss
                      the first is 0; the paper's claim is that, under the
                      data's symmetry, so is the second.
  alignment_metrics   von Oswald et al.'s comparison of two in-context learners:
                      L2 distance of their predicted probabilities and cosine
                      similarity of their input sensitivities d logits / d x_query.

Parameter vectors are `jax.flatten_util.ravel_pytree` of
`nnx.to_pure_dict(nnx.state(model, nnx.Param))`.

References: arXiv:2405.17248 (section 4, stationarity of the GD construction);
arXiv:2212.07677 (alignment metrics).
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from flax import nnx

from gdattn import kernels
from gdattn import models


def param_vector(model: nnx.Module) -> jax.Array:
  """The model's trainable parameters as one flat vector (ravel_pytree order)."""
  return ravel_pytree(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]


def embed_gd(gd_model: models.GD, input_dim: int) -> models.TrainedTF:
  """`models.trained_tf_from_gd` with the kernel scale in the query weights.

  The TrainedTF does not train its kernel scale; setting it to 1 and scaling
  every self-attention query projection by the GD model's s gives the same
  logits, and a point whose free parameters carry all of GD's.
  """
  # Kernels whose scale multiplies <q, k>, so it can move into the query weights.
  in_query = tuple(n for n, spec in kernels.REGISTRY.items() if spec.scale_in_query)
  if gd_model.kernel not in in_query:
    raise ValueError(
        f"embed_gd: gd_model.kernel must be one of {in_query} (the scale"
        f" multiplies <q, k>), got {gd_model.kernel!r}")
  tf = models.trained_tf_from_gd(gd_model, input_dim)
  tf.self_wq[...] = tf.self_wq[...] * gd_model.kernel_scale[...]
  tf.kernel_scale[...] = jnp.ones_like(tf.kernel_scale[...])
  return tf


def gd_embedding_jacobian(gd_model: models.GD, input_dim: int) -> jax.Array:
  """J [P, G] = d param_vector(embed_gd(gd)) / d param_vector(gd), exact (jacfwd).

  J^T g is the GD model's gradient when g is the TF's gradient at the
  embedded point (chain rule).
  """
  graphdef, params, rest = nnx.split(gd_model, nnx.Param, ...)
  gd_vec, unravel = ravel_pytree(nnx.to_pure_dict(params))

  def to_tf(vec):
    gd = nnx.merge(graphdef, nnx.State(unravel(vec)), rest)
    return param_vector(embed_gd(gd, input_dim))

  return jax.jacfwd(to_tf)(gd_vec)


def split_gradient(grad_P: jax.Array, jacobian_PxG: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(along, orthogonal): grad = along + orthogonal, along in span(J), J^T orthogonal = 0.

  Works for any vector in TF parameter space: applied to a displacement from
  the GD point, `orthogonal` is its distance from the GD manifold.
  """
  grad_P, jacobian_PxG = jnp.asarray(grad_P), jnp.asarray(jacobian_PxG)
  if jacobian_PxG.ndim != 2 or grad_P.shape != jacobian_PxG.shape[:1]:
    raise ValueError(
        f"split_gradient: expected grad_P [P] and jacobian_PxG [P, G] with the same"
        f" P, got shapes {grad_P.shape} and {jacobian_PxG.shape}")
  along_P = jacobian_PxG @ jnp.linalg.lstsq(jacobian_PxG, grad_P)[0]
  return along_P, grad_P - along_P


def _centred_logits(model, x_NxD, y_N, q_D):
  logits_C = model(x_NxD[None], y_N[None], q_D[None, None])[0, 0]
  return logits_C - jnp.mean(logits_C)


def alignment_metrics(model_a: nnx.Module, model_b: nnx.Module, x_ctx_BxNxD: jax.Array,
                      y_ctx_BxN: jax.Array, x_query_BxTxD: jax.Array) -> dict:
  """How closely two in-context learners agree, averaged over contexts and queries.

  Returns:
    pred_l2: mean ||p_a - p_b||_2 of the predicted class probabilities.
    sens_cos: mean cosine similarity of the input sensitivities
      d logits / d x_query [C, D] (logits centred over classes, which removes
      the softmax's free shift), flattened.
    sens_norm_a, sens_norm_b: their mean Frobenius norms.
  """
  x_ctx_BxNxD, x_query_BxTxD = jnp.asarray(x_ctx_BxNxD), jnp.asarray(x_query_BxTxD)
  y_ctx_BxN = jnp.asarray(y_ctx_BxN)
  if (x_ctx_BxNxD.ndim != 3 or y_ctx_BxN.shape != x_ctx_BxNxD.shape[:2]
      or x_query_BxTxD.ndim != 3 or x_query_BxTxD.shape[::2] != x_ctx_BxNxD.shape[::2]):
    raise ValueError(
        "alignment_metrics: expected x_ctx [B, N, D], y_ctx [B, N], x_query [B, T, D],"
        f" got shapes {x_ctx_BxNxD.shape}, {y_ctx_BxN.shape}, {x_query_BxTxD.shape}")

  def one_query(x_NxD, y_N, q_D):
    values, sens = [], []
    for model in (model_a, model_b):
      def logits_twice(q, model=model):
        # The logits ride along as aux: one forward pass gives value and Jacobian.
        logits = _centred_logits(model, x_NxD, y_N, q)
        return logits, logits
      jac_CxD, logits_C = jax.jacrev(logits_twice, has_aux=True)(q_D)
      values.append(jax.nn.softmax(logits_C))
      sens.append(jac_CxD.ravel())
    norm_a, norm_b = jnp.linalg.norm(sens[0]), jnp.linalg.norm(sens[1])
    tiny = jnp.finfo(norm_a.dtype).tiny
    return {"pred_l2": jnp.linalg.norm(values[0] - values[1]),
            "sens_cos": jnp.dot(sens[0], sens[1]) / jnp.maximum(norm_a * norm_b, tiny),
            "sens_norm_a": norm_a, "sens_norm_b": norm_b}

  per_query = jax.vmap(one_query, in_axes=(None, None, 0))
  # lax.map over contexts bounds memory; the queries of one context are vmapped.
  out = jax.lax.map(lambda args: per_query(*args), (x_ctx_BxNxD, y_ctx_BxN, x_query_BxTxD))
  return {k: jnp.mean(v) for k, v in out.items()}
