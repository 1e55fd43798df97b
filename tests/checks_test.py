"""Tests for gdattn/checks.py: every public entry point rejects bad input early.

Dimensions: N context points, T queries, D input dim, C classes, E embedding
dim, K steps, M real output dim, B contexts.

The entry points (categorical_gd, categorical_gd_trajectory,
gd_transformer_logits, regression_gd) must raise a ValueError/TypeError that
names the argument, before any kernel or attention is computed; hypothesis
fuzzing checks that nothing else escapes: no other exception type, no silent
NaN/inf.
"""

import functools
import re

import chex
import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gdattn
from gdattn import attention
from gdattn import construction
from gdattn import gd
from gdattn import kernels

ARG_NAMES = ("x_ctx", "y_ctx", "x_query", "w_e", "lrs", "kernel", "kernel_scale")
CATEGORICAL_ENTRIES = ("categorical_gd", "categorical_gd_trajectory", "gd_transformer_logits")
ALL_ENTRIES = CATEGORICAL_ENTRIES + ("regression_gd",)
VALID_KERNELS_RE = r"\('linear', 'exp', 'rbf', 'laplacian', 'softmax'\)"

# Base shapes of the explicit cases.
N, T, D, C, E, K, M = 4, 2, 3, 3, 2, 2, 1

# vmap and the per-context loop run the same float32 ops in a different
# batching: agreement to a few ulps of O(1) values.
VMAP_RTOL = VMAP_ATOL = 1e-5

# Each eager call that gets past validation compiles its lax.scan afresh
# (~0.2-0.5 s on 2 cores): the example counts keep the file near 30 s.
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
VALID_SETTINGS = hypothesis.settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)

pytestmark = pytest.mark.filterwarnings(
    "ignore::RuntimeWarning", "ignore::DeprecationWarning"
)


def _valid_args(entry: str) -> dict:
  rng = np.random.default_rng(0)
  args = {
      "x_ctx": rng.normal(size=(N, D)).astype(np.float32),
      "x_query": rng.normal(size=(T, D)).astype(np.float32),
      "kernel": "softmax",
      "kernel_scale": 1.0,
  }
  if entry == "regression_gd":
    args["y_ctx"] = rng.normal(size=(N, M)).astype(np.float32)
    args["lrs"] = np.full((K,), 0.5, np.float32)
  else:
    args["y_ctx"] = np.array([0, 1, 2, 0], np.int32)
    args["w_e"] = rng.normal(size=(C, E)).astype(np.float32)
    args["lrs"] = np.full((K, E), 0.5, np.float32)
  return args


def _run(entry: str, args: dict) -> jax.Array:
  """Calls an entry point with the argument dict (positional arrays, kw rest)."""
  fn = getattr(gdattn, entry)
  arrays = ("x_ctx", "y_ctx", "x_query", "lrs")
  if entry != "regression_gd":
    arrays = ("x_ctx", "y_ctx", "x_query", "w_e", "lrs")
  return fn(
      *(args[name] for name in arrays),
      kernel=args["kernel"],
      kernel_scale=args["kernel_scale"],
  )


@pytest.fixture
def no_compute(monkeypatch):
  """Makes every compute path fail loudly, so validation must come first."""

  def forbidden(*args, **kwargs):
    raise AssertionError("computation started before validation")

  monkeypatch.setattr(kernels, "attention_weights", forbidden)
  monkeypatch.setattr(gd, "functional_gd_trajectory", forbidden)
  monkeypatch.setattr(construction, "build_tokens", forbidden)
  monkeypatch.setattr(attention, "attention_stack", forbidden)


def _f32(*shape, fill=0.0):
  return np.full(shape, fill, np.float32)


def _with_nan(shape, where=(0, 0), value=np.nan):
  out = np.zeros(shape, np.float32)
  out[where] = value
  return out


# (id, overrides, exception, regex). The regex names the argument, the
# expected and the given shape/dtype/value. Shared by all four entry points.
SHARED_CASES = [
    ("x_ctx_rank1", {"x_ctx": _f32(N)}, ValueError,
     r"x_ctx must have rank 2 with shape \[N, D\], got shape \(4,\)"),
    ("x_ctx_rank3", {"x_ctx": _f32(1, N, D)}, ValueError,
     r"x_ctx must have rank 2 with shape \[N, D\], got shape \(1, 4, 3\)"),
    ("x_ctx_scalar", {"x_ctx": 1.0}, ValueError,
     r"x_ctx must have rank 2 .*got shape \(\)"),
    ("x_query_rank1", {"x_query": _f32(D)}, ValueError,
     r"x_query must have rank 2 with shape \[T, D\], got shape \(3,\)"),
    ("x_query_rank3", {"x_query": _f32(1, T, D)}, ValueError,
     r"x_query must have rank 2 with shape \[T, D\], got shape \(1, 2, 3\)"),
    ("d_mismatch", {"x_query": _f32(T, D + 2)}, ValueError,
     r"x_query must have the input dim D = 3 of x_ctx \(shape \[T, 3\]\), got"
     r" shape \(2, 5\)"),
    ("empty_context", {"x_ctx": _f32(0, D)}, ValueError,
     r"x_ctx must hold at least one context point, got N = 0"),
    ("x_ctx_int", {"x_ctx": np.zeros((N, D), np.int32)}, TypeError,
     r"x_ctx must have a floating dtype, got int32"),
    ("x_ctx_bool", {"x_ctx": np.zeros((N, D), bool)}, TypeError,
     r"x_ctx must have a floating dtype, got bool"),
    ("x_ctx_complex", {"x_ctx": np.zeros((N, D), np.complex64)}, TypeError,
     r"x_ctx must have a floating dtype, got complex64"),
    ("x_query_int", {"x_query": np.zeros((T, D), np.int32)}, TypeError,
     r"x_query must have a floating dtype, got int32"),
    ("x_ctx_str", {"x_ctx": np.full((N, D), "a")}, TypeError,
     r"x_ctx must be a numeric array, got <U1"),
    ("x_ctx_object", {"x_ctx": np.full((N, D), None, object)}, TypeError,
     r"x_ctx must be a numeric array, got object"),
    ("x_ctx_ragged", {"x_ctx": [[1.0, 2.0], [1.0]]}, TypeError,
     r"x_ctx must be an array, got list"),
    ("x_ctx_none", {"x_ctx": None}, TypeError, r"x_ctx must be an array, got None"),
    ("x_ctx_nan", {"x_ctx": _with_nan((N, D))}, ValueError,
     r"x_ctx must be finite, got 1 NaN/inf entries"),
    ("x_ctx_inf", {"x_ctx": _with_nan((N, D), value=np.inf)}, ValueError,
     r"x_ctx must be finite, got 1 NaN/inf entries"),
    ("x_query_nan", {"x_query": _with_nan((T, D))}, ValueError,
     r"x_query must be finite, got 1 NaN/inf entries"),
    ("x_query_inf", {"x_query": _with_nan((T, D), (1, 2), -np.inf)}, ValueError,
     r"x_query must be finite, got 1 NaN/inf entries"),
    ("kernel_unknown", {"kernel": "gaussian"}, ValueError,
     rf"kernel must be one of {VALID_KERNELS_RE}, got 'gaussian'"),
    ("kernel_case", {"kernel": "Softmax"}, ValueError,
     rf"kernel must be one of {VALID_KERNELS_RE}, got 'Softmax'"),
    ("kernel_none", {"kernel": None}, ValueError,
     rf"kernel must be one of {VALID_KERNELS_RE}, got None"),
    ("kernel_list", {"kernel": ["softmax"]}, ValueError,
     rf"kernel must be one of {VALID_KERNELS_RE}, got \['softmax'\]"),
    ("scale_zero", {"kernel_scale": 0.0}, ValueError,
     r"kernel_scale must be finite and > 0, got 0.0"),
    ("scale_negative", {"kernel_scale": -2}, ValueError,
     r"kernel_scale must be finite and > 0, got -2.0"),
    ("scale_nan", {"kernel_scale": float("nan")}, ValueError,
     r"kernel_scale must be finite and > 0, got nan"),
    ("scale_inf", {"kernel_scale": np.float32(np.inf)}, ValueError,
     r"kernel_scale must be finite and > 0, got inf"),
    ("scale_vector", {"kernel_scale": np.ones(2, np.float32)}, ValueError,
     r"kernel_scale must be a scalar, got shape \(2,\)"),
    ("scale_list", {"kernel_scale": [1.0]}, ValueError,
     r"kernel_scale must be a scalar, got shape \(1,\)"),
    ("scale_huge_int", {"kernel_scale": 10**30}, ValueError,
     r"kernel_scale must fit in int(32|64) .*got an int of 31 digits"),
    ("scale_str", {"kernel_scale": "1.0"}, TypeError,
     r"kernel_scale must be a real number, got str"),
    # A dtype code: jnp.result_type("L") is uint64, found by the fuzz test below.
    ("scale_dtype_code_str", {"kernel_scale": "L"}, TypeError,
     r"kernel_scale must be a real number, got str"),
    ("scale_bool", {"kernel_scale": True}, TypeError,
     r"kernel_scale must be a real number, got bool"),
    ("scale_complex", {"kernel_scale": 1j}, TypeError,
     r"kernel_scale must be a real number, got complex"),
    ("scale_none", {"kernel_scale": None}, TypeError,
     r"kernel_scale must be an array, got None"),
]

CATEGORICAL_CASES = [
    ("y_ctx_rank2", {"y_ctx": np.zeros((N, 1), np.int32)}, ValueError,
     r"y_ctx must have rank 1 with shape \[N\], got shape \(4, 1\)"),
    ("w_e_rank1", {"w_e": _f32(C)}, ValueError,
     r"w_e must have rank 2 with shape \[C, E\], got shape \(3,\)"),
    ("w_e_rank3", {"w_e": _f32(1, C, E)}, ValueError,
     r"w_e must have rank 2 with shape \[C, E\], got shape \(1, 3, 2\)"),
    ("lrs_rank1", {"lrs": _f32(K)}, ValueError,
     r"lrs must have rank 2 with shape \[K, E\], got shape \(2,\)"),
    ("lrs_rank3", {"lrs": _f32(K, E, 1)}, ValueError,
     r"lrs must have rank 2 with shape \[K, E\], got shape \(2, 2, 1\)"),
    ("n_mismatch_short", {"y_ctx": np.array([0, 1, 2], np.int32)}, ValueError,
     r"y_ctx must have one label per context point, shape \[4\] \(N from x_ctx\),"
     r" got shape \(3,\)"),
    ("n_mismatch_long", {"y_ctx": np.zeros(N + 1, np.int32)}, ValueError,
     r"y_ctx must have one label per context point, shape \[4\].* got shape \(5,\)"),
    ("e_mismatch", {"lrs": _f32(K, E + 1)}, ValueError,
     r"lrs must have shape \[K, E\] with E = 2 from w_e, got shape \(2, 3\)"),
    ("no_steps", {"lrs": _f32(0, E)}, ValueError,
     r"lrs must hold at least one step \(K >= 1\), got shape \(0, 2\)"),
    ("no_classes", {"w_e": _f32(0, E)}, ValueError,
     r"w_e must have C >= 1 classes and E >= 1 dims, got \(0, 2\)"),
    ("label_too_big", {"y_ctx": np.array([0, 1, 3, 0], np.int32)}, ValueError,
     r"y_ctx must hold class labels in \[0, 3\) \(C = w_e.shape\[0\]\), got values"
     r" in \[0, 3\]"),
    ("label_negative", {"y_ctx": np.array([0, -1, 2, 0], np.int64)}, ValueError,
     r"y_ctx must hold class labels in \[0, 3\) .*got values in \[-1, 2\]"),
    ("label_huge", {"y_ctx": np.array([0, 1, 2, 2**40], np.int64)}, ValueError,
     r"y_ctx must hold class labels in \[0, 3\) .*got values in \[0, 1099511627776\]"),
    ("labels_float", {"y_ctx": np.array([0.0, 1.0, 2.0, 0.0], np.float32)}, TypeError,
     r"y_ctx must have an integer dtype \(class labels\), got float32"),
    ("labels_bool", {"y_ctx": np.array([0, 1, 1, 0], bool)}, TypeError,
     r"y_ctx must have an integer dtype \(class labels\), got bool"),
    ("w_e_int", {"w_e": np.zeros((C, E), np.int32)}, TypeError,
     r"w_e must have a floating dtype, got int32"),
    ("lrs_int", {"lrs": np.ones((K, E), np.int32)}, TypeError,
     r"lrs must have a floating dtype, got int32"),
    ("w_e_nan", {"w_e": _with_nan((C, E))}, ValueError,
     r"w_e must be finite, got 1 NaN/inf entries"),
    ("w_e_inf", {"w_e": _with_nan((C, E), (2, 1), np.inf)}, ValueError,
     r"w_e must be finite, got 1 NaN/inf entries"),
    ("lrs_nan", {"lrs": _with_nan((K, E))}, ValueError,
     r"lrs must be finite, got 1 NaN/inf entries"),
    ("lrs_inf", {"lrs": _with_nan((K, E), (1, 1), -np.inf)}, ValueError,
     r"lrs must be finite, got 1 NaN/inf entries"),
]

REGRESSION_CASES = [
    ("y_ctx_rank1", {"y_ctx": _f32(N)}, ValueError,
     r"y_ctx must have rank 2 with shape \[N, M\], got shape \(4,\)"),
    ("n_mismatch", {"y_ctx": _f32(N + 1, M)}, ValueError,
     r"y_ctx must have one target row per context point, shape \[4, M\], got"
     r" shape \(5, 1\)"),
    ("y_ctx_int", {"y_ctx": np.zeros((N, M), np.int32)}, TypeError,
     r"y_ctx must have a floating dtype, got int32"),
    ("y_ctx_nan", {"y_ctx": _with_nan((N, M))}, ValueError,
     r"y_ctx must be finite, got 1 NaN/inf entries"),
    ("lrs_m_mismatch", {"lrs": _f32(K, M + 1)}, ValueError,
     r"lrs must have shape \[K\] or \[K, M\] with M = 1 from y_ctx, got shape"
     r" \(2, 2\)"),
    ("lrs_scalar", {"lrs": np.float32(0.5)}, ValueError,
     r"lrs must have shape \[K\] or \[K, M\] .*got shape \(\)"),
    ("lrs_rank3", {"lrs": _f32(K, M, 1)}, ValueError,
     r"lrs must have shape \[K\] or \[K, M\] .*got shape \(2, 1, 1\)"),
    ("no_steps", {"lrs": _f32(0)}, ValueError,
     r"lrs must hold at least one step \(K >= 1\), got shape \(0,\)"),
    ("lrs_int", {"lrs": np.ones(K, np.int32)}, TypeError,
     r"lrs must have a floating dtype, got int32"),
    ("lrs_inf", {"lrs": np.array([0.5, np.inf], np.float32)}, ValueError,
     r"lrs must be finite, got 1 NaN/inf entries"),
]


def _params(entries, cases):
  return [
      pytest.param(entry, overrides, exc, regex, id=f"{entry}-{case_id}")
      for entry in entries
      for case_id, overrides, exc, regex in cases
  ]


@pytest.mark.parametrize(
    "entry,overrides,exc,regex",
    _params(ALL_ENTRIES, SHARED_CASES)
    + _params(CATEGORICAL_ENTRIES, CATEGORICAL_CASES)
    + _params(("regression_gd",), REGRESSION_CASES),
)
def test_rejects_bad_input_before_compute(entry, overrides, exc, regex, no_compute):
  args = {**_valid_args(entry), **overrides}
  with pytest.raises(exc, match=regex):
    _run(entry, args)


@pytest.mark.skipif(
    jax.config.jax_enable_x64, reason="float64 inputs are not cast under x64"
)
@pytest.mark.parametrize("entry", ALL_ENTRIES)
def test_rejects_float64_that_overflows_float32(entry, no_compute):
  args = {**_valid_args(entry), "x_query": np.full((T, D), 1e300)}
  with pytest.raises(
      ValueError, match=r"x_query must fit in float32 .*float64.*1e\+300"
  ):
    _run(entry, args)


@pytest.mark.parametrize("entry", ALL_ENTRIES)
def test_valid_input_passes(entry):
  out = _run(entry, _valid_args(entry))
  assert np.all(np.isfinite(out))


def _mixed_dtype_args(entry):
  """float16 inputs and learning rates, float32 targets (w_e or y_ctx)."""
  args = _valid_args(entry)
  target = "y_ctx" if entry == "regression_gd" else "w_e"
  for name in ("x_ctx", "x_query", "lrs"):
    args[name] = args[name].astype(np.float16)
  args[target] = args[target].astype(np.float32)
  return args


@pytest.mark.parametrize("entry", [
    "categorical_gd", "categorical_gd_trajectory", "gd_transformer_logits",
    "regression_gd",
])
def test_mixed_float_dtypes(entry):
  """Mixed float dtypes either promote (finite result) or fail clearly."""
  try:
    out = _run(entry, _mixed_dtype_args(entry))
  except (ValueError, TypeError) as err:
    assert any(name in str(err) for name in ARG_NAMES), f"uninformative: {err}"
  else:
    assert np.all(np.isfinite(out))


def test_validate_gd_inputs_returns_dims():
  args = _valid_args("categorical_gd")
  dims = gdattn.validate_gd_inputs(
      args["x_ctx"], args["y_ctx"], args["x_query"], args["w_e"], args["lrs"],
      kernel="rbf", kernel_scale=2,
  )
  assert dims == (N, T, D, C, E, K)


def test_validate_labels_accepts_valid_and_empty():
  gdattn.validate_labels(np.array([0, 2, 1], np.int32), 3)
  gdattn.validate_labels(np.zeros((0,), np.int32), 3)
  gdattn.validate_labels(np.array([[0, 1], [2, 2]], np.uint8), 3)  # batched [B, N]


@pytest.mark.parametrize(
    "labels,num_classes,exc,regex",
    [
        (np.array([0, 3]), 3, ValueError,
         r"y_ctx must hold class labels in \[0, 3\) .*got values in \[0, 3\]"),
        (np.array([-2, 0]), 3, ValueError, r"y_ctx .*got values in \[-2, 0\]"),
        (np.array([[0, 1], [1, 5]]), 2, ValueError,
         r"y_ctx must hold class labels in \[0, 2\) .*got values in \[0, 5\]"),
        (np.array([0.0, 1.0]), 3, TypeError,
         r"y_ctx must have an integer dtype \(class labels\), got float64"),
        (np.array(["a"]), 3, TypeError, r"y_ctx must be a numeric array"),
    ],
)
def test_validate_labels_rejects(labels, num_classes, exc, regex):
  with pytest.raises(exc, match=regex):
    gdattn.validate_labels(labels, num_classes)


def test_validate_labels_uses_given_name():
  with pytest.raises(ValueError, match=r"y_query must hold class labels in \[0, 4\)"):
    gdattn.validate_labels(np.array([4]), 4, name="y_query")


# ---------------------------------------------------------------------------
# jit and vmap: shape/dtype checks run at trace time with the same messages.

JIT_CASES = [
    case for case in SHARED_CASES + CATEGORICAL_CASES
    if case[0] in {
        "x_ctx_rank1", "x_query_rank3", "d_mismatch", "empty_context",
        "x_ctx_int", "w_e_rank1", "lrs_rank1", "n_mismatch_short",
        "e_mismatch", "no_steps", "labels_float",
    }
]


def _jitted(entry, kernel="softmax", kernel_scale=1.0):
  fn = functools.partial(
      getattr(gdattn, entry), kernel=kernel, kernel_scale=kernel_scale
  )
  return jax.jit(lambda x, y, q, w, l: fn(x, y, q, w, l))


@pytest.mark.parametrize(
    "entry,overrides,exc,regex", _params(CATEGORICAL_ENTRIES, JIT_CASES)
)
def test_jit_raises_same_error_at_trace_time(entry, overrides, exc, regex, no_compute):
  args = {**_valid_args(entry), **overrides}
  with pytest.raises(exc, match=regex) as eager:
    _run(entry, args)
  with pytest.raises(exc, match=regex) as jitted:
    _jitted(entry)(
        args["x_ctx"], args["y_ctx"], args["x_query"], args["w_e"], args["lrs"]
    )
  assert str(jitted.value) == str(eager.value)


@pytest.mark.parametrize("scale,regex", [
    (0.0, r"kernel_scale must be finite and > 0, got 0.0"),
    (float("nan"), r"kernel_scale must be finite and > 0, got nan"),
])
def test_jit_checks_a_closed_over_kernel_scale(scale, regex, no_compute):
  args = _valid_args("categorical_gd")
  with pytest.raises(ValueError, match=regex):
    _jitted("categorical_gd", kernel_scale=scale)(
        args["x_ctx"], args["y_ctx"], args["x_query"], args["w_e"], args["lrs"]
    )


def test_jit_checks_the_shape_of_a_traced_kernel_scale(no_compute):
  args = _valid_args("categorical_gd")
  fn = jax.jit(
      lambda s: gdattn.categorical_gd(
          args["x_ctx"], args["y_ctx"], args["x_query"], args["w_e"],
          args["lrs"], kernel="rbf", kernel_scale=s,
      )
  )
  with pytest.raises(ValueError, match=r"kernel_scale must be a scalar, got shape \(2,\)"):
    fn(jnp.ones(2))


def test_jit_matches_eager_on_valid_input():
  args = _valid_args("categorical_gd")
  arrays = (args["x_ctx"], args["y_ctx"], args["x_query"], args["w_e"], args["lrs"])
  np.testing.assert_allclose(
      _jitted("categorical_gd")(*arrays), _run("categorical_gd", args),
      rtol=VMAP_RTOL, atol=VMAP_ATOL,
  )


def _batched_contexts(num_contexts=2):
  rng = np.random.default_rng(1)
  x_BxNxD = rng.normal(size=(num_contexts, N, D)).astype(np.float32)
  y_BxN = rng.integers(0, C, size=(num_contexts, N)).astype(np.int32)
  q_BxTxD = rng.normal(size=(num_contexts, T, D)).astype(np.float32)
  return x_BxNxD, y_BxN, q_BxTxD


@pytest.mark.parametrize("entry", ["categorical_gd", "gd_transformer_logits"])
def test_vmap_over_contexts_validates_and_matches_loop(entry):
  args = _valid_args(entry)
  fn = functools.partial(
      getattr(gdattn, entry), w_e=args["w_e"], lrs=args["lrs"],
      kernel="laplacian", kernel_scale=0.7,
  )
  x_BxNxD, y_BxN, q_BxTxD = _batched_contexts()
  gdattn.validate_labels(y_BxN, C)  # Value checks on the host, before vmap.
  batched = jax.vmap(lambda x, y, q: fn(x, y, q))(x_BxNxD, y_BxN, q_BxTxD)
  looped = np.stack([fn(x, y, q) for x, y, q in zip(x_BxNxD, y_BxN, q_BxTxD)])
  np.testing.assert_allclose(batched, looped, rtol=VMAP_RTOL, atol=VMAP_ATOL)


def test_vmap_raises_per_context_shape_errors(no_compute):
  args = _valid_args("categorical_gd")
  x_BxNxD, _, q_BxTxD = _batched_contexts()
  y_bad = np.zeros((2, N + 1), np.int32)
  fn = functools.partial(
      gdattn.categorical_gd, w_e=args["w_e"], lrs=args["lrs"],
      kernel="softmax", kernel_scale=1.0,
  )
  regex = r"y_ctx must have one label per context point, shape \[4\].*got shape \(5,\)"
  with pytest.raises(ValueError, match=regex):
    jax.vmap(lambda x, y, q: fn(x, y, q))(x_BxNxD, y_bad, q_BxTxD)
  with pytest.raises(ValueError, match=r"x_query must have the input dim D = 3"):
    jax.vmap(lambda x, y, q: fn(x, y, q))(
        x_BxNxD, np.zeros((2, N), np.int32), np.zeros((2, T, D + 1), np.float32)
    )


def test_host_label_check_catches_a_bad_context_in_a_batch():
  _, y_BxN, _ = _batched_contexts()
  y_BxN = y_BxN.copy()
  y_BxN[1, 1] = C
  with pytest.raises(ValueError, match=r"y_ctx must hold class labels in \[0, 3\)"):
    gdattn.validate_labels(y_BxN, C)


# ---------------------------------------------------------------------------
# Fuzzing: arbitrary arguments either work (finite result) or fail clearly.

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


# float64 element strategies: moderate, large but finite (the kernels and the
# GD iterates may overflow), and anything (NaN, inf, subnormals).
_ELEMENTS = {
    "moderate": st.floats(-3, 3),
    "large": st.floats(allow_nan=False, allow_infinity=False),
    "any": st.one_of(st.floats(-3, 3), st.floats()),
}


def _junk(float_dtype):
  """Anything but a valid argument (though it may happen to be one)."""
  junk_array = hnp.arrays(
      st.sampled_from([np.int32, np.int64, np.uint8, bool, float_dtype,
                       np.complex64, np.dtype("<U2")]),
      hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
  )
  return st.one_of(
      junk_array,
      st.none(),
      st.text(max_size=3),
      st.integers(),
      st.floats(),
      st.booleans(),
      st.just([[1.0, 2.0], [1.0]]),
      st.lists(st.floats(-3, 3), max_size=4),
  )


@st.composite
def _fuzzed_call(draw):
  """An entry point and its arguments: valid ones, some of them replaced by junk.

  One float dtype per call: mixed float dtypes hit the known scan-carry bug
  (test_mixed_float_dtypes below).
  """
  entry = draw(st.sampled_from(ALL_ENTRIES))
  float_dtype = draw(st.sampled_from(_FLOAT_DTYPES))
  n, t, d = draw(st.integers(1, 4)), draw(st.integers(0, 3)), draw(st.integers(1, 3))
  c, e, k = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
  elements = _ELEMENTS[draw(st.sampled_from(sorted(_ELEMENTS)))]

  def floats(*shape):
    with np.errstate(over="ignore"):
      values = draw(hnp.arrays(np.float64, shape, elements=elements))
      return values.astype(float_dtype)

  args = {
      "x_ctx": floats(n, d),
      "x_query": floats(t, d),
      "kernel": draw(st.sampled_from(gdattn.KERNELS)),
      "kernel_scale": draw(st.one_of(
          st.floats(0.01, 3), st.integers(1, 3), st.floats(), st.integers(),
          st.integers(2**31 - 2, 2**64),
      )),
  }
  if entry == "regression_gd":
    args["y_ctx"] = floats(n, e)
    args["lrs"] = draw(st.sampled_from([floats(k), floats(k, e)]))
  else:
    args["y_ctx"] = draw(hnp.arrays(
        st.sampled_from([np.int32, np.int64, np.uint8]), (n,),
        elements=st.integers(0, c - 1),
    ))
    args["w_e"] = floats(c, e)
    args["lrs"] = floats(k, e)
  num_junk = draw(st.sampled_from([0, 1, 1, 2]))
  for name in draw(st.permutations(sorted(args)))[:num_junk]:
    if name == "kernel":
      args[name] = draw(st.one_of(st.text(max_size=8), _junk(float_dtype)))
    elif name == "y_ctx" and entry != "regression_gd" and draw(st.booleans()):
      args[name] = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-3, c + 3)))
    else:
      args[name] = draw(_junk(float_dtype))
  return entry, args


@FUZZ_SETTINGS
@hypothesis.given(_fuzzed_call())
def test_fuzz_no_uninformative_exception_no_silent_nan(call):
  entry, args = call
  try:
    out = _run(entry, args)
  except (ValueError, TypeError, FloatingPointError) as err:
    message = str(err)
    hypothesis.event(f"{type(err).__name__}: {message.split(' must ')[0][:40]}")
    assert any(name in message for name in ARG_NAMES) or "overflow" in message, (
        f"{entry} raised an uninformative {type(err).__name__}: {message}"
    )
  else:
    hypothesis.event("finite result")
    assert np.all(np.isfinite(np.asarray(out))), f"{entry} returned NaN/inf silently"


@st.composite
def _moderate_call(draw):
  """Valid arguments of moderate scale: |x| <= 1, s <= 2, |w|, |lr| <= 1."""
  entry = draw(st.sampled_from(ALL_ENTRIES))
  n, t, d = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
  c, e, k = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
  dtype = draw(st.sampled_from([np.float32, np.float64]))

  def floats(*shape):
    return draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1))).astype(dtype)

  args = {
      "x_ctx": floats(n, d),
      "x_query": floats(t, d),
      "kernel": draw(st.sampled_from(gdattn.KERNELS)),
      "kernel_scale": draw(st.floats(0.01, 2)),
  }
  if entry == "regression_gd":
    args["y_ctx"], args["lrs"] = floats(n, e), floats(k, e)
  else:
    args["y_ctx"] = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, c - 1)))
    args["w_e"], args["lrs"] = floats(c, e), floats(k, e)
  return entry, args, (t, c if entry == "gd_transformer_logits" else e)


@VALID_SETTINGS
@hypothesis.given(_moderate_call())
def test_fuzz_moderate_valid_input_gives_finite_output(call):
  entry, args, out_tail = call
  out = np.asarray(_run(entry, args))
  assert out.shape[-2:] == out_tail
  assert np.all(np.isfinite(out))


# --- checked mode: the value checks inside jit / vmap (checkify) -------------


def _checked_gd():
  gd_fn = functools.partial(gdattn.categorical_gd, kernel="softmax")
  return gdattn.checked(lambda x, y, q, w, l, s: gd_fn(x, y, q, w, l, kernel_scale=s))


# (id, overrides, message): the value errors an eager call raises.
VALUE_CASES = [
    ("label_C", {"y_ctx": np.array([0, 1, 3, 0], np.int32)},
     "y_ctx must hold class labels in [0, 3) (C = w_e.shape[0]), got values in [0, 3]"),
    ("label_negative", {"y_ctx": np.array([0, -1, 2, 0], np.int32)},
     "y_ctx must hold class labels in [0, 3) (C = w_e.shape[0]), got values in [-1, 2]"),
    ("x_ctx_nan", {"x_ctx": _with_nan((N, D))}, "x_ctx must be finite, got 1 NaN/inf"),
    ("lrs_inf", {"lrs": _with_nan((K, E), value=np.inf)}, "lrs must be finite, got 1"),
    ("scale_negative", {"kernel_scale": np.float32(-1.0)},
     "kernel_scale must be finite and > 0, got -1.0"),
]


def _checked_args(overrides):
  args = _valid_args("categorical_gd")
  args.update(overrides)
  return (args["x_ctx"], args["y_ctx"], args["x_query"], args["w_e"], args["lrs"],
          np.float32(args["kernel_scale"]))


@pytest.mark.parametrize("overrides,message",
                         [pytest.param(o, m, id=i) for i, o, m in VALUE_CASES])
def test_checked_catches_value_errors_under_jit(overrides, message):
  args = _checked_args(overrides)
  # Unchecked, jit cannot raise on values: the bad input runs silently.
  gd_fn = functools.partial(gdattn.categorical_gd, kernel="softmax")
  jax.jit(lambda *a: gd_fn(*a[:5], kernel_scale=a[5]))(*args)
  err, _ = jax.jit(_checked_gd())(*args)
  assert message in err.get()
  with pytest.raises(Exception, match=re.escape(message)):
    err.throw()


def test_checked_passes_valid_input_and_equals_unchecked():
  args = _checked_args({})
  err, f_TxE = jax.jit(_checked_gd())(*args)
  assert err.get() is None
  want = gdattn.categorical_gd(*args[:5], kernel="softmax", kernel_scale=args[5])
  chex.assert_trees_all_close(f_TxE, want, rtol=VMAP_RTOL, atol=VMAP_ATOL)


def test_checked_under_vmap_flags_the_bad_context_only():
  good = _checked_args({})
  bad = _checked_args({"y_ctx": np.array([0, 1, 7, 0], np.int32)})
  stacked = [np.stack([g, b]) for g, b in zip(good[:3], bad[:3])]
  batched = jax.vmap(_checked_gd(), in_axes=(0, 0, 0, None, None, None))
  for fn in (batched, jax.jit(batched)):
    err, f_BxTxE = fn(*stacked, *good[3:])
    assert "y_ctx must hold class labels in [0, 3)" in err.get()
    assert "[0, 7]" in err.get()
    chex.assert_shape(f_BxTxE, (2, T, E))
  # Checked inside the vmap: vmap of a checked function, the other order.
  err, _ = jax.jit(gdattn.checked(jax.vmap(
      lambda x, y, q: gdattn.categorical_gd(
          x, y, q, good[3], good[4], kernel="softmax", kernel_scale=1.0))))(
              *stacked)
  assert "[0, 7]" in err.get()


def test_checked_catches_an_overflowing_result():
  args = list(_checked_args({}))
  args[0] = args[0] * 100.0  # exp(s <x, x_i>) overflows float32
  args[2] = args[2] * 100.0
  exp_gd = gdattn.checked(lambda x, y, q, w, l, s: gdattn.categorical_gd(
      x, y, q, w, l, kernel="exp", kernel_scale=s))
  err, _ = jax.jit(exp_gd)(*args)
  assert "categorical_gd produced NaN/inf" in err.get()


def test_shape_errors_still_raise_at_trace_time_in_checked_mode():
  args = list(_checked_args({}))
  args[2] = args[2][:, :2]
  with pytest.raises(ValueError, match=r"x_query must have the input dim D = 3"):
    jax.jit(_checked_gd())(*args)
