"""Peak memory and time of long-context GD (chunked), one fresh process per N.

Run (from the repository root; about 1-3 minutes on 2 CPU cores):

    python -m experiments.bench_memory
    python -m experiments.bench_memory --ns=4096,8192 --steps=2   # seconds

Prints one table: the peak RSS (VmHWM) of a process that only imports jax, and
of one that also imports gdattn and starts the CPU backend (the floor under
every row); then for each N a row for `gdattn.longcontext.categorical_gd_chunked`
(softmax kernel, d=10, C=25, e=5, K=4, T=1024 queries, float32, jitted at the
call site) with its compile time, run time, peak RSS and growth over the
floor; and for N <= --dense_max_n a row for the dense `gdattn.categorical_gd`
(which builds the [N, N] kernel) with the max |f_chunked - f_dense| at the
queries. Each measurement runs in its own subprocess so that its peak is its
own. The last line gives the memory the dense path would need at the largest N.

--chunk_size (default: the library's 1024) sets the tile edge; peak RSS hardly
depends on it (a 1024 x 1024 float32 tile is 4 MB next to the ~240 MB floor),
and 256 vs 1024 timed within the noise of this shared 2-core machine.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_NS = flags.DEFINE_list("ns", ["4096", "8192", "16384", "32768", "65536"], "Context sizes N.")
_NUM_QUERY = flags.DEFINE_integer("num_query", 1024, "Queries T.")
_STEPS = flags.DEFINE_integer("steps", 4, "GD steps K.")
_CHUNK = flags.DEFINE_integer("chunk_size", 1024, "Tile edge of the chunked path.")
_DENSE_MAX_N = flags.DEFINE_integer("dense_max_n", 4096, "Also run dense up to this N.")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")
_CHILD = flags.DEFINE_enum(
    "child", None, ["import", "backend", "chunked", "dense"],
    "Internal: run one measurement in this process and print it as JSON.",
)
_N = flags.DEFINE_integer("n", 4096, "Internal: N of a child run.")

INPUT_DIM, NUM_CLASSES, EMBED_DIM, KERNEL_SCALE, LR = 10, 25, 5, 1.0, 1.0
_MB = 1024 * 1024


def _peak_rss_mb() -> float:
  """VmHWM of this process (Linux), else ru_maxrss of RUSAGE_SELF."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _problem(key, n, t, dtype):
  import jax  # pylint: disable=g-import-not-at-top

  k_x, k_q, k_y, k_w = jax.random.split(key, 4)
  return dict(
      x_ctx=jax.random.uniform(k_x, (n, INPUT_DIM), dtype, -1, 1),
      y_ctx=jax.random.randint(k_y, (n,), 0, NUM_CLASSES),
      x_query=jax.random.uniform(k_q, (t, INPUT_DIM), dtype, -1, 1),
      w_e=jax.random.normal(k_w, (NUM_CLASSES, EMBED_DIM), dtype),
      lrs=jax.numpy.full((_STEPS.value, EMBED_DIM), LR, dtype),
  )


def _timed(fn, problem):
  """Compiles, then runs once: (output, compile seconds, run seconds)."""
  import jax  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  compiled = jax.jit(fn).lower(problem).compile()
  mid = time.perf_counter()
  out = jax.block_until_ready(compiled(problem))
  return out, mid - start, time.perf_counter() - mid


def _child(mode: str) -> dict:
  """One measurement in this (fresh) process; jax is imported only here."""
  import jax  # pylint: disable=g-import-not-at-top

  if mode == "import":
    return {"peak_mb": _peak_rss_mb()}
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  import gdattn  # pylint: disable=g-import-not-at-top
  from gdattn import longcontext  # pylint: disable=g-import-not-at-top

  jax.block_until_ready(jnp.zeros(1))
  if mode == "backend":
    return {"peak_mb": _peak_rss_mb()}

  problem = _problem(jax.random.key(_SEED.value), _N.value, _NUM_QUERY.value, jnp.float32)
  kw = dict(kernel="softmax", kernel_scale=KERNEL_SCALE)
  chunked = lambda p: longcontext.categorical_gd_chunked(**p, **kw, chunk_size=_CHUNK.value)
  dense = lambda p: gdattn.categorical_gd(**p, **kw)
  out, compile_s, run_s = _timed(chunked if mode == "chunked" else dense, problem)
  result = {"peak_mb": _peak_rss_mb(), "compile_s": compile_s, "run_s": run_s}
  if mode == "dense":  # the peak above is the dense path's own; now compare.
    out_chunked, *_ = _timed(chunked, problem)
    result["max_abs_diff"] = float(jnp.max(jnp.abs(out_chunked - out)))
    result["max_abs_f"] = float(jnp.max(jnp.abs(out)))
  return result


def _spawn(mode: str, n: int = 0) -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [
      sys.executable, "-m", "experiments.bench_memory", f"--child={mode}", f"--n={n}",
      f"--num_query={_NUM_QUERY.value}", f"--steps={_STEPS.value}",
      f"--chunk_size={_CHUNK.value}", f"--seed={_SEED.value}",
  ]
  proc = subprocess.run(args, cwd=root, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"child {mode} N={n} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value is not None:
    print(json.dumps(_child(_CHILD.value)), flush=True)
    return
  ns = [int(n) for n in _NS.value]
  t, k = _NUM_QUERY.value, _STEPS.value
  print(
      f"categorical_gd, softmax kernel, d={INPUT_DIM} C={NUM_CLASSES}"
      f" e={EMBED_DIM} K={k} T={t} float32, chunk_size={_CHUNK.value};"
      f" {os.cpu_count()} CPUs; one fresh process per row"
  )
  base_import = _spawn("import")["peak_mb"]
  floor = _spawn("backend")["peak_mb"]
  header = (f"{'path':<8} {'N':>6} {'compile s':>9} {'run s':>8} {'peak RSS MB':>11}"
            f" {'over floor MB':>13} {'max|df|':>9}")
  print(header)
  print("-" * len(header))
  print(f"{'import jax only':<33} {base_import:>11.0f}")
  print(f"{'+ import gdattn, CPU backend':<33} {floor:>11.0f} {0:>13.0f}")
  row = "{:<8} {:>6} {:>9.2f} {:>8.2f} {:>11.0f} {:>13.0f} {:>9}"
  for n in ns:
    r = _spawn("chunked", n)
    print(row.format("chunked", n, r["compile_s"], r["run_s"], r["peak_mb"],
                     r["peak_mb"] - floor, ""), flush=True)
    if n <= _DENSE_MAX_N.value:
      r = _spawn("dense", n)
      print(row.format("dense", n, r["compile_s"], r["run_s"], r["peak_mb"],
                       r["peak_mb"] - floor, f"{r['max_abs_diff']:.1e}"), flush=True)
      print(f"  (max|f| = {r['max_abs_f']:.3f}: max|df| is chunked vs dense at the"
            " queries, float32)")
  n = max(ns)
  print(f"dense at N={n} would need >= {n * n * 4 / 2**30:.1f} GiB for the [N, N]"
        f" float32 kernel alone (plus {t * n * 4 / _MB:.0f} MB for [T, N]).")


if __name__ == "__main__":
  app.run(main)
