"""Training speed on one CPU device vs the host split into several.

Run (from the repository root):

    python -m experiments.bench_devices --layers=1,2,4 --tf_microbatch=8 --epochs=2
    python -m experiments.bench_devices --models=trained_tf --layers=2 --counts=1,2,4

--layers and --repeats are experiments/bench_train.py's flags, --models,
--epochs, --tf_microbatch and --tf_token_layout experiments/bench_authors.py's
(imported with them; their other flags are listed by --help but unused here).

JAX gives a CPU host one device whose ops are split over all cores. With
`jax_num_cpu_devices = n` (config.train.cpu_devices, set by experiments.main
before JAX starts) the host is n devices and the batch is split over them,
data parallel, each device running its share on its own. The per-context
ops of these models are small ([2, N+1, N] attention, [N, N] kernels), and
on 2 cores they run faster one core each than split in two.

One worker process per device count (the count is fixed when JAX starts)
compiles `train.make_trainer(...).program.run_epochs` for every (model, K)
ahead of time; then --repeats rounds alternate between the workers, so a
drifting load hits every count alike. Cells are s/epoch, median (min) over
rounds; the speed-up is the first count's median over each other's. The
config is synthetic.py:paper (C=25, d=10, N=125, e=5, L=2048, batch 512),
one member, microbatches --gd_microbatch / --tf_microbatch (the config's 64
unless given; 8 is the Trained TF's fastest on 2 cores, bench_train section 5).

Measured on a shared 2-core CPU machine (other training runs paused; load
average 1.7-2.2), `--models=gd,trained_tf --layers=1,2,4 --counts=1,2
--epochs=2 --repeats=3`: see the table printed at the end of a run and the
figures in the README's speed section.
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

from experiments import bench_authors
from experiments import bench_train

_COUNTS = flags.DEFINE_list("counts", ["1", "2"], "CPU device counts to compare.")
_GD_MICROBATCH = flags.DEFINE_integer(
    "gd_microbatch", None, "GD microbatch (None: the paper config's 64).")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: run as a timing worker.")

MODELS = ("gd", "trained_tf")


def check_settings(models, layers, counts, epochs, repeats, gd_microbatch,
                   tf_microbatch) -> tuple[list[str], list[int], list[int]]:
  """Validates the flags before anything starts."""
  bad = [m for m in models if m not in MODELS]
  if not models or bad:
    raise ValueError(f"--models must name some of {MODELS}, got {models}")
  try:
    ks, ns = [int(k) for k in layers], [int(n) for n in counts]
  except ValueError:
    raise ValueError(f"--layers and --counts must be integers, got {layers},"
                     f" {counts}") from None
  if not ks or min(ks) < 1 or len(ns) < 2 or min(ns) < 1:
    raise ValueError("--layers must be integers >= 1 and --counts two or more"
                     f" integers >= 1, got {layers}, {counts}")
  if epochs < 1 or repeats < 1:
    raise ValueError(f"--epochs and --repeats must be >= 1, got {epochs},"
                     f" {repeats}")
  bench_authors.check_microbatches(
      {m: {"gd": gd_microbatch, "trained_tf": tf_microbatch}[m]
       for m in models},
      {"gd": "gd_microbatch", "trained_tf": "tf_microbatch"}, "counts", ns)
  return models, ks, ns


def _settings(models, layers):
  return [(m, k) for m in models for k in layers]


def worker(models, layers, epochs):
  """Compiles every (model, K), then times one call per line read."""
  # pylint: disable=g-import-not-at-top
  import jax
  from gdattn import tasks
  datasets = tasks.get("synthetic").make_datasets(
      bench_train.paper_config(1, "gd").data)
  micro = {"gd": _GD_MICROBATCH.value,
           "trained_tf": bench_authors._TF_MICROBATCH.value}
  layout = bench_authors._TF_TOKEN_LAYOUT.value
  timings = {}
  for m, k in _settings(models, layers):
    cfg = bench_train.paper_config(
        k, m, microbatch=micro[m],
        token_layout=layout if m == "trained_tf" else None)
    timings[(m, k)] = bench_train.prepare_training(cfg, m, datasets, epochs)
  print(json.dumps({"devices": jax.device_count(),
                    "compile_s": {f"{m} {k}": round(t.compile_s, 1)
                                  for (m, k), t in timings.items()}}),
        flush=True)
  for line in sys.stdin:
    if line.strip() != "time":
      break
    bench_train.time_training(list(timings.values()), 1, interleave=False)
    print(json.dumps({f"{m} {k}": t.epoch_all_s[-1]
                      for (m, k), t in timings.items()}), flush=True)


class Worker(bench_authors.JsonWorker):
  """One timing worker process at a device count."""

  def __init__(self, count, argv):
    self.count = count
    super().__init__(
        [sys.executable, "-m", "experiments.bench_devices", "--worker", *argv],
        f"the worker with {count} devices",
        env={**os.environ, "JAX_NUM_CPU_DEVICES": str(count), "XLA_FLAGS": ""})

  def time_round(self):
    return self.request("time")


def main(argv):
  del argv
  ba = bench_authors
  epochs, repeats = ba._EPOCHS.value, bench_train._REPEATS.value
  try:
    models, layers, counts = check_settings(
        ba._MODELS.value, bench_train._LAYERS.value, _COUNTS.value, epochs,
        repeats, _GD_MICROBATCH.value, ba._TF_MICROBATCH.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _WORKER.value:
    worker(models, layers, epochs)
    return
  start = time.perf_counter()
  gd = bench_train.paper_config(1, "gd", microbatch=_GD_MICROBATCH.value)
  tf = bench_train.paper_config(1, "trained_tf",
                                microbatch=ba._TF_MICROBATCH.value,
                                token_layout=ba._TF_TOKEN_LAYOUT.value)
  print(f"bench_devices: {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.1f}; device counts {counts}, {epochs} epochs"
        f" per call, {repeats} rounds; microbatch GD"
        f" {gd.train.microbatch_size}, Trained TF {tf.train.microbatch_size},"
        f" token layout {tf.model.trained_tf.token_layout}", flush=True)
  argv = [f"--models={','.join(models)}", f"--layers={','.join(map(str, layers))}",
          f"--counts={','.join(map(str, counts))}", f"--epochs={epochs}"]
  argv += [f"--{f.name}={f.value}"
           for f in (_GD_MICROBATCH, ba._TF_MICROBATCH, ba._TF_TOKEN_LAYOUT)
           if f.value is not None]
  workers = [Worker(n, argv) for n in counts]
  try:
    for w in workers:  # compiling one after another: no contention
      ready = w.read()
      if ready["devices"] != w.count:
        raise RuntimeError(f"asked for {w.count} CPU devices, JAX has"
                           f" {ready['devices']}")
      print(f"{w.count} device(s): compile s {ready['compile_s']}", flush=True)
    for i in range(repeats):
      for w in workers:
        r = w.time_round()
        print(f"round {i + 1}, {w.count} device(s): "
              + ", ".join(f"{s} {v:.3f}" for s, v in r.items())
              + f" s/epoch; load {os.getloadavg()[0]:.1f}", flush=True)
  finally:
    for w in workers:
      w.close()
  head = f"\n{'model':<10} {'K':>2}" + "".join(
      f" {f'{n} dev s/ep (min)':>18}" for n in counts) + "".join(
          f" {f'speed-up {n} dev':>15}" for n in counts[1:])
  print(head)
  for m, k in _settings(models, layers):
    key = f"{m} {k}"
    runs = [[r[key] for r in w.rounds] for w in workers]
    meds = [statistics.median(r) for r in runs]
    print(f"{m:<10} {k:>2}"
          + "".join(f" {f'{md:.3f} ({min(r):.3f})':>18}"
                    for md, r in zip(meds, runs))
          + "".join(f" {meds[0] / md:>14.2f}x" for md in meds[1:]))
  print(f"\nmedian (min) over {repeats} rounds; speed-up: the"
        f" {counts[0]}-device median over the other's. Total wall time"
        f" {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
