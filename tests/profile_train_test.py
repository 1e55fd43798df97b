"""The per-operation profile's parsing: HLO lines, shape classes, trace events.

On a small compiled function, not the training loop (that is the script's
run, minutes on 2 cores).
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import profile_train


def _program():
  a = jnp.ones((4, 125, 10), jnp.float32)
  u = jnp.ones((4, 125, 5), jnp.float32)

  def f(a, u):
    kernel = jax.nn.softmax(jnp.einsum("bnd,bmd->bnm", a, a), axis=-1)
    return jnp.einsum("bnm,bme->bne", kernel, u)

  return jax.jit(f).lower(a, u).compile(), (a, u)


def test_hlo_instructions_name_shapes_and_what_fusions_compute():
  compiled, _ = _program()
  found = profile_train.hlo_instructions(compiled.as_text())
  assert found, "no instruction parsed"
  shapes = {shape for shape, _, _ in found.values()}
  assert "f32[4,125,5]" in shapes   # the output product
  # Every entry is (shape, emitted-as, computes) and the products are there,
  # alone or inside a fusion.
  assert all(len(v) == 3 and v[0].startswith(("f32", "s32", "u32", "pred", "("))
             for v in found.values())
  assert any("dot" in what for _, _, what in found.values())
  # A fusion is described by its operations, not by its parameters.
  assert all("parameter" not in what for _, _, what in found.values()
             if what != "parameter")


def test_shape_class_groups_by_trailing_dims():
  cls = lambda s: profile_train.shape_class(s, num_ctx=125, num_classes=25)
  assert cls("f32[1,64,125,125]") == "[.., N, N] kernel"
  assert cls("f32[16,2,126,125]") == "[.., N, N] kernel"   # + the query row
  assert cls("f32[64,125,25]") == "[.., N, C] classes"
  assert cls("f32[25,8000]") == "[.., N, C] classes"       # flattened, classes-major
  assert cls("f32[64,5,125]") == "[.., N, F] rows"
  assert cls("f32[8000,5]") == "[.., N, F] rows"
  assert cls("f32[60,2000]") == "[.., N, F] rows"
  assert cls("f32[25,5]") == "other (parameters)"
  assert cls("f32[1]") == "other (parameters)"


def test_covered_ns_counts_nested_and_overlapping_spans_once():
  assert profile_train.covered_ns([]) == 0
  assert profile_train.covered_ns([(0, 10), (2, 5)]) == 10        # nested
  assert profile_train.covered_ns([(5, 15), (0, 10)]) == 15       # overlapping
  assert profile_train.covered_ns([(0, 4), (6, 8), (7, 9)]) == 7  # gap, overlap


def test_trace_events_sum_the_programs_operations(tmp_path):
  compiled, args = _program()
  names = profile_train.hlo_instructions(compiled.as_text())
  jax.block_until_ready(compiled(*args))
  jax.profiler.start_trace(str(tmp_path))
  for _ in range(3):
    jax.block_until_ready(compiled(*args))
  jax.profiler.stop_trace()
  path, = glob.glob(os.path.join(tmp_path, "**", "*.xplane.pb"), recursive=True)
  total, calls, busy = profile_train.trace_events(path, names)
  assert total and set(total) <= set(names)
  assert all(calls[name] >= 1 for name in total)
  assert busy > 0 and np.isfinite(busy)
  # Operations run inside the executor's busy time.
  assert max(total.values()) <= busy
