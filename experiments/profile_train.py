"""Where a training epoch's time goes, per XLA operation, on this machine.

Run (from the repository root):

    python -m experiments.profile_train                    # GD, K = 2
    python -m experiments.profile_train --profile_layers=4 --profile_top=30
    python -m experiments.profile_train --profile_model=trained_tf --profile_epochs=1

(Its flags are prefixed: it imports experiments/bench_train.py, whose own
flags are listed by --help but unused here.)

The paper protocol's training loop (experiments/bench_train.py's config,
`train.make_trainer(...).program.run_epochs`, compiled ahead of time) runs
--profile_epochs epochs under `jax.profiler`, after two untimed calls.
Each event of the trace that is an instruction of the compiled program (a
fusion, a product, a copy) is summed over the runtime's worker threads and
matched to its line in the optimised HLO, which gives its output shape and
how XLA emits it (`__ynn_fusion`: handed to YNNPACK; kLoop / kInput: XLA's own
loops; `dot`: a product alone). It prints:

  * the epoch's wall time and the threads' busy time (their ratio is how
    much of the 2 cores the step keeps busy);
  * the --profile_top operations by time: calls per epoch, microseconds per call,
    ms per epoch (busy time, all threads) and their share of the busy time;
  * the same time grouped by output shape: [.., N, N] kernel (attention)
    passes, [.., N, C] class passes, [.., N, F] passes over rows (products
    with E or token-width columns, in either layout), the rest (parameter
    gradients, scalars).

Figures are from one traced call on a shared machine: read the shares, not
the absolute times, and compare machines by running this on each.
"""

import collections
import glob
import os
import re
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax

from experiments import bench_train
from gdattn import tasks

_MODEL = flags.DEFINE_enum("profile_model", "gd", ["gd", "trained_tf"], "Model to profile.")
_PROFILE_LAYERS = flags.DEFINE_integer("profile_layers", 2, "Depth K.", lower_bound=1)
_EPOCHS = flags.DEFINE_integer(
    "profile_epochs", 3, "Epochs in the traced call.", lower_bound=1)
_MICRO = flags.DEFINE_integer(
    "profile_microbatch", None, "Contexts per gradient microbatch (default: the"
    " config's; a divisor of the batch, 512).", lower_bound=1)
_TOP = flags.DEFINE_integer("profile_top", 20, "Operations listed by time.", lower_bound=1)

# An instruction line of the optimised HLO: name, output shape, opcode.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[\d,]*\})? (\w[\w-]*)\(")
_FUSION_KIND = re.compile(r'kind=(\w+)|"kind":"(\w+)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
# Operations that only move or name data; left out of a fusion's summary.
_PLUMBING = {"parameter", "bitcast", "broadcast", "constant", "reshape",
             "tuple", "get-tuple-element", "copy", "transpose", "slice"}
# Instructions whose events enclose other instructions' events.
_CONTROL_FLOW = {"while", "conditional", "call", "async-start", "async-done"}


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """{instruction name: (output shape, how it is emitted, what it computes)}
  of a compiled program's text. Fusions report their kind ('__ynn_fusion',
  'kLoop', ...) and the operations of their fused computation."""
  found, bodies, calls, computation = {}, collections.defaultdict(list), {}, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode = match.groups()
    bodies[computation].append(opcode)
    if opcode == "fusion":
      kinds = [k for pair in _FUSION_KIND.findall(line) for k in pair if k]
      # The backend config's kind (e.g. __ynn_fusion) is the more specific.
      opcode = kinds[-1] if kinds else "fusion"
      called = _CALLS.search(line)
      if called:
        calls[name] = called.group(1)
    found[name] = (shape, opcode)
  described = {}
  for name, (shape, opcode) in found.items():
    ops = bodies.get(calls.get(name), [])
    # A fusion that only moves data (a transposing copy) is named by that.
    what = (",".join(dict.fromkeys(o for o in ops if o not in _PLUMBING))
            or ",".join(dict.fromkeys(o for o in ops if o != "parameter"))
            or opcode)
    described[name] = (shape, opcode, what)
  return described


def shape_class(shape: str, num_ctx: int, num_classes: int) -> str:
  """The profile's grouping of an output shape by its last two dims (N:
  context points, C: classes; batch and head dims ignored, flattened
  [B * N, F] arrays count as rows)."""
  dims = [int(d) for d in re.findall(r"\d+", shape.split("[", 1)[-1])]
  tail = dims[-2:]
  long_dims = [d for d in tail if d >= num_ctx]
  if len(tail) == 2 and len(long_dims) == 2 and min(tail) <= 2 * num_ctx:
    return "[.., N, N] kernel"
  if long_dims and num_classes in tail:
    return "[.., N, C] classes"
  if long_dims:
    return "[.., N, F] rows"
  return "other (parameters)"


def trace_events(path: str, names: dict) -> tuple[collections.Counter, collections.Counter, int]:
  """(ns per instruction, calls per instruction, busy ns of all threads).

  Control flow (a while loop's event spans its body's) is left out. Busy
  time is the union, per thread, of the runtime executor's tasks; a program
  the runtime runs inline on the calling thread has none, and then its
  operations' own sum stands in for it.
  """
  total, calls = collections.Counter(), collections.Counter()
  busy = 0
  data = jax.profiler.ProfileData.from_file(path)
  for plane in data.planes:
    for line in plane.lines:
      spans = []
      for event in line.events:
        if event.name == "ThunkExecutor::Execute":
          spans.append((event.start_ns, event.end_ns))
        elif event.name in names and names[event.name][1] not in _CONTROL_FLOW:
          total[event.name] += event.duration_ns
          calls[event.name] += 1
      busy += covered_ns(spans)   # nested executor tasks count once
  return total, calls, busy or sum(total.values())


def covered_ns(spans) -> int:
  """The length of the union of [start, end) intervals."""
  covered, end = 0, None
  for start, stop in sorted(spans):
    if end is None or start >= end:
      covered, end = covered + stop - start, stop
    elif stop > end:
      covered, end = covered + stop - end, stop
  return covered


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  model, num_layers, epochs = _MODEL.value, _PROFILE_LAYERS.value, _EPOCHS.value
  try:   # the config checks its fields before anything is compiled
    cfg = bench_train.paper_config(num_layers, model, microbatch=_MICRO.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  datasets = tasks.get("synthetic").make_datasets(cfg.data)
  timing = bench_train.prepare_training(cfg, model, datasets, epochs)
  names = hlo_instructions(timing.compiled.as_text())
  for _ in range(2):
    jax.block_until_ready(timing.compiled(*timing.args()))
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    jax.block_until_ready(timing.compiled(*timing.args()))
    wall = (time.perf_counter() - start) / epochs
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    total, calls, busy = trace_events(path, names)

  busy_ms = busy / 1e6 / epochs
  print(f"profile_train: {model} K={num_layers}, microbatch {timing.microbatch},"
        f" jax {jax.__version__}, {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.1f}; {epochs} epochs traced")
  print(f"epoch: {wall * 1e3:.1f} ms wall (traced), {busy_ms:.1f} ms busy over"
        f" the runtime's threads ({busy_ms / (wall * 1e3):.2f} threads busy on"
        " average); ops below sum the threads")
  print(f"\n{'operation':<26} {'emitted as':<13} {'output':<20} {'calls/ep':>8}"
        f" {'us/call':>8} {'ms/ep':>7} {'busy%':>6}  computes")
  for name, ns in total.most_common(_TOP.value):
    shape, kind, what = names[name]
    per_epoch = calls[name] / epochs
    print(f"{name:<26} {kind:<13} {shape:<20} {per_epoch:>8.0f}"
          f" {ns / calls[name] / 1e3:>8.0f} {ns / 1e6 / epochs:>7.2f}"
          f" {100 * ns / busy:>5.1f}%  {what[:40]}")
  groups = collections.Counter()
  num_ctx = cfg.data.num_context_points
  for name, ns in total.items():
    groups[shape_class(names[name][0], num_ctx, cfg.data.num_classes)] += ns
  print("\nby output shape (N = context points, C = classes, F = anything"
        " narrower: embedding, token width):")
  for group, ns in groups.most_common():
    print(f"  {group:<22} {ns / 1e6 / epochs:7.2f} ms/ep  {100 * ns / busy:5.1f}%")
  rest = busy - sum(total.values())
  print(f"  {'runtime (not an op)':<22} {rest / 1e6 / epochs:7.2f} ms/ep"
        f"  {100 * rest / busy:5.1f}%")


if __name__ == "__main__":
  app.run(main)
