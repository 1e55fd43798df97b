"""Test-time image corruptions for domain-shift evaluation (numpy).

Dimensions: M images, H x W pixels, Ch channels.

Each corruption maps float images in [0, 1] ([M, H, W] or [M, H, W, Ch]) to
float32 images in [0, 1] of the same shape, with a severity >= 0 (0 leaves
the images unchanged) and, where it is random, a seed, so a corrupted test
set is the same in every run:

  gaussian_noise  x + severity * N(0, 1) per pixel, clipped
  blur            Gaussian blur of standard deviation `severity` pixels
  contrast        each image's mean + (x - mean) / (1 + severity)

They are applied to the images before the features (fitted on clean
training images), as in common-corruption benchmarks of image classifiers.
"""

from typing import Callable

import numpy as np

CORRUPTIONS = ("gaussian_noise", "blur", "contrast")


def _check(images, severity, name):
  images = np.asarray(images)
  if images.ndim not in (3, 4):
    raise ValueError(f"images: expected [M, H, W] or [M, H, W, Ch], got "
                     f"shape {images.shape}.")
  if not isinstance(severity, (int, float)) or isinstance(severity, bool) or (
      not severity >= 0.0):
    raise ValueError(f"severity: expected a number >= 0 for {name}, got "
                     f"{severity!r}.")
  return images.astype(np.float32)


def gaussian_noise(images: np.ndarray, severity: float, *,
                   seed: int = 0) -> np.ndarray:
  """Adds i.i.d. N(0, severity^2) noise to every pixel, then clips to [0, 1]."""
  x = _check(images, severity, "gaussian_noise")
  noise = np.random.default_rng(seed).standard_normal(x.shape, np.float32)
  return np.clip(x + np.float32(severity) * noise, 0.0, 1.0)


def blur(images: np.ndarray, severity: float, *, seed: int = 0) -> np.ndarray:
  """Separable Gaussian blur, sigma = severity pixels, edges replicated."""
  del seed  # deterministic
  x = _check(images, severity, "blur")
  if severity == 0:
    return x
  radius = max(1, int(np.ceil(3 * severity)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / severity) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  for axis in (1, 2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    xp = np.pad(x, pad, mode="edge")
    size = x.shape[axis]
    x = sum(t * np.take(xp, np.arange(i, i + size), axis=axis)
            for i, t in enumerate(taps))
  return np.clip(x, 0.0, 1.0).astype(np.float32)


def contrast(images: np.ndarray, severity: float, *,
             seed: int = 0) -> np.ndarray:
  """Shrinks each image towards its own mean by 1 / (1 + severity)."""
  del seed  # deterministic
  x = _check(images, severity, "contrast")
  mean = x.reshape(x.shape[0], -1).mean(1).reshape((-1,) + (1,) * (x.ndim - 1))
  return np.clip(mean + (x - mean) / (1.0 + severity), 0.0, 1.0).astype(
      np.float32)


CORRUPTION_FNS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "contrast": contrast,
}


def corrupt(name: str, images: np.ndarray, severity: float, *,
            seed: int = 0) -> np.ndarray:
  """Corruption `name` (one of CORRUPTIONS) of float images in [0, 1]."""
  if name not in CORRUPTION_FNS:
    raise ValueError(f"name: expected one of {CORRUPTIONS}, got {name!r}.")
  return CORRUPTION_FNS[name](images, severity, seed=seed)


def parse_shift(spec: str) -> dict[str, object]:
  """A test-time shift written as text -> keyword arguments of the test data.

  Args:
    spec: '<corruption>[:<severity>]' with a corruption of CORRUPTIONS
      (severity 1.0 when omitted), or 'dataset:<name>' for test contexts
      drawn from another data set.

  Returns:
    dict(corruption=..., severity=...) or dict(dataset=...), as
    `gdattn.tasks.image_icl.test_contexts` takes them.
  """
  head, sep, tail = str(spec).partition(":")
  if head == "dataset":
    if not tail:
      raise ValueError(f"shift 'dataset:<name>' needs a name, got {spec!r}")
    return {"dataset": tail}
  if head not in CORRUPTIONS:
    raise ValueError(f"shift must be one of {CORRUPTIONS} (optionally"
                     f" :severity) or dataset:<name>, got {spec!r}")
  try:
    severity = float(tail) if sep else 1.0
  except ValueError:
    raise ValueError(f"shift severity must be a number, got {spec!r}") from None
  return {"corruption": head, "severity": severity}
