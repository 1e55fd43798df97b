"""Sampling masks, cached vs uncached generation, beam search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gdattn import lm
from gdattn import sampling

VOCAB, SEQ = 9, 10


def _model(name="gd_lm"):
  cfg = lm.LMConfig(vocab_size=VOCAB, context_length=SEQ, model_dim=8,
                    num_heads=2, num_layers=2)
  return lm.make_lm_model(name, cfg, nnx.Rngs(0))


def test_top_k_mask():
  logits = jnp.array([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
  kept = jnp.isfinite(sampling.top_k_mask(logits, 2))
  np.testing.assert_array_equal(kept, [[0, 1, 1, 0], [0, 0, 1, 1]])
  with pytest.raises(ValueError, match="top_k"):
    sampling.top_k_mask(logits, 0)


def test_top_p_mask():
  probs = jnp.array([[0.5, 0.05, 0.3, 0.15]])
  logits = jnp.log(probs)
  keep = lambda p: np.asarray(jnp.isfinite(sampling.top_p_mask(logits, p)))[0]
  np.testing.assert_array_equal(keep(0.5), [1, 0, 0, 0])   # top-1 reaches 0.5
  np.testing.assert_array_equal(keep(0.6), [1, 0, 1, 0])
  np.testing.assert_array_equal(keep(0.9), [1, 0, 1, 1])
  np.testing.assert_array_equal(keep(1.0), [1, 1, 1, 1])
  with pytest.raises(ValueError, match="top_p"):
    sampling.top_p_mask(logits, 0.0)


def test_sample_respects_masks_and_greedy():
  logits = jnp.tile(jnp.log(jnp.array([0.5, 0.05, 0.3, 0.15])), (2000, 1))
  draws = np.asarray(sampling.sample_logits(jax.random.key(0), logits, 1.0, top_k=2))
  assert set(np.unique(draws)) == {0, 2}
  greedy = sampling.sample_logits(jax.random.key(0), logits[:2], 0.0)
  np.testing.assert_array_equal(greedy, [0, 0])


@pytest.mark.parametrize("name", ["gd_lm", "gpt"])
def test_cache_and_no_cache_generate_the_same_tokens(name):
  model = _model(name)
  prompt = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
  # 14 new tokens > context: the second segment re-primes from SEQ // 2.
  kw = dict(temperature=0.8, top_k=5, top_p=0.95)
  a, stats = sampling.generate(model, jax.random.key(1), prompt, 14, **kw)
  b, _ = sampling.generate(model, jax.random.key(1), prompt, 14, use_cache=False, **kw)
  assert a.shape == (2, 17)
  np.testing.assert_array_equal(a[:, :3], prompt)
  np.testing.assert_array_equal(a, b)
  assert stats["tokens_per_s"] > 0


def test_beam_search_deterministic_and_blocks_ngrams():
  model = _model("gd_lm")
  prompt = np.array([1, 2], np.int32)
  a, score_a, _ = sampling.beam_search(model, prompt, 6, beam_size=3,
                                       no_repeat_ngram_size=2)
  b, score_b, _ = sampling.beam_search(model, prompt, 6, beam_size=3,
                                       no_repeat_ngram_size=2, use_cache=False)
  np.testing.assert_array_equal(a, b)
  assert score_a == pytest.approx(score_b, abs=1e-4)
  bigrams = list(zip(a[:-1], a[1:]))
  assert len(bigrams) == len(set(bigrams))
  # Greedy = beam of one.
  greedy, _ = sampling.generate(model, jax.random.key(0), prompt[None], 6,
                                temperature=0.0)
  one, _, _ = sampling.beam_search(model, prompt, 6, beam_size=1)
  np.testing.assert_array_equal(one, greedy[0])


def test_banned_tokens():
  assert sampling._banned_tokens([1, 2, 3, 1, 2], 3) == [3]
  assert sampling._banned_tokens([1, 2, 1], 2) == [2]
  assert sampling._banned_tokens([1], 3) == []
