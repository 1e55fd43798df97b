"""The authors'-code benchmark's own logic, without the authors' code.

The stubs and patches of experiments/authors_driver.py on fake modules, and
the flag checks of experiments/bench_authors.py. Nothing here needs the
authors' environment.
"""

import datetime
import importlib
import os
import subprocess
import sys
import types

import pytest

from experiments import authors_driver
from experiments import bench_authors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stubs_import_like_packages(monkeypatch):
  names = ("fake_tf_stub", "fake_keras_stub", "fake_keras_stub.apps",
           "fake_keras_stub.apps.vgg")
  for name in names:
    monkeypatch.delitem(sys.modules, name, raising=False)
  made = authors_driver.install_stubs(names)
  try:
    assert sorted(made) == sorted(names)
    # The forms their modules use: from-imports of a submodule's names.
    vgg = importlib.import_module("fake_keras_stub.apps.vgg")
    assert sys.modules["fake_keras_stub"].apps.vgg is vgg
    model = vgg.VGG16(weights="imagenet")   # called, returns None
    assert model is None
    assert vgg.colormaps["Dark2"].name == "fake_keras_stub.apps.vgg.colormaps['Dark2']"
    with pytest.raises(AttributeError):
      getattr(vgg, "__file__")
  finally:
    for name in names:
      sys.modules.pop(name, None)


def test_stubs_keep_real_modules_and_give_pytz_utc():
  modules = {"json": sys.modules["json"]}
  made = authors_driver.install_stubs(("json", "pytz", "tensorflow", "keras"),
                                      modules)
  assert modules["json"] is sys.modules["json"]
  assert sorted(made) == ["keras", "pytz", "tensorflow"]
  assert modules["tensorflow"].keras is modules["keras"]
  zone = modules["pytz"].timezone("CET")
  assert datetime.datetime.now(tz=zone).tzinfo is datetime.timezone.utc


def test_patch_sharding_replaces_only_imported_names():
  uses_both = types.ModuleType("uses_both")
  uses_both.PositionalSharding, uses_both.mesh_utils = object, object()
  uses_none = types.ModuleType("uses_none")
  done = authors_driver.patch_sharding((uses_both, uses_none), lambda: "one")
  assert done == ["uses_both.PositionalSharding", "uses_both.mesh_utils"]
  assert not hasattr(uses_none, "PositionalSharding")
  # Their call pattern: PositionalSharding(create_device_mesh((2, 1))).reshape(2, 1)
  mesh = uses_both.mesh_utils.create_device_mesh((2, 1))
  assert uses_both.PositionalSharding(mesh).reshape(2, 1, 1) == "one"


@pytest.fixture(name="src")
def fake_src(tmp_path):
  (tmp_path / "train.py").write_text("")
  return str(tmp_path)


def test_check_settings_accepts_and_parses(src):
  models, layers = bench_authors.check_settings(
      ["gd", " trained_tf"], ["1", "2"], 3, 2, src, sys.executable)
  assert models == ["gd", "trained_tf"] and layers == [1, 2]


@pytest.mark.parametrize("change, match", [
    (dict(models=["tf"]), "--models"),
    (dict(models=[]), "--models"),
    (dict(layers=["one"]), "--layers"),
    (dict(layers=["0"]), "--layers"),
    (dict(epochs=0), "--epochs"),
    (dict(repeats=0), "--repeats"),
    (dict(authors_src="missing"), "--authors_src"),
    (dict(authors_python="/no/such/python"), "--authors_python"),
    (dict(tf_microbatch=7), "--tf_microbatch must divide the batch of 512, got 7"),
    (dict(tf_microbatch=0), "--tf_microbatch"),
    (dict(cpu_devices=0), "--cpu_devices must be >= 1, got 0"),
    (dict(cpu_devices=3),
     "--cpu_devices must divide gdattn.s gd microbatch of 64, got 3"),
    (dict(cpu_devices=4, tf_microbatch=2),
     "--cpu_devices must divide gdattn.s trained_tf microbatch of 2, got 4"),
])
def test_check_settings_rejects(src, change, match):
  args = dict(models=["gd"], layers=["1"], epochs=1, repeats=1,
              authors_src=src, authors_python=sys.executable)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    bench_authors.check_settings(**args)


def test_bad_flag_is_one_line_without_traceback(src):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench_authors", "--tf_microbatch=7",
       f"--authors_src={src}", f"--authors_python={sys.executable}"],
      capture_output=True, text=True, cwd=ROOT)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      "--tf_microbatch must divide the batch of 512, got 7")
