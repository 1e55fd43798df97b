"""Generate text from a trained language model's workdir.

  python -m experiments.sample --workdir=runs/language --prompt="ROMEO:" \\
      --model=gd_lm --max_new_tokens=200 --temperature=0.8 --top_k=20

Loads the run without training (gdattn.train.load), rebuilds the tokenizer
from the run's data config, samples (temperature, top-k, top-p) or runs a
beam search with n-gram blocking, with the model's incremental-decoding
cache, and prints the text and the tokens per second.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from gdattn import sampling
from gdattn import train
from gdattn.data import text

_WORKDIR = flags.DEFINE_string("workdir", None, "A language run's workdir.")
_MODEL = flags.DEFINE_string("model", None, "Model name (default: the first).")
_MEMBER = flags.DEFINE_integer("member", 0, "Member (seed x lr) index.")
_PROMPT = flags.DEFINE_string("prompt", "\n", "The text to continue.")
_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the k likeliest tokens.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling mass.")
_BEAM = flags.DEFINE_integer("beam_size", 0, "Beam search width (0: sample).")
_NGRAM = flags.DEFINE_integer("no_repeat_ngram_size", 0,
                              "Beam search: forbid repeated n-grams.")
_NO_CACHE = flags.DEFINE_bool("no_cache", False,
                              "Full forward per token (for comparison).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs restores at INFO
  try:
    run = train.load(_WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if run.config.task != "language":
    print(f"error: --workdir holds a {run.config.task!r} run, not a language"
          " model", file=sys.stderr)
    sys.exit(2)
  name = _MODEL.value or next(iter(run.models))
  if name not in run.models:
    print(f"error: --model must be one of {sorted(run.models)}, got {name!r}",
          file=sys.stderr)
    sys.exit(2)
  model = run.models[name].model(_MEMBER.value)
  d = run.config.data
  splits = text.load_corpus(d.corpus, d.data_dir or None)
  tokenizer = text.make_tokenizer(d.tokenizer, splits, vocab_size=d.vocab_size,
                                  cache_dir=d.cache_dir or None)
  prompt = np.asarray(tokenizer.encode(_PROMPT.value), np.int32)
  if prompt.size == 0:
    print("error: --prompt encodes to no tokens", file=sys.stderr)
    sys.exit(2)
  if _BEAM.value:
    tokens, _, stats = sampling.beam_search(
        model, prompt, _NEW.value, beam_size=_BEAM.value,
        no_repeat_ngram_size=_NGRAM.value, use_cache=not _NO_CACHE.value)
    out = np.asarray(tokens).reshape(-1)
  else:
    tokens, stats = sampling.generate(
        model, jax.random.key(_SEED.value), prompt[None], _NEW.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
        top_p=_TOP_P.value, use_cache=not _NO_CACHE.value)
    out = np.asarray(tokens)[0]
  print(tokenizer.decode(out.tolist()))
  print(f"\n[{name}: {stats.get('tokens_per_s', float('nan')):.0f} tokens/s,"
        f" cache {'off' if _NO_CACHE.value else 'on'}]", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
