"""Attention kernels a(x, x_i) between queries and context points.

Dimensions: T query rows, N context points (keys), D input dim.

Every kernel of SPEC section 2 is a record of `REGISTRY` (a `Kernel`): its
base function phi of the inputs, whether the scale s enters the exponent, and
whether it is normalised over the N context points (softmax) or carries the
1/N factor of the functional gradient. The public functions validate their
inputs (gdattn.checks) and dispatch on the record's fields, never on the
kernel's name. References:
arXiv:2405.17248 (section 3), arXiv:2212.07677 (linear case).
"""

import dataclasses
import functools
import types
from typing import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from gdattn import checks


def _sq_dist(q_TxD: jax.Array, k_NxD: jax.Array) -> jax.Array:
  # The expansion avoids a [T, N, D] intermediate; clamp the tiny negatives it
  # can produce by cancellation so that exp(-s d) never exceeds 1 spuriously.
  sq = (
      jnp.sum(q_TxD * q_TxD, axis=-1)[:, None]
      + jnp.sum(k_NxD * k_NxD, axis=-1)[None, :]
      - 2.0 * q_TxD @ k_NxD.T
  )
  return jnp.maximum(sq, 0.0)


def _l1_dist(q_TxD: jax.Array, k_NxD: jax.Array) -> jax.Array:
  return jnp.sum(jnp.abs(q_TxD[:, None, :] - k_NxD[None, :, :]), axis=-1)


def _dot(q_TxD: jax.Array, k_NxD: jax.Array) -> jax.Array:
  return q_TxD @ k_NxD.T


def _neg_sq_dist(q_TxD: jax.Array, k_NxD: jax.Array) -> jax.Array:
  return -_sq_dist(q_TxD, k_NxD)


def _neg_l1_dist(q_TxD: jax.Array, k_NxD: jax.Array) -> jax.Array:
  return -_l1_dist(q_TxD, k_NxD)


def fusion_boundary(x: jax.Array) -> jax.Array:
  """x itself; on CPU, XLA does not fuse the op that made x into x's users.

  XLA:CPU hands a batched product together with the element-wise work and
  reductions around it to YNNPACK as one fused kernel, which runs the small
  per-context products of attention ([N, N] x [N, F], [H, R, N] x [H, N, M])
  slower than the product alone followed by XLA's own loop fusion.
  `python -m experiments.bench_train --layers= --seeds=1 --boundaries`
  times the training loop with this function and with the identity in its
  place, alternating rounds in one process. On a 2-core CPU, time per epoch
  with / without: the Trained TF 0.82x at K = 1 and 0.88x at K = 2 (the
  boundaries around its self-attention products); GD 0.82-0.97x at K = 2
  (the boundary after its kernel scale's derivative product), within noise
  at K = 1 and 1.03x at K = 4, where that product's input is already formed
  once for the K - 1 context steps; the follow-on's GDMLP 0.94x at K = 2.
  The trained parameters were identical with and without. On other
  backends (GPU, TPU), where it was not measured, it returns x unchanged.
  """
  if jax.default_backend() != "cpu":
    return x
  return jax.lax.optimization_barrier(x)


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One attention kernel a(x, x_i), everything the core needs to know about it.

  With phi = `base(q, k)` and s the kernel scale, the weights are

      a = s phi / N                          (not scale_in_exponent)
      a = exp(s phi) / N                     (scale_in_exponent)
      a = exp(s phi) / sum_j exp(s phi_j)    (scale_in_exponent, normalised)

  so log k(x, x_i) = s phi for the exponential kernels: the chunked
  long-context path (`gdattn.longcontext`) normalises online in that log
  domain, and `attention_operator`'s derivative w.r.t. s reads phi.

  Attributes:
    name: the `kernel=` string of every entry point.
    base: phi(q [T, D], k [N, D]) -> [T, N], the logits without s.
    scale_in_exponent: s multiplies phi inside exp (else a = s phi / N).
    normalised: normalised over the N context points (softmax) instead of
      carrying the 1/N of the functional gradient.
    form: "dot" (phi = <q, k>) or "distance" (phi = -dist(q, k)).

  References: arXiv:2405.17248 (section 3).
  """

  name: str
  base: Callable[[jax.Array, jax.Array], jax.Array]
  scale_in_exponent: bool
  normalised: bool
  form: str

  def __post_init__(self):
    if self.form not in ("dot", "distance"):
      raise ValueError(f"form must be 'dot' or 'distance', got {self.form!r}")
    if self.normalised and not self.scale_in_exponent:
      # sum_j s phi_j can vanish or change sign: no normalised linear kernel.
      raise ValueError(
          f"kernel {self.name!r}: normalised needs scale_in_exponent")

  @property
  def scale_in_query(self) -> bool:
    """s phi = <s q, k>: the scale can move into a query projection."""
    return self.form == "dot"

  def logits(self, q_TxD: jax.Array, k_NxD: jax.Array, kernel_scale) -> jax.Array:
    """s * phi, [T, N] (the log-kernel when scale_in_exponent). Unchecked."""
    return kernel_scale * self.base(q_TxD, k_NxD)

  def weights(self, q_TxD: jax.Array, k_NxD: jax.Array, kernel_scale) -> jax.Array:
    """a(q, k) [T, N]; unchecked (see `attention_weights`)."""
    return self.weights_from_base(self.base(q_TxD, k_NxD), kernel_scale)

  def weights_from_base(self, base_TxN: jax.Array, kernel_scale) -> jax.Array:
    """a(q, k) [T, N] from phi = `base_TxN` (= self.base(q, k)); unchecked."""
    return _weights_from_base(self, kernel_scale, base_TxN)

  def operator(self, q_TxD: jax.Array, k_NxD: jax.Array, kernel_scale
               ) -> Callable[[jax.Array], jax.Array]:
    """u -> a(q, k) @ u; unchecked (see `attention_operator`)."""
    return self.operator_from_base(
        self.base(jnp.asarray(q_TxD), jnp.asarray(k_NxD)), kernel_scale)

  def operator_from_base(self, base_TxN: jax.Array, kernel_scale
                         ) -> Callable[[jax.Array], jax.Array]:
    """u -> a @ u with the weights built from phi = `base_TxN`
    (= self.base(q, k)), e.g. computed once for data that do not change
    between steps; unchecked."""
    return _operator(self, base_TxN, kernel_scale)


# Adding a kernel is one entry here: the dense core, the chunked path, the
# theory probes and the tests all read these records.
REGISTRY = types.MappingProxyType({spec.name: spec for spec in (
    Kernel("linear", _dot, scale_in_exponent=False, normalised=False, form="dot"),
    Kernel("exp", _dot, scale_in_exponent=True, normalised=False, form="dot"),
    Kernel("rbf", _neg_sq_dist, scale_in_exponent=True, normalised=False,
           form="distance"),
    Kernel("laplacian", _neg_l1_dist, scale_in_exponent=True, normalised=False,
           form="distance"),
    Kernel("softmax", _dot, scale_in_exponent=True, normalised=True, form="dot"),
)})
KERNELS = tuple(REGISTRY)


def get_kernel(kernel: str) -> Kernel:
  """The registry record of `kernel`; ValueError naming the valid names."""
  checks.check_kernel(kernel, KERNELS)
  return REGISTRY[kernel]


def kernel_logits(
    q_TxD: ArrayLike, k_NxD: ArrayLike, *, kernel: str, kernel_scale: ArrayLike
) -> jax.Array:
  """Log of the unnormalised kernel, log k(x, x_i), for the exponential kernels.

  Defined for the kernels with `scale_in_exponent`: "exp", "softmax"
  (s <x, x_i>), "rbf" (-s ||x - x_i||^2) and "laplacian" (-s ||x - x_i||_1).
  The chunked long-context path works in this log domain so that it can
  normalise online.

  Args:
    q_TxD: query inputs.
    k_NxD: context (key) inputs.
    kernel: a kernel of the registry with scale_in_exponent.
    kernel_scale: s > 0.

  Returns:
    [T, N] log-kernel values.
  """
  exponential = tuple(n for n, spec in REGISTRY.items() if spec.scale_in_exponent)
  checks.check_kernel(kernel, exponential, where="kernel_logits: ")
  q_TxD, k_NxD = checks.validate_kernel_inputs(q_TxD, k_NxD, kernel_scale)
  return REGISTRY[kernel].logits(q_TxD, k_NxD, kernel_scale)


def attention_weights(
    q_TxD: ArrayLike, k_NxD: ArrayLike, *, kernel: str, kernel_scale: ArrayLike
) -> jax.Array:
  """Attention weights a(x, x_i) of SPEC section 2.

  | kernel    | a(x, x_i)                               |
  |-----------|-----------------------------------------|
  | linear    | s <x, x_i> / N                          |
  | exp       | exp(s <x, x_i>) / N                     |
  | rbf       | exp(-s ||x - x_i||^2) / N               |
  | laplacian | exp(-s ||x - x_i||_1) / N               |
  | softmax   | exp(s <x, x_i>) / sum_j exp(s <x, x_j>) |

  Args:
    q_TxD: query inputs (the points whose function value is updated).
    k_NxD: context inputs (keys); N >= 1 is their number.
    kernel: one of KERNELS.
    kernel_scale: s > 0 (scalar).

  Returns:
    [T, N] attention weights.

  Raises:
    ValueError, TypeError: bad kernel, kernel_scale, ranks, input dims,
      dtypes, or (on concrete inputs) NaN/inf entries or s <= 0.

  References: arXiv:2405.17248, section 3.
  """
  spec = get_kernel(kernel)
  q_TxD, k_NxD = checks.validate_kernel_inputs(q_TxD, k_NxD, kernel_scale)
  return spec.weights(q_TxD, k_NxD, kernel_scale)


def _weights_from_base(spec: Kernel, kernel_scale, base_TxN):
  logits_TxN = kernel_scale * base_TxN
  if spec.normalised:
    return jax.nn.softmax(logits_TxN, axis=-1)
  if not spec.scale_in_exponent:
    return logits_TxN / base_TxN.shape[-1]
  return jnp.exp(logits_TxN) / base_TxN.shape[-1]


def attention_operator(
    q_TxD: ArrayLike, k_NxD: ArrayLike, *, kernel: str, kernel_scale: ArrayLike
) -> Callable[[jax.Array], jax.Array]:
  """The linear map u -> attention_weights(q, k) @ u, weights computed once.

  What functional GD does with the kernel: every step applies the same
  weights to a new [N, F] update. The returned function has the value of the
  plain product, and a derivative that never forms an [T, N] tangent or
  cotangent w.r.t. the kernel scale: for the exponential kernels

      d/ds (A u) = (A o phi) u - rowsum(A o phi) * (A u)   (softmax)
      d/ds (A u) = (A o phi) u                             (exp, rbf, laplacian)

  with log k = s * phi, so reverse mode costs two [T, N] x [N, F] products
  instead of the autodiff chain through the softmax. Derivatives w.r.t. q
  and k (zero, hence skipped, when the inputs are data) and higher-order
  derivatives are exact as well: the rule is itself differentiable.

  Args:
    q_TxD: query inputs (rows).
    k_NxD: context inputs (keys).
    kernel: one of KERNELS.
    kernel_scale: s > 0 (scalar).

  Returns:
    apply(u [N, F]) -> [T, F].

  Raises:
    ValueError, TypeError: as `attention_weights` (checked once, here; `u`
      is not checked).
  """
  spec = get_kernel(kernel)
  q_TxD, k_NxD = checks.validate_kernel_inputs(q_TxD, k_NxD, kernel_scale)
  return spec.operator(q_TxD, k_NxD, kernel_scale)


def _operator(spec: Kernel, base_TxN, kernel_scale):
  if not spec.scale_in_exponent:
    # Linear in s: scaling after the product keeps s's derivative O(T F).
    return lambda u_NxF: (base_TxN @ u_NxF) * kernel_scale / base_TxN.shape[-1]
  weights_TxN = _weights_from_base(spec, kernel_scale, base_TxN)
  # Only the derivative reads these (dead code, removed under jit, otherwise);
  # built once here rather than at every application.
  weighted_base_TxN = weights_TxN * base_TxN
  weighted_base_sum_Tx1 = jnp.sum(weighted_base_TxN, axis=-1, keepdims=True)
  normalised = spec.normalised
  return lambda u_NxF: _apply_exponential(
      normalised, kernel_scale, base_TxN, weights_TxN, weighted_base_TxN,
      weighted_base_sum_Tx1, u_NxF)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _apply_exponential(normalised, kernel_scale, base_TxN, weights_TxN,
                       weighted_base_TxN, weighted_base_sum_Tx1, u_NxF):
  """weights @ u. weights = _weights_from_base(kernel, s, base) and
  weighted_base = weights o base (with its row sums) are passed in, computed
  once per operator; their tangents are rebuilt below from those of s and
  base."""
  del normalised, kernel_scale, base_TxN, weighted_base_TxN, weighted_base_sum_Tx1
  return weights_TxN @ u_NxF


def _is_zero(tangent) -> bool:
  return isinstance(tangent, SymbolicZero)


@functools.partial(_apply_exponential.defjvp, symbolic_zeros=True)
def _apply_exponential_jvp(normalised, primals, tangents):
  (kernel_scale, base_TxN, weights_TxN, weighted_base_TxN, weighted_base_sum_Tx1,
   u_NxF) = primals
  d_scale, d_base, *_, d_u = tangents  # the weights' own tangents are implied
  out_TxF = weights_TxN @ u_NxF
  terms = []
  if not _is_zero(d_u):
    terms.append(weights_TxN @ d_u)
  if not _is_zero(d_base):
    # Inputs that are differentiated: the [T, N] logit tangent is needed.
    d_logits_TxN = kernel_scale * d_base
    if not _is_zero(d_scale):
      d_logits_TxN = d_logits_TxN + d_scale * base_TxN
    d_weights_TxN = weights_TxN * d_logits_TxN
    if normalised:
      d_weights_TxN = d_weights_TxN - weights_TxN * jnp.sum(
          d_weights_TxN, axis=-1, keepdims=True)
    terms.append(d_weights_TxN @ u_NxF)
  elif not _is_zero(d_scale):
    # Only s moves: d weights = weights o base (minus the row mean of base
    # under the weights for softmax), contracted with u without forming it.
    along_s_TxF = fusion_boundary(weighted_base_TxN @ u_NxF)
    if normalised:
      along_s_TxF = along_s_TxF - weighted_base_sum_Tx1 * out_TxF
    terms.append(d_scale * along_s_TxF)
  d_out_TxF = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out_TxF)
  return out_TxF, d_out_TxF.astype(out_TxF.dtype)

