"""Command-line entry point: meta-train and evaluate in-context learners.

  python -m experiments.main --config=experiments/configs/synthetic.py --workdir=runs/demo

Re-running the same command resumes from the last checkpoint in --workdir.
Multi-host (GPU/TPU pods): call jax.distributed.initialize() on every host
before training (set --distributed); the batch is then sharded over all
global devices by gdattn.train.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from gdattn import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an experiments/configs/*.py file[:arg].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumes if present).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax logs every checkpoint step at INFO; keep the console for progress.
    logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX devices: %s", jax.devices())
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  for name, res in results.items():
    for lr, stats in res["by_lr"].items():
      print(f"{name:12s} lr={lr:<8s} params={res['num_params']:<7d} "
            f"test acc {stats['test_accuracy']['mean']:.3f}"
            f" ± {stats['test_accuracy']['std']:.3f}  "
            f"test NLL {stats['test_nll']['mean']:.3f}"
            f" ± {stats['test_nll']['std']:.3f}")
  bayes = next(iter(results.values()))["bayes"]
  print(f"Bayes reference: mean max prob {bayes['bayes_max_prob']:.3f}, "
        f"NLL {bayes['bayes_nll']:.3f}")
  print(f"Outputs in {_WORKDIR.value}: results.json, curves.png, <model>/metrics.jsonl")


if __name__ == "__main__":
  app.run(main)
