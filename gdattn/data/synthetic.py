"""Synthetic in-context classification tasks: high_dim, random_grid, mixture.

Dimensions: B contexts, N context points, T queries, P = N + T points, D input
dim, C classes, E embedding dim, J active classes per context, M components.

Each generator splits its key into B keys and vmaps a one-context function;
W_data (from `class_embeddings`) is shared by all contexts, and the true class
probabilities are kept for `bayes_reference` (`Contexts` and `bayes_reference`
live in gdattn/data/contexts.py and are re-exported here). Reference:
arXiv:2405.17248.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from gdattn import checks
# Re-exported: the generators' return type and its Bayes references.
from gdattn.data.contexts import bayes_reference as bayes_reference
from gdattn.data.contexts import Contexts

# The bandwidth rule makes each centre's bump equal this at its nearest centre.
BUMP_AT_NEAREST_CENTRE = 0.1
RANDOM_GRID_INPUT_DIM = 2
NUM_QUADRANTS = 4



# Argument validation: static (shapes, Python scalars), so it also runs when
# the arrays are tracers under jit / vmap, and always before any compute.


def _check_finite(name: str, value: Any, minimum: float = -math.inf) -> float:
  try:
    ok = math.isfinite(float(value)) and float(value) >= minimum
  except (TypeError, ValueError):
    ok = False
  if not ok:
    bound = "" if minimum == -math.inf else f" >= {minimum}"
    raise ValueError(f"{name} must be a finite real{bound}, got {value!r}")
  return float(value)


def _check_dtype(dtype: DTypeLike) -> None:
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")


def _check_common(w_data_CxE: ArrayLike, min_classes: int, num_contexts: int,
                  num_context_points: int, num_queries: int, amplitude: Any,
                  dtype: DTypeLike) -> int:
  """Validates the arguments every generator takes; returns C."""
  shape = np.shape(w_data_CxE)
  if len(shape) != 2 or shape[0] < min_classes or shape[1] < 1:
    raise ValueError(
        f"w_data_CxE must be 2-D with shape [C, E], C >= {min_classes} and "
        f"E >= 1, got shape {shape}")
  checks.check_int(num_contexts, "num_contexts", 1)
  checks.check_int(num_context_points, "num_context_points", 1)
  checks.check_int(num_queries, "num_queries", 1)
  # A traced amplitude (swept under jit without recompiling) cannot be checked.
  if not isinstance(amplitude, jax.core.Tracer):
    _check_finite("amplitude", amplitude)
  _check_dtype(dtype)
  return shape[0]


def _check_bump_args(w_data_CxE, num_contexts, num_context_points,
                     num_queries, input_dim, num_active_classes, amplitude,
                     dtype) -> int:
  """Validates the high_dim / mixture arguments; returns C."""
  num_classes = _check_common(w_data_CxE, 2, num_contexts, num_context_points,
                              num_queries, amplitude, dtype)
  checks.check_int(input_dim, "input_dim", 1)
  # The bandwidth rule needs a nearest *other* centre, hence J >= 2.
  j = checks.check_int(num_active_classes, "num_active_classes", 2)
  if j > num_classes:
    raise ValueError(
        f"num_active_classes must be <= num_classes (C = {num_classes}, from "
        f"w_data_CxE), got {j}")
  return num_classes


def class_embeddings(key: jax.Array, num_classes: int, embed_dim: int,
                     dtype: DTypeLike = jnp.float32) -> jax.Array:
  """Draws the data-generating class embeddings W_data, entries N(0, 1).

  Drawn once per run and shared by all contexts (train, validation, test).

  Args:
    key: PRNG key.
    num_classes: C >= 2.
    embed_dim: E >= 1.
    dtype: floating dtype of the result.

  Returns:
    w_data_CxE.

  References: arXiv:2405.17248 (synthetic data, W_data).
  """
  checks.check_int(num_classes, "num_classes", 2)
  checks.check_int(embed_dim, "embed_dim", 1)
  _check_dtype(dtype)
  return jax.random.normal(key, (num_classes, embed_dim), dtype=dtype)


# Shared pieces of the per-context generators.


def _draw(sampler: Callable[..., jax.Array], key: jax.Array,
          shape: tuple[int, ...], dtype: DTypeLike, **kwargs) -> jax.Array:
  """sampler(key, shape) drawn flat and reshaped: with threefry the same
  values, but XLA:CPU compiles 1-D draws ~3x faster under vmap (JAX 0.12)."""
  return sampler(key, (math.prod(shape),), dtype, **kwargs).reshape(shape)


def _choose_classes(key: jax.Array, class_logits_C: jax.Array,
                    num_classes_drawn: int) -> jax.Array:
  """Distinct classes drawn without replacement from softmax(logits): Gumbel
  top-k, the law of jax.random.choice(p=softmax(logits), replace=False), but
  on logits, so large mixture scales cannot underflow p."""
  g_C = jax.random.gumbel(key, class_logits_C.shape) + class_logits_C
  return jax.lax.top_k(g_C, num_classes_drawn)[1].astype(jnp.int32)


def _labels_and_probs(key: jax.Array, f_PxE: jax.Array,
                      w_data_CxE: jax.Array) -> tuple[jax.Array, jax.Array]:
  """y ~ Categorical(softmax(W_data f(x))); returns (y_P, probs_PxC)."""
  logits_PxC = jnp.einsum("pe,ce->pc", f_PxE, w_data_CxE)
  y_P = jax.random.categorical(key, logits_PxC, axis=-1).astype(jnp.int32)
  return y_P, jax.nn.softmax(logits_PxC, axis=-1)


def _pack(draws: dict[str, jax.Array], num_context_points: int) -> Contexts:
  """Batched per-context draws -> Contexts: first N points context, rest T."""
  n, x, y, p = (num_context_points, draws["x_PxD"], draws["y_P"],
                draws["probs_PxC"])
  return Contexts(x_ctx=x[:, :n], y_ctx=y[:, :n], x_query=x[:, n:],
                  y_query=y[:, n:], probs_ctx=p[:, :n], probs_query=p[:, n:],
                  active_classes=draws["classes_J"])


# high_dim and mixture: Gaussian bumps around J random centres.


def _bandwidths(mu_JxD: jax.Array) -> jax.Array:
  """sigma_j^2 = -min_{j' != j} ||mu_j - mu_j'||^2 / ln(0.1), shape [J]."""
  diff_JxJxD = mu_JxD[:, None, :] - mu_JxD[None, :, :]
  d2_JxJ = jnp.sum(diff_JxJxD * diff_JxJxD, axis=-1)
  d2_JxJ = jnp.where(jnp.eye(mu_JxD.shape[0], dtype=bool), jnp.inf, d2_JxJ)
  return -jnp.min(d2_JxJ, axis=-1) / math.log(BUMP_AT_NEAREST_CENTRE)


def _bumps(x_PxD: jax.Array, mu_JxD: jax.Array,
           sigma2_J: jax.Array) -> jax.Array:
  """exp(-||x - mu_j||^2 / sigma_j^2), shape [P, J]."""
  diff_PxJxD = x_PxD[:, None, :] - mu_JxD[None, :, :]
  return jnp.exp(-jnp.sum(diff_PxJxD * diff_PxJxD, axis=-1) / sigma2_J)


def _bump_context(key: jax.Array, w_data_CxE: jax.Array,
                  class_logits_C: jax.Array, *, num_points: int,
                  input_dim: int, num_active_classes: int, amplitude: float,
                  dtype: DTypeLike) -> dict[str, jax.Array]:
  """One high_dim context of P points (zero class logits: uniform choice);
  returns every draw, centres included, so tests can recompute f."""
  k_x, k_cls, k_mu, k_y = jax.random.split(key, 4)
  w_data_CxE = jnp.asarray(w_data_CxE, dtype)
  x_PxD = _draw(jax.random.uniform, k_x, (num_points, input_dim), dtype,
                minval=-1.0, maxval=1.0)
  classes_J = _choose_classes(k_cls, class_logits_C, num_active_classes)
  mu_JxD = _draw(jax.random.normal, k_mu, (num_active_classes, input_dim),
                 dtype)
  sigma2_J = _bandwidths(mu_JxD)
  f_PxE = amplitude * _bumps(x_PxD, mu_JxD, sigma2_J) @ w_data_CxE[classes_J]
  y_P, probs_PxC = _labels_and_probs(k_y, f_PxE, w_data_CxE)
  return dict(x_PxD=x_PxD, y_P=y_P, probs_PxC=probs_PxC, classes_J=classes_J,
              mu_JxD=mu_JxD, sigma2_J=sigma2_J)


def _bump_contexts(key, w_data_CxE, class_logits_BxC, *, num_context_points,
                   num_queries, **kwargs) -> Contexts:
  one = lambda k, logits_C: _bump_context(
      k, w_data_CxE, logits_C, num_points=num_context_points + num_queries,
      **kwargs)
  keys_B = jax.random.split(key, class_logits_BxC.shape[0])
  return _pack(jax.vmap(one)(keys_B, class_logits_BxC), num_context_points)


def high_dim(key: jax.Array, w_data_CxE: ArrayLike, *, num_contexts: int,
             num_context_points: int = 125, num_queries: int = 1,
             input_dim: int = 10, num_active_classes: int = 5,
             amplitude: float = 10.0,
             dtype: DTypeLike = jnp.float32) -> Contexts:
  """The paper's "high_dim" task: J Gaussian bumps per context.

  Per context: x ~ U(-1, 1)^D for all N + T points; J distinct classes c_j
  chosen uniformly; centres mu_j ~ N(0, I_D); sigma_j^2 = -min_{j' != j}
  ||mu_j - mu_j'||^2 / ln(0.1) (a bump is 0.1 at its nearest other centre);
  f(x) = amplitude * sum_j exp(-||x - mu_j||^2 / sigma_j^2) w_data[c_j];
  y ~ Categorical(softmax(W_data f(x))). The first N points are the context,
  the last T the queries.

  Args:
    key: PRNG key; split into one key per context.
    w_data_CxE: class embeddings W_data from `class_embeddings`.
    num_contexts, num_context_points, num_queries, input_dim: B, N, T, D.
    num_active_classes: J, 2 <= J <= C.
    amplitude: lambda, the scale of f (10 in the paper); a Python number, or
      a traced scalar under jit (then not validated).
    dtype: floating dtype of inputs and probabilities.

  Returns:
    `Contexts` with B contexts; active_classes holds the c_j, shape [B, J].

  References: arXiv:2405.17248 (synthetic experiments).
  """
  num_classes = _check_bump_args(
      w_data_CxE, num_contexts, num_context_points, num_queries, input_dim,
      num_active_classes, amplitude, dtype)
  uniform_BxC = jnp.zeros((num_contexts, num_classes), jnp.float32)
  return _bump_contexts(
      key, w_data_CxE, uniform_BxC, num_context_points=num_context_points,
      num_queries=num_queries, input_dim=input_dim,
      num_active_classes=num_active_classes, amplitude=amplitude, dtype=dtype)


def mixture_components(key: jax.Array, num_classes: int,
                       num_components: int = 10,
                       scale: float = 2.0) -> jax.Array:
  """Logits of M class-choice distributions for the "mixture" task.

  Entries N(0, scale^2): scale 0 is uniform class choice (= high_dim); larger
  scales concentrate each component on fewer classes. The default scale is
  this library's choice, not a value from the paper.

  Args:
    key: PRNG key.
    num_classes: C.
    num_components: M (10 in the original).
    scale: standard deviation of the logits, finite and >= 0.

  Returns:
    mixture_logits_MxC.

  References: arXiv:2405.17248 (distribution-mismatch experiments).
  """
  checks.check_int(num_classes, "num_classes", 2)
  checks.check_int(num_components, "num_components", 1)
  scale = _check_finite("scale", scale, minimum=0.0)
  return scale * jax.random.normal(key, (num_components, num_classes))


def mixture(key: jax.Array, w_data_CxE: ArrayLike,
            mixture_logits_MxC: ArrayLike, *, num_contexts: int,
            num_context_points: int = 125, num_queries: int = 1,
            input_dim: int = 10, num_active_classes: int = 5,
            amplitude: float = 10.0,
            dtype: DTypeLike = jnp.float32) -> Contexts:
  """high_dim with a non-uniform class choice, for train/test mismatch.

  Per context a component m is chosen uniformly from the M rows of
  mixture_logits_MxC, the J active classes are drawn without replacement
  from softmax(mixture_logits[m]), and the rest is exactly `high_dim`.

  Args:
    key: PRNG key.
    w_data_CxE: class embeddings W_data.
    mixture_logits_MxC: component logits from `mixture_components`.
    num_contexts, num_context_points, num_queries, input_dim,
      num_active_classes, amplitude, dtype: as in `high_dim`.

  Returns:
    `Contexts` with B contexts.

  References: arXiv:2405.17248 (distribution-mismatch experiments).
  """
  num_classes = _check_bump_args(
      w_data_CxE, num_contexts, num_context_points, num_queries, input_dim,
      num_active_classes, amplitude, dtype)
  shape = np.shape(mixture_logits_MxC)
  if len(shape) != 2 or shape[0] < 1 or shape[1] != num_classes:
    raise ValueError(
        f"mixture_logits_MxC must have shape [M, C] with M >= 1 and C = "
        f"{num_classes} (from w_data_CxE), got shape {shape}")
  k_comp, k_ctx = jax.random.split(key)
  comp_B = jax.random.randint(k_comp, (num_contexts,), 0, shape[0])
  class_logits_BxC = jnp.asarray(mixture_logits_MxC, jnp.float32)[comp_B]
  return _bump_contexts(
      k_ctx, w_data_CxE, class_logits_BxC,
      num_context_points=num_context_points, num_queries=num_queries,
      input_dim=input_dim, num_active_classes=num_active_classes,
      amplitude=amplitude, dtype=dtype)


# random_grid: one class per quadrant of [-1, 1]^2.


def random_grid_quadrant(x_TxD: ArrayLike) -> jax.Array:
  """Quadrant index 2 * [x_0 >= 0] + [x_1 >= 0] in {0, 1, 2, 3}, shape [T]."""
  x_TxD = jnp.asarray(x_TxD)
  return (2 * (x_TxD[..., 0] >= 0) + (x_TxD[..., 1] >= 0)).astype(jnp.int32)


def random_grid_probs(quadrant_classes_4: ArrayLike, w_data_CxE: ArrayLike,
                      x_TxD: ArrayLike, amplitude: float = 10.0) -> jax.Array:
  """True class probabilities of one random_grid context at any points.

  For 2-D decision maps: pass contexts.active_classes[b] and a grid of points.

  Args:
    quadrant_classes_4: the context's class per quadrant (`active_classes`).
    w_data_CxE: class embeddings W_data.
    x_TxD: points in R^2, shape [T, 2].
    amplitude: lambda, as used to generate the context.

  Returns:
    probs_TxC = softmax(W_data * amplitude * w_data[class of x's quadrant]).

  References: arXiv:2405.17248 (2-D decision-boundary figures).
  """
  w_data_CxE = jnp.asarray(w_data_CxE)
  x_TxD = jnp.asarray(x_TxD, w_data_CxE.dtype)
  cls_T = jnp.asarray(quadrant_classes_4)[random_grid_quadrant(x_TxD)]
  logits_TxC = amplitude * w_data_CxE[cls_T] @ w_data_CxE.T
  return jax.nn.softmax(logits_TxC, axis=-1)


def _grid_context(key, w_data_CxE, *, num_points, amplitude, dtype):
  k_x, k_cls, k_y = jax.random.split(key, 3)
  x_PxD = _draw(jax.random.uniform, k_x, (num_points, RANDOM_GRID_INPUT_DIM),
                dtype, minval=-1.0, maxval=1.0)
  uniform_C = jnp.zeros(w_data_CxE.shape[:1], jnp.float32)
  classes_4 = _choose_classes(k_cls, uniform_C, NUM_QUADRANTS)
  f_PxE = amplitude * w_data_CxE[classes_4[random_grid_quadrant(x_PxD)]]
  y_P, probs_PxC = _labels_and_probs(k_y, f_PxE, w_data_CxE)
  return dict(x_PxD=x_PxD, y_P=y_P, probs_PxC=probs_PxC, classes_J=classes_4)


def random_grid(key: jax.Array, w_data_CxE: ArrayLike, *, num_contexts: int,
                num_context_points: int = 125, num_queries: int = 1,
                amplitude: float = 10.0,
                dtype: DTypeLike = jnp.float32) -> Contexts:
  """The "random_grid" task: D = 2, one random class per quadrant.

  Per context: 4 distinct classes drawn uniformly, one per quadrant (order of
  `random_grid_quadrant`); x ~ U(-1, 1)^2; f(x) = amplitude * w_data[class of
  x's quadrant]; y ~ Categorical(softmax(W_data f(x))).

  Args:
    key: PRNG key; split into one key per context.
    w_data_CxE: class embeddings W_data, C >= 4.
    num_contexts, num_context_points, num_queries, amplitude, dtype: as in
      `high_dim` (D is fixed at 2).

  Returns:
    `Contexts`; active_classes [B, 4] holds the quadrant classes, to pass to
    `random_grid_probs` for decision maps.

  References: arXiv:2405.17248 (2-D decision-boundary figures).
  """
  _check_common(w_data_CxE, NUM_QUADRANTS, num_contexts, num_context_points,
                num_queries, amplitude, dtype)
  w_data_CxE = jnp.asarray(w_data_CxE, dtype)
  one = lambda k: _grid_context(
      k, w_data_CxE, num_points=num_context_points + num_queries,
      amplitude=amplitude, dtype=dtype)
  draws = jax.vmap(one)(jax.random.split(key, num_contexts))
  return _pack(draws, num_context_points)


GENERATORS: dict[str, Callable[..., Contexts]] = {
    "high_dim": high_dim,
    "random_grid": random_grid,
    "mixture": mixture,
}


def make_contexts(key: jax.Array, name: str, w_data_CxE: ArrayLike,
                  **kwargs: Any) -> Contexts:
  """Dispatches to GENERATORS[name](key, w_data_CxE, **kwargs).

  Args:
    key: PRNG key.
    name: one of GENERATORS ('high_dim', 'random_grid', 'mixture').
    w_data_CxE: class embeddings W_data.
    **kwargs: the generator's keyword arguments (mixture also needs
      mixture_logits_MxC=...).

  Returns:
    `Contexts`. References: arXiv:2405.17248.
  """
  if name not in GENERATORS:
    raise ValueError(f"name must be one of {sorted(GENERATORS)}, got {name!r}")
  return GENERATORS[name](key, w_data_CxE, **kwargs)

# The authors' exact draw of this task (imports only gdattn.data.contexts).
from gdattn.data.authors import authors_high_dim as authors_high_dim  # noqa: E402
