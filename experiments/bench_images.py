"""Throughput of the image in-context classification pieces (prints figures).

  python -m experiments.bench_images [--dataset=digits] [--parts=logreg]

Reports (--parts picks them): `pca` PCA fit + transform time; `cnn` CNN
backbone feature extraction (images/s) and training (images/s, so the epoch
time follows); `gd` contexts/s of a GD K = 1 training step on 5-way 10-shot
contexts (batch 512) with fixed and with freshly sampled contexts; `logreg`
the linear-probing baseline (500 AdamW steps per context) on 2048 5-way
10-shot test contexts of PCA-64 features as one compiled call: compile time,
then wall and CPU time of the run (CPU time is what a shared machine cannot
inflate); --logreg_chunks adds runs at other contexts_per_chunk (2048: all
contexts vmapped at once).
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gdattn import baselines
from gdattn import metrics
from gdattn import models
from gdattn.data import features as features_lib
from gdattn.data import fewshot
from gdattn.tasks import image_icl

_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "data set name")
_BATCH = flags.DEFINE_integer("batch", 512, "contexts per GD training step")
_STEPS = flags.DEFINE_integer("steps", 20, "timed GD training steps")
_PARTS = flags.DEFINE_list("parts", ["pca", "cnn", "gd", "logreg"],
                           "what to time: pca, cnn, gd, logreg")
_LOGREG_CHUNKS = flags.DEFINE_list(
    "logreg_chunks", [], "extra contexts_per_chunk values to time for logreg")


def _timed(fn, *args):
  t = time.time()
  out = jax.block_until_ready(fn(*args))
  return out, time.time() - t


def _time_logreg(c, contexts_per_chunk=None):
  """Compiles, then runs linear probing on contexts c; prints the times."""
  f = jax.jit(baselines.batched("logistic_regression", ways=5,
                                contexts_per_chunk=contexts_per_chunk))
  t = time.time()
  compiled = f.lower(c.x_ctx, c.y_ctx, c.x_query).compile()
  t_compile = time.time() - t
  cpu = time.process_time()
  scores, dt = _timed(compiled, c.x_ctx, c.y_ctx, c.x_query)
  cpu = time.process_time() - cpu
  m = baselines.scores_metrics(scores, c.y_query)
  chunk = ("default " + str(baselines.LOGREG_CONTEXTS_PER_CHUNK)
           if contexts_per_chunk is None else contexts_per_chunk)
  print(f"logistic regression, {c.num_contexts} contexts x "
        f"{baselines.LOGREG_STEPS} AdamW steps (chunks of {chunk}): compile "
        f"{t_compile:.1f} s, run {dt:.1f} s wall / {cpu:.1f} s CPU; accuracy "
        f"{float(m['accuracy']):.3f}, nll {float(m['nll']):.3f}", flush=True)


def main(_):
  cfg = image_icl.DataConfig(dataset=_DATASET.value)
  data = image_icl.load_dataset(cfg)
  pools = fewshot.make_pools(data.labels, data.split, seed=0)
  x = data.flat()
  t = time.time()
  x_MxD = features_lib.fit_transform(x[pools.train_examples], pca_dim=64)(x)
  print(f"PCA-64 fit ({pools.train_examples.size} train) + transform "
        f"({x.shape[0]}): {time.time() - t:.2f} s", flush=True)
  if "cnn" in _PARTS.value:
    _bench_cnn(data, pools)
  x_dev = jnp.asarray(x_MxD)
  if "gd" in _PARTS.value:
    _bench_gd(data, pools, x_dev)
  if "logreg" in _PARTS.value:
    # Linear probing on 2048 test contexts, one compiled call.
    test_table = fewshot.class_table(data.labels, pools.test_classes,
                                     pools.test_examples)
    c = fewshot.fixed_contexts(jax.random.key(1), x_dev, test_table,
                               num_contexts=2048)
    _time_logreg(c)
    for chunk in _LOGREG_CHUNKS.value:
      _time_logreg(c, int(chunk))


def _bench_cnn(data, pools):
  """CNN backbone: inference and training throughput on a slice."""
  imgs = jnp.asarray(features_lib._as_nhwc(data.images[:4096]))  # pylint: disable=protected-access
  cnn = features_lib.CNN(in_channels=imgs.shape[-1], num_classes=10,
                         rngs=nnx.Rngs(0))
  embed = nnx.jit(lambda m, b: m.features(b))
  _timed(embed, cnn, imgs[:512])
  _, dt = _timed(lambda: [embed(cnn, imgs[i:i + 512]) for i in range(0, 4096, 512)])
  print(f"CNN features: {4096 / dt:.0f} images/s")
  opt = nnx.Optimizer(cnn, optax.adam(1e-3), wrt=nnx.Param)

  @nnx.jit
  def cnn_step(m, o, b, y):
    g = nnx.grad(lambda mm: optax.softmax_cross_entropy_with_integer_labels(
        mm(b), y).mean())(m)
    o.update(m, g)

  y = jnp.asarray(data.labels[:128] % 10)
  cnn_step(cnn, opt, imgs[:128], y)
  t = time.time()
  for i in range(0, 2048, 128):
    cnn_step(cnn, opt, imgs[i:i + 128], y)
  jax.block_until_ready(nnx.state(cnn))
  rate = 2048 / (time.time() - t)
  print(f"CNN training: {rate:.0f} images/s (an epoch of "
        f"{pools.train_examples.size}: {pools.train_examples.size / rate:.0f} s)")


def _bench_gd(data, pools, x_dev):
  """GD K=1 training step on image contexts."""
  table = fewshot.class_table(data.labels, pools.train_classes,
                              pools.train_examples)
  model = models.GD(num_classes=5, embed_dim=5, num_layers=1, kernel="softmax",
                    rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tx = optax.adam(1e-3)
  state = (params, tx.init(params))

  def step(state, batch):
    p, o = state
    loss = lambda pp: metrics.nll(nnx.merge(graphdef, pp)(
        batch.x_ctx, batch.y_ctx, batch.x_query), batch.y_query)
    g = jax.grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  fixed = fewshot.fixed_contexts(jax.random.key(0), x_dev, table,
                                 num_contexts=_BATCH.value)
  step_fixed = jax.jit(step)
  step_fresh = jax.jit(lambda s, k: step(s, fewshot.sample_contexts(
      k, x_dev, table, num_contexts=_BATCH.value)))
  for name, fn, arg in (("fixed", step_fixed, lambda i: fixed),
                        ("fresh", step_fresh, jax.random.key)):
    s = jax.block_until_ready(fn(state, arg(0)))
    t = time.time()
    for i in range(_STEPS.value):
      s = fn(s, arg(i))
    jax.block_until_ready(s)
    print(f"GD K=1 step, {name} contexts: "
          f"{_STEPS.value * _BATCH.value / (time.time() - t):.0f} contexts/s")


if __name__ == "__main__":
  app.run(main)
