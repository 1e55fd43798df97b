"""Evaluation metrics for query-label prediction from logits.

Dimensions: B batch of queries, C classes.

Pure jnp functions, not jitted here (callers jit/vmap). Every function also
accepts extra leading batch dims (logits [..., C], labels [...]) and averages
over all of them. Labels must lie in [0, C): they cannot be range-checked under
jit, and an out-of-range label gathers a clamped (wrong) entry.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _flatten(
    logits: ArrayLike, labels: ArrayLike, true_probs: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Checks shapes and flattens the leading dims to one batch dim B."""
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim < 1:
    raise ValueError(f"logits: expected shape [..., C], got {logits.shape}.")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f"labels: expected shape {logits.shape[:-1]} (logits.shape[:-1]), got"
        f" {labels.shape}."
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels: expected an integer dtype, got {labels.dtype}.")
  num_classes = logits.shape[-1]
  logits_BxC = logits.reshape(-1, num_classes)
  labels_B = labels.reshape(-1)
  probs_BxC = None
  if true_probs is not None:
    true_probs = jnp.asarray(true_probs)
    if true_probs.shape != logits.shape:
      raise ValueError(
          f"true_probs: expected shape {logits.shape} (same as logits), got"
          f" {true_probs.shape}."
      )
    probs_BxC = true_probs.reshape(-1, num_classes)
  return logits_BxC, labels_B, probs_BxC


def _at_label(x_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BxC, labels_B[:, None], axis=-1)[:, 0]


def nll(logits_BxC: ArrayLike, labels_B: ArrayLike) -> jax.Array:
  """Mean negative log-likelihood of the labels under softmax(logits).

  Args:
    logits_BxC: unnormalised class scores, [..., C].
    labels_B: integer labels in [0, C), [...].

  Returns:
    Scalar mean of -log softmax(logits)[label]; log_softmax keeps it finite for
    large logits.
  """
  logits_BxC, labels_B, _ = _flatten(logits_BxC, labels_B)
  logp_BxC = jax.nn.log_softmax(logits_BxC, axis=-1)
  return -jnp.mean(_at_label(logp_BxC, labels_B))


def accuracy(logits_BxC: ArrayLike, labels_B: ArrayLike) -> jax.Array:
  """Fraction of queries whose argmax class equals the label (ties: lowest)."""
  logits_BxC, labels_B, _ = _flatten(logits_BxC, labels_B)
  return jnp.mean(jnp.argmax(logits_BxC, axis=-1) == labels_B)


def top_k_accuracy(
    logits_BxC: ArrayLike, labels_B: ArrayLike, k: int
) -> jax.Array:
  """Fraction of queries whose label is among the k highest logits.

  Args:
    logits_BxC: unnormalised class scores, [..., C].
    labels_B: integer labels in [0, C), [...].
    k: a static int in [1, C].

  Returns:
    Scalar in [0, 1]; never below accuracy, since lax.top_k breaks ties toward
    the lower index as argmax does.
  """
  logits_BxC, labels_B, _ = _flatten(logits_BxC, labels_B)
  num_classes = logits_BxC.shape[-1]
  if not 1 <= k <= num_classes:
    raise ValueError(f"k: expected 1 <= k <= C={num_classes}, got {k}.")
  _, top_BxK = jax.lax.top_k(logits_BxC, k)
  return jnp.mean(jnp.any(top_BxK == labels_B[:, None], axis=-1))


def target_prob_mse(
    logits_BxC: ArrayLike, labels_B: ArrayLike, true_probs_BxC: ArrayLike
) -> jax.Array:
  """Mean squared error between model and true probability of the label.

  Args:
    logits_BxC: unnormalised class scores, [..., C].
    labels_B: integer labels in [0, C), [...].
    true_probs_BxC: the generative p(y=c|x) of each query, [..., C].

  Returns:
    Scalar mean of (softmax(logits)[label] - true_probs[label])^2.
  """
  logits_BxC, labels_B, probs_BxC = _flatten(
      logits_BxC, labels_B, true_probs_BxC
  )
  model_B = _at_label(jax.nn.softmax(logits_BxC, axis=-1), labels_B)
  return jnp.mean((model_B - _at_label(probs_BxC, labels_B)) ** 2)


def compute_metrics(
    logits: ArrayLike,
    labels: ArrayLike,
    true_probs: ArrayLike | None = None,
    *,
    top_k: int = 3,
) -> dict[str, jax.Array]:
  """All evaluation metrics of one batch, as scalars keyed by name.

  Args:
    logits: unnormalised class scores, [..., C].
    labels: integer labels in [0, C), [...].
    true_probs: optional generative probabilities, [..., C] (synthetic data).
    top_k: the k of the f"top{k}_accuracy" entry.

  Returns:
    'nll', 'accuracy', f'top{top_k}_accuracy'; with true_probs also
    'target_prob_mse', 'bayes_max_prob' (mean max_c true_probs: the Bayes
    accuracy) and 'bayes_target_prob' (mean true_probs[label]).
  """
  logits_BxC, labels_B, probs_BxC = _flatten(logits, labels, true_probs)
  out = {
      "nll": nll(logits_BxC, labels_B),
      "accuracy": accuracy(logits_BxC, labels_B),
      f"top{top_k}_accuracy": top_k_accuracy(logits_BxC, labels_B, top_k),
  }
  if probs_BxC is not None:
    out["target_prob_mse"] = target_prob_mse(logits_BxC, labels_B, probs_BxC)
    out["bayes_max_prob"] = jnp.mean(jnp.max(probs_BxC, axis=-1))
    out["bayes_target_prob"] = jnp.mean(_at_label(probs_BxC, labels_B))
  return out
