"""Layer sweep (SPEC section 5 table): GD vs the Trained TF, K = 1..6, L = 2048.

Full paper protocol (5000 epochs, evaluation every 100, the paper's per-K
optimisers from gdattn/configs/synthetic.py `paper_optim`):

    python -m experiments.reproduce_layers --epochs=5000 --eval_every=100

Expected wall time of that on 2 CPU cores: GD K=1 with 5 vmapped seeds took
558 s here; GD costs ~0.15-0.4 s/epoch at K=2 (load-dependent) growing ~linearly
in K, i.e. ~0.5-2 h per K>=2 run, and the Trained TF ~1.2-4 s/epoch at K=1,
i.e. 2-6 h per run: days in all. Run it on a GPU. Expected result (paper, one
draw, 5 seeds): GD 0.702 0.718 0.729 0.731 0.728 0.727, TF 0.575 0.524 0.474
0.480 0.481 0.483 (K = 1..6); over fresh draws expect GD lower on average by
~0.05 (the paper's draw is an easy one; see experiments/results/layers.md).

The cut-down actually run (2026-11-30, ~75 min on 2 shared cores; results and
what was cut in experiments/results/layers.md):

    python -m experiments.reproduce_layers --models=gd --layers=1,2,3,4 \
        --modes=draws --epochs=150 --eval_every=15 --gd_lr=1e-2        # 43 min
    python -m experiments.reproduce_layers --models=gd --layers=1 \
        --modes=seeds --epochs=150 --eval_every=15 --gd_lr=1e-2        # 47 s
    python -m experiments.reproduce_layers --models=gd --layers=1 \
        --modes=seeds --epochs=5000 --eval_every=100                   # 9.3 min
    python -m experiments.reproduce_layers --models=trained_tf --layers=1,2 \
        --modes=draws --draws=0,1,2 --epochs=60 --eval_every=10 --tf_lr=5e-3  # 15 min
    python -m experiments.reproduce_layers --models=gd --layers=5,6 \
        --modes=draws --draws=0,1 --epochs=150 --eval_every=15 --gd_lr=1e-2  # 7 min

Two modes, reported separately:
  draws  one init seed (config seed 0) on each of --draws independent draws of
         W_data + the train/val/test contexts (config data.seed = 0..4): the
         spread the task's difficulty has over draws; accuracy is also reported
         relative to the Bayes mean max probability of that draw's test set.
  seeds  one fixed draw (data.seed = --fixed_draw, 5), --num_seeds init seeds
         trained together under vmap (config num_seeds): what the paper reports.

Each finished run is merged into experiments/results/layers.json at once (raw
per-member numbers, Bayes references, epochs run, wall time, the command), so a
killed sweep keeps what it finished; runs train in checkpointed workdirs under
runs/layers/ and resume when the same command is re-run. After every run the
script rewrites layers.md (every run, our numbers next to the paper's) and
layers.png (gdattn.plots.plot_sweep: per model the best-covered series of like
runs, mean +- std error bars, the paper's numbers as stars) from everything in
layers.json; --report_only redraws both from layers.json without training.
At the end it draws authors_draw.png (toolkit.authors_draw_series and
gdattn.plots.plot_against_paper): accuracy and NLL against K of the runs on
the authors' draw that make the paper's table (GD at its protocol, the
Trained TF in the authors' token layout), beside the paper's numbers.
"""

from absl import app

from experiments import toolkit

HEADER = """
GD = the exact construction (`gdattn.models.GD`); Trained TF = the same
interleaved topology with every projection free. C=25, d=10, e=5, N=125,
lambda=10, L=2048, batch 512, evaluation on 2048 val / 2048 test contexts, test
metrics at the best validation NLL. Paper numbers: SPEC section 5 (authors' one
draw, mean over 5 seeds, 5000 epochs). Full protocol:
`python -m experiments.reproduce_layers --epochs=5000 --eval_every=100`.
"""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  toolkit.sweep(_FLAGS, "layers", "K", None, 2048,
                        "Layer sweep: GD vs Trained TF, L = 2048, softmax kernel", HEADER)
  toolkit.write_authors_draw_figure(_FLAGS.results_dir.value)


if __name__ == "__main__":
  _FLAGS = toolkit.define_sweep_flags("layers", ["1", "2", "3", "4", "5", "6"],
                                      "K values (layers = GD steps).")
  app.run(main)
