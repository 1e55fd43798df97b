"""Shared pytest fixtures: float64 / float32 modes that restore the setting.

The suite also keeps JAX's persistent compilation cache (outside the
checkout, in the user's cache folder; JAX_COMPILATION_CACHE_DIR overrides
it): many tests compile the same programs in different processes (xdist
workers, notebook kernels, the CLI tests' fresh `jit`s), and on a 2-core
machine compiling is most of the suite's time. The cache is keyed by the
program, the JAX version and the backend, so it never changes a result.
"""

import os

import jax
import pytest

_CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.environ.get("XDG_CACHE_HOME")
                 or os.path.join(os.path.expanduser("~"), ".cache"),
                 "gdattn", "jax-tests"))
# The environment variable reaches subprocesses (notebook kernels, CLI runs);
# this process may have read its JAX config before conftest ran.
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)


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
