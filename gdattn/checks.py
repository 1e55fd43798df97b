"""Input validation shared by every public entry point.

Dimensions: B contexts, N context points, T queries, D input dim, C classes,
E embedding dim, K steps, M real output dim.

Which checks run when:
  * kernel names, static ints, shapes, ranks and dtypes: always, before any
    compute, also under jit / vmap / grad (they are static there).
  * values (labels in [0, C), finite entries, kernel_scale finite and > 0,
    a finite result): on concrete inputs only, i.e. eager calls outside jit.
    Under tracing a value cannot raise a Python error, so they are skipped,
    unless the call runs inside `checked(fn)`: there every value check on a
    traced array becomes a `jax.experimental.checkify` check, carried out of
    jit / vmap as an error value (`err.throw()` raises it on the host).
"""

import contextlib
import contextvars
import functools
import operator
from typing import Any, Callable, Sequence

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

from gdattn import kernels


def is_concrete(x: Any) -> bool:
  """True when `x` holds values now (not a tracer under jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


# Set while `checked` traces its function: only then may a value check on a
# tracer emit checkify.check (elsewhere the un-functionalised check is an
# error of its own).
_CHECKED = contextvars.ContextVar("gdattn_checked", default=False)


@contextlib.contextmanager
def _checked_mode():
  token = _CHECKED.set(True)
  try:
    yield
  finally:
    _CHECKED.reset(token)


def _in_checked_mode() -> bool:
  return _CHECKED.get()


def checked(fn: Callable[..., Any]) -> Callable[..., tuple[checkify.Error, Any]]:
  """`fn` with gdattn's value checks active on traced inputs.

  Returns a function with fn's arguments that returns (error, fn's output);
  it composes with jit and vmap (wrap the un-jitted fn, then jit the result:
  a function jitted before wrapping keeps its unchecked trace). Every value
  check that an eager call would raise (labels outside [0, C), NaN/inf
  inputs, kernel_scale <= 0 or NaN, a NaN/inf result) is recorded in
  `error`; `error.throw()` raises it on the host as a JaxRuntimeError with
  the eager message, `error.get()` returns it (None when all passed).
  Shape, rank and dtype errors still raise at trace time.

      err, f = jax.jit(gdattn.checked(functools.partial(
          gdattn.categorical_gd, kernel="softmax")))(x, y, q, w_e, lrs,
          kernel_scale=s)
      err.throw()

  Args:
    fn: any function that calls gdattn's entry points or models.

  Returns:
    The checkify-transformed fn (user checks only).
  """

  @functools.wraps(fn)
  def flagged(*args, **kwargs):
    with _checked_mode():
      return fn(*args, **kwargs)

  return checkify.checkify(flagged, errors=checkify.user_checks)


def _shape(x: Any, name: str) -> tuple[int, ...]:
  if x is None:  # jnp.shape(None) is () and jnp.result_type(None) float32.
    raise TypeError(f"{name} must be an array, got None")
  try:
    return tuple(jnp.shape(x))
  except Exception as e:  # e.g. a string or a ragged list
    raise TypeError(
        f"{name} must be an array, got {type(x).__name__}: {e}"
    ) from None


def _dtype(x: Any, name: str) -> np.dtype:
  # result_type reads a string as a dtype name ('f', 'L', 'int8'), so a str
  # argument would pass as a number of that dtype; reject it here.
  if isinstance(x, (str, bytes)):
    raise TypeError(f"{name} must be a numeric array, got {type(x).__name__} {x!r}")
  try:
    return jnp.result_type(x)
  except Exception:  # e.g. a string or object array
    what = getattr(x, "dtype", type(x).__name__)
    raise TypeError(f"{name} must be a numeric array, got {what}") from None


def check_int(value: Any, name: str, minimum: int = 1) -> int:
  """Checks a static integer (Python or numpy, not bool) >= minimum; returns it."""
  try:
    ok = not isinstance(value, bool) and operator.index(value) >= minimum
  except TypeError:  # floats, strings, None, tracers
    ok = False
  if not ok:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return operator.index(value)


def check_rank(x: Any, name: str, rank: int, dims: str) -> tuple[int, ...]:
  """Checks `x` has `rank` dims; `dims` names them for the message, e.g. '[N, D]'."""
  shape = _shape(x, name)
  if len(shape) != rank:
    raise ValueError(
        f"{name} must have rank {rank} with shape {dims}, got shape {shape}"
    )
  return shape


def check_floating(x: Any, name: str) -> None:
  dtype = _dtype(x, name)
  if not jnp.issubdtype(dtype, jnp.floating):
    given = getattr(x, "dtype", dtype)  # as passed, before JAX canonicalises
    raise TypeError(f"{name} must have a floating dtype, got {given}")


def check_integer(x: Any, name: str) -> None:
  dtype = _dtype(x, name)
  if not jnp.issubdtype(dtype, jnp.integer):
    given = getattr(x, "dtype", dtype)
    raise TypeError(f"{name} must have an integer dtype (class labels), got {given}")


def check_finite(x: Any, name: str) -> None:
  """Raises if a concrete floating array holds NaN or inf (see `checked`)."""
  if not is_concrete(x):
    if _in_checked_mode():
      finite = jnp.isfinite(x)
      checkify.check(jnp.all(finite),
                     f"{name} must be finite, got {{bad}} NaN/inf entries",
                     bad=jnp.size(finite) - jnp.count_nonzero(finite))
    return
  values = np.asarray(x)
  if not np.all(np.isfinite(values)):
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    raise ValueError(f"{name} must be finite, got {bad} NaN/inf entries")
  # A finite float64 input can still overflow when JAX casts it to float32.
  jax_dtype = jax.dtypes.canonicalize_dtype(values.dtype)
  if values.size and jax_dtype != values.dtype and jnp.issubdtype(
      jax_dtype, jnp.floating
  ):
    largest = float(np.max(np.abs(values)))
    if largest > float(jnp.finfo(jax_dtype).max):
      raise ValueError(
          f"{name} must fit in {jax_dtype} (the dtype JAX casts its"
          f" {values.dtype} to), got entries of magnitude {largest:.3g};"
          " rescale it or enable jax_enable_x64"
      )


def check_kernel(kernel: Any, valid: Sequence[str] | None = None,
                 where: str = "") -> None:
  """Checks `kernel` is one of `valid` (default: every registered kernel)."""
  valid = kernels.KERNELS if valid is None else tuple(valid)
  if not isinstance(kernel, str) or kernel not in valid:
    raise ValueError(f"{where}kernel must be one of {valid}, got {kernel!r}")


def check_kernel_scale(kernel_scale: Any) -> None:
  shape = _shape(kernel_scale, "kernel_scale")
  if shape != ():
    raise ValueError(f"kernel_scale must be a scalar, got shape {shape}")
  try:
    dtype = _dtype(kernel_scale, "kernel_scale")
  except TypeError:
    dtype = None
  if dtype is None or not (
      jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  ):
    raise TypeError(
        f"kernel_scale must be a real number, got {type(kernel_scale).__name__}"
    )
  if is_concrete(kernel_scale):
    if isinstance(kernel_scale, int):  # JAX casts a Python int to int32/int64.
      int_dtype = jax.dtypes.canonicalize_dtype(np.int64)
      if abs(kernel_scale) > jnp.iinfo(int_dtype).max:
        digits = len(str(abs(kernel_scale)))
        raise ValueError(
            f"kernel_scale must fit in {int_dtype} (JAX's dtype for a Python"
            f" int), got an int of {digits} digits; pass a float"
        )
    value = float(kernel_scale)
    if not (np.isfinite(value) and value > 0):
      raise ValueError(f"kernel_scale must be finite and > 0, got {value}")
  elif _in_checked_mode():
    checkify.check(jnp.isfinite(kernel_scale) & (kernel_scale > 0),
                   "kernel_scale must be finite and > 0, got {value}",
                   value=kernel_scale)


def validate_labels(y_ctx: Any, num_classes: int, name: str = "y_ctx") -> None:
  """Checks concrete labels lie in [0, num_classes); callable outside jit."""
  check_integer(y_ctx, name)
  message = (f"{name} must hold class labels in [0, {num_classes}) (C ="
             f" w_e.shape[0]), got values in [{{low}}, {{high}}]")
  if not is_concrete(y_ctx):
    if _in_checked_mode() and jnp.size(y_ctx):
      low, high = jnp.min(y_ctx), jnp.max(y_ctx)
      checkify.check((low >= 0) & (high < num_classes), message, low=low,
                     high=high)
    return
  values = np.asarray(y_ctx)
  if values.size and (values.min() < 0 or values.max() >= num_classes):
    raise ValueError(message.format(low=values.min(), high=values.max()))


def check_points(keys: Any, queries: Any, key_name: str, query_name: str,
                 ) -> tuple[int, int, int]:
  """Checks keys [N, D] (N >= 1) and queries [T, D]: float, finite; (N, T, D)."""
  n, d = check_rank(keys, key_name, 2, "[N, D]")
  t, d_query = check_rank(queries, query_name, 2, "[T, D]")
  if d_query != d:
    raise ValueError(
        f"{query_name} must have the input dim D = {d} of {key_name} (shape"
        f" [T, {d}]), got shape {(t, d_query)}"
    )
  if n < 1:
    raise ValueError(
        f"{key_name} must hold at least one context point, got N = {n}")
  check_floating(keys, key_name)
  check_floating(queries, query_name)
  check_finite(keys, key_name)
  check_finite(queries, query_name)
  return n, t, d


def _check_context(x_ctx: Any, x_query: Any) -> tuple[int, int, int]:
  return check_points(x_ctx, x_query, "x_ctx", "x_query")


def validate_kernel_inputs(q_TxD: Any, k_NxD: Any, kernel_scale: Any
                           ) -> tuple[jax.Array, jax.Array]:
  """Validates the arguments of the kernels' entry points; returns q, k as arrays.

  The kernel name is checked by the caller (it knows which kernels it takes).
  """
  check_kernel_scale(kernel_scale)
  check_points(k_NxD, q_TxD, "k_NxD", "q_TxD")
  return jnp.asarray(q_TxD), jnp.asarray(k_NxD)


def validate_gd_inputs(x_ctx, y_ctx, x_query, w_e, lrs, *, kernel, kernel_scale):
  """Validates the arguments of the categorical GD entry points.

  Returns:
    (N, T, D, C, E, K).
  """
  check_kernel(kernel)
  check_kernel_scale(kernel_scale)
  n, t, d = _check_context(x_ctx, x_query)
  (n_labels,) = check_rank(y_ctx, "y_ctx", 1, "[N]")
  if n_labels != n:
    raise ValueError(
        f"y_ctx must have one label per context point, shape [{n}] (N from"
        f" x_ctx), got shape {(n_labels,)}"
    )
  c, e = check_rank(w_e, "w_e", 2, "[C, E]")
  if c < 1 or e < 1:
    raise ValueError(f"w_e must have C >= 1 classes and E >= 1 dims, got {(c, e)}")
  k, e_lrs = check_rank(lrs, "lrs", 2, "[K, E]")
  if e_lrs != e:
    raise ValueError(
        f"lrs must have shape [K, E] with E = {e} from w_e, got shape {(k, e_lrs)}"
    )
  if k < 1:
    raise ValueError(f"lrs must hold at least one step (K >= 1), got shape {(k, e)}")
  check_floating(w_e, "w_e")
  check_floating(lrs, "lrs")
  check_finite(w_e, "w_e")
  check_finite(lrs, "lrs")
  validate_labels(y_ctx, c)
  return n, t, d, c, e, k


def validate_regression_inputs(x_ctx, y_ctx, x_query, lrs, *, kernel, kernel_scale):
  """Validates the arguments of `regression_gd`; returns (N, T, D, M, K)."""
  check_kernel(kernel)
  check_kernel_scale(kernel_scale)
  n, t, d = _check_context(x_ctx, x_query)
  n_y, m = check_rank(y_ctx, "y_ctx", 2, "[N, M]")
  if n_y != n:
    raise ValueError(
        f"y_ctx must have one target row per context point, shape [{n}, M],"
        f" got shape {(n_y, m)}"
    )
  check_floating(y_ctx, "y_ctx")
  check_finite(y_ctx, "y_ctx")
  lrs_shape = _shape(lrs, "lrs")
  if len(lrs_shape) not in (1, 2) or (len(lrs_shape) == 2 and lrs_shape[1] != m):
    raise ValueError(
        f"lrs must have shape [K] or [K, M] with M = {m} from y_ctx, got"
        f" shape {lrs_shape}"
    )
  if lrs_shape[0] < 1:
    raise ValueError(f"lrs must hold at least one step (K >= 1), got shape {lrs_shape}")
  check_floating(lrs, "lrs")
  check_finite(lrs, "lrs")
  return n, t, d, m, lrs_shape[0]


def check_output_finite(out: jax.Array, where: str, kernel: str) -> jax.Array:
  """Turns a would-be silent NaN/inf in a concrete result into a clear error."""
  message = (
      f"{where} produced NaN/inf with finite inputs: the {kernel!r} kernel"
      " overflowed (exp(s <x, x_i>) or the GD iterates exceed the dtype's"
      " range). Lower kernel_scale or the learning rates, normalise x, or"
      " use float64."
  )
  if not is_concrete(out):
    if _in_checked_mode():
      checkify.check(jnp.all(jnp.isfinite(out)), message)
  elif not bool(jnp.all(jnp.isfinite(out))):
    raise FloatingPointError(message)
  return out


def validate_model_inputs(x_ctx: Any, y_ctx: Any, x_query: Any, *,
                          num_classes: int, input_dim: int | None = None) -> None:
  """Validates a model call's batch: x_ctx [B, N, D], y_ctx [B, N], x_query [B, T, D].

  Args:
    x_ctx, y_ctx, x_query: the model's arguments.
    num_classes: C; labels must lie in [0, C).
    input_dim: D the model was built for, or None when any D works.
  """
  b, n, d = check_rank(x_ctx, "x_ctx", 3, "[B, N, D]")
  b_y, n_y = check_rank(y_ctx, "y_ctx", 2, "[B, N]")
  b_q, t, d_q = check_rank(x_query, "x_query", 3, "[B, T, D]")
  if input_dim is not None and d != input_dim:
    raise ValueError(
        f"x_ctx must have the model's input_dim D = {input_dim} (shape"
        f" [B, N, {input_dim}]), got shape {(b, n, d)}")
  if (b_y, n_y) != (b, n):
    raise ValueError(
        f"y_ctx must have one label per context point, shape [{b}, {n}] (B, N"
        f" from x_ctx), got shape {(b_y, n_y)}")
  if (b_q, d_q) != (b, d):
    raise ValueError(
        f"x_query must have shape [{b}, T, {d}] (B, D from x_ctx), got shape"
        f" {(b_q, t, d_q)}")
  if n < 1:
    raise ValueError(f"x_ctx must hold at least one context point, got N = {n}")
  check_floating(x_ctx, "x_ctx")
  check_floating(x_query, "x_query")
  check_finite(x_ctx, "x_ctx")
  check_finite(x_query, "x_query")
  validate_labels(y_ctx, num_classes)
