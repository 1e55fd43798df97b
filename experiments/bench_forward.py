"""Forward-pass speed: GD reference vs constructed attention vs naive tokens.

Run (from the repository root; about 1-3 minutes on 2 CPU cores):

    python -m experiments.bench_forward            # B=2048, K in {1, 2, 4, 8}
    python -m experiments.bench_forward --quick    # B=64, K=2: ~10-20 s (mostly compiling)

For B contexts (N=125, T=1 query, d=10, C=25, e=5, softmax kernel), jit+vmap
over contexts, it times one forward of the whole batch (warm-up excluded,
median of up to --repeats) for three paths that compute the same query logits:
  ref    the lax.scan functional-GD reference `gdattn.categorical_gd`;
  stack  the exact attention construction `gdattn.gd_transformer_logits`;
  naive  the paper's code as written: dense [S, M] tokens, M = D + 3E
         (x, w_y, E, f), per block a 2-head softmax self-attention with full
         M x M query/key/value/output matrices over all S = N + T tokens (an
         [S, S] mask removes the query tokens as keys), the second head being
         the erase head of scale 1e5, then a full M x M cross-attention to the
         C class embeddings embedded as M-dim tokens.
For each K and path it prints ms per forward (whole batch), contexts/s, the
FLOPs of one batch forward, the achieved GFLOP/s and its fraction of this
machine's float32 matmul peak (a jitted 2048 x 2048 jnp.dot, timed in the same
run), the max |p - p_ref| of the query class probabilities, and the speed-up
of ref and stack over naive.

FLOPs are counted on the traced jaxpr: 2mnk per dot, one per output element of
elementwise ops and one per input element of reductions, loop bodies times
their trip count. (XLA's compiled cost_analysis() counts a while-loop body
once, so it undercounts the lax.scan paths by ~K: it is printed as `xla` for
comparison; for the unrolled naive path the two agree closely.)

The naive erase head is only approximate: softmax(1e5 <x, x_j>) picks the key
with the largest <x, x_j>, which is not x itself when norms differ, so the old
E is not fully removed and the naive logits drift from GD from K = 3 on (E_0
is the same for every token, so K <= 2 cancels exactly). With unit-norm
inputs the same naive code matches GD to ~1e-7 at K = 8, so the drift is the
erase head's and not a slip in the naive code.
"""

import math
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import gdattn

_BATCH = flags.DEFINE_integer("batch", 2048, "Contexts B per forward.")
_NUM_CTX = flags.DEFINE_integer("num_ctx", 125, "Context size N.")
_NUM_QUERY = flags.DEFINE_integer("num_query", 1, "Queries T per context.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8"], "Depths K.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Max timed repeats (median); stops after 3 once past 10 s.")
_QUICK = flags.DEFINE_bool("quick", False, "B=64, K=2 only, 2 repeats.")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")

INPUT_DIM, NUM_CLASSES, EMBED_DIM = 10, 25, 5
KERNEL, KERNEL_SCALE, LR = "softmax", 1.0, 1.0
ERASE_SCALE = 1e5  # the paper's code's erase-head scale
PEAK_SIZE = 2048


# --- the naive path, as the paper's code computes it -------------------------
# Token slots: x [0, D), w_y [D, D+E), E [D+E, D+2E), f [D+2E, D+3E).


def _slots(d, e):
  return slice(0, d), slice(d, d + e), slice(d + e, d + 2 * e), slice(d + 2 * e, d + 3 * e)


def naive_params(lrs_KxE, d, e):
  """Per block: 2 self-attention heads and a cross-attention, all M x M."""
  sx, sw, se, sf = _slots(d, e)
  m = d + 3 * e
  zeros = jnp.zeros((m, m), lrs_KxE.dtype)
  read_x = zeros.at[sx, sx].set(jnp.eye(d))
  ident = jnp.eye(m, dtype=lrs_KxE.dtype)

  def one_block(lr_E):
    gd_value = zeros.at[sw, sf].set(jnp.diag(lr_E)).at[se, sf].set(-jnp.diag(lr_E))
    erase_value = zeros.at[se, se].set(-jnp.eye(e))
    return {
        # Heads stacked on axis 0: [2, M, M] each. Head 0 is one GD step
        # (value lr * (w_y - E) into f); head 1 erases E (value -E into E).
        "wq": jnp.stack([KERNEL_SCALE * read_x, ERASE_SCALE * read_x]),
        "wk": jnp.stack([read_x, read_x]),
        "wv": jnp.stack([gd_value, erase_value]),
        "wo": jnp.stack([ident, ident]),
        # Cross-attention: query f -> w coordinates, key = w slot, value w -> E.
        "cq": zeros.at[sf, sw].set(jnp.eye(e)),
        "ck": zeros.at[sw, sw].set(jnp.eye(e)),
        "cv": zeros.at[sw, se].set(jnp.eye(e)),
        "co": ident,
    }

  return [one_block(lr) for lr in lrs_KxE]


def naive_logits(x_ctx, y_ctx, x_query, w_e, lrs):
  """Query logits [T, C] from dense tokens and full-matrix attention blocks."""
  (n, d), t, (c, e) = x_ctx.shape, x_query.shape[0], w_e.shape
  sx, sw, se, sf = _slots(d, e)
  s, m = n + t, d + 3 * e
  z_SxM = jnp.zeros((s, m), x_ctx.dtype)
  z_SxM = z_SxM.at[:, sx].set(jnp.concatenate([x_ctx, x_query]))
  z_SxM = z_SxM.at[:n, sw].set(w_e[y_ctx])
  z_SxM = z_SxM.at[:, se].set(jnp.mean(w_e, axis=0))
  classes_CxM = jnp.zeros((c, m), x_ctx.dtype).at[:, sw].set(w_e)
  key_mask_SxS = jnp.broadcast_to(jnp.arange(s) < n, (s, s))
  for p in naive_params(lrs, d, e):  # unrolled: the paper's code loops in Python
    q_HxSxM = jnp.einsum("sm,hmk->hsk", z_SxM, p["wq"])
    k_HxSxM = jnp.einsum("sm,hmk->hsk", z_SxM, p["wk"])
    v_HxSxM = jnp.einsum("sm,hmk->hsk", z_SxM, p["wv"])
    logits_HxSxS = jnp.einsum("hsk,htk->hst", q_HxSxM, k_HxSxM)
    att_HxSxS = jax.nn.softmax(jnp.where(key_mask_SxS, logits_HxSxS, -jnp.inf), axis=-1)
    z_SxM = z_SxM + jnp.einsum("hst,htk,hkm->sm", att_HxSxS, v_HxSxM, p["wo"])
    q_SxM, k_CxM, v_CxM = z_SxM @ p["cq"], classes_CxM @ p["ck"], classes_CxM @ p["cv"]
    att_SxC = jax.nn.softmax(q_SxM @ k_CxM.T, axis=-1)
    z_SxM = z_SxM + att_SxC @ v_CxM @ p["co"]
  return z_SxM[n:, sf] @ w_e.T


# --- the two library paths ----------------------------------------------------


def ref_logits(x_ctx, y_ctx, x_query, w_e, lrs):
  f_TxE = gdattn.categorical_gd(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=KERNEL, kernel_scale=KERNEL_SCALE
  )
  return f_TxE @ w_e.T


def stack_logits(x_ctx, y_ctx, x_query, w_e, lrs):
  return gdattn.gd_transformer_logits(
      x_ctx, y_ctx, x_query, w_e, lrs, kernel=KERNEL, kernel_scale=KERNEL_SCALE
  )


PATHS = {"ref": ref_logits, "stack": stack_logits, "naive": naive_logits}

# --- measurement --------------------------------------------------------------

_ELEMENTWISE = frozenset(
    "add sub mul div neg max min exp exp2 log log1p tanh logistic sqrt rsqrt"
    " pow integer_pow abs sign select_n square erf".split()
)
_REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min argmax argmin".split())


def jaxpr_flops(jaxpr) -> float:
  """FLOPs of a jaxpr: 2mnk per dot, loop bodies times their trip count."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out_size = sum(math.prod(v.aval.shape) for v in eqn.outvars)
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += 2.0 * out_size * math.prod(lhs_shape[i] for i in contract)
    elif name in _ELEMENTWISE:
      total += out_size
    elif name in _REDUCTIONS:
      total += math.prod(eqn.invars[0].aval.shape)
    trips = eqn.params.get("length", 1) if name == "scan" else 1
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += trips * jaxpr_flops(inner)
  return total


def _median_seconds(fn, args, repeats, budget_s=10.0):
  """(median wall time of fn(*args) after a warm-up, its output); at least 3
  repeats (or `repeats` if fewer), stopping early once they pass budget_s."""
  out = jax.block_until_ready(fn(*args))  # warm-up (compile excluded)
  times = []
  while len(times) < repeats and (len(times) < min(3, repeats) or sum(times) < budget_s):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def matmul_peak_gflops(repeats):
  a = jax.random.normal(jax.random.key(1), (PEAK_SIZE, PEAK_SIZE), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (PEAK_SIZE, PEAK_SIZE), jnp.float32)
  seconds, _ = _median_seconds(jax.jit(jnp.dot).lower(a, b).compile(), (a, b), 10)
  return 2 * PEAK_SIZE**3 / seconds / 1e9


def make_batch(key, batch, n, t, k):
  k_x, k_q, k_y, k_w = jax.random.split(key, 4)
  return (
      jax.random.uniform(k_x, (batch, n, INPUT_DIM), jnp.float32, -1, 1),
      jax.random.randint(k_y, (batch, n), 0, NUM_CLASSES),
      jax.random.uniform(k_q, (batch, t, INPUT_DIM), jnp.float32, -1, 1),
      jax.random.normal(k_w, (batch, NUM_CLASSES, EMBED_DIM), jnp.float32),
      jnp.full((k, EMBED_DIM), LR, jnp.float32),  # shared by the batch
  )


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # jax's backend-probe INFO lines
  batch, steps, repeats = _BATCH.value, [int(k) for k in _STEPS.value], _REPEATS.value
  if _QUICK.value:
    batch, steps, repeats = 64, [2], 2
  n, t = _NUM_CTX.value, _NUM_QUERY.value
  peak = matmul_peak_gflops(repeats)
  print(
      f"B={batch} contexts, N={n}, T={t}, d={INPUT_DIM}, C={NUM_CLASSES},"
      f" e={EMBED_DIM}, {KERNEL} kernel, float32, jit+vmap, median of {repeats};"
      f" jax {jax.__version__} on {jax.devices()[0].platform}"
  )
  print(f"float32 matmul peak (jitted {PEAK_SIZE}x{PEAK_SIZE} jnp.dot): {peak:.1f} GFLOP/s")
  header = (f"{'K':>2} {'path':<6} {'ms/fwd':>9} {'ctx/s':>9} {'GFLOP':>8} {'xla GFLOP':>9}"
            f" {'GFLOP/s':>8} {'%peak':>6} {'max|dp|':>8} {'speed-up':>8}")
  print(header)
  print("-" * len(header))
  for k in steps:
    args = make_batch(jax.random.fold_in(jax.random.key(_SEED.value), k), batch, n, t, k)
    in_axes = (0, 0, 0, 0, None)
    rows, probs = {}, {}
    for name, path in PATHS.items():
      batched = jax.vmap(path, in_axes=in_axes)
      flops = jaxpr_flops(jax.make_jaxpr(batched)(*args).jaxpr)
      fn = jax.jit(batched).lower(*args).compile()
      cost = fn.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      seconds, logits = _median_seconds(fn, args, repeats)
      probs[name] = np.asarray(jax.nn.softmax(logits, axis=-1))
      rows[name] = (seconds, flops, float(cost.get("flops", float("nan"))))
    naive_seconds = rows["naive"][0]
    for name, (seconds, flops, xla_flops) in rows.items():
      gflops = flops / seconds / 1e9
      dp = np.max(np.abs(probs[name] - probs["ref"]))
      speedup = f"{naive_seconds / seconds:.1f}x" if name != "naive" else "1.0x"
      print(f"{k:>2} {name:<6} {seconds * 1e3:>9.2f} {batch / seconds:>9.0f}"
            f" {flops / 1e9:>8.3f} {xla_flops / 1e9:>9.3f} {gflops:>8.2f}"
            f" {100 * gflops / peak:>5.1f}% {dp:>8.1e} {speedup:>8}", flush=True)
  print("speed-up = naive ms / path ms; max|dp| = max |p - p_ref| over the batch"
        " (query class probabilities); naive drifts from K = 3 (approximate erase).")


if __name__ == "__main__":
  app.run(main)
