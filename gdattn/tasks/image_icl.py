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

from gdattn import backbone_gd
from gdattn import baselines
from gdattn import config as config_lib
from gdattn import metrics
from gdattn import models
from gdattn.data import corruptions
from gdattn.data import features as features_lib
from gdattn.data import fewshot
from gdattn.data import images as images_lib
from gdattn.tasks import base

DATASETS = ("fashion_mnist", "digits", "glyphs", "feature_store")
# "end_to_end": contexts carry the images and the model holds the backbone
# (gdattn.backbone_gd), trained through the in-context loss.
FEATURES = features_lib.FEATURE_KINDS + ("end_to_end",)
BACKBONE_INITS = ("pretrained", "random")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """config.data of the image_icl task (defaults: Fashion-MNIST, PCA-64).

  Attributes:
    dataset: one of DATASETS or "tfds:<name>".
    data_dir: dataset folder; the .npz of features for "feature_store".
    cache_dir: folder of the glyph / CNN caches (None = ~/.cache).
    features: "raw" pixels, "pca", a small "cnn", "store"d features, or
      "end_to_end": contexts carry images [B, N, H, W] and each model runs
      the small CNN itself before its head (gdattn.backbone_gd), the CNN
      trained through the in-context loss.
    pca_dim: output dimension of "pca".
    centre: subtract the training mean (raw / cnn / store); with
      "end_to_end", each context's own mean feature (inside the model).
    l2: L2-normalise the features last.
    cnn_epochs: training epochs of the "cnn" feature extractor.
    cnn_feature_dim: output dimension of the "cnn" features.
    backbone_init: "end_to_end" only: the backbone starts as the "pretrained"
      CNN (the "cnn" features' classifier, cnn_epochs on the training
      classes) or "random".
    train_backbone: "end_to_end" only: False freezes the backbone (the
      frozen baseline with the end-to-end model's per-context centring).
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
    test_corruption: None, or one of corruptions.CORRUPTIONS applied to the
      test images before their features (domain shift; raw / pca only).
    test_severity: severity of test_corruption.
    test_dataset: None, or a dataset (as `dataset`) whose images, resized
      to the training images' size and put through the features fitted on
      the training data, make the test contexts (cross-dataset shift).
    seed: the splits, the feature extractor, the corruption noise and the
      contexts.
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
  backbone_init: str = "pretrained"
  train_backbone: bool = True
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
  test_corruption: str | None = None
  test_severity: float = 1.0
  test_dataset: str | None = None
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


def _pixel_transform(cfg: DataConfig, data: images_lib.ImageDataset,
                     train_examples: np.ndarray
                     ) -> features_lib.FeatureTransform | None:
  """The fitted pixels -> features map of "raw" / "pca" features, else None."""
  if cfg.features not in ("raw", "pca") or data.images is None:
    return None
  x = data.flat()
  pca_dim = cfg.pca_dim if cfg.features == "pca" else None
  if pca_dim is not None and pca_dim > x.shape[1]:
    raise ValueError(f"config.data.pca_dim: expected <= {x.shape[1]} (the "
                     f"input dim), got {pca_dim}.")
  return features_lib.fit_transform(x[train_examples], centre=cfg.centre,
                                    pca_dim=pca_dim, l2=cfg.l2)


def make_features(cfg: DataConfig, data: images_lib.ImageDataset,
                  train_examples: np.ndarray) -> np.ndarray:
  """[M, D] float32 features; every statistic from train_examples only."""
  if cfg.features == "store" and data.features is None:
    raise ValueError("config.data.features: 'store' needs a data set of "
                     f"features (feature_store), got images ({data.source}).")
  transform = _pixel_transform(cfg, data, train_examples)
  if transform is not None:
    return transform(data.flat())
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


def short_name(source: str) -> str:
  """A data set's name without its folder ("fashion_mnist:/a/b" ->
  "fashion_mnist"), for titles and tables."""
  head, _, tail = source.partition(":")
  if head in ("tfds", "sklearn"):
    return tail.split(":")[0].split(".")[0] if head == "tfds" else "digits"
  return head


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSource:
  """A data set with its pools and features, built once for many test sets.

  Attributes:
    cfg: the data config it was built from.
    data: the training data set.
    pools: its train / val / test pools.
    x_MxD: [M, D] float32 clean features of every example; with
      "end_to_end" features, the images [M, H, W(, Ch)] as stored.
    transform: the pixels -> features map fitted on the training images
      ("raw" / "pca" features), or None (no features of new images).
  """

  cfg: DataConfig
  data: images_lib.ImageDataset
  pools: fewshot.Pools
  x_MxD: np.ndarray
  transform: features_lib.FeatureTransform | None


def feature_source(cfg: DataConfig) -> FeatureSource:
  """Loads cfg's data set, splits it and computes its features."""
  data = load_dataset(cfg)
  pools = fewshot.make_pools(
      data.labels, data.split, mode=cfg.split,
      held_out_fraction=cfg.held_out_fraction,
      eval_fraction=cfg.eval_fraction, seed=cfg.seed)
  if cfg.features == "end_to_end":
    if data.images is None:
      raise ValueError("config.data.features: 'end_to_end' needs images, got "
                       f"features ({data.source}).")
    return FeatureSource(cfg=cfg, data=data, pools=pools, x_MxD=data.images,
                         transform=None)
  transform = _pixel_transform(cfg, data, pools.train_examples)
  x = (transform(data.flat()) if transform is not None
       else make_features(cfg, data, pools.train_examples))
  return FeatureSource(cfg=cfg, data=data, pools=pools, x_MxD=x,
                       transform=transform)


def _unit_images(data: images_lib.ImageDataset, index: np.ndarray,
                 shape: tuple[int, ...]) -> np.ndarray:
  """Images `index` of data as float32 in [0, 1], resized to `shape`."""
  images = data.images[index]
  if images.shape[1:] != shape:
    if images.shape[3:] != shape[2:] or shape[0] != shape[1]:
      raise ValueError(
          f"test_dataset: cannot map {data.source} images of shape "
          f"{images.shape[1:]} onto the training images' {shape} (channels "
          "differ or the training images are not square).")
    images = np.stack([images_lib._resize(im, shape[0]) for im in images])  # pylint: disable=protected-access
  images = images.astype(np.float32)
  return images / 255.0 if data.images.dtype == np.uint8 else images


def test_contexts(source: FeatureSource, *, ways: int | None = None,
                  shots: int | None = None, num_contexts: int | None = None,
                  corruption: str | None = None, severity: float = 1.0,
                  dataset: str | None = None) -> fewshot.ImageContexts:
  """Test contexts of another shape or under a domain shift.

  With the defaults this is exactly the task's test split. The contexts use
  the same random key, so a shifted set pairs context by context with the
  clean one (same classes and images, corrupted).

  Args:
    source: `feature_source(cfg)`.
    ways: W classes per context (default cfg.ways); a model trained at more
      ways is scored on its first W logits (`ImageICLTask.metrics`).
    shots: S images per class (default cfg.shots).
    num_contexts: B (default cfg.num_test).
    corruption: None or one of corruptions.CORRUPTIONS, applied to the test
      images (seeded by cfg.seed) before the training-fitted features.
    severity: its severity.
    dataset: None, or another data set name (as DataConfig.dataset) whose
      images (all of them, all its classes, resized to the training images'
      size) make the contexts, through the training-fitted features.

  Returns:
    ImageContexts [B, W * S, D].
  """
  cfg = source.cfg
  ways = cfg.ways if ways is None else ways
  shots = cfg.shots if shots is None else shots
  num_contexts = cfg.num_test if num_contexts is None else num_contexts
  if corruption is not None and corruption not in corruptions.CORRUPTIONS:
    raise ValueError(f"corruption: expected None or one of "
                     f"{corruptions.CORRUPTIONS}, got {corruption!r}.")
  if (corruption is not None or dataset is not None) and (
      source.transform is None):
    raise ValueError(
        "corruption / dataset: new images need pixel features, config.data."
        f"features 'raw' or 'pca' on images; got {cfg.features!r} on "
        f"{source.data.source}.")
  data, x_MxD = source.data, source.x_MxD
  labels, classes, examples = (data.labels, source.pools.test_classes,
                               source.pools.test_examples)
  if dataset is not None:
    other_cfg = dataclasses.replace(cfg, dataset=dataset, data_dir=None)
    data = load_dataset(other_cfg)
    # No part of the other data set is trained on: all of it is test data.
    labels, classes = data.labels, np.unique(data.labels).astype(np.int32)
    examples = np.arange(data.num_examples)
    x_MxD = np.zeros((data.num_examples, x_MxD.shape[1]), np.float32)
  if corruption is not None or dataset is not None:
    images = _unit_images(data, examples, source.data.images.shape[1:])
    if corruption is not None:
      images = corruptions.corrupt(corruption, images, severity,
                                   seed=cfg.seed)
    x_MxD = np.array(x_MxD)
    x_MxD[examples] = source.transform(images.reshape(examples.size, -1))
  table = fewshot.class_table(labels, classes, examples)
  fewshot.check_table(table, ways=ways, shots=shots,
                      num_queries=cfg.num_queries,
                      where=f"the test pool of {data.source}")
  key = jax.random.split(jax.random.key(cfg.seed), 4)[2]
  return fewshot.fixed_contexts(key, jnp.asarray(x_MxD), table,
                                num_contexts=num_contexts, ways=ways,
                                shots=shots, num_queries=cfg.num_queries)


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
    config_lib.require(d.features in FEATURES, "data.features",
             f"one of {FEATURES}", d.features)
    config_lib.require(
        d.features != "end_to_end" or d.dataset != "feature_store",
        "data.features", "'end_to_end' only on images, not feature_store",
        d.features)
    config_lib.require(d.backbone_init in BACKBONE_INITS, "data.backbone_init",
                       f"one of {BACKBONE_INITS}", d.backbone_init)
    config_lib.require(isinstance(d.train_backbone, bool),
                       "data.train_backbone", "a bool", d.train_backbone)
    e2e_defaults = DataConfig()
    for field in ("backbone_init", "train_backbone"):
      config_lib.require(
          d.features == "end_to_end"
          or getattr(d, field) == getattr(e2e_defaults, field),
          f"data.{field}", "its default unless features='end_to_end'",
          getattr(d, field))
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
    config_lib.require(d.test_corruption is None
                       or d.test_corruption in corruptions.CORRUPTIONS,
                       "data.test_corruption",
                       f"None or one of {corruptions.CORRUPTIONS}",
                       d.test_corruption)
    config_lib.require(
        isinstance(d.test_severity, (int, float))
        and not isinstance(d.test_severity, bool) and d.test_severity >= 0,
        "data.test_severity", "a number >= 0", d.test_severity)
    config_lib.require(
        d.test_dataset is None or d.test_dataset in DATASETS[:3]
        or d.test_dataset.startswith("tfds:"), "data.test_dataset",
        f"None, one of {DATASETS[:3]} or 'tfds:<name>'", d.test_dataset)
    config_lib.require(
        (d.test_corruption is None and d.test_dataset is None)
        or d.features in ("raw", "pca"), "data.features",
        "'raw' or 'pca' with test_corruption / test_dataset", d.features)
    for field in ("held_out_fraction", "eval_fraction"):
      v = getattr(d, field)
      config_lib.require(isinstance(v, float) and 0.0 < v < 1.0, f"data.{field}",
               "a float in (0, 1)", v)
    models.validate_icl_config(m, config_lib.require)

  def make_datasets(self, data_cfg: DataConfig) -> base.Datasets:
    cfg = data_cfg
    source = feature_source(cfg)
    data, pools = source.data, source.pools
    x_MxD = jnp.asarray(source.x_MxD)
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

    shifted = cfg.test_corruption is not None or cfg.test_dataset is not None
    evals = {"val": fixed("val", keys[1], cfg.num_val),
             "test": (test_contexts(source, corruption=cfg.test_corruption,
                                    severity=cfg.test_severity,
                                    dataset=cfg.test_dataset) if shifted
                      else fixed("test", keys[2], cfg.num_test))}
    info = dict(input_dim=int(x_MxD.shape[1]), num_classes=cfg.ways,
                ways=cfg.ways, shots=cfg.shots, num_queries=cfg.num_queries,
                dataset=data.source, name=short_name(data.source),
                test_corruption=cfg.test_corruption,
                test_severity=cfg.test_severity,
                test_dataset=cfg.test_dataset,
                num_examples=data.num_examples,
                num_train_classes=int(pools.train_classes.size),
                num_eval_classes=int(pools.test_classes.size))
    if cfg.features == "end_to_end":
      info.update(input_dim=cfg.cnn_feature_dim,
                  backbone=_backbone_info(cfg, source))
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
    if info.get("backbone") is not None:
      if name not in self.model_names:
        raise ValueError(f"model name must be one of {self.model_names}, got "
                         f"{name!r}")
      return backbone_gd.make_backbone_gd(
          name, model_cfg, num_classes=info["num_classes"], rngs=rngs,
          **info["backbone"])
    return models.make_icl_model(name, model_cfg, input_dim=info["input_dim"],
                                 num_classes=info["num_classes"], rngs=rngs)

  def predict(self, model: nnx.Module, batch: fewshot.ImageContexts
              ) -> jax.Array:
    return model(batch.x_ctx, batch.y_ctx, batch.x_query)

  def loss(self, model: nnx.Module, batch: fewshot.ImageContexts) -> jax.Array:
    return metrics.nll(self.predict(model, batch), batch.y_query)

  def metrics(self, outputs: jax.Array, data: fewshot.ImageContexts
              ) -> dict[str, jax.Array]:
    # Contexts of fewer ways than the model was built for use labels 0..W-1
    # only: score the first W logits (labels are permuted per context in
    # training, so no logit is tied to a class).
    ways = data.classes.shape[-1]
    if ways > outputs.shape[-1]:
      raise ValueError(f"data: contexts of {ways} ways, but the model scores "
                       f"only {outputs.shape[-1]} classes.")
    return baselines.scores_metrics(outputs[..., :ways], data.y_query)

  def summary(self, datasets: base.Datasets) -> dict[str, float]:
    test = datasets.evals["test"]
    ways = datasets.info["num_classes"]
    x_ctx, x_query, prefix = test.x_ctx, test.x_query, ""
    if x_ctx.ndim > 3:
      # Image contexts ("end_to_end"): the references see pixels in [0, 1],
      # each context centred on its own mean, as the model's features are.
      flat = lambda x: _unit(x).reshape(x.shape[:2] + (-1,))
      x_ctx, x_query, prefix = flat(x_ctx), flat(x_query), "pixel_"
      mean = x_ctx.mean(1, keepdims=True)
      x_ctx, x_query = x_ctx - mean, x_query - mean
    out = {}
    for short, name in (("logreg", "logistic_regression"),
                        ("ncm", "nearest_class_mean")):
      scores = jax.jit(baselines.batched(name, ways=ways))(
          x_ctx, test.y_ctx, x_query)
      for key, value in baselines.scores_metrics(scores, test.y_query).items():
        out[f"{prefix}{short}_{key}"] = float(value)
    return out


def _unit(images: jax.Array) -> jax.Array:
  """Images as float32 in [0, 1] (uint8 scaled by 1/255)."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _backbone_info(cfg: DataConfig, source: FeatureSource) -> dict[str, Any]:
  """make_backbone_gd's keyword arguments (the pretrained CNN's parameters
  when backbone_init == "pretrained", trained on the training pool only)."""
  images = source.data.images
  params = None
  if cfg.backbone_init == "pretrained":
    params = features_lib.cnn_params(
        source.data, source.pools.train_examples, epochs=cfg.cnn_epochs,
        feature_dim=cfg.cnn_feature_dim, seed=cfg.seed,
        cache_dir=cfg.cache_dir)
  return dict(in_channels=1 if images.ndim == 3 else int(images.shape[-1]),
              feature_dim=cfg.cnn_feature_dim,
              backbone_classes=int(source.pools.train_classes.size),
              backbone_params=params, centre=cfg.centre, l2=cfg.l2,
              train_backbone=cfg.train_backbone)


TASK = ImageICLTask()
