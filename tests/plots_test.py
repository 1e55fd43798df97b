"""The figures: sweeps of like runs only, one series per model, a clean legend; one image context."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gdattn import plots  # noqa: E402


def _record(model, k, seed, acc, protocol="e150", mode="draws", epochs=150):
  return plots.sweep_record(
      {"members": [{"test_accuracy": acc, "test_nll": 1.0, "best_epoch": 10}],
       "bayes": {"bayes_max_prob": 0.75}},
      mode=mode, model=model, k=k, l=2048, data_seed=seed, protocol=protocol,
      epochs=epochs, learning_rate=0.01)


def _records():
  recs = [_record("gd", k, s, 0.6 + 0.01 * k + 0.01 * s)
          for k in (1, 2, 3) for s in (0, 1)]
  recs.append(_record("gd", 1, 0, 0.1, protocol="e10", epochs=10))  # unlike
  recs += [_record("trained_tf", k, 0, 0.5) for k in (1, 2)]
  recs.append(_record("trained_tf", 3, 0, 0.2, protocol="e5", epochs=5))
  return {str(i): r for i, r in enumerate(recs)}


def test_aggregate_never_pools_unlike_runs():
  rows = plots.aggregate(_records(), "K")
  gd_k1 = [r for r in rows if r["model"] == "gd" and r["K"] == 1]
  assert sorted((r["protocol"], r["n"]) for r in gd_k1) == [("e10", 1),
                                                          ("e150", 2)]
  e150 = next(r for r in gd_k1 if r["protocol"] == "e150")
  assert e150["acc_mean"] == pytest.approx(0.615)


def test_headline_series_drops_single_points_and_short_protocols():
  shown = plots.headline_series(plots.aggregate(_records(), "K"))
  assert [r["x"] for r in shown["gd"]] == [1, 2, 3]
  assert {r["protocol"] for r in shown["gd"]} == {"e150"}
  assert [r["x"] for r in shown["trained_tf"]] == [1, 2]  # not the e5 point


def test_authors_mode_pools_members_and_leads_the_figure():
  recs = _records()
  for k in (1, 2):
    r = _record("gd", k, "authors", 0.7, mode="authors", epochs=5000,
                protocol="paper")
    r["members"] = r["members"] * 2  # two init seeds on the one draw
    recs[f"a{k}"] = r
  rows = plots.aggregate(recs, "K")
  authors = [r for r in rows if r["mode"] == "authors"]
  assert [(r["K"], r["n"]) for r in authors] == [(1, 2), (2, 2)]
  # Fewer points than the draws series (K = 1..3): the longer series stays.
  assert {r["mode"] for r in plots.headline_series(rows)["gd"]} == {"draws"}
  r = _record("gd", 3, "authors", 0.7, mode="authors", epochs=5000,
              protocol="paper")
  recs["a3"] = r
  rows = plots.aggregate(recs, "K")
  # As many points: the paper's own draw wins.
  shown = plots.headline_series(rows)
  assert {r["mode"] for r in shown["gd"]} == {"authors"}
  labels = plots.plot_sweep(rows, "K").axes[0].get_legend_handles_labels()[1]
  assert any("authors' draw" in label and len(label) < 70 for label in labels)


def test_sweep_record_refuses_unknown_modes():
  with pytest.raises(ValueError, match="mode must be one of"):
    _record("gd", 1, 0, 0.5, mode="draw")


def test_plot_sweep_labels_ticks_and_legend(tmp_path):
  path = tmp_path / "layers.png"
  fig = plots.plot_sweep(plots.aggregate(_records(), "K"), "K")
  ax = fig.axes[0]
  labels = ax.get_legend_handles_labels()[1]
  assert len(labels) == 4 and all(len(label) < 70 for label in labels)
  assert not any("e150" in label for label in labels)  # no internal tags
  assert "GD, paper: 5000 epochs, 5 seeds" in labels
  assert all(float(t).is_integer() for t in ax.get_xticks())
  assert ax.get_xlabel() and ax.get_ylabel()
  # The legend sits below the axes, off the data.
  fig.canvas.draw()
  legend = ax.get_legend().get_window_extent()
  assert legend.y1 <= ax.get_window_extent().y0
  plots.plot_sweep(plots.aggregate(_records(), "K"), "K", str(path))
  assert path.stat().st_size > 0


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="xkey"):
    plots.aggregate({}, "N")
  with pytest.raises(ValueError, match="mode"):
    _record("gd", 1, 0, 0.5, mode="both")


def test_plot_image_context_draws_and_checks_shapes(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(6, 8, 8))
  y = np.array([0, 1, 2, 0, 1, 2])
  probs = {"GD": np.array([0.2, 0.5, 0.3]), "probe": np.array([0.6, 0.2, 0.2])}
  path = tmp_path / "context.png"
  plots.plot_image_context(images, y, images[0], 1, probs,
                           label_names=["a", "b", "c"], path=str(path))
  assert path.stat().st_size > 0
  with pytest.raises(ValueError, match=r"probs\['GD'\]: expected shape \(3,\)"):
    plots.plot_image_context(images, y, images[0], 1, {"GD": np.ones(5) / 5})
  with pytest.raises(ValueError, match=r"images_ctx: expected \[N=6"):
    plots.plot_image_context(images[:4], y, images[0], 1, probs)


def test_headline_series_never_joins_runs_at_different_fixed_k():
  """An L sweep at K = 1 and at K = 2 under one protocol: two series, and
  the figure draws one of them, labelled with its K."""
  recs = {}
  for k in (1, 2):
    for l in (2048, 4096, 8192):
      r = _record("gd", k, 0, 0.6 + 0.05 * k, protocol="e100")
      r["L"] = l
      recs[f"{k}/{l}"] = r
  rows = plots.aggregate(recs, "L")
  shown = plots.headline_series(rows)["gd"]
  assert [r["x"] for r in shown] == [2048, 4096, 8192]
  assert len({r["K"] for r in shown}) == 1
  labels = plots.plot_sweep(rows, "L").axes[0].get_legend_handles_labels()[1]
  assert any(f"(K = {shown[0]['K']})" in label for label in labels)


def test_run_seconds_prefers_the_logged_total_over_a_resumed_wall_time():
  """(seconds, is a lower bound): the training loop's total over every part
  ("train_s") where logged, else the call's wall time, a lower bound for a
  resumed run."""
  record = {"wall_s": 50.0, "resumed": True}
  assert plots.run_seconds(record) == (50.0, True)
  assert plots.run_seconds({**record, "train_s": 700.0}) == (700.0, False)
  assert plots.run_seconds({"wall_s": 50.0, "resumed": False,
                            "train_s": None}) == (50.0, False)
  assert plots.run_seconds({"wall_s": None, "resumed": True}) == (None, False)


def test_plot_against_paper_draws_both_metrics_with_the_papers_table(tmp_path):
  rows = plots.aggregate(_records(), "K")
  series = {m: [r for r in rows if r["model"] == m and r["protocol"] == "e150"]
            for m in ("gd", "trained_tf")}
  labels = {"gd": "GD, ours", "trained_tf": "Trained TF, ours"}
  path = tmp_path / "table.png"
  fig = plots.plot_against_paper(series, labels, str(path), "title")
  assert path.stat().st_size > 0
  acc, nll = fig.axes
  assert "accuracy" in acc.get_ylabel() and "NLL" in nll.get_ylabel()
  # Ours (error bars) at the rows' K; the paper's 6 stars per model and panel.
  ours = [c for c in acc.containers if hasattr(c, "lines")]
  assert sorted(len(c.lines[0].get_xdata()) for c in ours) == [2, 3]
  stars = [l for l in nll.get_lines() if l.get_marker() == "*"]
  assert [list(l.get_ydata()) for l in stars] == [
      plots.PAPER_LAYERS[m]["nll"] for m in ("gd", "trained_tf")]
  texts = [t.get_text() for t in fig.legends[0].get_texts()]
  assert "GD, ours" in texts and "Trained TF, paper: 5000 epochs, 5 seeds" in texts


def test_plot_against_paper_names_bad_arguments():
  rows = plots.aggregate(_records(), "K")
  with pytest.raises(ValueError, match="series: at least one row per model"):
    plots.plot_against_paper({"gd": []}, {"gd": "GD"})
  with pytest.raises(ValueError, match="labels: one per model"):
    plots.plot_against_paper({"gd": rows[:1]}, {})
