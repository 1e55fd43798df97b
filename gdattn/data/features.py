"""Features for in-context image classification, fitted on training data only.

Dimensions: M examples, D input dim, P output feature dim, H x W pixels,
C training classes.

Dot-product kernels see a query only through <x, x_i>: with non-negative
features (pixels, ReLU / pooled CNN activations) every inner product is
dominated by the shared mean direction and the kernel is nearly blind to the
query. Centring (and PCA, which centres) with the training split's mean
removes that direction; every statistic here comes from the training split,
and the CNN backbone is trained on the training classes only, so nothing
leaks from held-out images or classes.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gdattn.data import images as images_lib

FEATURE_KINDS = ("raw", "pca", "cnn", "store")


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureTransform:
  """x -> (x - mean) @ components, then optional L2 normalisation (numpy).

  Attributes:
    mean: [D] subtracted first (zeros when not centring).
    components: [D, P] PCA directions, or None (keep all D inputs).
    l2: scale every row to unit norm last.
  """

  mean: np.ndarray
  components: np.ndarray | None = None
  l2: bool = False

  def __call__(self, x_MxD: np.ndarray) -> np.ndarray:
    x_MxD = np.asarray(x_MxD, np.float32) - self.mean
    if self.components is not None:
      x_MxD = x_MxD @ self.components
    if self.l2:
      x_MxD = x_MxD / np.maximum(np.linalg.norm(x_MxD, axis=-1, keepdims=True),
                                 1e-12)
    return x_MxD.astype(np.float32)


def fit_transform(x_train_MxD: np.ndarray, *, centre: bool = True,
                  pca_dim: int | None = None,
                  l2: bool = False) -> FeatureTransform:
  """Fits centring / PCA on the training examples only.

  Args:
    x_train_MxD: training-split features (never val / test examples).
    centre: subtract the training mean (always done with PCA).
    pca_dim: keep the top pca_dim principal directions; None keeps all.
    l2: L2-normalise each transformed row.

  Returns:
    The FeatureTransform, to apply to every split.
  """
  x = np.asarray(x_train_MxD, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"x_train_MxD: expected [M >= 2, D], got {x.shape}.")
  if pca_dim is not None and not 1 <= pca_dim <= x.shape[1]:
    raise ValueError(f"pca_dim: expected an int in [1, {x.shape[1]}] or "
                     f"None, got {pca_dim!r}.")
  mean = x.mean(0) if (centre or pca_dim is not None) else np.zeros(x.shape[1])
  components = None
  if pca_dim is not None:
    xc = x - mean
    _, vecs = np.linalg.eigh(xc.T @ xc)  # ascending eigenvalues
    components = vecs[:, ::-1][:, :pca_dim].astype(np.float32)
  return FeatureTransform(mean=mean.astype(np.float32), components=components,
                          l2=l2)


class CNN(nnx.Module):
  """A small backbone: 2 conv (3x3, ReLU, 2x2 mean pool) + linear features."""

  def __init__(self, *, in_channels: int, num_classes: int,
               feature_dim: int = 64, width: int = 16, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(in_channels, width, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), rngs=rngs)
    self.embed = nnx.Linear(2 * width, feature_dim, rngs=rngs)
    self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

  def features(self, x_BxHxWxCh: jax.Array) -> jax.Array:
    h = nnx.avg_pool(jax.nn.relu(self.conv1(x_BxHxWxCh)), (2, 2), (2, 2))
    h = nnx.avg_pool(jax.nn.relu(self.conv2(h)), (2, 2), (2, 2))
    return jax.nn.relu(self.embed(h.mean((1, 2))))

  def __call__(self, x_BxHxWxCh: jax.Array) -> jax.Array:
    return self.head(self.features(x_BxHxWxCh))


def _as_nhwc(images_MxHxW: np.ndarray) -> np.ndarray:
  x = np.asarray(images_MxHxW, np.float32)
  if images_MxHxW.dtype == np.uint8:
    x = x / 255.0
  return x[..., None] if x.ndim == 3 else x


def _cnn_settings(epochs, feature_dim, width, batch_size, learning_rate,
                  seed):
  return dict(epochs=epochs, feature_dim=feature_dim, width=width,
              batch_size=batch_size, learning_rate=learning_rate, seed=seed,
              version=1)


def cnn_params(dataset: images_lib.ImageDataset, train_examples: np.ndarray,
               *, epochs: int = 1, feature_dim: int = 64, width: int = 16,
               batch_size: int = 128, learning_rate: float = 3e-3,
               seed: int = 0, cache_dir: str | os.PathLike | None = None,
               use_cache: bool = True) -> dict:
  """The parameters (nnx pure dict) of a `CNN` trained by classification of
  the classes of `train_examples` only (Adam), its head included.

  Cached as .npz keyed like `cnn_features`; a later end-to-end model starts
  from them, and `cnn_features` embeds with them.
  """
  train_examples = np.asarray(train_examples, np.int64)
  key = _cnn_key(dataset, train_examples, "a CNN",
                 _cnn_settings(epochs, feature_dim, width, batch_size,
                               learning_rate, seed))
  return _cnn_params(dataset, train_examples, key, epochs=epochs,
                     feature_dim=feature_dim, width=width,
                     batch_size=batch_size, learning_rate=learning_rate,
                     seed=seed, cache_dir=cache_dir, use_cache=use_cache)


def _cnn_key(dataset, train_examples, who, settings) -> str:
  """The cache key of a CNN trained on `train_examples` (hashes the images:
  computed once per call of the public functions)."""
  if dataset.images is None:
    raise ValueError(f"dataset: {who} needs images, got features "
                     f"({dataset.source}).")
  return images_lib.cache_key(settings, dataset.images, dataset.labels,
                              train_examples)


def _cnn_params(dataset, train_examples, key, *, epochs, feature_dim, width,
                batch_size, learning_rate, seed, cache_dir, use_cache):
  path = images_lib.cache_dir(cache_dir) / f"cnn-params-{key}.npz"
  if use_cache and path.is_file():
    with np.load(path) as stored:
      flat = {tuple(k.split("/")): stored[k] for k in stored.files}
    return nnx.traversals.unflatten_mapping(flat)
  x = _as_nhwc(dataset.images)
  classes, y = np.unique(dataset.labels[train_examples], return_inverse=True)
  model = CNN(in_channels=x.shape[-1], num_classes=classes.size,
              feature_dim=feature_dim, width=width, rngs=nnx.Rngs(seed))
  opt = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, xb, yb):
    def loss(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
    value, grads = nnx.value_and_grad(loss)(model)
    opt.update(model, grads)
    return value

  rng = np.random.default_rng(seed)
  x_train, y_train = x[train_examples], y.astype(np.int32)
  for _ in range(epochs):
    order = rng.permutation(train_examples.size)
    for i in range(0, order.size - batch_size + 1, batch_size):
      b = order[i:i + batch_size]
      step(model, opt, jnp.asarray(x_train[b]), jnp.asarray(y_train[b]))
  params = jax.tree.map(np.asarray,
                        nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  if use_cache:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    flat = nnx.traversals.flatten_mapping(params)
    np.savez(tmp, **{"/".join(map(str, k)): v for k, v in flat.items()})
    os.replace(tmp, path)
  return params


def cnn_features(dataset: images_lib.ImageDataset, train_examples: np.ndarray,
                 *, epochs: int = 1, feature_dim: int = 64, width: int = 16,
                 batch_size: int = 128, learning_rate: float = 3e-3,
                 seed: int = 0, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True) -> np.ndarray:
  """[M, feature_dim] CNN features of every image, the CNN trained on
  `train_examples` only (`cnn_params`).

  Cached as .npy keyed by a hash of the images, labels, train_examples and
  every setting, so a second call with the same inputs costs a file read.
  """
  train_examples = np.asarray(train_examples, np.int64)
  key = _cnn_key(dataset, train_examples, "cnn_features",
                 _cnn_settings(epochs, feature_dim, width, batch_size,
                               learning_rate, seed))
  path = images_lib.cache_dir(cache_dir) / f"cnn-{key}.npy"
  if use_cache and path.is_file():
    return np.load(path)
  params = _cnn_params(dataset, train_examples, key, epochs=epochs,
                       feature_dim=feature_dim, width=width,
                       batch_size=batch_size, learning_rate=learning_rate,
                       seed=seed, cache_dir=cache_dir, use_cache=use_cache)
  x = _as_nhwc(dataset.images)
  model = CNN(in_channels=x.shape[-1],
              num_classes=params["head"]["kernel"].shape[-1],
              feature_dim=feature_dim, width=width, rngs=nnx.Rngs(seed))
  nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, params)))
  embed = nnx.jit(lambda m, xb: m.features(xb))
  out = np.concatenate([np.asarray(embed(model, jnp.asarray(x[i:i + 1024])))
                        for i in range(0, x.shape[0], 1024)])
  if use_cache:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
  return out
