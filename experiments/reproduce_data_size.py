"""Training-set sweep (SPEC section 5): K = 2, L = 2048 .. 32768, GD vs Trained TF.

Paper: GD flat at ~0.72 in L; the Trained TF climbs from 0.524 (L=2048) to
0.720 (L=32768). Full paper protocol (5000 epochs, evaluation every 100, the
paper's K=2 optimisers, 5 draws and 5 vmapped seeds on data.seed=5):

    python -m experiments.reproduce_data_size --epochs=5000 --eval_every=100

Out of reach on a 2-core CPU: an epoch has L/512 updates, so its cost grows
linearly in L (GD K=2 ~0.15-0.4 s/epoch at L=2048 depending on load, 16x that
at L=32768, i.e. hours per run at 5000 epochs; the Trained TF ~5-10x GD):
days in all. Use a GPU. The cut-down run here (see
experiments/results/data_size.md for what was cut and every wall time):

    python -m experiments.reproduce_data_size --models=gd --num_layers=1 \
        --modes=draws --draws=0,1,2 --epochs=100 --eval_every=10 --gd_lr=1e-2  # 8.3 min
    python -m experiments.reproduce_data_size --models=gd --num_layers=2 \
        --train_sizes=2048,4096,8192,16384,32768 --modes=draws --draws=0 \
        --epochs=100 --eval_every=10 --gd_lr=1e-2                      # ~10 min

On the authors' own draw (their L training contexts, split(train key, L);
their val / test sets), which is what the paper's numbers were measured on:
    python -m experiments.reproduce_data_size --models=gd --modes=authors \
        --num_seeds=2 --members_per_step=1 --train_sizes=4096,8192
Same modes, flags and outputs as experiments/reproduce_layers.py (see there;
both are experiments/toolkit.py `sweep`):
experiments/results/data_size.json (raw per-run numbers, merged as each run
finishes), data_size.md (ours next to the paper's), data_size.png (test
accuracy vs L, error bars, paper numbers as markers). Workdirs under
runs/data_size/ resume when the command is re-run.
"""

from absl import app
from absl import flags

from experiments import toolkit

_NUM_LAYERS = flags.DEFINE_integer("num_layers", 2, "K (paper: 2).")

HEADER = """
K GD steps / layers (paper: K = 2), softmax kernel, C=25, d=10, e=5, N=125,
lambda=10, batch 512 (an epoch has L/512 updates), evaluation on 2048 val /
2048 test contexts, test metrics at the best validation NLL. Paper numbers:
SPEC section 5 (K = 2, authors' one draw, 5000 epochs). Full protocol:
`python -m experiments.reproduce_data_size --epochs=5000 --eval_every=100`.
"""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  toolkit.sweep(_FLAGS, "data_size", "L", _NUM_LAYERS.value, None,
                "Training-set sweep: GD vs Trained TF over L, softmax kernel", HEADER)


if __name__ == "__main__":
  _FLAGS = toolkit.define_sweep_flags(
      "train_sizes", ["2048", "4096", "8192", "16384", "32768"],
      "L values (training contexts).")
  app.run(main)
