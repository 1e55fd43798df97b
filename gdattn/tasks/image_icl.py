"""In-context image classification: the paper's ImageNet experiment, offline.

Dimensions: B contexts, N = ways * shots context points, T queries, D feature
dim, W = ways classes per context.

Images -> features (pixels, PCA, a small CNN, or stored features such as VGG16
/ CLIP computed elsewhere) -> W-way S-shot contexts with labels 0..W-1 in a
fresh random order per context (`gdattn.data.fewshot`). A model reads the
context and predicts the query label; the reference is per-context logistic
regression ("linear probing") and the nearest class mean on the test
contexts. References: arXiv:2405.17248 (section 6).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gdattn import baselines
from gdattn import config as config_lib
from gdattn import metrics
from gdattn import models
from gdattn.data import features as features_lib
from gdattn.data import fewshot
from gdattn.data import images as images_lib
from gdattn.tasks import base

DATASETS = ("fashion_mnist", "digits", "glyphs", "feature_store")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """config.data of the image_icl task (defaults: Fashion-MNIST, PCA-64).

  Attributes:
    dataset: one of DATASETS or "tfds:<name>".
    data_dir: dataset folder; the .npz of features for "feature_store".
    cache_dir: folder of the glyph / CNN caches (None = ~/.cache).
    features: "raw" pixels, "pca", a small "cnn", or "store"d features.
    pca_dim: output dimension of "pca".
    centre: subtract the training mean (raw / cnn / store).
    l2: L2-normalise the features last.
    cnn_epochs: training epochs of the "cnn" feature extractor.
    cnn_feature_dim: output dimension of the "cnn" features.
    ways: W, classes per context.
    shots: S, examples per class in a context; N = W * S.
    num_queries: T, query images per context.
    split: "same_classes" (images split) or "held_out_classes" (test
      contexts use classes never trained on).
    held_out_fraction: fraction of the classes held out
      ("held_out_classes").
    eval_fraction: held-out images when the dataset has no official split.
    num_train: L, fixed training contexts.
    num_val: fixed validation contexts (model selection).
    num_test: fixed test contexts.
    fresh_contexts: draw new training contexts every step instead.
    steps_per_epoch: updates per epoch with fresh_contexts.
    glyph_classes: classes of the offline "glyphs" dataset.
    glyph_images_per_class: images per class of "glyphs".
    image_size: resize TFDS images to this side (None = as stored).
    seed: the splits, the feature extractor and the contexts.
  """

  dataset: str = "fashion_mnist"
  data_dir: str | None = None
  cache_dir: str | None = None
  features: str = "pca"
  pca_dim: int = 64
  centre: bool = True
  l2: bool = False
  cnn_epochs: int = 1
  cnn_feature_dim: int = 64
  ways: int = 5
  shots: int = 10
  num_queries: int = 1
  split: str = "same_classes"
  held_out_fraction: float = 0.1
  eval_fraction: float = 0.3
  num_train: int = 2048
  num_val: int = 2048
  num_test: int = 2048
  fresh_contexts: bool = False
  steps_per_epoch: int = 4
  glyph_classes: int = 1000
  glyph_images_per_class: int = 20
  image_size: int | None = None
  seed: int = 0


def _is_int(v, low):
  return isinstance(v, int) and not isinstance(v, bool) and v >= low


def load_dataset(cfg: DataConfig) -> images_lib.ImageDataset:
  """The ImageDataset that cfg names."""
  if cfg.dataset == "feature_store":
    return images_lib.feature_store(cfg.data_dir)
  if cfg.dataset == "glyphs":
    return images_lib.glyphs(num_classes=cfg.glyph_classes,
                             images_per_class=cfg.glyph_images_per_class,
                             seed=cfg.seed, cache_dir=cfg.cache_dir)
  if cfg.dataset == "digits":
    return images_lib.digits()
  if cfg.dataset == "fashion_mnist":
    return images_lib.fashion_mnist(cfg.data_dir)
  return images_lib.load(cfg.dataset, data_dir=cfg.data_dir,
                         image_size=cfg.image_size)


def make_features(cfg: DataConfig, data: images_lib.ImageDataset,
                  train_examples: np.ndarray) -> np.ndarray:
  """[M, D] float32 features; every statistic from train_examples only."""
  if cfg.features == "store" and data.features is None:
    raise ValueError("config.data.features: 'store' needs a data set of "
                     f"features (feature_store), got images ({data.source}).")
  if cfg.features == "cnn":
    x = features_lib.cnn_features(
        data, train_examples, epochs=cfg.cnn_epochs,
        feature_dim=cfg.cnn_feature_dim, seed=cfg.seed,
        cache_dir=cfg.cache_dir)
  else:
    x = data.flat()
  pca_dim = cfg.pca_dim if cfg.features == "pca" else None
  if pca_dim is not None and pca_dim > x.shape[1]:
    raise ValueError(f"config.data.pca_dim: expected <= {x.shape[1]} (the "
                     f"input dim), got {pca_dim}.")
  transform = features_lib.fit_transform(x[train_examples], centre=cfg.centre,
                                         pca_dim=pca_dim, l2=cfg.l2)
  return transform(x)


class ImageICLTask:
  """The image_icl task (see the module docstring)."""

  name = "image_icl"
  data_config = DataConfig
  model_config = models.ICLModelConfig
  model_names = models.MODELS
  select_metric = "nll"

  def validate(self, data_cfg: DataConfig,
               model_cfg: models.ICLModelConfig) -> None:
    d, m = data_cfg, model_cfg
    config_lib.require(d.dataset in DATASETS or d.dataset.startswith("tfds:"),
             "data.dataset", f"one of {DATASETS} or 'tfds:<name>'", d.dataset)
    config_lib.require(d.dataset != "feature_store" or bool(d.data_dir),
             "data.data_dir", "the .npz path for dataset='feature_store'",
             d.data_dir)
    config_lib.require(d.features in features_lib.FEATURE_KINDS, "data.features",
             f"one of {features_lib.FEATURE_KINDS}", d.features)
    config_lib.require(d.features != "store" or d.dataset == "feature_store",
             "data.features", "'store' only with dataset='feature_store'",
             d.features)
    config_lib.require(d.features != "cnn" or d.dataset != "feature_store",
             "data.features", "'cnn' only on images, not feature_store",
             d.features)
    config_lib.require(d.split in fewshot.SPLIT_MODES, "data.split",
             f"one of {fewshot.SPLIT_MODES}", d.split)
    config_lib.require(_is_int(d.ways, 2), "data.ways", "an int >= 2", d.ways)
    for field in ("shots", "num_queries", "pca_dim", "num_train", "num_val",
                  "num_test", "steps_per_epoch", "cnn_feature_dim",
                  "glyph_classes", "glyph_images_per_class"):
      config_lib.require(_is_int(getattr(d, field), 1), f"data.{field}", "an int >= 1",
               getattr(d, field))
    config_lib.require(_is_int(d.cnn_epochs, 0), "data.cnn_epochs", "an int >= 0",
             d.cnn_epochs)
    for field in ("held_out_fraction", "eval_fraction"):
      v = getattr(d, field)
      config_lib.require(isinstance(v, float) and 0.0 < v < 1.0, f"data.{field}",
               "a float in (0, 1)", v)
    models.validate_icl_config(m, config_lib.require)

  def make_datasets(self, data_cfg: DataConfig) -> base.Datasets:
    cfg = data_cfg
    data = load_dataset(cfg)
    pools = fewshot.make_pools(
        data.labels, data.split, mode=cfg.split,
        held_out_fraction=cfg.held_out_fraction,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed)
    x_MxD = jnp.asarray(make_features(cfg, data, pools.train_examples))
    tables = {}
    for split in ("train", "val", "test"):
      table = fewshot.class_table(data.labels, getattr(pools, f"{split}_classes"),
                                  getattr(pools, f"{split}_examples"))
      try:
        fewshot.check_table(table, ways=cfg.ways, shots=cfg.shots,
                            num_queries=cfg.num_queries,
                            where=f"the {split} pool of {cfg.dataset}")
      except ValueError as e:
        raise ValueError(f"config.data.{e}") from e
      tables[split] = table
    shape = dict(ways=cfg.ways, shots=cfg.shots, num_queries=cfg.num_queries)
    keys = jax.random.split(jax.random.key(cfg.seed), 4)

    def fixed(split, key, num):
      return fewshot.fixed_contexts(key, x_MxD, tables[split],
                                    num_contexts=num, **shape)

    evals = {"val": fixed("val", keys[1], cfg.num_val),
             "test": fixed("test", keys[2], cfg.num_test)}
    info = dict(input_dim=int(x_MxD.shape[1]), num_classes=cfg.ways,
                ways=cfg.ways, shots=cfg.shots, num_queries=cfg.num_queries,
                dataset=data.source, num_examples=data.num_examples,
                num_train_classes=int(pools.train_classes.size),
                num_eval_classes=int(pools.test_classes.size))
    if cfg.fresh_contexts:
      table = tables["train"]
      sample = lambda key, batch_size: fewshot.sample_contexts(
          key, x_MxD, table, num_contexts=batch_size, **shape)
      return base.Datasets(evals=evals, sample_train=sample,
                           steps_per_epoch=cfg.steps_per_epoch, info=info)
    return base.Datasets(evals=evals, info=info,
                         train=fixed("train", keys[0], cfg.num_train))

  def make_model(self, name: str, model_cfg: models.ICLModelConfig,
                 info: dict[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    return models.make_icl_model(name, model_cfg, input_dim=info["input_dim"],
                                 num_classes=info["num_classes"], rngs=rngs)

  def predict(self, model: nnx.Module, batch: fewshot.ImageContexts
              ) -> jax.Array:
    return model(batch.x_ctx, batch.y_ctx, batch.x_query)

  def loss(self, model: nnx.Module, batch: fewshot.ImageContexts) -> jax.Array:
    return metrics.nll(self.predict(model, batch), batch.y_query)

  def metrics(self, outputs: jax.Array, data: fewshot.ImageContexts
              ) -> dict[str, jax.Array]:
    return baselines.scores_metrics(outputs, data.y_query)

  def summary(self, datasets: base.Datasets) -> dict[str, float]:
    test = datasets.evals["test"]
    ways = datasets.info["num_classes"]
    out = {}
    for short, name in (("logreg", "logistic_regression"),
                        ("ncm", "nearest_class_mean")):
      scores = jax.jit(baselines.batched(name, ways=ways))(
          test.x_ctx, test.y_ctx, test.x_query)
      for key, value in baselines.scores_metrics(scores, test.y_query).items():
        out[f"{short}_{key}"] = float(value)
    return out


TASK = ImageICLTask()
