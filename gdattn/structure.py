"""The paper's visual check: do trained attention weights look like GD's?

Dimensions: K blocks, H heads, M token width, D input dim, E embedding dim,
S E slots in the token (K in the "exact" layout, 1 in the "paper" one).

A projection pair acts only through its product, so the check compares
products, in the paper's column orientation (rows = what is written, columns
= what is read). gdattn stores row-vector weights (z @ wq), so the paper's
W_q^T W_k is wq wk^T here and its W_o W_v is (wv wo)^T. Per block k and
self-attention head h:

  self_qk_x   (wq wk^T)[x, x], [D, D]. GD: s I_D (the kernel reads <x, x_i>).
  self_vo_f   (wv wo)[w..E slots, f]^T, [E, (1 + S) E]: what is added to f
              from the w and E slots. GD: diag(lr_k) on w, -diag(lr_k) on
              the E slot of block k, 0 elsewhere.

and for the cross-attention to the class embeddings:

  cross_qk_f  (wq wk^T)[f, :], [E, E]. GD: I_E (softmax_c <f, w_c>).
  cross_vo_e  (wv wo)[:, E_{k+1}]^T, [E, E], "exact" layout and k < K - 1
              only. GD: I_E (writes E_{k+1} = sum_c p_c w_c).

GD fixes the pattern but not its free numbers (s, lr_k), which a trained
model may choose freely; the GD reference of a block is therefore the
orthogonal projection of the trained block onto GD's family (span{I} for the
qk and cross blocks, {[diag(a), -diag(a), 0]} for self_vo_f). Per block:

  cosine            <T, G> / (|T| |G|) with G the fitted GD reference: 1
                    exactly when the block has GD's form; ~0 for a random
                    block (a negative s gives -1 on the qk blocks). NaN when
                    T is zero.
  pattern_fraction  |T restricted to GD's nonzero entries|^2 / |T|^2, the
                    share of the block's energy (squared Frobenius norm)
                    where GD puts weight, whatever the values.

A TrainedTF has H heads where GD uses one. The self-attention is summarised
by the head that writes most into f (largest |self_vo_f|), chosen by norm,
not by similarity, so a random model is not flattered; every head is kept.

References: arXiv:2405.17248 (section 4, trained-transformer weights).
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from gdattn import models

SELF_BLOCKS = ("self_qk_x", "self_vo_f")
CROSS_BLOCKS = ("cross_qk_f", "cross_vo_e")


@dataclasses.dataclass(frozen=True)
class BlockStructure:
  """One block product of one layer, next to its fitted GD reference.

  Attributes:
    name: one of SELF_BLOCKS + CROSS_BLOCKS.
    layer: k, 0-based.
    head: self-attention head (-1 for the cross-attention).
    trained: the trained block, paper orientation (rows written, cols read).
    gd: the GD reference of the same shape (projection onto GD's family).
    support: bool mask of GD's nonzero entries.
    cosine: cosine between trained and gd (NaN when trained is 0).
    pattern_fraction: share of trained's squared norm on `support`.
  """

  name: str
  layer: int
  head: int
  trained: np.ndarray
  gd: np.ndarray
  support: np.ndarray
  cosine: float
  pattern_fraction: float


@dataclasses.dataclass(frozen=True)
class Structure:
  """All blocks of a TrainedTF.

  Attributes:
    blocks: the summary blocks, per layer: the chosen head's SELF_BLOCKS,
      then the CROSS_BLOCKS that exist at that layer.
    all_heads: the SELF_BLOCKS of every head, per layer and head.
  """

  blocks: tuple[BlockStructure, ...]
  all_heads: tuple[BlockStructure, ...]

  def cosines(self) -> dict[str, float]:
    """{'<name>/<layer>': cosine} over the summary blocks."""
    return {f"{b.name}/{b.layer}": b.cosine for b in self.blocks}

  def pattern_fractions(self) -> dict[str, float]:
    """{'<name>/<layer>': pattern_fraction} over the summary blocks."""
    return {f"{b.name}/{b.layer}": b.pattern_fraction for b in self.blocks}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
  norm = float(np.linalg.norm(a) * np.linalg.norm(b))
  return float(np.sum(a * b)) / norm if norm > 0 else math.nan


def _fraction(a: np.ndarray, support: np.ndarray) -> float:
  total = float(np.sum(a * a))
  return float(np.sum((a * a)[support])) / total if total > 0 else math.nan


def _identity_fit(t_AxA: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Projection onto span{I} and its support."""
  eye = np.eye(t_AxA.shape[0], dtype=t_AxA.dtype)
  return np.trace(t_AxA) / t_AxA.shape[0] * eye, eye.astype(bool)


def _value_fit(t_Ex1pSE: np.ndarray, slot: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """Projection onto {[diag(a) on w, -diag(a) on E slot `slot`, 0]}."""
  e = t_Ex1pSE.shape[0]
  on_w = np.diag(t_Ex1pSE[:, :e])
  start = (1 + slot) * e
  on_slot = np.diag(t_Ex1pSE[:, start:start + e])
  a_E = (on_w - on_slot) / 2  # least squares for +a and -a
  gd = np.zeros_like(t_Ex1pSE)
  support = np.zeros(t_Ex1pSE.shape, bool)
  idx = np.arange(e)
  gd[idx, idx], gd[idx, start + idx] = a_E, -a_E
  support[idx, idx] = support[idx, start + idx] = True
  return gd, support


def _block(name, layer, head, trained, fit) -> BlockStructure:
  trained = np.asarray(trained, np.float64)
  gd, support = fit(trained)
  return BlockStructure(
      name=name, layer=layer, head=head, trained=trained, gd=gd,
      support=support, cosine=_cosine(trained, gd),
      pattern_fraction=_fraction(trained, support))


def self_attention_products(params: dict) -> dict[str, np.ndarray]:
  """Per-head products of a stacked self-attention, row convention.

  Args:
    params: gdattn.attention's pytree ({'self': {wq, wk, wv, wo}, ...}) with
      a leading K axis, e.g. `TrainedTF.attention_params()`.

  Returns:
    {'qk': wq wk^T [K, H, M, M], 'vo': wv wo [K, H, M, M]}.
  """
  p = params["self"]
  return {
      "qk": np.asarray(jnp.einsum("khmp,khnp->khmn", p["wq"], p["wk"])),
      "vo": np.asarray(jnp.einsum("khmv,khvn->khmn", p["wv"], p["wo"])),
  }


def structure(model: models.TrainedTF) -> Structure:
  """Compares every block product of a TrainedTF with GD's pattern.

  Args:
    model: a `gdattn.models.TrainedTF` (either token layout).

  Returns:
    `Structure`; see the module docstring for the blocks and the numbers.

  References: arXiv:2405.17248 (section 4).
  """
  if not isinstance(model, models.TrainedTF):
    raise TypeError(
        f"model must be a gdattn.models.TrainedTF, got {type(model).__name__}")
  layout = model.layout
  params = model.attention_params()
  prods = self_attention_products(params)
  num_layers, num_heads = prods["qk"].shape[:2]
  x, f = layout.x, layout.f
  read = slice(layout.w.start, layout.f.start)  # the w and E slots
  cross_qk = np.asarray(jnp.einsum("kmp,kep->kme", params["cross"]["wq"],
                                   params["cross"]["wk"]))
  cross_vo = np.asarray(jnp.einsum("kev,kvm->kem", params["cross"]["wv"],
                                   params["cross"]["wo"]))
  exact = layout.num_steps == num_layers
  blocks, all_heads = [], []
  for k in range(num_layers):
    # In the "paper" layout (one slot) every block reads the same E slot.
    slot = min(k, layout.num_steps - 1)
    per_head = []
    for h in range(num_heads):
      qk = _block("self_qk_x", k, h, prods["qk"][k, h][x, x], _identity_fit)
      vo = _block("self_vo_f", k, h, prods["vo"][k, h][read, f].T,
                  lambda t, s=slot: _value_fit(t, s))
      per_head.append((qk, vo))
      all_heads += [qk, vo]
    chosen = max(range(num_heads),
                 key=lambda h: float(np.linalg.norm(per_head[h][1].trained)))
    blocks += list(per_head[chosen])
    blocks.append(_block("cross_qk_f", k, -1, cross_qk[k][f, :],
                         _identity_fit))
    # GD's last cross-attention writes nothing; in the one-slot layout the
    # original also erases E, so only the exact layout has this block.
    if exact and k + 1 < num_layers:
      nxt = layout.expectation(k + 1)
      blocks.append(_block("cross_vo_e", k, -1, cross_vo[k][:, nxt].T,
                           _identity_fit))
  return Structure(blocks=tuple(blocks), all_heads=tuple(all_heads))


def plot_structure(result: Structure, path: str | None = None):
  """Heatmaps of each summary block, trained (left) and GD (right).

  One row per block; both panels of a row share a symmetric colour scale;
  the row title gives the cosine and the pattern fraction.

  Args:
    result: from `structure`.
    path: if given, the figure is also saved there (PNG, PDF, ...).

  Returns:
    the matplotlib Figure.
  """
  if not isinstance(result, Structure):
    raise TypeError(
        f"result must be a Structure, got {type(result).__name__}")
  # Imported here: matplotlib is only needed for figures.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  rows = len(result.blocks)
  fig = Figure(figsize=(7.0, 2.4 * rows), layout="constrained")
  axes = fig.subplots(rows, 2, squeeze=False)
  for (ax_t, ax_g), b in zip(axes, result.blocks):
    vmax = float(max(np.max(np.abs(b.trained)), np.max(np.abs(b.gd)), 1e-12))
    for ax, mat, side in ((ax_t, b.trained, "trained"), (ax_g, b.gd, "GD")):
      im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                     interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      head = f", head {b.head}" if b.head >= 0 else ""
      ax.set_title(f"{side}: {b.name}, block {b.layer}{head}", fontsize=8)
    ax_t.set_xlabel(f"cos {b.cosine:.3f}, in pattern "
                    f"{b.pattern_fraction:.3f}", fontsize=8)
    fig.colorbar(im, ax=ax_g, shrink=0.8)
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig
