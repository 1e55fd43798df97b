"""Tests for gdattn/structure.py (trained blocks vs GD's pattern)."""

import functools
import math

import numpy as np
import pytest
from flax import nnx

from gdattn import models
from gdattn import structure

C, D, E = 7, 4, 3
# Block products of 0/1 and +-lr matrices: only float32 rounding.
EXACT_TOL = 1e-6
# A random block's cosine with GD's fitted pattern: ~0.1-0.35 (see below).
RANDOM_MAX_ABS_COSINE = 0.7


def _gd(num_layers, seed=0):
  return models.GD(num_classes=C, embed_dim=E, num_layers=num_layers,
                   init_scale=1.0, rngs=nnx.Rngs(seed))


# trained_tf_from_gd costs seconds of eager compilation: build it once. K = 2
# covers both a block with a following cross_vo_e and the last block.
K = 2


@functools.cache
def _gd_tf():
  gd = _gd(K)
  return gd, models.trained_tf_from_gd(gd, input_dim=D)


def _random_tf(num_layers, token_layout="exact", seed=1):
  return models.TrainedTF(input_dim=D, num_classes=C, embed_dim=E,
                          num_layers=num_layers, init_scale=1.0,
                          token_layout=token_layout, rngs=nnx.Rngs(seed))


def _names(result):
  return [(b.name, b.layer) for b in result.blocks]


def test_gd_embedding_matches_gd_on_every_block():
  result = structure.structure(_gd_tf()[1])
  assert _names(result) == [
      ("self_qk_x", 0), ("self_vo_f", 0), ("cross_qk_f", 0), ("cross_vo_e", 0),
      ("self_qk_x", 1), ("self_vo_f", 1), ("cross_qk_f", 1)]
  for b in result.blocks:
    assert abs(b.cosine - 1) < EXACT_TOL, (b.name, b.layer, b.cosine)
    assert abs(b.pattern_fraction - 1) < EXACT_TOL, (b.name, b.layer)
    np.testing.assert_allclose(b.trained, b.gd, atol=EXACT_TOL)
    assert b.head in (0, -1)  # GD lives in head 0


def test_gd_reference_recovers_the_learning_rates():
  gd, tf = _gd_tf()
  result = structure.structure(tf)
  lrs_KxE = np.asarray(gd.lrs[...])
  vo = [b for b in result.blocks if b.name == "self_vo_f"]
  assert len(vo) == K
  for k, b in enumerate(vo):
    assert b.trained.shape == (E, (1 + K) * E)
    np.testing.assert_allclose(np.diag(b.gd[:, :E]), lrs_KxE[k],
                               atol=EXACT_TOL)
    start = (1 + k) * E  # block k reads its own E slot
    np.testing.assert_allclose(np.diag(b.gd[:, start:start + E]),
                               -lrs_KxE[k], atol=EXACT_TOL)


def test_zero_head_has_nan_cosine():
  result = structure.structure(_gd_tf()[1])
  head1 = [b for b in result.all_heads if b.head == 1]
  assert len(head1) == 2 * K
  assert all(math.isnan(b.cosine) for b in head1)


@pytest.mark.parametrize("token_layout", ["exact", "paper"])
def test_random_model_is_far_from_gd(token_layout):
  result = structure.structure(_random_tf(K, token_layout))
  cosines = np.array([b.cosine for b in result.blocks])
  fractions = np.array([b.pattern_fraction for b in result.blocks])
  assert np.all(np.isfinite(cosines))
  assert np.max(np.abs(cosines)) < RANDOM_MAX_ABS_COSINE, cosines
  assert np.max(fractions) < RANDOM_MAX_ABS_COSINE, fractions
  # The one-slot layout has no cross_vo_e block.
  has_cross_vo = any(b.name == "cross_vo_e" for b in result.blocks)
  assert has_cross_vo == (token_layout == "exact")


def test_perturbation_lowers_the_cosine():
  tf = nnx.clone(_gd_tf()[1])
  clean = structure.structure(tf).cosines()["self_vo_f/0"]
  noise = 0.5 * np.random.default_rng(0).standard_normal(tf.self_wv.shape)
  tf.self_wv[...] = tf.self_wv[...] + noise.astype(np.float32)
  noisy = structure.structure(tf).cosines()["self_vo_f/0"]
  assert clean > 1 - EXACT_TOL and noisy < 0.99


def test_plot_structure(tmp_path):
  result = structure.structure(_gd_tf()[1])
  path = tmp_path / "structure.png"
  fig = structure.plot_structure(result, path=str(path))
  assert path.stat().st_size > 0
  assert len(fig.axes) >= 2 * len(result.blocks)


def test_bad_input():
  with pytest.raises(TypeError, match="model must be a gdattn.models.TrainedTF"):
    structure.structure(_gd_tf()[0])
  with pytest.raises(TypeError, match="result must be a Structure"):
    structure.plot_structure({})
