"""Image data sets for in-context classification, behind one interface.

Dimensions: M examples, H x W pixels, Ch channels, D feature dim.

Every loader returns an `ImageDataset`: images [M, H, W] / [M, H, W, Ch] or
precomputed features [M, D], integer labels [M], class names and, where the
source has one, the official train/test split of each example. Loaders are
plain numpy (no JAX): the data is built once, outside any compiled code.

  fashion_mnist  the gzipped idx files (Debian `dataset-fashion-mnist`)
  digits         scikit-learn's bundled 8x8 digits (offline, 1,797 images)
  glyphs         characters rendered from matplotlib's bundled fonts: a
                 many-class set (Omniglot / ImageNet regime), cached as .npz
  tfds           TFDS through `tfds.data_source` (no TensorFlow needed)
  feature_store  an .npz of features computed elsewhere (e.g. VGG16 / CLIP)

`load(name, **kw)` picks a loader by name.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import json
import os
import pathlib
from typing import Any, Callable

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "GDATTN_FASHION_MNIST_DIR"
CACHE_ENV = "GDATTN_CACHE_DIR"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    "Sneaker", "Bag", "Ankle boot")
TFDS_DATASETS = ("fashion_mnist", "cifar100", "omniglot", "imagenette",
                 "imagenet2012")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Labelled images or features of one source.

  Attributes:
    labels: [M] int32 class ids in [0, num_classes).
    class_names: name of each class id.
    source: where the data came from (loader and parameters).
    images: [M, H, W] or [M, H, W, Ch] uint8/float images, or None.
    features: [M, D] float features, or None (exactly one of the two is set).
    split: [M] official split of each example ("train" / "test"), or None
      when the source has no official split.
  """

  labels: np.ndarray
  class_names: tuple[str, ...]
  source: str
  images: np.ndarray | None = None
  features: np.ndarray | None = None
  split: np.ndarray | None = None

  def __post_init__(self):
    if (self.images is None) == (self.features is None):
      raise ValueError("ImageDataset: expected exactly one of images and "
                       "features, got "
                       f"{'both' if self.images is not None else 'neither'}.")
    data = self.images if self.images is not None else self.features
    if self.features is not None and self.features.ndim != 2:
      raise ValueError(f"features: expected shape [M, D], got "
                       f"{self.features.shape}.")
    if self.images is not None and self.images.ndim not in (3, 4):
      raise ValueError(f"images: expected shape [M, H, W] or [M, H, W, Ch], "
                       f"got {self.images.shape}.")
    if self.labels.shape != (data.shape[0],):
      raise ValueError(f"labels: expected shape ({data.shape[0]},), got "
                       f"{self.labels.shape}.")
    if not np.issubdtype(self.labels.dtype, np.integer):
      raise ValueError(f"labels: expected integers, got {self.labels.dtype}.")
    if self.labels.size and (self.labels.min() < 0
                             or self.labels.max() >= len(self.class_names)):
      raise ValueError(
          f"labels: expected ids in [0, {len(self.class_names)}) (one per "
          f"class name), got range [{self.labels.min()}, {self.labels.max()}].")
    if self.split is not None:
      if self.split.shape != self.labels.shape:
        raise ValueError(f"split: expected shape {self.labels.shape}, got "
                         f"{self.split.shape}.")
      bad = set(np.unique(self.split).tolist()) - set(SPLITS)
      if bad:
        raise ValueError(f"split: expected values in {SPLITS}, got {bad}.")

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def flat(self) -> np.ndarray:
    """[M, D] float32: features, or images flattened (uint8 scaled to [0,1])."""
    if self.features is not None:
      return np.asarray(self.features, np.float32)
    x = self.images.reshape(self.num_examples, -1)
    if self.images.dtype == np.uint8:
      return x.astype(np.float32) / 255.0
    return x.astype(np.float32)

  def subset(self, index: np.ndarray) -> "ImageDataset":
    """The examples at `index` (an integer index or a boolean mask)."""
    take = lambda a: None if a is None else a[index]
    return dataclasses.replace(
        self, labels=self.labels[index], images=take(self.images),
        features=take(self.features), split=take(self.split))


def _read_idx(path: pathlib.Path) -> np.ndarray:
  """Parses a gzipped idx file (the MNIST format) into an array."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path}: not an idx file (bad magic {data[:4]!r}).")
  dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
            0x0E: ">f8"}
  if data[2] not in dtypes:
    raise ValueError(f"{path}: unknown idx element type {data[2]:#x}.")
  ndim = data[3]
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  array = np.frombuffer(data, dtypes[data[2]], offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header shape {shape} does not match its "
                     f"{array.size} elements.")
  return array.reshape(shape).astype(dtypes[data[2]][1:])


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The folder holding Fashion-MNIST: data_dir, $GDATTN_FASHION_MNIST_DIR,
  or the Debian package's folder, the first that holds the files."""
  names = [f"{p}-{kind}-idx{n}-ubyte.gz" for p in ("train", "t10k")
           for kind, n in (("images", 3), ("labels", 1))]
  candidates = [data_dir] if data_dir else [os.environ.get(FASHION_MNIST_ENV),
                                            FASHION_MNIST_DIR]
  for folder in candidates:
    if folder and all((pathlib.Path(folder) / n).is_file() for n in names):
      return pathlib.Path(folder)
  raise FileNotFoundError(
      f"Fashion-MNIST: the idx files {names} were not found in "
      f"{[c for c in candidates if c]}. Install them with `apt-get install "
      f"dataset-fashion-mnist` (Debian/Ubuntu, puts them in "
      f"{FASHION_MNIST_DIR}), or without root: `apt-get download "
      f"dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb DIR` "
      f"and pass data_dir=DIR{FASHION_MNIST_DIR} (or set ${FASHION_MNIST_ENV}).")


def fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageDataset:
  """Fashion-MNIST: 70,000 28x28 uint8 images, 10 classes, 60k/10k split."""
  folder = fashion_mnist_dir(data_dir)
  images, labels, split = [], [], []
  for prefix, name in (("train", "train"), ("t10k", "test")):
    x = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    y = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if x.shape[0] != y.shape[0]:
      raise ValueError(f"{folder}: {prefix} has {x.shape[0]} images but "
                       f"{y.shape[0]} labels.")
    images.append(x)
    labels.append(y.astype(np.int32))
    split.append(np.full(y.shape, name))
  return ImageDataset(
      images=np.concatenate(images), labels=np.concatenate(labels),
      class_names=FASHION_MNIST_CLASSES, split=np.concatenate(split),
      source=f"fashion_mnist:{folder}")


def digits() -> ImageDataset:
  """scikit-learn's bundled digits: 1,797 8x8 images (values 0..16 -> uint8).

  Read straight from the wheel's digits.csv.gz (64 pixels + label per row),
  without importing scikit-learn (seconds of import time).
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("digits: scikit-learn is not installed (pip "
                            "install scikit-learn); it ships the 8x8 digits.")
  path = (pathlib.Path(spec.submodule_search_locations[0]) / "datasets"
          / "data" / "digits.csv.gz")
  table = np.loadtxt(path, delimiter=",", dtype=np.float32)
  images = np.round(table[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0))
  return ImageDataset(images=images.astype(np.uint8),
                      labels=table[:, 64].astype(np.int32),
                      class_names=tuple(str(c) for c in range(10)),
                      source="sklearn:digits.csv.gz")


def feature_store(path: str | os.PathLike) -> ImageDataset:
  """Features computed elsewhere (e.g. ImageNet VGG16 / CLIP embeddings).

  Args:
    path: an .npz with `features` [M, D] float, `labels` [M] int, and
      optionally `split` [M] ("train"/"test") and `class_names` [C] str.

  Returns:
    An ImageDataset holding the features.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"feature_store: no file at {path}; expected an "
                            ".npz with arrays 'features' [M, D] and 'labels' [M].")
  with np.load(path, allow_pickle=False) as z:
    missing = {"features", "labels"} - set(z.files)
    if missing:
      raise ValueError(f"feature_store: {path} lacks arrays {sorted(missing)} "
                       f"(has {z.files}).")
    labels = z["labels"].astype(np.int32)
    num = int(labels.max()) + 1 if labels.size else 0
    names = (tuple(str(n) for n in z["class_names"]) if "class_names" in z.files
             else tuple(str(c) for c in range(num)))
    split = z["split"].astype(str) if "split" in z.files else None
    return ImageDataset(features=z["features"].astype(np.float32),
                        labels=labels, class_names=names, split=split,
                        source=f"feature_store:{path}")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops to a square and resizes to size x size (bilinear)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  crop = image[top:top + s, left:left + s]
  squeeze = crop.ndim == 3 and crop.shape[-1] == 1
  pil = Image.fromarray(crop[..., 0] if squeeze else crop)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if squeeze else out


def tfds_dataset(name: str, split: str | tuple[str, ...] = ("train", "test"),
                 data_dir: str | os.PathLike | None = None, *,
                 image_size: int | None = None,
                 max_examples: int | None = None) -> ImageDataset:
  """A TFDS image data set read through `tfds.data_source` (no TensorFlow).

  Args:
    name: a TFDS name with 'image' and 'label' features, e.g. one of
      TFDS_DATASETS; it must already be prepared under data_dir (ArrayRecord).
    split: one TFDS split or several; each example's `split` is "train" for
      TFDS "train" and "test" for any other split (validation / test).
    data_dir: the TFDS data folder (default: TFDS's own default).
    image_size: centre-crop and resize every image to this square size;
      required when images differ in size (imagenette, imagenet2012).
    max_examples: read at most this many examples of each split (first ones).

  Returns:
    An ImageDataset with uint8 images [M, H, W, Ch].
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = (split,) if isinstance(split, str) else tuple(split)
  images, labels, split_of, names = [], [], [], None
  for s in splits:
    source = tfds.data_source(name, split=s, data_dir=data_dir)
    features = source.dataset_info.features
    if "image" not in features or "label" not in features:
      raise ValueError(f"name: expected a TFDS data set with 'image' and "
                       f"'label' features, {name!r} has {list(features)}.")
    names = tuple(features["label"].names)
    count = len(source) if max_examples is None else min(len(source),
                                                         max_examples)
    for i in range(count):  # per-item reads: the batched read path is optional
      example = source[i]
      image = np.asarray(example["image"])
      if image_size is not None:
        image = _resize(image, image_size)
      images.append(image)
      labels.append(int(example["label"]))
      split_of.append("train" if s.split("[")[0] == "train" else "test")
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ValueError(f"image_size: {name!r} has images of {len(shapes)} "
                     "different shapes; pass image_size to resize them.")
  return ImageDataset(
      images=np.stack(images), labels=np.asarray(labels, np.int32),
      class_names=names, split=np.asarray(split_of),
      source=f"tfds:{name}:{'+'.join(splits)}")


def cache_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The cache folder: path, $GDATTN_CACHE_DIR, or ~/.cache/gdattn."""
  if path is None:
    path = os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache/gdattn"
  return pathlib.Path(path)


def cache_key(*parts: Any) -> str:
  """A short stable hash of JSON-able parts and arrays (cache file names)."""
  h = hashlib.sha256()
  for part in parts:
    if isinstance(part, np.ndarray):
      h.update(str((part.shape, part.dtype.str)).encode())
      h.update(np.ascontiguousarray(part).tobytes())
    else:
      h.update(json.dumps(part, sort_keys=True, default=str).encode())
  return h.hexdigest()[:16]


def glyphs(**kwargs) -> ImageDataset:
  """Rendered character glyphs, many classes; see `gdattn.data.glyphs`."""
  from gdattn.data import glyphs as glyphs_lib  # pylint: disable=g-import-not-at-top
  return glyphs_lib.glyphs(**kwargs)


def load(name: str, **kwargs) -> ImageDataset:
  """A data set by name: one of LOADERS ('tfds:<tfds name>' for TFDS).

  Args:
    name: 'fashion_mnist', 'digits', 'glyphs', 'feature_store' (kwarg path)
      or 'tfds:<name>' (kwargs of `tfds_dataset`).
    **kwargs: passed to the loader.
  """
  if name.startswith("tfds:"):
    return tfds_dataset(name[len("tfds:"):], **kwargs)
  if name not in LOADERS:
    raise ValueError(f"name: expected one of {sorted(LOADERS)} or "
                     f"'tfds:<name>', got {name!r}.")
  return LOADERS[name](**kwargs)


LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "fashion_mnist": fashion_mnist,
    "digits": digits,
    "glyphs": glyphs,
    "feature_store": feature_store,
}
