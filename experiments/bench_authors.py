"""Training speed: the authors' own JAX code next to gdattn, in the same run.

Run (from the repository root; the authors' code and an environment with
their dependencies live outside the repository):

    python -m experiments.bench_authors \
        --authors_src=<their repository>/src/experiments_jax \
        --authors_python=<venv>/bin/python --epochs=3 --repeats=3

The authors' environment: Python 3.12 with jax/jaxlib 0.4.30, dm-haiku
0.0.12, optax 0.2.3, chex 0.1.86, ml_collections, numpy < 2, absl-py (pip).
Their code runs in a subprocess under that Python (experiments/authors_driver.py,
which lists the run-time stand-ins their code needs on such a machine); this
process runs gdattn. Per model and K, one driver process is started for all
rounds (set-up and its warm-up epoch, which compiles, are excluded), and
gdattn's `train.make_trainer(...).program.run_epochs` is compiled ahead of
time as in experiments/bench_train.py. Then --repeats rounds alternate, per
model and K: the authors' --epochs epochs, then gdattn's --epochs epochs, so
a drifting load hits both. A round's s/epoch is its mean over its epochs; the
table gives the median and min over rounds, the speed-up median over median.

Same setting on both sides: the paper's high_dim task, C=25, d=10, N=125,
e=5, L=2048 fixed training contexts, minibatches of 512 (4 updates per
epoch), softmax kernel, one seed. One epoch of theirs is one pass of their
training loop without its every-100-steps evaluation: it draws the 2048
contexts again from their fixed key (op by op, outside jit), permutes them and
makes 4 updates (details in authors_driver.py); "draw" is that re-draw's share.
gdattn draws its fixed contexts once.

--layers and --repeats are experiments/bench_train.py's flags (imported with
it; other flags of that module are listed by --help but unused here).

The reference figures: 2 quiet cores (our other jobs paused; load average
1.6-2.2 in the rounds), --models=gd,trained_tf --layers=1,2,4
--tf_microbatch=8 --epochs=3 --repeats=3:

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  gd          1        2.415   2.265   0.43      0.0186  0.0133    129.5x
  gd          2        4.025   3.751   0.48      0.1738  0.1280     23.2x
  gd          4        5.757   5.540   0.25      0.3728  0.2804     15.4x
  trained_tf  1        2.598   2.330   0.51      0.3513  0.2594      7.4x
  trained_tf  2        3.988   3.955   0.54      1.6454  1.5743      2.4x
  trained_tf  4        6.978   6.927   0.52      5.0857  3.7602      1.4x

With gdattn's side on 2 CPU devices (--cpu_devices=2, config.train.
cpu_devices; --models=trained_tf --layers=1,2, otherwise the same; load
2.2-3.2):

  trained_tf  1        2.787   2.675   0.59      0.2805  0.2188      9.9x
  trained_tf  2        4.775   4.732   0.61      1.0232  0.9194      4.7x

On a second 2-core machine (AMD EPYC, float32 matmul peak 373 GFLOP/s),
after kernels.fusion_boundary, one device on our side, --models=gd,trained_tf
--layers=1,2,4 --tf_microbatch=8 --epochs=3 --repeats=3, load 1.8-2.2:

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  gd          1        1.739   1.424   0.33      0.0110  0.0087    158.1x
  gd          2        2.952   2.926   0.26      0.0810  0.0740     36.4x
  gd          4        4.873   4.069   0.18      0.1807  0.1556     27.0x
  trained_tf  1        1.614   1.578   0.32      0.1109  0.1022     14.5x
  trained_tf  2        3.128   2.953   0.37      0.6057  0.5947      5.2x
  trained_tf  4        5.465   4.587   0.32      2.3003  1.9870      2.4x

There --cpu_devices=2 was slower on our side (experiments/bench_devices.py:
Trained TF K=1 0.45x, K=2 0.81x of one device's speed).

The rounds above ran without --warmup (each side's timed round came right
after the other side's). On the same AMD EPYC machine, with the warm-up and
after gd.expected_embedding's derivative rule, --models=gd --layers=1,2,4
--epochs=3 --repeats=5, load 1.9-2.4:

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  gd          1        1.474   1.365   0.28      0.0074  0.0070    197.9x
  gd          2        2.679   2.530   0.28      0.0516  0.0475     52.0x
  gd          4        4.078   3.811   0.15      0.1261  0.1210     32.3x

(the same run without the warm-up an hour earlier: 221x, 37.7x, 26.1x; our
first call after their round ran 15-30% slower than the calls after it).

On a third 2-core machine (an Intel Xeon at 2.3 GHz, float32 matmul peak
255 GFLOP/s, 2 MiB L2 per core), with the warm-up: --models=gd
--layers=1,2,4 --epochs=3 --repeats=5 (load 1.8-2.6), then --models=trained_tf
--layers=1,2 --tf_microbatch=16 --repeats=3 (load 2.1-2.7), then the
Trained TF K=2 at --tf_microbatch=64 --cpu_devices=2 (its fastest there):

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  gd          1        1.881   1.751   0.39      0.0144  0.0122    130.6x
  gd          2        3.132   2.960   0.38      0.1153  0.1067     27.2x
  gd          4        4.991   4.735   0.23      0.2562  0.2192     19.5x
  trained_tf  1        1.642   1.600   0.35      0.2461  0.2393      6.7x
  trained_tf  2        2.963   2.621   0.35      0.9323  0.9043      3.2x
  trained_tf  2        3.001   2.917   0.37      0.7158  0.6624      4.2x  (64, 2 dev)

After gdattn.attention took the self-attention heads one at a time (no
head-major copies; 0.75x the Trained TF's epoch at K=2), same machine,
--models=trained_tf --layers=1,2,4 --tf_microbatch=64 --repeats=3 (load
1.9-2.4), then K=2 with --cpu_devices=2:

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  trained_tf  1        1.744   1.710   0.36      0.1615  0.1325     10.8x
  trained_tf  2        2.933   2.725   0.38      0.7249  0.7014      4.0x
  trained_tf  4        5.172   4.901   0.35      2.7859  2.6633      1.9x
  trained_tf  2        2.822   2.740   0.38      0.6831  0.6017      4.1x  (2 dev)

Their epochs there took about 1.1x their AMD EPYC times, ours about 2x:
experiments/profile_train.py shows where ours go (the README has the
breakdown).

With --tf_token_layout=paper (their model's token width, D + 3E at every K;
1 device): Trained TF K=1 8.6x, K=2 2.2x, K=4 1.3x, so our wider default
layout is not what costs the time. A full (non-readout) block costs us
about what it costs their code: (t(K=4) - t(K=1)) / 3 is 1.58 s against
their 1.46 s. Our K=1 gain is the readout block computing only the query
rows; each earlier block forms every context's [2, N+1, N] attention in
element-wise passes and small batched products that XLA:CPU does not fuse.

The figures below were measured under heavy load from other jobs. Their
code slows far more under load than ours (its epochs took 7-23 s against
2.3-7 s quiet), so those ratios overstate ours; they are kept as measured.

Measured with --epochs=3 --repeats=3 (--layers=1,2, both models) on a
shared 2-core CPU machine without GPU, nice 19, beside a long training run and
other jobs: load average 5.7 at the start, 8.6-11.8 during the rounds (the
authors' idle drivers waiting on stdin add none); authors' side jax 0.4.30 on
1 CPU device, gdattn's jax 0.12. The four drivers' set-ups ran together:
set-up 368-411 s, warm-up (compiling) epoch 220-287 s each; gdattn compile
36-94 s. Absolute times are inflated by the load; read the ratios.

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  gd          1       12.953  11.193   2.14      0.0322  0.0291    402.3x
  gd          2       19.064  18.400   1.66      0.9563  0.7270     19.9x
  trained_tf  1       11.907  11.365   2.16      1.0558  0.9095     11.3x
  trained_tf  2       20.915  18.253   2.17      8.4571  7.2781      2.5x

Against the targets (same-run ratios; bench_train.TARGET_VS_AUTHORS): GD K=2
19.9x, target >= 50x, missed; Trained TF K=1 11.3x, target >= 5x, met;
Trained TF K=2 2.5x, target >= 5x, missed (GD K=4 was not timed in that
run; --layers=4 --models=gd times it).

The Trained TF again with gdattn at 8-context microbatches (--models=trained_tf
--tf_microbatch=8, the fastest of 4..64 in bench_train section 5 on this
machine; same flags otherwise), load average 5.5-5.9 beside two training runs:

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  trained_tf  1        6.889   6.717   1.13      0.4547  0.4523     15.2x
  trained_tf  2       11.156  11.074   1.21      3.4879  3.0643      3.2x

After the self-attention change that takes the values straight to the
residual stream (gdattn/attention.py; 15-22% faster steps at K=2), the same
command with --layers=2, load average 7.2-7.6 beside three training runs:

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  trained_tf  2       13.755  11.963   1.53      3.9313  3.8109      3.5x

GD K=4 (--models=gd --layers=4, the config's 64-context microbatches), load
average 5.2-7.5 beside three training runs:

  model       K authors s/ep     min   draw gdattn s/ep     min speed-up
  gd          4       23.252  21.912   0.79      1.4785  1.3595     15.7x

so GD K=4 misses its 50x as GD K=2 does, for the reason given in
bench_train (many small passes over each context's [N, N] kernel, none of
them at a machine limit). Trained TF K=2 is still below its 5x: its first block's softmax attention
over [2 heads, N+1, N] per context is a chain of element-wise passes and
small batched products (about 20 passes over that array per update in XLA's
compiled step), which XLA:CPU does not fuse into one cached pass.

Even without the authors' per-epoch re-draw ("draw", ~2 s) their epochs stay
~10-19 s here, against the 3.43 (GD K=1), 6.03 (GD K=2) and 3.56 (Trained TF
K=1) s/epoch measured for their code on another, less loaded machine.
"""

import json
import os
import statistics
import subprocess
import time

from absl import app
from absl import flags

from experiments import bench_train
from gdattn import config as config_lib
from gdattn import tasks

_AUTHORS_SRC = flags.DEFINE_string(
    "authors_src", None, "Folder of the authors' src/experiments_jax.")
_AUTHORS_PYTHON = flags.DEFINE_string(
    "authors_python", None, "Python of an environment with the authors'"
    " dependencies (jax 0.4.x, dm-haiku, optax, ml_collections).")
_MODELS = flags.DEFINE_list("models", ["gd", "trained_tf"],
                            "Models to time: gd, trained_tf.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per timed round, each side.")
_WARMUP = flags.DEFINE_boolean(
    "warmup", True,
    "Before each side's timed round, an untimed warm-up on that side (one "
    "epoch of theirs, one call of --epochs epochs of ours): the side that ran "
    "last leaves the caches in its own state, and gdattn's first 3-epoch call "
    "after their round ran 15-30% slower than its next calls (GD K = 2).")
_TF_MICROBATCH = flags.DEFINE_integer(
    "tf_microbatch", None, "gdattn's Trained TF contexts per gradient"
    " microbatch (None: the paper config's 64; bench_train section 5 finds"
    " this machine's fastest).")
_TF_TOKEN_LAYOUT = flags.DEFINE_enum(
    "tf_token_layout", None, ["exact", "paper"], "gdattn's Trained TF token"
    " layout (None: the config's 'exact', width D + (K+2)E; 'paper': the"
    " authors' model, width D + 3E at every K, the like-for-like timing).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "CPU devices gdattn's side splits the host into"
    " (config.train.cpu_devices; None: JAX's one). The authors' side keeps"
    " its one device.")
_AUTHORS_LOG = flags.DEFINE_string(
    "authors_log", None, "File for the authors' processes' stderr (their"
    " prints); default: discarded.")

MODELS = ("gd", "trained_tf")
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "authors_driver.py")


def check_settings(models, layers, epochs, repeats, authors_src,
                   authors_python, tf_microbatch=None, cpu_devices=None
                   ) -> tuple[list[str], list[int]]:
  """Validates the flags before anything starts; returns (models, layers)."""
  models = [m.strip() for m in models]
  bad = [m for m in models if m not in MODELS]
  if not models or bad:
    raise ValueError(f"--models must name some of {MODELS}, got {models}")
  try:
    ks = [int(k) for k in layers]
  except ValueError:
    raise ValueError(f"--layers must be integers, got {layers}") from None
  if not ks or min(ks) < 1:
    raise ValueError(f"--layers must be integers >= 1, got {layers}")
  if epochs < 1 or repeats < 1:
    raise ValueError(f"--epochs and --repeats must be >= 1, got {epochs},"
                     f" {repeats}")
  if cpu_devices is not None and cpu_devices < 1:
    raise ValueError(f"--cpu_devices must be >= 1, got {cpu_devices}")
  micro = dict.fromkeys(models)  # None: the paper config's microbatch
  if tf_microbatch is not None:  # checked even when only GD is timed
    micro["trained_tf"] = tf_microbatch
  check_microbatches(micro,
                     {"trained_tf": "tf_microbatch"}, "cpu_devices",
                     [cpu_devices] if cpu_devices is not None else [])
  if not authors_src or not os.path.isfile(
      os.path.join(authors_src, "train.py")):
    raise ValueError("--authors_src must be the authors' src/experiments_jax"
                     f" folder (with train.py), got {authors_src!r}")
  if not authors_python or not os.access(authors_python, os.X_OK):
    raise ValueError("--authors_python must be an executable Python, got"
                     f" {authors_python!r}")
  return models, ks


def check_microbatches(micro_by_model: dict[str, int | None],
                       flag_by_model: dict[str, str], counts_flag: str,
                       counts: list[int]) -> None:
  """Checks gdattn's microbatches (None: the paper config's) against the
  paper config's batch and, for each device count, against gdattn's own
  data-parallel rule (config.check_devices); the errors name the flags."""
  for model, micro in micro_by_model.items():
    batch = bench_train.paper_config(1, model).train.batch_size
    if micro is not None and (micro < 1 or batch % micro):
      raise ValueError(f"--{flag_by_model[model]} must divide the batch of"
                       f" {batch}, got {micro}")
    cfg = bench_train.paper_config(1, model, microbatch=micro)
    for n in counts:
      try:
        config_lib.check_devices(cfg, n)
      except ValueError:
        raise ValueError(
            f"--{counts_flag} must divide gdattn's {model} microbatch of"
            f" {cfg.train.microbatch_size}, got {n}") from None


class JsonWorker:
  """A child process that answers each line sent to it with one JSON line
  (lines not starting with "{" are skipped); "quit" ends it."""

  def __init__(self, cmd, name, **popen_kwargs):
    self.name = name
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True,
                                 **popen_kwargs)
    self.rounds = []

  def read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith("{"):
        return json.loads(line)
    raise RuntimeError(f"{self.name} ended (exit {self.proc.wait()})")

  def request(self, line: str) -> dict:
    """Sends `line`, keeps the answer in `rounds` and returns it."""
    self.proc.stdin.write(f"{line}\n")
    self.proc.stdin.flush()
    self.rounds.append(self.read())
    return self.rounds[-1]

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


class AuthorsProcess(JsonWorker):
  """One authors_driver.py process for one (model, K)."""

  def __init__(self, python, src, model, layers, log):
    self.model, self.layers = model, layers
    super().__init__(
        [python, DRIVER, f"--src={src}", f"--model={model}",
         f"--layers={layers}"],
        f"the authors' {model} K={layers} driver (see --authors_log)",
        stderr=log, cwd=os.path.dirname(DRIVER),
        env={k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"})
    self.ready = None

  def wait_ready(self):
    self.ready = self.read()
    return self.ready

  def run(self, epochs):
    return self.request(str(epochs))

  def warm_up(self):
    """One untimed epoch (not kept in `rounds`)."""
    self.request("1")
    self.rounds.pop()


def _round_mean(values):
  return sum(values) / len(values)


def main(argv):
  del argv
  try:  # a bad flag: one line, no traceback
    models, layers = check_settings(
        _MODELS.value, bench_train._LAYERS.value, _EPOCHS.value,
        bench_train._REPEATS.value, _AUTHORS_SRC.value, _AUTHORS_PYTHON.value,
        _TF_MICROBATCH.value, _CPU_DEVICES.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  epochs, repeats = _EPOCHS.value, bench_train._REPEATS.value
  import jax  # pylint: disable=g-import-not-at-top
  if _CPU_DEVICES.value is not None:  # before JAX's first computation
    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  start = time.perf_counter()
  print(f"bench_authors: gdattn on jax {jax.__version__} ({jax.device_count()}"
        f" {jax.default_backend()} device(s)), {os.cpu_count()}"
        f" CPUs, load average {os.getloadavg()[0]:.1f}; {epochs} epochs per"
        f" round, {repeats} rounds, alternating authors / gdattn"
        + (", each round after an untimed warm-up of its side" if _WARMUP.value
           else ", no warm-up"), flush=True)
  log = open(_AUTHORS_LOG.value, "w") if _AUTHORS_LOG.value else subprocess.DEVNULL
  settings = [(m, k) for m in models for k in layers]
  # Set-up (imports, their init, the compiling warm-up epoch) is not timed:
  # all drivers start together to save wall time.
  authors = {s: AuthorsProcess(_AUTHORS_PYTHON.value,
                               os.path.abspath(_AUTHORS_SRC.value), *s, log)
             for s in settings}
  datasets = tasks.get("synthetic").make_datasets(
      bench_train.paper_config(1, "gd").data)
  micro = lambda model: _TF_MICROBATCH.value if model == "trained_tf" else None
  ours = {s: bench_train.prepare_training(
      bench_train.paper_config(
          s[1], s[0], microbatch=micro(s[0]),
          token_layout=_TF_TOKEN_LAYOUT.value if s[0] == "trained_tf" else None),
      s[0],
      datasets, epochs) for s in settings}
  try:
    for s, p in authors.items():
      r = p.wait_ready()
      print(f"authors {s[0]} K={s[1]}: jax {r['jax']}, {r['devices']} device(s),"
            f" set-up {r['setup_s']:.0f} s, warm-up epoch {r['warmup_s']:.1f} s,"
            f" lr {r['lr']}; gdattn compile {ours[s].compile_s:.1f} s,"
            f" microbatch {ours[s].microbatch}"
            + (f", token layout {_TF_TOKEN_LAYOUT.value or 'exact'}"
               if s[0] == "trained_tf" else ""),
            flush=True)
    for i in range(repeats):
      for s in settings:
        if _WARMUP.value:
          authors[s].warm_up()
        a = authors[s].run(epochs)
        if _WARMUP.value:
          jax.block_until_ready(ours[s].compiled(*ours[s].args()))
        bench_train.time_training([ours[s]], 1, interleave=False)
        print(f"round {i + 1} {s[0]} K={s[1]}: authors"
              f" {_round_mean(a['epoch_s']):.3f} s/epoch (draw"
              f" {_round_mean(a['draw_s']):.3f}), gdattn"
              f" {ours[s].epoch_all_s[-1]:.4f} s/epoch,"
              f" load {os.getloadavg()[0]:.1f}", flush=True)
  finally:
    for p in authors.values():
      p.close()
  print(f"\n{'model':<10} {'K':>2} {'authors s/ep':>12} {'min':>7}"
        f" {'draw':>6} {'gdattn s/ep':>11} {'min':>7} {'speed-up':>8}")
  for s in settings:
    a = [_round_mean(r["epoch_s"]) for r in authors[s].rounds]
    d = [_round_mean(r["draw_s"]) for r in authors[s].rounds]
    o = ours[s].epoch_all_s
    print(f"{s[0]:<10} {s[1]:>2} {statistics.median(a):>12.3f} {min(a):>7.3f}"
          f" {statistics.median(d):>6.2f} {statistics.median(o):>11.4f}"
          f" {min(o):>7.4f} {statistics.median(a) / statistics.median(o):>8.1f}x")
  print(f"median / min over {repeats} rounds of {epochs} epochs; draw: the"
        " authors' per-epoch re-draw of the training contexts (median)")
  print("\nTargets (performance issue; speed-up median over median, both"
        " sides measured in this run):")
  for s in settings:
    want = bench_train.TARGET_VS_AUTHORS.get(s)
    if want is None:
      continue
    ratio = (statistics.median(_round_mean(r["epoch_s"])
                               for r in authors[s].rounds)
             / statistics.median(ours[s].epoch_all_s))
    print(f"  [{'met' if ratio >= want else 'MISSED'}] {s[0]} K={s[1]}:"
          f" {ratio:.1f}x the authors' s/epoch (target >= {want:.0f}x)")
  print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, load average"
        f" now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  flags.FLAGS.set_default("layers", ["1", "2"])
  app.run(main)
