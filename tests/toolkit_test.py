"""experiments.toolkit: packaged variants plus checked overrides; sweep flags."""

import json
import os
import pathlib
import types

from absl import app
import pytest

from experiments import toolkit


@pytest.mark.parametrize("config,dim,context,layers", [
    ("language", 64, 64, 2),  # the module's default variant (demo)
    ("language:demo", 64, 64, 2),
    ("language:smoke", 16, 16, 2),
    ("language:paper", 512, 256, 4),
])
def test_variants(config, dim, context, layers):
  cfg = toolkit.task_config(config)
  assert cfg.task == "language"
  assert cfg.model.model_dim == dim
  assert cfg.data.context_length == context
  assert cfg.model.num_layers == layers
  assert not cfg.train.progress  # bars off unless asked for


def test_other_task_module():
  cfg = toolkit.task_config("synthetic:demo,layers=2")
  assert cfg.task == "synthetic"
  assert cfg.model.num_layers == 2


def test_overrides_are_applied():
  cfg = toolkit.task_config(
      "language:smoke", models=("gpt",), num_seeds=3, seed=7,
      data=dict(context_length=32, num_val=4),
      model=dict(num_layers=3, mlp=True),
      optim=dict(learning_rate=5e-4),
      optim_overrides=dict(gpt=dict(learning_rate=1e-3)),
      train=dict(num_epochs=1, progress=True))
  assert cfg.models == ("gpt",)
  assert (cfg.num_seeds, cfg.seed) == (3, 7)
  assert (cfg.data.context_length, cfg.data.num_val) == (32, 4)
  assert (cfg.model.num_layers, cfg.model.mlp) == (3, True)
  assert cfg.optim.learning_rate == 5e-4
  assert cfg.optim_overrides == {"gpt": {"learning_rate": 1e-3}}
  assert cfg.train.num_epochs == 1
  assert cfg.train.progress
  # Fields not overridden keep the variant's values.
  assert cfg.model.model_dim == toolkit.task_config(
      "language:smoke").model.model_dim


def test_overrides_do_not_leak_between_calls():
  toolkit.task_config("language:smoke", model=dict(num_layers=5))
  assert toolkit.task_config("language:smoke").model.num_layers == 2


@pytest.mark.parametrize("overrides,error,match", [
    (dict(num_seed=3), ValueError, r"config: unknown field 'num_seed'"),
    (dict(model=dict(bogus=1)), ValueError,
     r"config\.model: unknown field 'bogus'"),
    (dict(train=dict(num_epoch=3)), ValueError,
     r"config\.train: unknown field 'num_epoch'.*'num_epochs'"),
    (dict(data=5), TypeError, r"config\.data is a section.*got 5"),
    (dict(model=dict(num_layers=dict(a=1))), TypeError,
     r"config\.model\.num_layers is a field, not a section"),
    (dict(model=dict(num_layers="two")), TypeError,
     r"config\.model\.num_layers"),
    (dict(model=dict(num_layers=0)), ValueError,
     r"config\.model\.num_layers must be a positive int, got 0"),
])
def test_bad_override_names_the_field(overrides, error, match):
  with pytest.raises(error, match=match):
    toolkit.task_config("language:smoke", **overrides)


@pytest.mark.parametrize("config,match", [
    ("language:tiny", r"config 'language:tiny': bad variant 'tiny'"),
    ("nosuch", r"gdattn\.configs, got 'nosuch'"),
    ("nosuch:smoke", r"got 'nosuch:smoke'"),
    (":smoke", r"got ':smoke'"),
    ("", r"got ''"),
])
def test_bad_config_names_it(config, match):
  with pytest.raises(ValueError, match=match):
    toolkit.task_config(config)


def test_protocol_tag_names_a_non_paper_microbatch():
  assert toolkit.protocol_tag(5000, 100, None, None, None, "gd") == "paper"
  # The paper config's own microbatch (64) leaves the tag unchanged.
  assert (toolkit.protocol_tag(5000, 100, None, None, None, "trained_tf", 64)
          == "paper")
  assert (toolkit.protocol_tag(500, 25, None, 5e-3, 10, "trained_tf", 8)
          == "e500_ev25_lr0.005_pat10_mb8")
  assert (toolkit.protocol_tag(5000, 100, None, None, None, "trained_tf", 8)
          == "e5000_ev100_lrpaper_mb8")


def test_protocol_tag_names_a_non_default_token_layout():
  # The config's own layout ("exact") and GD leave the tag unchanged.
  assert (toolkit.protocol_tag(5000, 100, None, None, None, "trained_tf",
                               None, "exact") == "paper")
  assert (toolkit.protocol_tag(5000, 100, None, None, None, "gd", None,
                               "paper") == "paper")
  assert (toolkit.protocol_tag(5000, 100, None, None, None, "trained_tf",
                               None, "paper") == "e5000_ev100_lrpaper_layoutpaper")
  assert (toolkit.protocol_tag(300, 25, None, 5e-3, 4, "trained_tf", 8, "paper")
          == "e300_ev25_lr0.005_pat4_mb8_layoutpaper")


def test_sweep_run_trains_the_token_layout_it_is_given(tmp_path, monkeypatch):
  seen = []

  def fake_train(cfg, workdir):
    seen.append(cfg.model.trained_tf.token_layout)
    members = [{"seed": 0, "test_accuracy": 0.5, "test_nll": 1.5}]
    res = {"members": members, "epochs_run": 1, "stopped_early": False,
           "num_params": 1, "bayes": {"bayes_max_prob": 0.8}}
    return types.SimpleNamespace(results={cfg.models[0]: res})

  monkeypatch.setattr(toolkit.train, "train", fake_train)
  kw = dict(name="layers", mode="authors", model="trained_tf", num_layers=2,
            num_train=2048, data_seed="authors", num_seeds=1, epochs=3,
            eval_every=1, gd_lr=None, tf_lr=None, patience=None,
            runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path),
            command="c")
  for layout in (None, "paper"):
    toolkit.run_one(token_layout=layout, **kw)
  records = json.loads((tmp_path / "layers.json").read_text())
  assert seen == ["exact", "paper"]
  assert {k: r["token_layout"] for k, r in records.items()} == {
      "authors/trained_tf/K2/L2048/drawauthors/e3_ev1_lrpaper": "exact",
      "authors/trained_tf/K2/L2048/drawauthors/e3_ev1_lrpaper_layoutpaper":
          "paper"}


def test_sweep_checks_tf_microbatch_before_training(tmp_path):
  value = lambda v: types.SimpleNamespace(value=v)
  f = types.SimpleNamespace(
      xs=value(["1"]), models=value(["trained_tf"]), modes=value(["authors"]),
      tf_microbatch=value(7), cpu_devices=value(None),
      results_dir=value(str(tmp_path)),
      add_workdirs=value([]), report_only=value(False))
  with pytest.raises(app.UsageError,
                     match=r"--tf_microbatch: .*microbatch_size.*512.*7"):
    toolkit.sweep(f, "layers", "K", None, 2048, "title", "header")
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("devices", [0, 3])
def test_sweep_checks_cpu_devices_before_training(tmp_path, devices):
  value = lambda v: types.SimpleNamespace(value=v)
  f = types.SimpleNamespace(
      xs=value(["1"]), models=value(["gd", "trained_tf"]),
      modes=value(["authors"]), tf_microbatch=value(8),
      cpu_devices=value(devices), results_dir=value(str(tmp_path)),
      add_workdirs=value([]), report_only=value(False))
  with pytest.raises(app.UsageError, match=r"--cpu_devices: expected an int"
                     r" >= 1 that divides the microbatches \{'gd': 64,"
                     rf" 'trained_tf': 8\}}, got {devices}"):
    toolkit.sweep(f, "layers", "K", None, 2048, "title", "header")
  assert not list(tmp_path.iterdir())


def test_rerun_of_a_finished_sweep_run_keeps_its_training_record(
    tmp_path, monkeypatch):
  """Re-running a sweep reloads finished runs; their records keep the wall
  time, finish time and command of the training, not the reload's."""
  calls = []

  def fake_train(cfg, workdir):
    calls.append(workdir)
    os.makedirs(workdir, exist_ok=True)
    (pathlib.Path(workdir) / "results.json").write_text("{}")
    members = [{"seed": 0, "test_accuracy": 0.7, "test_nll": 1.0}]
    res = {"members": members, "epochs_run": cfg.train.num_epochs,
           "stopped_early": False, "num_params": 131,
           "bayes": {"bayes_max_prob": 0.8}}
    return types.SimpleNamespace(results={cfg.models[0]: res})

  monkeypatch.setattr(toolkit.train, "train", fake_train)
  kw = dict(name="layers", mode="authors", model="gd", num_layers=1,
            num_train=2048, data_seed="authors", num_seeds=1, epochs=3,
            eval_every=1, gd_lr=None, tf_lr=None, patience=None,
            runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path))
  first = toolkit.run_one(command="first", **kw)
  path = tmp_path / "layers.json"
  data = json.loads(path.read_text())
  key = "authors/gd/K1/L2048/drawauthors/e3_ev1_lrpaper"
  data[key]["wall_s"] = 1234.5  # as if training had taken that long
  path.write_text(json.dumps(data))
  second = toolkit.run_one(command="second", **kw)
  assert len(calls) == 2 and first["command"] == "first"
  assert (second["wall_s"], second["finished"], second["command"]) == (
      1234.5, first["finished"], "first")
  assert json.loads(path.read_text())[key]["wall_s"] == 1234.5


def test_a_resumed_runs_time_is_its_logged_total_or_a_lower_bound(
    tmp_path, monkeypatch, capsys):
  """Both tables, and the line the sweep prints after each run, give a run
  trained in one go as 'N', a resumed run with the training loop's logged
  total over its parts as that total, and one resumed without it (its
  record holds its last part's time) as '≥ N'."""

  def fake_train(cfg, workdir):
    os.makedirs(workdir, exist_ok=True)
    members = [{"seed": 0, "test_accuracy": 0.7, "test_nll": 1.0,
                "best_epoch": 1}]
    res = {"members": members, "epochs_run": cfg.train.num_epochs,
           "stopped_early": False, "num_params": 131,
           "bayes": {"bayes_max_prob": 0.8}}
    return types.SimpleNamespace(results={cfg.models[0]: res})

  monkeypatch.setattr(toolkit.train, "train", fake_train)
  runs = tmp_path / "runs"
  kw = dict(name="layers", mode="authors", model="gd", data_seed="authors",
            num_train=2048, num_seeds=1, epochs=3, eval_every=1, gd_lr=None,
            tf_lr=None, patience=None, runs_dir=str(runs),
            results_dir=str(tmp_path), command="c")
  # K = 2's and K = 3's workdirs already have checkpoints: resumed runs; K = 3
  # logged the training loop's total over its parts (train.ELAPSED).
  for k in (2, 3):
    os.makedirs(runs / "layers" / f"authors_gd_K{k}_L2048_drawauthors_e3_ev1_lrpaper"
                / "gd" / "checkpoints")
  (runs / "layers" / "authors_gd_K3_L2048_drawauthors_e3_ev1_lrpaper" / "gd"
   / "metrics.jsonl").write_text(json.dumps(
       {"step": 3, "split": "train_loss", "nll": 1.0, "elapsed_s": 700.0}) + "\n")
  fresh = toolkit.run_one(num_layers=1, **kw)
  resumed = toolkit.run_one(num_layers=2, **kw)
  logged = toolkit.run_one(num_layers=3, **kw)
  printed = [line for line in capsys.readouterr().out.splitlines()
             if "test acc" in line]
  assert len(printed) == 3, printed
  assert printed[0].endswith(" 0 s in training"), printed[0]
  assert printed[1].endswith("≥ 0 s in training"), printed[1]
  assert printed[2].endswith(" 700 s in training"), printed[2]
  assert (fresh["resumed"], resumed["resumed"], logged["resumed"]) == (
      False, True, True)
  assert (resumed["train_s"], logged["train_s"]) == (None, 700.0)
  records = json.loads((tmp_path / "layers.json").read_text())
  for r in records.values():
    r["wall_s"] = 100.0
  summary = toolkit.summary_table(toolkit.aggregate(records, "K"), "K")
  per_run = toolkit.per_run_table(records, "K")
  rows = [line for line in summary.splitlines() if line.startswith("| GD |")]
  rows += [line for line in per_run.splitlines() if line.startswith("| `")]
  assert len(rows) == 6  # K = 1, 2, 3 in each table, in that order
  for k1, k2, k3 in (rows[:3], rows[3:]):
    assert k1.endswith("| 100 |") and k2.endswith("| ≥ 100 |"), (k1, k2)
    assert k3.endswith("| 700 |"), k3



def test_authors_draw_series_is_the_papers_table_on_their_draw(tmp_path):
  """GD at the paper's protocol; the Trained TF at the 500-epoch budget in
  the authors' layout (our layout only at K = 1, where they are one model);
  runs differing only in how they were computed join; draws mode is left
  out. authors_draw.png is written from them."""
  def rec(model, k, protocol, n, mode="authors", layout=None, epochs=500):
    r = {"mode": mode, "model": model, "K": k, "L": 2048, "protocol": protocol,
         "data_seed": "authors", "epochs": epochs, "learning_rate": 0.005,
         "bayes": {"bayes_max_prob": 0.8},
         "members": [{"seed": s, "test_accuracy": 0.5, "test_nll": 1.8,
                      "best_epoch": 50} for s in range(n)]}
    return {**r, **({} if layout is None else {"token_layout": layout})}

  records = {
      "gd1": rec("gd", 1, "paper", 5, epochs=5000),
      "gd2": rec("gd", 2, "paper", 2, epochs=5000),
      "gd2_short": rec("gd", 2, "e100_ev10_lr0.01", 2, epochs=100),
      "gd_draws": rec("gd", 3, "paper", 1, mode="draws", epochs=5000),
      "tf1": rec("trained_tf", 1, "e500_mb8", 3),
      "tf2_ours": rec("trained_tf", 2, "e500_mb8", 3),
      "tf2": rec("trained_tf", 2, "e500_mb8_layoutpaper", 3, layout="paper"),
      "tf4": rec("trained_tf", 4, "e500_mb8_layoutpaper_dev2", 3, layout="paper"),
      "tf4_one": rec("trained_tf", 4, "e500_mb8_layoutpaper", 1, layout="paper"),
      "tf5_short": rec("trained_tf", 5, "e60_layoutpaper", 3, layout="paper",
                       epochs=60),
  }
  series = toolkit.authors_draw_series(records)
  assert {m: [(r["K"], r["protocol"]) for r in rs] for m, rs in series.items()} == {
      "gd": [(1, "paper"), (2, "paper")],
      "trained_tf": [(1, "e500_mb8"), (2, "e500_mb8_layoutpaper"),
                     (4, "e500_mb8_layoutpaper_dev2")]}
  (tmp_path / "layers.json").write_text(json.dumps(records))
  path = toolkit.write_authors_draw_figure(str(tmp_path))
  assert path == str(tmp_path / "authors_draw.png") and os.path.getsize(path) > 0
  (tmp_path / "layers.json").write_text(json.dumps({"gd_draws": records["gd_draws"]}))
  os.remove(path)
  assert toolkit.write_authors_draw_figure(str(tmp_path)) is None
  assert not os.path.exists(path)
