"""Tests for gdattn.data.corruptions."""

import numpy as np
import pytest

from gdattn.data import corruptions


def _images():
  rng = np.random.default_rng(0)
  return rng.uniform(size=(4, 9, 9)).astype(np.float32)


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_shape_range_determinism_and_zero_severity(name):
  x = _images()
  y = corruptions.corrupt(name, x, 0.5, seed=3)
  assert y.shape == x.shape and y.dtype == np.float32
  assert y.min() >= 0.0 and y.max() <= 1.0
  np.testing.assert_array_equal(y, corruptions.corrupt(name, x, 0.5, seed=3))
  assert not np.allclose(y, x)
  np.testing.assert_allclose(corruptions.corrupt(name, x, 0.0), x, atol=1e-6)


def test_noise_depends_on_seed_only_for_noise():
  x = _images()
  assert not np.allclose(corruptions.gaussian_noise(x, 0.3, seed=0),
                         corruptions.gaussian_noise(x, 0.3, seed=1))
  np.testing.assert_array_equal(corruptions.blur(x, 1.0, seed=0),
                                corruptions.blur(x, 1.0, seed=1))


def test_blur_keeps_constants_and_spreads_a_point():
  flat = np.full((1, 7, 7), 0.4, np.float32)
  np.testing.assert_allclose(corruptions.blur(flat, 1.5), flat, atol=1e-6)
  point = np.zeros((1, 11, 11), np.float32)
  point[0, 5, 5] = 1.0
  out = corruptions.blur(point, 1.0)
  assert out[0, 5, 5] < 0.2 and out[0, 5, 6] > 0.05
  np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-5)  # mass kept inside
  np.testing.assert_allclose(out[0], out[0].T, atol=1e-7)  # isotropic


def test_contrast_keeps_each_mean_and_shrinks_spread():
  x = _images()
  y = corruptions.contrast(x, 1.0)
  np.testing.assert_allclose(y.mean((1, 2)), x.mean((1, 2)), atol=1e-6)
  np.testing.assert_allclose(y.std((1, 2)), x.std((1, 2)) / 2, rtol=1e-5)


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match="name: expected one of"):
    corruptions.corrupt("fog", _images(), 1.0)
  with pytest.raises(ValueError, match="severity: expected"):
    corruptions.blur(_images(), -1.0)
  with pytest.raises(ValueError, match="images: expected"):
    corruptions.contrast(np.zeros((3, 3)), 1.0)


def test_parse_shift():
  assert corruptions.parse_shift("blur") == {"corruption": "blur",
                                             "severity": 1.0}
  assert corruptions.parse_shift("gaussian_noise:0.2") == {
      "corruption": "gaussian_noise", "severity": 0.2}
  assert corruptions.parse_shift("dataset:digits") == {"dataset": "digits"}


@pytest.mark.parametrize("spec,match", [
    ("blurry", "shift must be one of"), ("dataset:", "needs a name"),
    ("contrast:high", "severity must be a number")])
def test_parse_shift_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    corruptions.parse_shift(spec)
