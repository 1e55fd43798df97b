"""Shared pytest fixtures: float64 / float32 modes that restore the setting."""

import jax
import pytest


@pytest.fixture
def x64():
  """Runs the test in float64 and restores the previous setting after it."""
  before = jax.config.jax_enable_x64
  with jax.enable_x64(True):
    yield
  assert jax.config.jax_enable_x64 == before


@pytest.fixture
def x32():
  """Runs the test with x64 off, so float32 stays float32 whatever the env."""
  with jax.enable_x64(False):
    yield
