"""Text generation from the language models: sampling and beam search.

Dimensions: B sequences, P prompt tokens, T new tokens, V vocabulary, S the
model's context length, W beams.

Generation runs in segments that fit the context: the first feeds the prompt
(its last S tokens), each later one re-primes from the last S // 2 tokens.
With the cache (`model.init_cache` / `model.decode_step`) a segment costs one
decode step per token; without it, one full forward per token on a fixed
[B, S] buffer. Both paths draw the same keys, so they produce the same tokens.
"""

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def top_k_mask(logits_xV: jax.Array, k: int) -> jax.Array:
  """Logits outside the k largest set to -inf (ties with the k-th kept)."""
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"top_k must be a positive int, got {k!r}")
  k = min(k, logits_xV.shape[-1])
  kth = jax.lax.top_k(logits_xV, k)[0][..., -1:]
  return jnp.where(logits_xV >= kth, logits_xV, -jnp.inf)


def top_p_mask(logits_xV: jax.Array, p: float) -> jax.Array:
  """Nucleus: keep the most probable tokens until their mass reaches p (the
  most probable token is always kept)."""
  if not 0.0 < p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {p!r}")
  order = jnp.argsort(-logits_xV, axis=-1)
  probs = jax.nn.softmax(jnp.take_along_axis(logits_xV, order, -1), axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each
  keep_sorted = before < p
  keep = jnp.zeros_like(keep_sorted).at[
      tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(keep_sorted)
  return jnp.where(keep, logits_xV, -jnp.inf)


def sample_logits(key, logits_BxV, temperature=1.0, top_k=None, top_p=None):
  """One token per row; temperature 0 is greedy."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature!r}")
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV / temperature
  if top_k is not None:
    logits = top_k_mask(logits, top_k)
  if top_p is not None:
    logits = top_p_mask(logits, top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _has_cache(model) -> bool:
  return hasattr(model, "init_cache") and hasattr(model, "decode_step")


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _segment(graphdef, state, key, window_BxM, num_new, use_cache, sampler):
  """num_new tokens after the window, [num_new, B]."""
  model = nnx.merge(graphdef, state)
  batch, m = window_BxM.shape
  sample = lambda t, logits: sample_logits(jax.random.fold_in(key, t), logits, *sampler)
  s = model.cfg.context_length
  if use_cache:
    def feed(cache, token_B):
      logits, cache = model.decode_step(cache, token_B)
      return cache, logits
    cache, logits = jax.lax.scan(feed, model.init_cache(batch, s), window_BxM.T)
    first = sample(0, logits[-1])

    def step(carry, t):
      cache, token = carry
      logits, cache = model.decode_step(cache, token)
      token = sample(t, logits)
      return (cache, token), token
  else:
    buffer = jnp.zeros((batch, s), jnp.int32).at[:, :m].set(window_BxM)
    first = sample(0, model(buffer)[:, m - 1])

    def step(carry, t):
      buffer, token = carry
      buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], m + t - 1, 1)
      token = sample(t, jax.lax.dynamic_index_in_dim(model(buffer), m + t - 1, 1, False))
      return (buffer, token), token
    cache = buffer
  _, rest = jax.lax.scan(step, (cache, first), jnp.arange(1, num_new))
  return jnp.concatenate([first[None], rest], axis=0)


def generate(model: nnx.Module, key: jax.Array, prompt_BxP, max_new_tokens: int,
             *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, use_cache: bool = True,
             verbose: bool = False) -> tuple[np.ndarray, dict[str, float]]:
  """Samples max_new_tokens after each prompt.

  Args:
    model: a language model of gdattn.lm.
    key: PRNG key.
    prompt_BxP: int tokens, P >= 1.
    max_new_tokens: T.
    temperature, top_k, top_p: the sampling distribution (temperature 0:
      greedy).
    use_cache: decode with the model's cache (False, or a model without
      one: a full forward per token).
    verbose: print the speed.

  Returns:
    (tokens [B, P + T] int32, {"tokens_per_s", "seconds", "new_tokens"}),
    the speed measured after compilation (one warm-up segment is run first).
  """
  prompt = np.asarray(prompt_BxP, np.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, >=1 tokens], got {prompt.shape}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  use_cache = use_cache and _has_cache(model)
  sampler = (temperature, top_k, top_p)
  sample_logits(jax.random.key(0), jnp.zeros((1, 2)), *sampler)  # validates
  graphdef, state = nnx.split(model)
  s = model.cfg.context_length
  plan, m, left = [], min(prompt.shape[1], s), max_new_tokens
  while left:  # (window length, new tokens) per segment
    n = min(left, s - m + 1)
    plan.append((m, n))
    left -= n
    m = max(1, s // 2)  # later segments re-prime from half a context
  # Compile every distinct segment shape before timing.
  for m, n in sorted(set(plan)):
    jax.block_until_ready(_segment(graphdef, state, key, jnp.zeros(
        (prompt.shape[0], m), jnp.int32), n, use_cache, sampler))
  tokens = prompt
  start = time.perf_counter()
  for i, (m, n) in enumerate(plan):
    new = _segment(graphdef, state, jax.random.fold_in(key, i),
                   jnp.asarray(tokens[:, -m:]), n, use_cache, sampler)
    tokens = np.concatenate([tokens, np.asarray(new).T], axis=1)
  seconds = time.perf_counter() - start
  stats = {"tokens_per_s": prompt.shape[0] * max_new_tokens / seconds,
           "seconds": seconds, "new_tokens": max_new_tokens}
  if verbose:
    print(f"generate: {stats['tokens_per_s']:.1f} tokens/s"
          f" ({'cache' if use_cache else 'no cache'})")
  return tokens, stats


def _banned_tokens(seq, n: int) -> list[int]:
  """Tokens that would repeat an n-gram already in seq."""
  if n < 1 or len(seq) < n - 1:
    return []
  prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
  return [seq[i + n - 1] for i in range(len(seq) - n + 1)
          if tuple(seq[i:i + n - 1]) == prefix]


def beam_search(model: nnx.Module, prompt_P, max_new_tokens: int, *,
                beam_size: int = 4, no_repeat_ngram_size: int = 0,
                use_cache: bool = True) -> tuple[np.ndarray, float, dict[str, Any]]:
  """Deterministic beam search (sum of log-probabilities) for one prompt.

  Ties are broken by (beam, token) order. With no_repeat_ngram_size n > 0 no
  beam may contain the same n-gram twice. P + T must fit the context.

  Returns:
    (best tokens [P + T], its log-probability, {"tokens_per_s", "seconds"}).
  """
  prompt = [int(t) for t in np.asarray(prompt_P).reshape(-1)]
  s = model.cfg.context_length
  if not prompt or len(prompt) + max_new_tokens - 1 > s:
    raise ValueError(
        f"beam_search: need 1 <= prompt ({len(prompt)}) and prompt +"
        f" max_new_tokens - 1 <= context_length ({s})")
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  use_cache = use_cache and _has_cache(model)
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, cache, tokens_W):
    logits, cache = nnx.merge(graphdef, state).decode_step(cache, tokens_W)
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1), cache

  @jax.jit
  def full(state, buffer_WxS, pos):
    logits = nnx.merge(graphdef, state)(buffer_WxS)
    return jax.nn.log_softmax(jax.lax.dynamic_index_in_dim(logits, pos, 1, False), -1)

  @jax.jit
  def reorder(cache, idx):
    # Every per-sequence cache leaf has the batch on axis 1 (layers first);
    # the GD LM's positional weights are shared and stay.
    return {name: x if x.ndim == 0 or name == "att" else jnp.take(x, idx, axis=1)
            for name, x in cache.items()}

  start = time.perf_counter()
  beams, scores = [list(prompt)], np.zeros(1)
  if use_cache:
    cache = nnx.merge(graphdef, state).init_cache(1, s)
    for t in prompt:
      logp, cache = step(state, cache, jnp.asarray([t], jnp.int32))
  for i in range(max_new_tokens):
    if use_cache:
      if i:
        logp, cache = step(state, cache, jnp.asarray([b[-1] for b in beams], jnp.int32))
    else:
      buffer = np.zeros((len(beams), s), np.int32)
      for w, b in enumerate(beams):
        buffer[w, :len(b)] = b
      logp = full(state, jnp.asarray(buffer), len(beams[0]) - 1)
    total = scores[:, None] + np.asarray(logp, np.float64)
    for w, b in enumerate(beams):
      total[w, _banned_tokens(b, no_repeat_ngram_size)] = -np.inf
    flat = np.argsort(-total.reshape(-1), kind="stable")[:beam_size]
    flat = flat[np.isfinite(total.reshape(-1)[flat])]
    if not flat.size:
      raise RuntimeError("beam_search: every continuation is blocked")
    idx, tok = np.divmod(flat, total.shape[1])
    beams = [beams[w] + [int(t)] for w, t in zip(idx, tok)]
    scores = total[idx, tok]
    if use_cache:
      cache = reorder(cache, jnp.asarray(idx))
  seconds = time.perf_counter() - start
  return (np.asarray(beams[0], np.int32), float(scores[0]),
          {"tokens_per_s": max_new_tokens / seconds, "seconds": seconds})
