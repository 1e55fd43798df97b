"""One closed-form GD step vs linear probing on image contexts, per feature.

Which feature preprocessing should the image_icl default use? For raw pixels,
centred pixels and PCA-64 (centred) features of Fashion-MNIST (statistics
from the training images only), draws 5-way 10-shot contexts of the held-out
images and reports, on test contexts, per-context logistic regression and
one GD step from f = 0 with W_e = I, the learning rate (and for the softmax
kernel the kernel scale) picked on validation contexts by NLL.

  python -m experiments.probe_image_features [--dataset=digits]
"""

import itertools
import time

from absl import app
from absl import flags
import jax

from gdattn import baselines
from gdattn.data import fewshot
from gdattn.tasks import image_icl

_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "data set name")
_CONTEXTS = flags.DEFINE_integer("contexts", 1024, "val and test contexts")
_LRS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
_SCALES = (0.1, 0.3, 1.0, 3.0, 10.0)


def main(_):
  base = image_icl.DataConfig(dataset=_DATASET.value)
  data = image_icl.load_dataset(base)
  pools = fewshot.make_pools(data.labels, data.split, seed=base.seed)
  for label, kw in (("raw", dict(features="raw", centre=False)),
                    ("centred", dict(features="raw", centre=True)),
                    ("pca64", dict(features="pca", pca_dim=64)),
                    ("pca64_l2", dict(features="pca", pca_dim=64, l2=True))):
    cfg = image_icl.dataclasses.replace(base, **kw)
    x = image_icl.make_features(cfg, data, pools.train_examples)
    out = {}
    for split, seed in (("val", 1), ("test", 2)):
      table = fewshot.class_table(data.labels, getattr(pools, f"{split}_classes"),
                                  getattr(pools, f"{split}_examples"))
      out[split] = fewshot.fixed_contexts(jax.random.key(seed), x, table,
                                          num_contexts=_CONTEXTS.value)
    row = {}
    t = time.time()
    c = out["test"]
    lr_scores = jax.block_until_ready(jax.jit(baselines.batched(
        "logistic_regression", ways=5))(c.x_ctx, c.y_ctx, c.x_query))
    row["logreg"] = baselines.scores_metrics(lr_scores, c.y_query)
    t_lr = time.time() - t
    for kernel in ("linear", "softmax"):
      grid = list(itertools.product(_LRS, _SCALES if kernel == "softmax"
                                    else (1.0,)))
      best = None
      for lr, s in grid:
        f = jax.jit(baselines.batched("gd_one_step", ways=5, kernel=kernel,
                                      kernel_scale=s, learning_rate=lr))
        v = out["val"]
        nll = float(baselines.scores_metrics(
            f(v.x_ctx, v.y_ctx, v.x_query), v.y_query)["nll"])
        if best is None or nll < best[0]:
          best = (nll, lr, s, f)
      _, lr, s, f = best
      row[f"gd1_{kernel}(lr={lr},s={s})"] = baselines.scores_metrics(
          f(c.x_ctx, c.y_ctx, c.x_query), c.y_query)
    print(f"{label:9s} D={x.shape[1]:4d} logreg {t_lr:.1f}s | " + " | ".join(
        f"{k}: acc {float(m['accuracy']):.3f} nll {float(m['nll']):.3f}"
        for k, m in row.items()), flush=True)


if __name__ == "__main__":
  app.run(main)
