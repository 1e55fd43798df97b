"""A many-class image set that needs no download: rendered character glyphs.

Dimensions: M examples, S x S pixels, F font faces.

Omniglot and ImageNet have ~1,000+ classes with a few to a few hundred images
each; none installs offline. Here a class is one Unicode character that the
fonts bundled with matplotlib (the DejaVu Sans / Serif / Mono families, four
styles each) draw in at least `min_faces` faces; its images are the character
drawn in different faces, each under a small random affine distortion
(rotation, shear, scale, shift), seeded and deterministic. Characters whose
drawings coincide (Latin A, Greek Alpha, Cyrillic A) are merged into one by
dropping all but the first, so classes are visually distinct.
"""

import functools
import os
import pathlib
import unicodedata

import numpy as np

from gdattn.data import images as images_lib

DEFAULT_FACES = tuple(
    f"DejaVu{family}{style}.ttf"
    for family in ("Sans", "Serif", "SansMono")
    for style in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic",
                  "-BoldOblique" if family != "Serif" else "-BoldItalic"))
_VERSION = 1  # bump when the rendering changes, so old caches are not reused
_KEEP_CATEGORIES = ("L", "N", "P", "S")  # letters, numbers, punctuation, symbols


def _font_dir() -> pathlib.Path:
  import matplotlib  # pylint: disable=g-import-not-at-top
  return pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _fonts(faces):
  from matplotlib import ft2font  # pylint: disable=g-import-not-at-top
  fonts = []
  for face in faces:
    path = _font_dir() / face
    if not path.is_file():
      raise ValueError(f"faces: {face!r} is not among matplotlib's bundled "
                       f"fonts in {_font_dir().name}/.")
    fonts.append(ft2font.FT2Font(str(path)))
  return fonts


def _render(font, codepoint: int, pixels: int) -> np.ndarray:
  """The glyph as a uint8 bitmap cropped to its ink (empty: shape (0, 0))."""
  from matplotlib import ft2font  # pylint: disable=g-import-not-at-top
  font.clear()
  font.set_size(pixels, 72)
  font.set_text(chr(codepoint), 0.0, flags=ft2font.LoadFlags.DEFAULT)
  font.draw_glyphs_to_bitmap(antialiased=True)
  image = np.asarray(font.get_image())
  rows, cols = np.nonzero(image > 32)
  if rows.size == 0:
    return np.zeros((0, 0), np.uint8)
  return image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _place(bitmap, size, rng, distort):
  """Affinely maps the bitmap into a size x size image (bilinear)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  max_rot, max_shear, scale_range, max_shift = distort
  angle = np.deg2rad(rng.uniform(-max_rot, max_rot))
  shear = rng.uniform(-max_shear, max_shear)
  zoom = rng.uniform(*scale_range) * 0.8 * size / max(bitmap.shape)
  shift = rng.uniform(-max_shift, max_shift, 2) * size
  rot = np.array([[np.cos(angle), -np.sin(angle)],
                  [np.sin(angle), np.cos(angle)]])
  forward = zoom * rot @ np.array([[1.0, shear], [0.0, 1.0]])
  inverse = np.linalg.inv(forward)
  centre_in = (np.asarray(bitmap.shape) - 1) / 2
  centre_out = (size - 1) / 2 + shift
  out = ndimage.affine_transform(
      bitmap.astype(np.float32), inverse,
      offset=centre_in - inverse @ centre_out, output_shape=(size, size),
      order=1, cval=0.0)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def candidate_characters(faces=DEFAULT_FACES, min_faces: int = 4,
                         probe_pixels: int = 16):
  """Characters drawn by >= min_faces faces, visually distinct, in code order.

  Returns:
    tuple of (codepoint, face indices that draw it); memoised per process.
  """
  return _candidates(tuple(faces), min_faces, probe_pixels)


@functools.lru_cache(maxsize=4)
def _candidates(faces, min_faces, probe_pixels):
  fonts = _fonts(faces)
  charmaps = [set(f.get_charmap()) for f in fonts]
  seen, out = set(), []
  for cp in sorted(set().union(*charmaps)):
    if unicodedata.category(chr(cp))[0] not in _KEEP_CATEGORIES:
      continue
    have = [i for i, cm in enumerate(charmaps) if cp in cm]
    if len(have) < min_faces:
      continue
    probe = _render(fonts[have[0]], cp, probe_pixels)
    if probe.size == 0 or (probe > 32).sum() < 4:
      continue
    # Identical drawings in the first face (homoglyphs) would be two classes
    # no model could tell apart; keep the first only.
    signature = (probe.shape, (probe > 96).tobytes())
    if signature in seen:
      continue
    seen.add(signature)
    out.append((cp, tuple(have)))
  return tuple(out)


def glyphs(*, num_classes: int = 1000, images_per_class: int = 20,
           image_size: int = 28, faces: tuple[str, ...] = DEFAULT_FACES,
           min_faces: int = 4, max_rotation: float = 10.0,
           max_shear: float = 0.15, scale_range: tuple[float, float] = (0.85,
                                                                          1.05),
           max_shift: float = 0.06, seed: int = 0,
           cache_dir: str | os.PathLike | None = None,
           use_cache: bool = True) -> images_lib.ImageDataset:
  """Rendered glyphs: num_classes characters x images_per_class images.

  Generated on first call (about a millisecond per image) and cached as an
  .npz under cache_dir keyed by every parameter; later calls load it.

  Args:
    num_classes: number of characters (classes), chosen by a seeded draw
      from all candidates (about 2,000 with the default faces).
    images_per_class: images per class; faces cycle in a seeded order, so
      each class shows several faces.
    image_size: S, the side of the square uint8 images.
    faces: font files among matplotlib's bundled fonts.
    min_faces: a character must be drawn by at least this many faces.
    max_rotation: rotation in degrees, uniform in [-max, max].
    max_shear: horizontal shear factor, uniform in [-max, max].
    scale_range: relative size range of the glyph.
    max_shift: shift as a fraction of S, uniform in [-max, max] per axis.
    seed: the draw of classes, faces and distortions.
    cache_dir: cache folder (default `images.cache_dir()`).
    use_cache: read and write the cache.

  Returns:
    ImageDataset with images [M, S, S] uint8, M = num_classes *
    images_per_class, labels grouped by class; no official split.
  """
  for name, value, low in (("num_classes", num_classes, 2),
                           ("images_per_class", images_per_class, 1),
                           ("image_size", image_size, 8),
                           ("min_faces", min_faces, 1)):
    if not isinstance(value, int) or value < low:
      raise ValueError(f"{name}: expected an int >= {low}, got {value!r}.")
  params = dict(num_classes=num_classes, images_per_class=images_per_class,
                image_size=image_size, faces=list(faces), min_faces=min_faces,
                max_rotation=max_rotation, max_shear=max_shear,
                scale_range=list(scale_range), max_shift=max_shift, seed=seed,
                version=_VERSION)
  path = (images_lib.cache_dir(cache_dir)
          / f"glyphs-{images_lib.cache_key(params)}.npz")
  if use_cache and path.is_file():
    with np.load(path) as z:
      return images_lib.ImageDataset(
          images=z["images"], labels=z["labels"],
          class_names=tuple(str(n) for n in z["class_names"]),
          source=f"glyphs:{path.name}")
  candidates = candidate_characters(faces, min_faces)
  if num_classes > len(candidates):
    raise ValueError(f"num_classes: expected <= {len(candidates)} (the "
                     f"characters that {min_faces}+ faces draw), got "
                     f"{num_classes}.")
  rng = np.random.default_rng(seed)
  chosen = sorted(rng.choice(len(candidates), num_classes, replace=False))
  fonts = _fonts(faces)
  distort = (max_rotation, max_shear, tuple(scale_range), max_shift)
  images = np.zeros((num_classes * images_per_class, image_size, image_size),
                    np.uint8)
  names = []
  for c, index in enumerate(chosen):
    cp, have = candidates[index]
    names.append(f"U+{cp:04X} {chr(cp)}")
    order = rng.permutation(have)
    bitmaps = {}
    for j in range(images_per_class):
      face = int(order[j % len(order)])
      if face not in bitmaps:
        bitmaps[face] = _render(fonts[face], cp, 3 * image_size)
      if bitmaps[face].size:
        images[c * images_per_class + j] = _place(bitmaps[face], image_size,
                                                  rng, distort)
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), images_per_class)
  if use_cache:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels,
                        class_names=np.asarray(names))
    os.replace(tmp, path)
  return images_lib.ImageDataset(images=images, labels=labels,
                                 class_names=tuple(names),
                                 source=f"glyphs:{path.name}")
