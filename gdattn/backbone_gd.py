"""GD read out of features that a CNN backbone computes inside the model.

Dimensions: B contexts, N context images, T query images, H x W pixels, Ch
channels, P feature dim, C classes.

The paper feeds its GD / transformer heads fixed features of a frozen
backbone. `BackboneGD` puts the backbone (`gdattn.data.features.CNN`) in
front of the head, so that one training loss reaches both: the backbone is
meta-trained end to end through the in-context head and learns features for
in-context learning rather than for classifying the training classes.

Centring happens per context (the mean feature of the context's images is
subtracted from context and queries): it is differentiable, needs no
training-set statistic that would go stale as the backbone moves, and, as
for fixed features, removes the shared direction of non-negative ReLU
features that would blind a dot-product kernel to the query.

References: arXiv:2405.17248 (section 6, in-context image classification).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gdattn import models
from gdattn.data import features as features_lib

_L2_FLOOR = 1e-24  # squared-norm floor: a zero feature row stays finite


def _as_unit_nhwc(images: jax.Array, name: str) -> jax.Array:
  """[..., H, W(, Ch)] uint8 (0..255) or float ([0, 1]) -> float32 with Ch."""
  images = jnp.asarray(images)
  if images.ndim not in (4, 5):
    raise ValueError(f"{name}: expected images [B, n, H, W] or "
                     f"[B, n, H, W, Ch], got shape {images.shape}.")
  if jnp.issubdtype(images.dtype, jnp.integer):
    images = images.astype(jnp.float32) / 255.0
  return images[..., None] if images.ndim == 4 else images


class BackboneGD(nnx.Module):
  """An image backbone, per-context centring / L2, then an in-context head.

  Maps image contexts (x_ctx [B,N,H,W(,Ch)], y_ctx [B,N], x_query
  [B,T,H,W(,Ch)]) to logits [B,T,C]; uint8 images are scaled to [0, 1].
  """

  def __init__(self, backbone: features_lib.CNN, head: nnx.Module, *,
               centre: bool = True, l2: bool = False,
               train_backbone: bool = True):
    """Args:
      backbone: maps [M, H, W, Ch] images to [M, P] features (`.features`).
      head: an in-context classifier on P-dim features (models.GD, ...).
      centre: subtract each context's mean feature from its context and
        queries.
      l2: L2-normalise every feature row (after centring).
      train_backbone: False stops the gradient at the features, so the
        backbone stays as initialised (the frozen baseline with the same
        normalisation as the end-to-end model).
    """
    for name, value in (("centre", centre), ("l2", l2),
                        ("train_backbone", train_backbone)):
      if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}.")
    self.backbone = backbone
    self.head = head
    self.centre = centre
    self.l2 = l2
    self.train_backbone = train_backbone

  def features(self, x_ctx, x_query) -> tuple[jax.Array, jax.Array]:
    """Normalised features of a batch of contexts: [B,N,P], [B,T,P]."""
    ctx = _as_unit_nhwc(x_ctx, "x_ctx")
    query = _as_unit_nhwc(x_query, "x_query")
    if ctx.shape[0] != query.shape[0] or ctx.shape[2:] != query.shape[2:]:
      raise ValueError(
          f"x_query: expected [B={ctx.shape[0]}, T, "
          f"{', '.join(map(str, ctx.shape[2:]))}] like x_ctx, got "
          f"{query.shape} (channels added).")
    b, n = ctx.shape[:2]
    images = jnp.concatenate([ctx, query], axis=1)
    f_MxP = self.backbone.features(images.reshape((-1,) + images.shape[2:]))
    f_BxSxP = f_MxP.reshape(b, -1, f_MxP.shape[-1])
    if not self.train_backbone:
      f_BxSxP = jax.lax.stop_gradient(f_BxSxP)
    if self.centre:
      f_BxSxP = f_BxSxP - f_BxSxP[:, :n].mean(1, keepdims=True)
    if self.l2:
      sq = jnp.sum(f_BxSxP * f_BxSxP, -1, keepdims=True)
      f_BxSxP = f_BxSxP * jax.lax.rsqrt(jnp.maximum(sq, _L2_FLOOR))
    return f_BxSxP[:, :n], f_BxSxP[:, n:]

  def __call__(self, x_ctx, y_ctx_BxN, x_query) -> jax.Array:
    f_ctx_BxNxP, f_query_BxTxP = self.features(x_ctx, x_query)
    return self.head(f_ctx_BxNxP, y_ctx_BxN, f_query_BxTxP)


def make_backbone_gd(name: str, cfg: models.ICLModelConfig, *,
                     in_channels: int, num_classes: int, feature_dim: int,
                     backbone_classes: int, width: int = 16,
                     backbone_params: Any = None, centre: bool = True,
                     l2: bool = False, train_backbone: bool = True,
                     rngs: nnx.Rngs) -> BackboneGD:
  """A `CNN` backbone and head `name` (one of models.MODELS, "gd" for GD).

  Args:
    name: the head, built by models.make_icl_model on feature_dim inputs.
    cfg: the head's config (kernel, K, E, ...).
    in_channels: image channels (1 for grey images).
    num_classes: C, classes the head scores (the context's ways).
    feature_dim: P, the backbone's output dimension.
    backbone_classes: classes of the backbone's (unused) classification head,
      as in the pretrained parameters.
    width: the backbone's first conv width.
    backbone_params: None (random init from rngs) or the nnx pure dict of a
      trained CNN of the same sizes (`features.cnn_params`).
    centre, l2, train_backbone: as in BackboneGD.
    rngs: initialises the head (and a random backbone).
  """
  backbone = features_lib.CNN(in_channels=in_channels,
                              num_classes=backbone_classes,
                              feature_dim=feature_dim, width=width, rngs=rngs)
  if backbone_params is not None:
    want = jax.tree.map(jnp.shape,
                        nnx.to_pure_dict(nnx.state(backbone, nnx.Param)))
    got = jax.tree.map(jnp.shape, backbone_params)
    if want != got:
      raise ValueError(f"backbone_params: expected shapes {want}, got {got}.")
    nnx.update(backbone, nnx.State(jax.tree.map(jnp.asarray,
                                                backbone_params)))
  head = models.make_icl_model(name, cfg, input_dim=feature_dim,
                               num_classes=num_classes, rngs=rngs)
  return BackboneGD(backbone, head, centre=centre, l2=l2,
                    train_backbone=train_backbone)
