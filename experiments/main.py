"""Command-line entry point: meta-train and evaluate in-context learners.

  python -m experiments.main --config=gdattn/configs/synthetic.py --workdir=runs/demo

Re-running the same command resumes from the last checkpoint in --workdir
(a finished workdir prints its results at once); a different config on the
same workdir is refused unless --overwrite. Config and workdir errors print
one line (--traceback shows the full trace). Multi-host (GPU/TPU pods): set
--distributed to call jax.distributed.initialize() on every host first; the
batch is then sharded over all global devices by gdattn.train.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from gdattn import config as config_lib
from gdattn import io
from gdattn import tasks
from gdattn import train
from gdattn import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file[:arg], e.g."
    " gdattn/configs/synthetic.py:smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (resumes if present).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete the workdir's previous results first.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print every config field (defaults included) and"
    " exit.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show full tracebacks of config/workdir errors.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["config"])


def print_results(results, header=""):
  if header:
    print(header)
  for name, res in results.items():
    for lr, stats in res["by_lr"].items():
      line = f"{name:12s} lr={lr:<8s} params={res['num_params']:<7d}"
      for metric in ("accuracy", "nll", "perplexity", "bpc"):
        if f"test_{metric}" in stats:
          s = stats[f"test_{metric}"]
          line += f"  test {metric} {s['mean']:.3f} ± {s['std']:.3f}"
      print(line + f"  (best epoch(s) "
            f"{sorted({m['best_epoch'] for m in res['members']})},"
            f" {res['epochs_run']} run)")
  first = next(iter(results.values()))
  refs = sorted({k.rsplit("_", 1)[0] for k in first
                 if k.endswith("_accuracy") and "_" in k})
  for ref in refs:  # per-context baselines of the task (e.g. images)
    print(f"{ref} (baseline): test accuracy {first[ref + '_accuracy']:.3f},"
          f" test nll {first.get(ref + '_nll', float('nan')):.3f}")
  bayes = first.get("bayes")
  if bayes:
    print(f"Bayes reference: mean max prob {bayes['bayes_max_prob']:.3f}, "
          f"NLL {bayes['bayes_nll']:.3f}")


def print_config(cfg: config_lib.ExperimentConfig) -> None:
  """Every field as `config.<field> = <value>   # <meaning>`, aligned."""
  rows = [(f"config.{key} = {value!r}", meaning)
          for key, value, meaning in config_lib.describe(cfg)]
  width = max(len(setting) for setting, _ in rows)
  for setting, meaning in rows:
    print(f"{setting:<{width}}   # {meaning}" if meaning else setting)


def _fail(e: Exception) -> None:
  if _TRACEBACK.value:
    raise e
  print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax logs every checkpoint step at INFO; keep the console for progress.
    logging.set_verbosity(logging.WARNING)
  try:
    cfg = config_lib.from_configdict(_CONFIG.value)
  except (ValueError, OSError) as e:
    _fail(e)
  if _PRINT_CONFIG.value:
    print_config(cfg)
    return
  if cfg.train.cpu_devices is not None:  # before JAX's first computation
    jax.config.update("jax_num_cpu_devices", cfg.train.cpu_devices)
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (output directory)")
  workdir = _WORKDIR.value
  if not _OVERWRITE.value and workdir_lib.is_complete(workdir, cfg):
    print_results(io.load_json(os.path.join(workdir, "results.json")),
                  f"{workdir} is complete; its results:")
    return
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX devices: %s", jax.devices())
  try:
    run = train.train(cfg, workdir, overwrite=_OVERWRITE.value)
  except (ValueError, workdir_lib.WorkdirError, io.CheckpointError,
          FloatingPointError) as e:
    _fail(e)
  for name, m in run.models.items():
    if m.resumed_from is not None:
      print(f"{name}: resumed from the checkpoint at epoch {m.resumed_from}")
    seconds = train.training_seconds(os.path.join(workdir, name))
    if seconds is not None:
      print(f"{name}: {seconds:.0f} s in the training loop"
            f"{', all parts' if m.resumed_from is not None else ''}")
  print_results(run.results)
  # A task may say what a reader should know beside its numbers.
  for note in getattr(tasks.get(cfg.task), "notes", lambda _: ())(cfg):
    print(f"Note: {note}")
  print(f"Outputs in {workdir}: results.json, curves.png,"
        " <model>/metrics.jsonl")


def _parse_flags(argv):
  # A mistyped --config.x.y override fails inside flag parsing: one line,
  # with ml_collections' "did you mean" hint, unless --traceback is given.
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if "--traceback" in argv:
      raise
    message = str(e).replace("\\n", " ").replace("\\'", "'")
    if isinstance(e, KeyError):  # a section that does not exist
      key = str(e.args[0]).strip("'\"")
      names = [a.split("=")[0] for a in argv if a.startswith("--config.")
               and f".{key}" in a.split("=")[0]]
      message = (f"{names[0] if names else '--config'}: no config field"
                 f" {key!r}")
    print(f"error: {' '.join(message.split())} (--helpfull lists the flags)",
          file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
