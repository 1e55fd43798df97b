"""The container of a batch of contexts, and the Bayes references it carries.

Dimensions: B contexts, N context points, T queries, D input dim, C classes,
J active classes per context. Every generator in `gdattn.data.synthetic`
returns a `Contexts`; the true class probabilities it keeps give the Bayes
references reported beside every result. Reference: arXiv:2405.17248.
"""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Contexts:
  """A batch of B labelled contexts with their true class probabilities.

  A frozen pytree: passes through jit, vmap and tree_map.

  Attributes:
    x_ctx: [B, N, D] float context inputs.
    y_ctx: [B, N] int32 context labels in [0, C).
    x_query: [B, T, D] float query inputs.
    y_query: [B, T] int32 query labels in [0, C).
    probs_ctx: [B, N, C] true generative class probabilities at x_ctx.
    probs_query: [B, T, C] true generative class probabilities at x_query.
    active_classes: [B, J] int32 classes that f uses in each context (the J
      bump classes for high_dim / mixture; for random_grid the 4 quadrant
      classes in the order of `random_grid_quadrant`).
  """

  x_ctx: jax.Array
  y_ctx: jax.Array
  x_query: jax.Array
  y_query: jax.Array
  probs_ctx: jax.Array
  probs_query: jax.Array
  active_classes: jax.Array

  @property
  def num_contexts(self) -> int:
    return self.x_ctx.shape[0]

  @property
  def num_classes(self) -> int:
    return self.probs_ctx.shape[-1]


def bayes_reference(contexts: Contexts) -> dict[str, jax.Array]:
  """Bayes references on the queries from the true generative probabilities.

  Args:
    contexts: a `Contexts` batch.

  Returns:
    dict of scalars, means over all B * T queries: 'bayes_max_prob' (mean
    max_c p_true(c|x): the Bayes accuracy in expectation), 'bayes_target_prob'
    (mean p_true(y_query|x)) and 'bayes_nll' (mean -log p_true(y_query|x)).

  References: arXiv:2405.17248 (synthetic experiments, Bayes reference lines).
  """
  probs_BxTxC = contexts.probs_query
  target_BxT = jnp.take_along_axis(
      probs_BxTxC, contexts.y_query[..., None], axis=-1)[..., 0]
  # y is sampled from these probabilities, so a zero is only float underflow.
  tiny = jnp.finfo(probs_BxTxC.dtype).tiny
  return {
      "bayes_max_prob": jnp.mean(jnp.max(probs_BxTxC, axis=-1)),
      "bayes_target_prob": jnp.mean(target_BxT),
      "bayes_nll": jnp.mean(-jnp.log(jnp.maximum(target_BxT, tiny))),
  }
