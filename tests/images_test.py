"""Tests for gdattn.data.images and gdattn.data.glyphs."""

import gzip

import numpy as np
import pytest

from gdattn.data import glyphs as glyphs_lib
from gdattn.data import images


def test_digits_offline():
  d = images.digits()
  assert d.images.shape == (1797, 8, 8) and d.images.dtype == np.uint8
  assert d.num_classes == 10 and d.split is None
  flat = d.flat()
  assert flat.shape == (1797, 64) and 0.0 <= flat.min() and flat.max() <= 1.0


def _write_idx(path, array, code):
  header = bytes([0, 0, code, array.ndim]) + b"".join(
      int(s).to_bytes(4, "big") for s in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(">u1").tobytes())


def test_fashion_mnist_reader_on_written_idx(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, m in (("train", 6), ("t10k", 4)):
    _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
               rng.integers(0, 256, (m, 28, 28)), 0x08)
    _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz",
               rng.integers(0, 10, (m,)), 0x08)
  d = images.fashion_mnist(tmp_path)
  assert d.images.shape == (10, 28, 28)
  assert list(d.split) == ["train"] * 6 + ["test"] * 4


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion"):
    images.fashion_mnist(tmp_path)


def test_fashion_mnist_real_files():
  try:
    images.fashion_mnist_dir()
  except FileNotFoundError:
    pytest.skip("Fashion-MNIST idx files absent (apt-get install "
                "dataset-fashion-mnist)")
  d = images.fashion_mnist()
  assert d.images.shape == (70000, 28, 28)
  assert (d.split == "train").sum() == 60000
  assert np.bincount(d.labels).tolist() == [7000] * 10


def test_feature_store_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "feats.npz"
  np.savez(path, features=rng.normal(size=(30, 7)),
           labels=np.arange(30) % 3, split=np.array(["train", "test"] * 15))
  d = images.load("feature_store", path=path)
  assert d.features.shape == (30, 7) and d.images is None
  assert d.num_classes == 3 and d.flat().dtype == np.float32
  np.savez(tmp_path / "bad.npz", feats=np.zeros((3, 2)))
  with pytest.raises(ValueError, match="lacks arrays"):
    images.feature_store(tmp_path / "bad.npz")


def test_dataset_rejects_bad_labels():
  with pytest.raises(ValueError, match="labels"):
    images.ImageDataset(features=np.zeros((3, 2)), labels=np.array([0, 1, 5]),
                        class_names=("a", "b"), source="t")
  with pytest.raises(ValueError, match="exactly one"):
    images.ImageDataset(labels=np.zeros(3, int), class_names=("a",),
                        source="t")


def test_load_unknown_name():
  with pytest.raises(ValueError, match="name: expected one of"):
    images.load("imagenet")


def test_glyphs_small_deterministic_and_cached(tmp_path):
  kw = dict(num_classes=12, images_per_class=5, image_size=16, seed=3,
            cache_dir=tmp_path)
  a = images.load("glyphs", **kw)
  assert a.images.shape == (60, 16, 16) and a.num_classes == 12
  assert np.bincount(a.labels).tolist() == [5] * 12
  assert len(set(a.class_names)) == 12
  # every image has ink, and the images of a class differ (faces, affine)
  assert (a.images.reshape(60, -1).max(1) > 100).all()
  assert not np.array_equal(a.images[0], a.images[1])
  assert len(list(tmp_path.glob("glyphs-*.npz"))) == 1
  b = glyphs_lib.glyphs(**kw)  # from the cache
  np.testing.assert_array_equal(a.images, b.images)
  c = glyphs_lib.glyphs(**kw, use_cache=False)  # regenerated
  np.testing.assert_array_equal(a.images, c.images)


def test_glyphs_many_classes_available():
  assert len(glyphs_lib.candidate_characters()) >= 2000


def test_tfds_mock_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    d = images.load("tfds:fashion_mnist", split=("train", "test"))
  assert d.images.shape == (12, 28, 28, 1) and d.num_classes == 10
  assert list(d.split) == ["train"] * 6 + ["test"] * 6
  with tfds.testing.mock_data(num_examples=4):
    d = images.tfds_dataset("imagenette", "train", image_size=16)
  assert d.images.shape == (4, 16, 16, 3)
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="image_size"):
      images.tfds_dataset("imagenet2012", "validation")
