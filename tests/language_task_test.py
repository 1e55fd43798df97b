"""The language task end to end on a small folder corpus."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gdattn import lm
from gdattn.tasks import language

TASK = language.TASK


def _data_cfg(tmp_path, **kw):
  for i in range(6):
    (tmp_path / f"d{i}.txt").write_text(("the quick brown fox %d. " % i) * 40)
  base = dict(corpus="folder", data_dir=str(tmp_path), context_length=16,
              num_val=4, num_test=3, steps_per_epoch=2)
  base.update(kw)
  return language.LanguageDataConfig(**base)


MODEL_CFG = lm.LMConfig(model_dim=8, num_heads=2, num_layers=2)


def test_datasets_model_loss_metrics(tmp_path):
  data_cfg = _data_cfg(tmp_path)
  TASK.validate(data_cfg, MODEL_CFG)
  ds = TASK.make_datasets(data_cfg)
  assert ds.train is None and ds.steps_per_epoch == 2
  assert set(ds.evals) == {"val", "test"}
  assert ds.evals["val"]["inputs"].shape == (4, 16)
  batch = jax.jit(ds.sample_train, static_argnums=1)(jax.random.key(0), 5)
  assert batch["inputs"].shape == (5, 16) and batch["inputs"].dtype == jnp.int32
  info = ds.info
  assert info["vocab_size"] == len(set("the quick brown fox 012345.\n"))
  for name in TASK.model_names:
    model = TASK.make_model(name, MODEL_CFG, info, nnx.Rngs(0))
    loss = nnx.jit(TASK.loss)(model, batch)
    # At init the model is close to uniform over the vocabulary.
    assert abs(float(loss) - math.log(info["vocab_size"])) < 0.5
  nll = TASK.predict(model, ds.evals["val"])
  assert nll.shape == (4, 16)
  m = TASK.metrics(nll, ds.evals["val"])
  np.testing.assert_allclose(m["perplexity"], np.exp(m["nll"]), rtol=1e-6)
  # Character level: one char per token, so bpc = nll / ln 2.
  np.testing.assert_allclose(m["bpc"], m["nll"] / math.log(2), rtol=1e-6)
  s = TASK.summary(ds)
  assert 0 < s["unigram_nll"] < math.log(info["vocab_size"])
  assert s["chars_per_token"] == pytest.approx(1.0)


def test_bpe_bits_per_byte(tmp_path):
  ds = TASK.make_datasets(_data_cfg(tmp_path, tokenizer="bpe", vocab_size=300,
                                    cache_dir=str(tmp_path / "cache")))
  assert ds.info["chars_per_token"]["train"] > 1.5
  val = ds.evals["val"]
  nll = jnp.ones(val["targets"].shape)
  bpc = TASK.metrics(nll, val)["bpc"]
  np.testing.assert_allclose(bpc, nll.size / math.log(2) / val["num_chars"].sum(), rtol=1e-6)
  assert float(bpc) < 1.0 / math.log(2)


@pytest.mark.parametrize("field,value", [
    ("tokenizer", "word"), ("context_length", 0), ("corpus", "web"),
    ("num_val", 0)])
def test_validate_names_data_field(tmp_path, field, value):
  cfg = dataclasses.replace(_data_cfg(tmp_path), **{field: value})
  with pytest.raises(ValueError, match=f"config.data.{field}"):
    TASK.validate(cfg, MODEL_CFG)


def test_validate_names_model_field(tmp_path):
  with pytest.raises(ValueError, match="config.model.kernel"):
    TASK.validate(_data_cfg(tmp_path), dataclasses.replace(MODEL_CFG, kernel="rbf"))


def test_smoke_config_trains_through_the_engine_and_samples(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from gdattn import sampling  # pylint: disable=g-import-not-at-top
  from gdattn import train  # pylint: disable=g-import-not-at-top
  from gdattn.configs import language  # pylint: disable=g-import-not-at-top
  c = language.get_config("smoke")
  c.models = ("gd_lm",)
  train.train(c, str(tmp_path))
  run = train.load(str(tmp_path))  # what experiments.sample does
  res = run.results["gd_lm"]["members"][0]
  vocab = run.datasets.info["vocab_size"]
  assert res["test_nll"] < np.log(vocab) - 0.3  # learnt beyond uniform
  tokens, _ = sampling.generate(run.models["gd_lm"].model(0),
                                jax.random.key(0), np.zeros((1, 2), np.int32), 5)
  assert tokens.shape == (1, 7) and tokens.max() < vocab
