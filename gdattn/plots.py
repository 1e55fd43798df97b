"""The reproductions' figures: one code path for scripts and notebooks.

A sweep record is one trained (model, K, L, draw, protocol) with its members'
test metrics and the draw's Bayes reference (`sweep_record`); `aggregate`
groups records of like runs only (same protocol, mode, model, K and L) into
mean ± std rows; `plot_sweep` draws test accuracy against K or L with error
bars and the paper's numbers. experiments/reproduce_layers.py and
reproduce_data_size.py write layers.png / data_size.png with it, and
notebooks/03_paper_figures.ipynb draws its live sweep with it.
`plot_image_context` draws one in-context image classification problem with
each model's prediction (experiments/reproduce_images.py, notebook 04).

References: arXiv:2405.17248 (the paper's layer and training-set tables).
"""

from typing import Any

import numpy as np

# The paper's numbers (authors' one draw, mean over 5 seeds, 5000 epochs):
# test accuracy / NLL for K = 1..6 at L = 2048, and accuracy against L at K = 2.
PAPER_LAYERS = {
    "gd": {"accuracy": [0.702, 0.718, 0.729, 0.731, 0.728, 0.727],
           "nll": [1.058, 0.971, 0.943, 0.924, 0.916, 0.921]},
    "trained_tf": {"accuracy": [0.575, 0.524, 0.474, 0.480, 0.481, 0.483],
                   "nll": [1.520, 1.743, 1.848, 1.847, 1.845, 1.838]},
}
PAPER_DATA_SIZE = {
    "L": [2048, 4096, 8192, 12288, 16384, 20480, 24576, 32768],
    "gd": [0.718, 0.723, 0.718, 0.723, 0.722, 0.724, 0.719, 0.727],
    "trained_tf": [0.524, 0.609, 0.670, 0.687, 0.700, 0.704, 0.712, 0.720],
}
MODEL_LABEL = {"gd": "GD", "trained_tf": "Trained TF"}
_COLORS = {"gd": "tab:blue", "trained_tf": "tab:red"}


# How a sweep point's runs differ: one init seed on each of several data
# draws, several init seeds on one draw, or several on the authors' own draw.
SWEEP_MODES = ("draws", "seeds", "authors")


def sweep_record(results: dict[str, Any], *, mode: str, model: str, k: int,
                 l: int, data_seed: int, protocol: str, epochs: int,
                 learning_rate: float, wall_s: float = 0.0) -> dict[str, Any]:
  """One run of a sweep from a model's results (gdattn.train results)."""
  if mode not in SWEEP_MODES:
    raise ValueError(f"mode must be one of {SWEEP_MODES}, got {mode!r}")
  return {"mode": mode, "model": model, "K": k, "L": l,
          "data_seed": data_seed, "protocol": protocol, "epochs": epochs,
          "learning_rate": learning_rate, "members": results["members"],
          "bayes": results["bayes"], "wall_s": wall_s}


def aggregate(records: dict[str, dict[str, Any]], xkey: str
              ) -> list[dict[str, Any]]:
  """Like runs (protocol, mode, model, K, L) -> mean/std of test metrics.

  draws mode: statistics over draws (each draw: the mean over its members);
  seeds and authors modes: statistics over the members of the one draw. Runs of
  different protocols or modes are never pooled.
  """
  if xkey not in ("K", "L"):
    raise ValueError(f"xkey must be 'K' or 'L', got {xkey!r}")
  groups = {}
  for r in records.values():
    if "error" in r:
      continue
    groups.setdefault((r["protocol"], r["mode"], r["model"], r["K"], r["L"]),
                      []).append(r)
  rows = []
  for (protocol, mode, model, k, l), rs in sorted(groups.items()):
    if mode == "draws":
      units = [(np.mean([m["test_accuracy"] for m in r["members"]]),
                np.mean([m["test_nll"] for m in r["members"]]),
                r["bayes"]["bayes_max_prob"]) for r in rs]
    else:
      units = [(m["test_accuracy"], m["test_nll"], r["bayes"]["bayes_max_prob"])
               for r in rs for m in r["members"]]
    acc, nll, bayes = (np.asarray(u) for u in zip(*units))
    rows.append({
        "protocol": protocol, "mode": mode, "model": model,
        "x": k if xkey == "K" else l, "K": k, "L": l, "n": len(units),
        "acc_units": acc.tolist(), "acc_mean": acc.mean(),
        "acc_std": acc.std(), "nll_mean": nll.mean(), "nll_std": nll.std(),
        "rel_mean": (acc / bayes).mean(), "rel_std": (acc / bayes).std(),
        "bayes_mean": bayes.mean(), "bayes_std": bayes.std(),
        "draws": sorted({r["data_seed"] for r in rs}),
        "epochs": rs[0]["epochs"],
        "lr": sorted({r["learning_rate"] for r in rs}),
        "best_epochs": sorted({m["best_epoch"] for r in rs
                               for m in r["members"]}),
        # None when a run's time is unknown (a run added from elsewhere).
        "wall_s": (None if any(run_seconds(r)[0] is None for r in rs)
                   else sum(run_seconds(r)[0] for r in rs)),
        "wall_is_lower_bound": any(run_seconds(r)[1] for r in rs),
    })
  return rows


def run_seconds(record: dict[str, Any]) -> tuple[float | None, bool]:
  """(seconds, is a lower bound) of one sweep record's training.

  The training loop's own total over every resumed part ("train_s", from
  the metrics log) where it is known; else the sweep's wall time of the
  call ("wall_s"), which for a resumed run covers its last part only.
  """
  if record.get("train_s") is not None:
    return record["train_s"], False
  wall = record.get("wall_s", 0.0)
  return wall, wall is not None and record.get("resumed", False)


def paper_value(model: str, xkey: str, x: int, metric: str = "accuracy",
                k: int | None = None, l: int | None = None) -> float | None:
  """The paper's number at this point (None where it reports none)."""
  if (xkey == "K" and l != 2048) or (xkey == "L" and k != 2):
    return None
  if xkey == "K":
    vals = PAPER_LAYERS.get(model, {}).get(metric, [])
    return vals[x - 1] if 1 <= x <= len(vals) else None
  if metric != "accuracy" or x not in PAPER_DATA_SIZE["L"] or (
      model not in PAPER_DATA_SIZE):
    return None
  return PAPER_DATA_SIZE[model][PAPER_DATA_SIZE["L"].index(x)]


def headline_series(rows: list[dict[str, Any]]
                    ) -> dict[str, list[dict[str, Any]]]:
  """Per model, the rows of the one series the figure draws.

  Preference: authors mode (the paper's own draw, so the one series that
  compares with its numbers point for point) when it covers as many x values
  as any other series of the model, then draws mode (its error bars are the
  spread over draws), then the protocol covering the most x values, then the
  most epochs. A series holds runs at one value of the coordinate that is
  not swept (K of an L sweep, L of a K sweep). A series of a single x value
  is not drawn (it stays in the tables).
  """
  series = {}
  for r in rows:
    fixed = tuple(None if v == r["x"] else v for v in (r["K"], r["L"]))
    series.setdefault((r["model"], r["mode"], r["protocol"], fixed),
                      []).append(r)
  longest = {}
  for (model, *_), rs in series.items():
    longest[model] = max(longest.get(model, 0), len(rs))
  best = {}
  for (model, mode, *_), rs in series.items():
    if len(rs) < 2:
      continue
    full_authors = mode == "authors" and len(rs) == longest[model]
    score = (full_authors, mode == "draws", len(rs), rs[0]["epochs"])
    if model not in best or score > best[model][0]:
      best[model] = (score, sorted(rs, key=lambda r: r["x"]))
  return {model: rs for model, (_, rs) in sorted(best.items())}


def span(values: list[int]) -> str:
  """'3' for [3, 3], '2-5' for [5, 2, 2]: a legend's count of seeds or draws."""
  lo, hi = min(values), max(values)
  return str(lo) if lo == hi else f"{lo}-{hi}"


def _plot_paper(ax: Any, model: str, xs: Any, ys: Any) -> None:
  """The paper's numbers of one model: dotted, stars, one legend text."""
  ax.plot(xs, ys, ls=":", marker="*", ms=11, color=_COLORS.get(model),
          markeredgecolor="k",
          label=f"{MODEL_LABEL.get(model, model)}, paper: 5000 epochs,"
          " 5 seeds")


def plot_sweep(rows: list[dict[str, Any]], xkey: str, path: str | None = None,
               title: str = "", ax: Any = None) -> Any:
  """Test accuracy against K or L: ours (mean ± std) and the paper's stars.

  One series per model (`headline_series`); the legend sits below the axes.
  Saves a PNG when `path` is given; returns the matplotlib Figure.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  if path is not None and ax is None:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  if ax is None:
    fig, ax = plt.subplots(figsize=(7, 5))
  else:
    fig = ax.figure
  shown = headline_series(rows)
  for model, rs in shown.items():
    color = _COLORS.get(model)
    unit = "draw" if rs[0]["mode"] == "draws" else "seed"
    ns = span([r["n"] for r in rs])
    unit += "" if ns == "1" else "s"
    ax.errorbar([r["x"] for r in rs], [r["acc_mean"] for r in rs],
                yerr=[r["acc_std"] for r in rs], color=color, marker="o",
                ms=5, capsize=3,
                label=f"{MODEL_LABEL.get(model, model)}, ours"
                + (f" (K = {rs[0]['K']})" if xkey == "L" else "")
                + f": {rs[0]['epochs']} epochs, mean ± std over {ns} {unit}"
                + (", authors' draw" if rs[0]["mode"] == "authors" else ""))
  for model in shown:
    if model not in PAPER_LAYERS:
      continue
    if xkey == "K":
      px, py = np.arange(1, 7), PAPER_LAYERS[model]["accuracy"]
    else:
      px, py = PAPER_DATA_SIZE["L"], PAPER_DATA_SIZE[model]
    _plot_paper(ax, model, px, py)
  if xkey == "L":
    ax.set_xscale("log", base=2)
  else:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("K (layers = GD steps)" if xkey == "K"
                else "L (training contexts)")
  ax.set_ylabel("test accuracy (at the best validation NLL)")
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14),
            ncol=1, frameon=False)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
    plt.close(fig)
  return fig


def plot_against_paper(series: dict[str, list[dict[str, Any]]],
                       labels: dict[str, str], path: str | None = None,
                       title: str = "") -> Any:
  """Test accuracy and NLL against K: ours (mean ± std) beside the paper's
  table (stars), one panel per metric.

  Args:
    series: per model, `aggregate` rows of a K sweep, one per K (the caller
      chooses them, e.g. the runs on the authors' draw).
    labels: per model, the legend text of our series (what it was run with).
    path: where to save the PNG, if given.
    title: the figure's title.

  Returns:
    The matplotlib Figure.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  if path is not None:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  if not series or any(not rs for rs in series.values()):
    raise ValueError(f"series: at least one row per model, got {series!r}")
  if set(labels) != set(series):
    raise ValueError(f"labels: one per model of series {sorted(series)},"
                     f" got {sorted(labels)}")
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
  for ax, metric, name in zip(axes, ("acc", "nll"), ("accuracy", "nll")):
    for model, rs in series.items():
      rs = sorted(rs, key=lambda r: r["K"])
      color = _COLORS.get(model)
      ax.errorbar([r["K"] for r in rs], [r[f"{metric}_mean"] for r in rs],
                  yerr=[r[f"{metric}_std"] for r in rs], color=color,
                  marker="o", ms=5, capsize=3, label=labels[model])
      paper = PAPER_LAYERS.get(model, {}).get(name)
      if paper:
        _plot_paper(ax, model, np.arange(1, len(paper) + 1), paper)
    ax.set_xlabel("K (layers = GD steps)")
    ax.set_ylabel(f"test {'accuracy' if metric == 'acc' else 'NLL'}"
                  " (at the best validation NLL)")
    ax.set_xticks(range(1, max([6] + [r["K"] for rs in series.values()
                                        for r in rs]) + 1))
    ax.grid(alpha=0.3)
  handles, texts = axes[0].get_legend_handles_labels()
  fig.legend(handles, texts, fontsize=8, loc="lower center", ncol=2,
             frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.14, 1, 1))
  if path is not None:
    fig.savefig(path, dpi=120)
    plt.close(fig)
  return fig


def plot_image_context(images_ctx: np.ndarray, y_ctx: np.ndarray,
                       query_image: np.ndarray, y_query: int,
                       probs: dict[str, np.ndarray],
                       label_names: list[str] | None = None,
                       path: str | None = None, title: str = "") -> Any:
  """One in-context image classification problem and every model's answer.

  Left, the context: one row per label 0..W-1 (labels are a fresh random
  assignment in each context) holding its S images. Right, the query image
  with its true label, and below it each model's predicted probability of
  every label.

  Args:
    images_ctx: [N, H, W] or [N, H, W, Ch] images of the context points.
    y_ctx: [N] labels in 0..W-1.
    query_image: [H, W(, Ch)] the query image.
    y_query: its label.
    probs: model or baseline name -> [W] predicted probabilities.
    label_names: W names of the classes behind labels 0..W-1 (for titles).
    path: saves a PNG when given.
    title: the figure's title.

  Returns:
    The matplotlib Figure.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  if path is not None:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  images_ctx, y_ctx = np.asarray(images_ctx), np.asarray(y_ctx)
  if images_ctx.ndim not in (3, 4) or images_ctx.shape[0] != y_ctx.shape[0]:
    raise ValueError(f"images_ctx: expected [N={y_ctx.shape[0]}, H, W(, Ch)]"
                     f" images, got shape {images_ctx.shape}.")
  ways = int(y_ctx.max()) + 1
  columns = [np.flatnonzero(y_ctx == j) for j in range(ways)]
  shots = max(len(c) for c in columns)
  for name, p in probs.items():
    if np.shape(p) != (ways,):
      raise ValueError(f"probs[{name!r}]: expected shape ({ways},), got "
                       f"{np.shape(p)}.")
  names = label_names or [str(j) for j in range(ways)]
  cmap = "gray_r" if images_ctx.ndim == 3 else None

  fig = plt.figure(figsize=(0.9 * shots + 5.2, max(0.95 * ways, 4.4) + 0.6))
  outer = fig.add_gridspec(1, 2, width_ratios=[0.9 * shots, 4.6], wspace=0.25)
  grid = outer[0].subgridspec(ways, shots, wspace=0.05, hspace=0.08)
  for j, idx in enumerate(columns):
    for i in range(shots):
      ax = fig.add_subplot(grid[j, i])
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if i < len(idx):
        ax.imshow(images_ctx[idx[i]], cmap=cmap)
      if i == 0:
        ax.set_ylabel(f"label {j}\n{names[j]}", fontsize=8, rotation=0,
                      ha="right", va="center")
  right = outer[1].subgridspec(2, 1, height_ratios=[1, 1.6], hspace=0.35)
  ax = fig.add_subplot(right[0])
  ax.imshow(np.asarray(query_image), cmap=cmap)
  ax.set_axis_off()
  ax.set_title(f"query: label {int(y_query)} ({names[int(y_query)]})",
               fontsize=9)
  ax = fig.add_subplot(right[1])
  width = 0.8 / max(len(probs), 1)
  for m, (name, p) in enumerate(probs.items()):
    pred = int(np.argmax(p))
    ax.bar(np.arange(ways) + (m - (len(probs) - 1) / 2) * width, p, width,
           label=f"{name} ({'right' if pred == int(y_query) else 'wrong'})",
           color=f"C{m}")
  ax.axvspan(int(y_query) - 0.45, int(y_query) + 0.45, color="0.9", zorder=0)
  ax.set(xticks=range(ways), xlabel="label", ylabel="predicted probability",
         ylim=(0, 1))
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3),
            frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  if path is not None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
  return fig
