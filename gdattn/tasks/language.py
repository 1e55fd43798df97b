"""The "language" task: next-token prediction on a text corpus.

Data: gdattn.data.text (default: Shakespeare's plays, character level).
Training batches are fresh random windows drawn on the device; validation and
test are fixed windows. Models: gdattn.lm ("gd_lm", "gpt", "hybrid"); the
model config is gdattn.lm.LMConfig, whose vocab_size and context_length are
taken from the data. Metrics per split: nll (= loss, nats per token),
perplexity, and bpc: bits per character for the character tokenizer, bits per
UTF-8 byte for the byte-level tokenizers (the same for ASCII text).
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gdattn import config as config_lib
from gdattn import lm
from gdattn import lm_ops
from gdattn.data import text
from gdattn.tasks.base import Datasets

TOKENIZERS = ("char", "bpe", "gpt2")


@dataclasses.dataclass(frozen=True)
class LanguageDataConfig:
  """config.data for the language task.

  Attributes:
    corpus: "shakespeare", "folder" (data_dir of .txt files) or "tfds:<name>".
    data_dir: folder for "folder" / TFDS data_dir ("" = default).
    tokenizer: "char", "bpe" (trained on the training split) or "gpt2".
    vocab_size: BPE vocabulary size (ignored otherwise).
    context_length: S, tokens per window.
    num_val: fixed validation windows.
    num_test: fixed test windows.
    steps_per_epoch: updates per "epoch" of random windows.
    seed: draws the fixed evaluation windows.
    cache_dir: where the trained BPE is cached ("" = ~/.cache/gdattn).
  """

  corpus: str = "shakespeare"
  data_dir: str = ""
  tokenizer: str = "char"
  vocab_size: int = 2048
  context_length: int = 128
  num_val: int = 256
  num_test: int = 256
  steps_per_epoch: int = 100
  seed: int = 0
  cache_dir: str = ""


class LanguageTask:
  """Next-token language modelling (see the module docstring)."""

  name = "language"
  data_config = LanguageDataConfig
  model_config = lm.LMConfig
  model_names = lm.LM_MODELS
  select_metric = "nll"

  def validate(self, data_cfg: LanguageDataConfig, model_cfg: lm.LMConfig) -> None:
    req, d = config_lib.require, data_cfg
    for name in ("context_length", "num_val", "num_test", "steps_per_epoch",
                 "vocab_size"):
      value = getattr(d, name)
      req(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"data.{name}", "a positive int", value)
    req(d.tokenizer in TOKENIZERS, "data.tokenizer", f"one of {TOKENIZERS}",
        d.tokenizer)
    req(d.tokenizer != "bpe" or d.vocab_size >= 257, "data.vocab_size",
        ">= 257 for bpe", d.vocab_size)
    req(d.corpus in ("shakespeare", "folder")
        or (d.corpus.startswith("tfds:") and len(d.corpus) > 5), "data.corpus",
        "'shakespeare', 'folder' or 'tfds:<name>'", d.corpus)
    req(d.corpus != "folder" or bool(d.data_dir), "data.data_dir",
        "a folder of .txt files when config.data.corpus is 'folder'",
        d.data_dir)
    # vocab_size and context_length come from the data.
    dataclasses.replace(model_cfg, context_length=data_cfg.context_length
                        ).validate("config.model")

  def make_datasets(self, data_cfg: LanguageDataConfig) -> Datasets:
    splits = text.load_corpus(data_cfg.corpus, data_cfg.data_dir or None)
    tokenizer = text.make_tokenizer(
        data_cfg.tokenizer, splits, vocab_size=data_cfg.vocab_size,
        cache_dir=data_cfg.cache_dir or None)
    corpus = text.tokenize_corpus(splits, tokenizer)
    s = data_cfg.context_length
    lengths = corpus.token_lengths
    evals = {}
    for i, (split, num) in enumerate((("val", data_cfg.num_val),
                                      ("test", data_cfg.num_test))):
      inputs, targets = text.fixed_windows(corpus.tokens[split], num, s,
                                           seed=data_cfg.seed + i)
      evals[split] = {"inputs": inputs, "targets": targets,
                      "num_chars": lengths[targets].sum(1).astype(np.float32)}
    train_tokens = jnp.asarray(corpus.tokens["train"])
    text.fixed_windows(corpus.tokens["train"], 1, s)  # raises if too short

    def sample_train(key, batch_size):
      inputs, targets = text.sample_windows(key, train_tokens, batch_size, s)
      return {"inputs": inputs, "targets": targets}

    unigram = text.unigram_entropy(corpus.tokens["train"], corpus.vocab_size)
    chars_per_token = {sp: corpus.num_chars[sp] / max(len(corpus.tokens[sp]), 1)
                       for sp in text.SPLITS}
    info = {
        "vocab_size": corpus.vocab_size, "context_length": s,
        "tokenizer": tokenizer.kind, "corpus": data_cfg.corpus,
        "documents": {sp: len(corpus.documents[sp]) for sp in text.SPLITS},
        "chars": dict(corpus.num_chars),
        "tokens": {sp: int(len(corpus.tokens[sp])) for sp in text.SPLITS},
        "chars_per_token": chars_per_token,
        "unigram_nll": unigram,
        "unigram_bpc": unigram / math.log(2) / chars_per_token["train"],
    }
    return Datasets(evals=evals, sample_train=sample_train,
                    steps_per_epoch=data_cfg.steps_per_epoch, info=info)

  def make_model(self, name: str, model_cfg: lm.LMConfig, info: dict[str, Any],
                 rngs: nnx.Rngs) -> nnx.Module:
    cfg = dataclasses.replace(model_cfg, vocab_size=int(info["vocab_size"]),
                              context_length=int(info["context_length"]))
    return lm.make_lm_model(name, cfg, rngs)

  def predict(self, model: nnx.Module, batch) -> jax.Array:
    """Per-token NLL [B, S] (no vocabulary-sized output is kept)."""
    return lm_ops.token_nll(model.features(batch["inputs"]), model.output_embedding(),
                            batch["targets"], model.cfg.vocab_chunk_size)

  def loss(self, model: nnx.Module, batch) -> jax.Array:
    return jnp.mean(self.predict(model, batch))

  def metrics(self, outputs: jax.Array, data) -> dict[str, jax.Array]:
    nll = jnp.mean(outputs)
    bits = jnp.sum(outputs) / math.log(2)
    return {"nll": nll, "loss": nll, "perplexity": jnp.exp(nll),
            "bpc": bits / jnp.sum(data["num_chars"])}

  def summary(self, datasets: Datasets) -> dict[str, float]:
    info = datasets.info
    return {"unigram_nll": info["unigram_nll"], "unigram_bpc": info["unigram_bpc"],
            "train_tokens": float(info["tokens"]["train"]),
            "train_chars": float(info["chars"]["train"]),
            "chars_per_token": info["chars_per_token"]["train"]}


TASK = LanguageTask()
